"""The paper's S4 heads: `s4-multiscale` (ViS4mer, Islam & Bertasius, ECCV 2022, Sec. 3) and `s4-singlescale`
(its ablation, Table 6), plus `import_original` for checkpoints of the paper's public `ViS4mer` module.

Per block: pre-LN -> S4 -> channel dropout -> residual -> AvgPool1d(2) -> Linear(H, H/2) -> GELU (DESIGN.md);
mean over L; Linear decoder. The S4 layer itself (kernel, FFT convolution, its GELU/dropout/output linear) lives in
heads/s4.py; this file only wires it into the stack.
"""

from __future__ import annotations

import torch
from torch import nn

from heads.blocks import MultiScaleStack


class S4Mixer(nn.Module):
    """Adapts `heads.s4.S4` ((B, H, L) -> (B, H, L)) to the (B, L, H) residual stream."""

    def __init__(self, d_model: int, d_state: int, l_max: int | None, dropout: float, backend: str):
        super().__init__()
        from heads.s4 import S4

        self.s4 = S4(d_model, d_state=d_state, l_max=l_max, dropout=dropout, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L, H)."""
        y = self.s4(x.transpose(1, 2))  # (B, H, L)
        if isinstance(y, tuple):  # tolerate an (output, state) return
            y = y[0]
        return y.transpose(1, 2)  # (B, L, H)

    @property
    def projection(self) -> nn.Linear:
        """S4's position-wise output Linear, the last step of `forward`."""
        return self.s4.output_linear

    folds_norm_affine = True  # pooled_core(x, affine=(gamma, beta)) applies a LayerNorm's affine inside S4's core

    def pooled_core(self, x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """avg_pool2 of S4 before its output Linear: (B, L, H) -> (B, L // 2, H) (a transposed view)."""
        return self.s4.core(x.transpose(1, 2), pool=True, affine=affine).transpose(1, 2)  # (B, L/2, H)


class S4MultiScale(MultiScaleStack):
    """ViS4mer: S4 blocks whose width halves and whose sequence is average-pooled by 2 after each block."""

    multiscale = True

    def __init__(self, d_input: int, n_outputs: int, seq_len: int | None = None, d_model: int = 1024,
                 n_layers: int = 3, d_state: int = 64, dropout: float = 0.2, backend: str = "auto",
                 input_proj: bool | None = None, **unused):
        def make_mixer(width: int, length: int | None) -> nn.Module:
            return S4Mixer(width, d_state, length, dropout, backend)

        super().__init__(d_input, n_outputs, seq_len, make_mixer, d_model=d_model, n_layers=n_layers,
                         dropout=dropout, multiscale=self.multiscale, positions=False, input_proj=input_proj)


class S4SingleScale(S4MultiScale):
    """The paper's single-scale ablation: the same blocks at constant width and sequence length."""

    multiscale = False


# ------------------------------------------------------------------------------------- paper-code checkpoints
_S4_KEYS = {  # suffix after "s4_layers.<i>." in the paper code -> our name under "blocks.<i>.mixer.s4."
    "D": "D",
    "kernel.krylov.log_dt": "log_dt",
    "kernel.krylov.w": "w",
    "kernel.krylov.B": "B",
    "kernel.krylov.C": "C",
    "output_linear.weight": "output_linear.weight",
    "output_linear.bias": "output_linear.bias",
}
_DERIVED = ("kernel.krylov.nodes", "kernel.krylov.z")  # FFT nodes the paper code caches; recomputed here


def import_original(state_dict: dict) -> dict:
    """Map a state dict of the paper's `ViS4mer` module onto `s4-multiscale` (built with `input_proj=True`).

    Keys (DESIGN.md): encoder.*, s4_layers.i.{D, kernel.krylov.{log_dt, w, B, C}, output_linear.*}, norms.i.*,
    linears.i.*, decoder.*; krylov.{nodes, z} are derived and dropped. The paper's output_linear bias is (H, 1).
    The paper code always has the input Linear, so the head must keep it even when d_input == d_model:
    `load_original` builds the matching head.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head in ("encoder", "decoder") and rest in ("weight", "bias"):
            out[key] = value
            continue
        index, _, suffix = rest.partition(".")
        if not index.isdigit():
            unknown.append(key)
        elif head == "s4_layers" and suffix in _S4_KEYS:
            if suffix == "output_linear.bias":
                value = value.reshape(-1)  # (H, 1) -> (H,)
            elif suffix == "D":
                value = value.reshape(-1)  # (H,) (some versions store (1, H))
            out[f"blocks.{index}.mixer.s4.{_S4_KEYS[suffix]}"] = value
        elif head == "s4_layers" and suffix in _DERIVED:
            continue
        elif head == "norms" and suffix in ("weight", "bias"):
            out[f"blocks.{index}.norm.{suffix}"] = value
        elif head == "linears" and suffix in ("weight", "bias"):
            out[f"blocks.{index}.linear.{suffix}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"Expected a checkpoint of the paper's ViS4mer module, got unknown keys: "
                         f"{', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}")
    if "decoder.weight" not in out or "blocks.0.mixer.s4.w" not in out:
        raise ValueError("Expected a checkpoint of the paper's ViS4mer module (decoder.* and s4_layers.0.* keys), "
                         "got a state dict without them")
    return out


def original_config(state_dict: dict) -> dict:
    """Shapes of a paper-code checkpoint: d_input, d_model, n_layers, d_state, n_outputs."""
    n_layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("s4_layers."))
    d_model, d_input = state_dict["encoder.weight"].shape
    d_state = 2 * state_dict["s4_layers.0.kernel.krylov.w"].shape[0]
    return {"d_input": int(d_input), "d_model": int(d_model), "n_layers": n_layers, "d_state": int(d_state),
            "n_outputs": int(state_dict["decoder.weight"].shape[0])}


def load_original(state_dict: dict, seq_len: int | None = None, **cfg) -> S4MultiScale:
    """Build an `s4-multiscale` head shaped like a paper-code checkpoint and load its weights (strict)."""
    shape = original_config(state_dict)
    head = S4MultiScale(shape["d_input"], shape["n_outputs"], seq_len, d_model=shape["d_model"],
                        n_layers=shape["n_layers"], d_state=shape["d_state"], input_proj=True, **cfg)
    head.load_state_dict(import_original(state_dict), strict=True)
    return head

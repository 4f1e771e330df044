"""Checkpoints of the paper's public `ViS4mer` module (its models.py) as `s4-multiscale` heads: `import_original`
maps the state dict's keys, `original_config` reads the shapes, `load_original` builds the matching head and loads it.
"""

from __future__ import annotations

import torch

from data.errors import UserError
from heads.vis4mer import S4MultiScale

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
    """Map a state dict of the paper's `ViS4mer` module onto `s4-multiscale` built like any other head
    (`build_head("s4-multiscale", d_input, n_outputs, seq_len, d_model=..., n_layers=..., d_state=...)`).

    Keys (docs/design.md, "Paper-code checkpoints"): encoder.*, s4_layers.i.{D, kernel.krylov.{log_dt, w, B, C},
    output_linear.*}, norms.i.*, linears.i.*, decoder.*; krylov.{nodes, z} are derived and dropped. The paper's
    output_linear bias is (H, 1). The paper's module always owns its input Linear `encoder` but its forward applies
    it only when d_model != d_input (models.py, `ViS4mer.forward`); our head has an input Linear exactly then, so a
    square encoder (d_input == d_model, the LVU setting 1024 = 1024) is unused in the paper's model and is dropped
    here. Raises UserError for a state dict with keys the paper's module does not have, or without its decoder /
    first S4 layer.
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
        raise UserError(f"Expected a checkpoint of the paper's ViS4mer module, got unknown keys: "
                         f"{', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}")
    encoder = out.get("encoder.weight")
    if encoder is not None and encoder.shape[0] == encoder.shape[1]:  # d_model == d_input: skipped by the paper
        del out["encoder.weight"]
        out.pop("encoder.bias", None)
    if "decoder.weight" not in out or "blocks.0.mixer.s4.w" not in out:
        raise UserError("Expected a checkpoint of the paper's ViS4mer module (decoder.* and s4_layers.0.* keys), "
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
    """Build an `s4-multiscale` head shaped like a paper-code checkpoint and load its weights (strict); its logits
    are the paper module's (eval mode), with or without the input Linear (see `import_original`)."""
    shape = original_config(state_dict)
    head = S4MultiScale(shape["d_input"], shape["n_outputs"], seq_len, d_model=shape["d_model"],
                        n_layers=shape["n_layers"], d_state=shape["d_state"], **cfg)
    head.load_state_dict(import_original(state_dict), strict=True)
    return head

"""The paper's S4 heads: `s4-multiscale` (ViS4mer, Islam & Bertasius, ECCV 2022, Sec. 3) and `s4-singlescale`
(its ablation, Table 6). Checkpoints of the paper's public `ViS4mer` module load through `heads.paper_checkpoint`.

Per block: pre-LN -> S4 -> channel dropout -> residual -> AvgPool1d(2) -> Linear(H, H/2) -> GELU (docs/design.md);
mean over L; Linear decoder. The S4 layer itself (kernel, FFT convolution, its GELU/dropout/output linear) lives in
heads/s4/; this file only wires it into the stack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from heads.blocks import MultiScaleStack, PoolingMixer
from heads.config import HEAD
from heads.s4 import S4


class S4Mixer(PoolingMixer):
    """Adapts `heads.s4.S4` ((B, H, L) -> (B, H, L)) to the (B, L, H) residual stream."""

    def __init__(self, d_model: int, d_state: int, l_max: int | None, dropout: float, backend: str):
        super().__init__()
        self.s4 = S4(d_model, d_state=d_state, l_max=l_max, dropout=dropout, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L, H)."""
        return self.s4(x.transpose(1, 2)).transpose(1, 2)  # (B, L, H)

    @property
    def projection(self) -> nn.Linear:
        """S4's position-wise output Linear, the last step of `forward`."""
        return self.s4.output_linear

    def pooled_core(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """avg_pool2 of S4 over norm(x) before its output Linear: (B, L, H) -> (B, L // 2, H) (a transposed view).
        The LayerNorm's per-channel affine goes inside S4's fused core, where its gradients come without dL/du: the
        first block then never forms a gradient with respect to its input."""
        xhat = F.layer_norm(x, norm.normalized_shape, None, None, norm.eps)  # (B, L, H)
        affine = None if norm.weight is None else (norm.weight, norm.bias)
        return self.s4.core(xhat.transpose(1, 2), pool=True, affine=affine).transpose(1, 2)  # (B, L/2, H)


class S4MultiScale(MultiScaleStack):
    """ViS4mer: S4 blocks whose width halves and whose sequence is average-pooled by 2 after each block."""

    multiscale = True

    def __init__(self, d_input: int, n_outputs: int, seq_len: int | None = None, d_model: int = HEAD.d_model,
                 n_layers: int = HEAD.n_layers, d_state: int = HEAD.d_state, dropout: float = HEAD.dropout,
                 backend: str = HEAD.backend, input_proj: bool | None = HEAD.input_proj):
        def make_mixer(width: int, length: int | None) -> nn.Module:
            return S4Mixer(width, d_state, length, dropout, backend)

        super().__init__(d_input, n_outputs, seq_len, make_mixer, d_model=d_model, n_layers=n_layers,
                         dropout=dropout, multiscale=self.multiscale, positions=False, input_proj=input_proj)


class S4SingleScale(S4MultiScale):
    """The paper's single-scale ablation: the same blocks at constant width and sequence length."""

    multiscale = False

"""Building blocks shared by the heads: flattening, positional encodings, the multi-scale block and its stack.

Axis letters: B batch, T segments, P tokens per segment, D input features, L = T·P sequence, H channels (d_model).
The residual stream is kept in the (B, L, H) layout so that LayerNorm, the position-wise linears and the pooling work
on contiguous memory; only the sequence mixer (S4 or attention) sees another layout if it needs one.

The multi-scale block is the paper's (ViS4mer, Sec. 3.2): pre-LN -> mixer -> channel dropout -> residual add ->
AvgPool1d(2) over L -> Linear(H, H/2) -> GELU. With `multiscale=False` it is the single-scale ablation (no pooling,
no channel halving; the Linear and GELU stay at constant width).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from heads.config import HEAD
from heads.ops import avg_pool2, channel_dropout_scale


def flatten_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, T, P, D) -> (B, L, D) float32 with L = T·P (cached features are float16)."""
    if x.dim() != 4:
        raise ValueError(f"Expected features of shape (B, T, P, D), got {tuple(x.shape)}")
    B, T, P, D = x.shape
    return x.reshape(B, T * P, D).float()  # (B, L, D)


def embed_tokens(x: torch.Tensor, encoder: nn.Module | None, positions: nn.Module | None) -> torch.Tensor:
    """The common entry of the sequence heads: (B, T, P, D) -> (B, L, H), flattened (`flatten_tokens`), through the
    input Linear when there is one, plus the (segment, token) position code when there is one."""
    T, P = x.shape[1], x.shape[2]
    h = flatten_tokens(x)  # (B, L, D)
    if encoder is not None:
        h = encoder(h)  # (B, L, H)
    return h if positions is None else positions(h, T, P)  # (B, L, H)


def sinusoid(n: int, dim: int, device=None, base: float = 10000.0) -> torch.Tensor:
    """Fixed sinusoidal table (n, dim): position i -> [sin(i·f_k), cos(i·f_k)] for dim/2 geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(base) * torch.arange(half, device=device, dtype=torch.float32) / max(1, half))
    angles = torch.arange(n, device=device, dtype=torch.float32)[:, None] * freqs[None, :]  # (n, dim/2)
    table = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (n, 2·half)
    if table.shape[-1] < dim:
        table = F.pad(table, (0, dim - table.shape[-1]))
    return table  # (n, dim)


class SegmentTokenPositions(nn.Module):
    """Adds a position code for (segment t, token p) to a flattened (B, T·P, H) sequence.

    Attention alone is order-blind, so the transformer heads need this. The first half of the channels encodes the
    segment index, the second half the token index (two separate sinusoid tables, so (t, p) and (p, t) never collide);
    a learned scale lets training weigh the code against the features. Fixed codes work for any T and P, so a head
    trained on 60-segment windows also evaluates 64 uniform segments.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.scale = nn.Parameter(torch.tensor(1.0))
        self._cache: dict[tuple, torch.Tensor] = {}

    def code(self, T: int, P: int, device) -> torch.Tensor:
        key = (T, P, str(device))
        if key not in self._cache:
            d_seg = self.d_model // 2
            seg = sinusoid(T, d_seg, device)  # (T, H/2)
            tok = sinusoid(P, self.d_model - d_seg, device)  # (P, H - H/2)
            code = torch.cat([seg[:, None, :].expand(T, P, d_seg),
                              tok[None, :, :].expand(T, P, self.d_model - d_seg)], dim=-1)  # (T, P, H)
            self._cache = {key: code.reshape(T * P, self.d_model)}  # (L, H); keep one entry
        return self._cache[key]

    def forward(self, x: torch.Tensor, T: int, P: int) -> torch.Tensor:
        """(B, L, H) -> (B, L, H) with L = T·P."""
        return x + self.scale * self.code(T, P, x.device)  # (B, L, H)


class PoolingMixer(nn.Module):
    """A sequence mixer (B, L, H) -> (B, L, H) whose last step is a position-wise Linear, offering the multi-scale
    block a cheaper path (docs/design.md, "The sequence-mixer contract"):
      projection            that Linear;
      pooled_core(x, norm)  AvgPool1d(2) over L of everything before it, applied to norm(x) (`norm` is the block's
                            LayerNorm; the mixer decides how to apply it): (B, L, H) -> (B, L // 2, H).
    Any other nn.Module mapping (B, L, H) -> (B, L, H) is a mixer too; the block then takes the plain path."""

    @property
    def projection(self) -> nn.Linear:
        raise NotImplementedError

    def pooled_core(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        raise NotImplementedError


class MultiScaleBlock(nn.Module):
    """pre-LN -> mixer -> channel dropout -> residual -> [AvgPool1d(2)] -> Linear(H, H_out) -> GELU.

    `mixer` maps (B, L, H) -> (B, L, H) (the S4 wrapper transposes to S4's (B, H, L) itself). When it is a
    `PoolingMixer`, the multi-scale block pools first and runs the mixer's projection on half the steps, or folds it
    into its own Linear (`merged_project`).
    """

    def __init__(self, d_model: int, mixer: nn.Module, dropout: float, multiscale: bool = True):
        super().__init__()
        self.d_model = d_model
        self.d_out = d_model // 2 if multiscale else d_model
        self.multiscale = multiscale
        self.norm = nn.LayerNorm(d_model)
        self.mixer = mixer
        self.dropout_p = dropout
        self.linear = nn.Linear(d_model, self.d_out)

    def residual(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x + channel_dropout(z), fused into one addcmul so the (B, L, H) product is never stored separately."""
        m = channel_dropout_scale(z, self.dropout_p, self.training)  # (B, H) or None
        return x + z if m is None else torch.addcmul(x, z, m[:, None, :])  # (B, L, H)

    def pool_project(self, x: torch.Tensor) -> torch.Tensor:
        """AvgPool1d(2) over L, then Linear: (B, L, H) -> (B, L/2, H_out). The pair sum feeds the GEMM and the 1/2 of
        the average rides on its alpha, so the pooled (B, L/2, H) average is never materialised."""
        B, L, H = x.shape
        half = L // 2
        pairs = x[:, : 2 * half].reshape(B * half, 2, H)  # (B·L/2, 2, H)
        summed = pairs[:, 0] + pairs[:, 1]  # (B·L/2, H)
        out = torch.addmm(self.linear.bias, summed, self.linear.weight.t(), alpha=0.5)  # (B·L/2, H_out)
        return out.view(B, half, self.d_out)  # (B, L/2, H_out)

    def merged_project(self, xp: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Linear(xp + drop(projection(c))) with the mixer's output projection (W, b) folded into this block's Linear
        (W2, b2): W2 xp + (W2 diag(m) W) c + (b2 + W2 (m * b)), m the channel-dropout multiplier (1 in eval).
        Exact algebra; used only when the folded (H_out, H) matrix (one per sample under dropout) costs less than the
        (L/2, H) x (H, H) projection it saves.  xp, c (B, L/2, H) -> (B, L/2, H_out)."""
        proj = self.mixer.projection
        W, b, W2, b2 = proj.weight, proj.bias, self.linear.weight, self.linear.bias  # (H, H) (H,) (H_out, H) (H_out,)
        B, half, H = c.shape
        drop = self.training and self.dropout_p > 0.0
        per_matrix = B if drop else 1
        if 2 * B * half * H * self.d_out + per_matrix * self.d_out * H * H >= B * half * H * (H + self.d_out):
            return self.linear(self.residual(xp, proj(c)))  # (B, L/2, H_out): folding would not pay
        m = channel_dropout_scale(c, self.dropout_p, self.training)  # (B, H) or None
        if m is None:
            M = W2 @ W  # (H_out, H)
            out = F.linear(c, M, torch.addmv(b2, W2, b))  # (B, L/2, H_out)
            return torch.add(out, F.linear(xp, W2))
        M = (W2[None] * m[:, None, :]) @ W  # (B, H_out, H)
        bias = torch.addmm(b2, m * b, W2.t())  # (B, H_out)
        out = torch.baddbmm(bias[:, None, :], c, M.transpose(1, 2))  # (B, L/2, H_out)
        return torch.add(out, F.linear(xp, W2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L/2, H/2) (multi-scale) or (B, L, H) (single-scale)."""
        if self.multiscale and isinstance(self.mixer, PoolingMixer):
            # pool(x + drop(mixer(x'))) = pool(x) + drop(pool(mixer(x'))): the pooling commutes with the channel
            # dropout and with the mixer's last position-wise Linear (its `projection`), which then runs on L/2 steps
            # or is folded into this block's Linear
            c = self.mixer.pooled_core(x, self.norm)  # (B, L/2, H) before the mixer's projection
            return F.gelu(self.merged_project(avg_pool2(x, dim=1), c))  # (B, L/2, H/2)
        z = self.mixer(self.norm(x))  # (B, L, H)
        x = self.residual(x, z)  # (B, L, H)
        if self.multiscale:
            return F.gelu(self.pool_project(x))  # (B, L/2, H/2)
        return F.gelu(self.linear(x))  # (B, L, H)


class MultiScaleStack(nn.Module):
    """Input projection (only when d_input != d_model, or forced), optional positions, n blocks, mean over L, decoder.

    `make_mixer(d_model, seq_len)` builds one sequence mixer for a block of width d_model on sequences of length
    seq_len (the S4 layer's l_max halves with each multi-scale block, like the paper's code).
    """

    def __init__(self, d_input: int, n_outputs: int, seq_len: int | None,
                 make_mixer: Callable[[int, int | None], nn.Module],
                 d_model: int = HEAD.d_model, n_layers: int = HEAD.n_layers, dropout: float = HEAD.dropout,
                 multiscale: bool = True, positions: bool = False, input_proj: bool | None = HEAD.input_proj):
        super().__init__()
        if multiscale and d_model >> n_layers < 1:
            raise ValueError(f"Expected d_model >= 2**n_layers for a multi-scale head, got d_model={d_model}, "
                             f"n_layers={n_layers}")
        use_proj = d_input != d_model if input_proj is None else bool(input_proj)
        if not use_proj and d_input != d_model:
            raise ValueError(f"input_proj=False needs d_input == d_model, got {d_input} != {d_model}")
        self.encoder = nn.Linear(d_input, d_model) if use_proj else None
        self.positions = SegmentTokenPositions(d_model) if positions else None
        blocks = []
        width, length = d_model, seq_len
        for _ in range(n_layers):
            block = MultiScaleBlock(width, make_mixer(width, length), dropout, multiscale)
            blocks.append(block)
            width = block.d_out
            if multiscale and length is not None:
                length = max(1, length // 2)
        self.blocks = nn.ModuleList(blocks)
        self.decoder = nn.Linear(width, n_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D) -> pooled (B, H_final)."""
        h = embed_tokens(x, self.encoder, self.positions)  # (B, L, H)
        for block in self.blocks:
            h = block(h)  # (B, L', H')
        return h.mean(dim=1)  # (B, H_final)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D) -> (B, n_outputs)."""
        return self.decoder(self.forward_features(x))  # (B, n_outputs)

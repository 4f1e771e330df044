"""Two small ops shared by the S4 layer and the multi-scale block (ViS4mer, Sec. 3.2), so both mean the same thing.

`avg_pool2(x, dim)`: AvgPool1d(2) over one axis; `channel_dropout_scale(x, p, training, channel_dim)`: the multiplier
of channel-wise dropout (whole channels dropped per sample, the intent of the paper code's Dropout2d).
"""

from __future__ import annotations

import torch


def avg_pool2(x: torch.Tensor, dim: int = -1, out: torch.Tensor | None = None) -> torch.Tensor:
    """AvgPool1d(kernel 2, stride 2) over axis `dim`: size L -> L // 2, an odd last step dropped (as nn.AvgPool1d).
    Works on any layout (the block pools (B, L, H) over dim 1, S4's core (B, H, L) over the last axis); `out`
    receives the result."""
    half = x.shape[dim] // 2
    even = x.narrow(dim, 0, 2 * half).unflatten(dim, (half, 2))  # (..., L/2, 2, ...)
    pair = dim % x.dim() + 1
    out = torch.add(even.select(pair, 0), even.select(pair, 1), out=out)  # (..., L/2, ...)
    return out.mul_(0.5)


def channel_dropout_scale(x: torch.Tensor, p: float, training: bool, channel_dim: int = -1) -> torch.Tensor | None:
    """The channel-dropout multiplier (B, H) for x (B, ..., H, ...) with channels on `channel_dim`: 0 for a dropped
    (sample, channel), 1 / (1 - p) for a kept one; None when no dropout applies (eval, p = 0)."""
    if not training or p == 0.0:
        return None
    keep = 1.0 - p
    shape = (x.shape[0], x.shape[channel_dim])
    return torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(keep).div_(keep)  # (B, H)

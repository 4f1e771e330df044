"""`mean-pool`: the order-blind floor every head must beat — mean over segments and tokens, then one linear layer."""

from __future__ import annotations

import torch
from torch import nn

from heads.config import HEAD


class MeanPool(nn.Module):
    """(B, T, P, D) -> mean over T and P -> Linear(D, n_outputs) -> (B, n_outputs)."""

    def __init__(self, d_input: int, n_outputs: int, seq_len: int | None = None, dropout: float = HEAD.dropout):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(d_input, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"Expected features of shape (B, T, P, D), got {tuple(x.shape)}")
        pooled = x.float().mean(dim=(1, 2))  # (B, D)
        return self.decoder(self.dropout(pooled))  # (B, n_outputs)

"""Self-attention heads: the paper's self-attention twin of ViS4mer, and a plain transformer encoder.

`transformer-multiscale` is ViS4mer with its S4 layer replaced by pre-LN multi-head self-attention (the comparison of
the paper's Sec. 4.3 / Table 5): the same blocks, pooling, channel halving and decoder. `attention="sdpa"` uses
PyTorch's fused `scaled_dot_product_attention` (flash / memory-efficient kernels, O(L) memory); `"materialized"`
builds the explicit (B, heads, L, L) score matrix, which is what the paper measured against.
`transformer` is a constant-width pre-LN encoder (attention + MLP) with mean pooling.
Both add segment and token position codes: attention alone is order-blind.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from heads.blocks import MultiScaleStack, PoolingMixer, SegmentTokenPositions, embed_tokens
from heads.config import HEAD
from heads.ops import avg_pool2

ATTENTION_KINDS = ("sdpa", "materialized")


def pick_heads(d_model: int, n_heads: int) -> int:
    """The largest head count <= n_heads that divides d_model (widths halve in the multi-scale stack)."""
    for h in range(min(n_heads, d_model), 0, -1):
        if d_model % h == 0:
            return h
    return 1


class SelfAttention(PoolingMixer):
    """Multi-head self-attention on (B, L, H) with a fused qkv projection; (B, L, H) -> (B, L, H)."""

    def __init__(self, d_model: int, n_heads: int = 8, attention: str = "sdpa", dropout: float = 0.0):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"Expected attention in {ATTENTION_KINDS}, got {attention!r}")
        self.n_heads = pick_heads(d_model, n_heads)
        self.head_dim = d_model // self.n_heads
        self.attention = attention
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L, H)."""
        return self.out(self.attend(x))  # (B, L, H)

    @property
    def projection(self) -> nn.Linear:
        """The output projection, the last step of `forward`."""
        return self.out

    def pooled_core(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """avg_pool2 of the attention over norm(x) before its output projection: (B, L, H) -> (B, L // 2, H). The
        multi-scale block uses it as it does S4's, so the twin gets the same saving."""
        return avg_pool2(self.attend(norm(x)), dim=1)  # (B, L/2, H)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Attention without the output projection: (B, L, H) -> (B, L, H)."""
        B, L, H = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim)  # (B, L, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, h, L, d)
        p = self.dropout if self.training else 0.0
        if self.attention == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, L, d)
        else:
            scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, h, L, L)
            weights = F.dropout(scores.softmax(dim=-1), p=p, training=self.training)  # (B, h, L, L)
            y = torch.matmul(weights, v)  # (B, h, L, d)
        return y.transpose(1, 2).reshape(B, L, H)  # (B, L, H)


class TransformerMultiScale(MultiScaleStack):
    """The paper's self-attention twin: ViS4mer's multi-scale blocks with attention in place of S4."""

    def __init__(self, d_input: int, n_outputs: int, seq_len: int | None = None, d_model: int = HEAD.d_model,
                 n_layers: int = HEAD.n_layers, dropout: float = HEAD.dropout, n_heads: int = HEAD.n_heads,
                 attention: str = HEAD.attention, attn_dropout: float = HEAD.attn_dropout,
                 input_proj: bool | None = HEAD.input_proj):
        def make_mixer(width: int, length: int | None) -> nn.Module:
            return SelfAttention(width, n_heads, attention, attn_dropout)

        super().__init__(d_input, n_outputs, seq_len, make_mixer, d_model=d_model, n_layers=n_layers,
                         dropout=dropout, multiscale=True, positions=True, input_proj=input_proj)


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + attn(LN(x)), then x + MLP(LN(x)); (B, L, H) -> (B, L, H)."""

    def __init__(self, d_model: int, n_heads: int, attention: str, dropout: float, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, attention)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))  # (B, L, H)
        return x + self.drop(self.mlp(self.norm2(x)))  # (B, L, H)


class Transformer(nn.Module):
    """Plain pre-LN transformer encoder of constant width, mean pooling, linear decoder."""

    def __init__(self, d_input: int, n_outputs: int, seq_len: int | None = None, d_model: int = HEAD.d_model,
                 n_layers: int = HEAD.n_layers, dropout: float = HEAD.dropout, n_heads: int = HEAD.n_heads,
                 attention: str = HEAD.attention, mlp_ratio: int = HEAD.mlp_ratio,
                 input_proj: bool | None = HEAD.input_proj):
        super().__init__()
        use_proj = d_input != d_model if input_proj is None else bool(input_proj)
        self.encoder = nn.Linear(d_input, d_model) if use_proj else None
        self.positions = SegmentTokenPositions(d_model)
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, attention, dropout, mlp_ratio)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D) -> (B, n_outputs)."""
        h = embed_tokens(x, self.encoder, self.positions)  # (B, L, H)
        for layer in self.layers:
            h = layer(h)  # (B, L, H)
        return self.decoder(self.norm(h).mean(dim=1))  # (B, n_outputs)

"""Stage 2 heads: sequence models over cached token grids, (B, T, P, D) -> (B, n_outputs).

`HEADS` maps a name to its class; `build_head(name, d_input, n_outputs, seq_len, **cfg)` builds one. Common cfg keys
(defaults from the paper): d_model 1024, n_layers 3, d_state 64, dropout 0.2. Heads ignore keys they do not use, so
one config serves every head of an ablation. `seq_len` is L = T·P of a training clip (the S4 layer's l_max).
"""

from __future__ import annotations

from torch import nn

from data.errors import UserError
from heads.attention import Transformer, TransformerMultiScale
from heads.pooling import MeanPool
from heads.vis4mer import S4MultiScale, S4SingleScale

HEADS: dict[str, type[nn.Module]] = {
    "s4-multiscale": S4MultiScale,
    "s4-singlescale": S4SingleScale,
    "transformer-multiscale": TransformerMultiScale,
    "transformer": Transformer,
    "mean-pool": MeanPool,
}

DEFAULTS = {"d_model": 1024, "n_layers": 3, "d_state": 64, "dropout": 0.2}


def build_head(name: str, d_input: int, n_outputs: int, seq_len: int | None = None, **cfg) -> nn.Module:
    """Build head `name`; cfg overrides DEFAULTS (None values mean "default")."""
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; valid heads: {', '.join(HEADS)}")
    if d_input < 1 or n_outputs < 1:
        raise ValueError(f"Expected d_input >= 1 and n_outputs >= 1, got {d_input}, {n_outputs}")
    merged = dict(DEFAULTS)
    merged.update({k: v for k, v in cfg.items() if v is not None})
    return HEADS[name](d_input, n_outputs, seq_len, **merged)


__all__ = ["HEADS", "DEFAULTS", "build_head"]

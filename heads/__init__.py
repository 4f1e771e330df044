"""Stage 2 heads: sequence models over cached token grids, (B, T, P, D) -> (B, n_outputs).

`HEADS` maps a name to its class; `build_head(name, d_input, n_outputs, seq_len, **cfg)` builds one. cfg keys are the
fields of `HeadConfig` (heads/config.py, the paper's defaults: d_model 1024, n_layers 3, d_state 64, dropout 0.2);
each head takes the ones it uses, so one config serves every head of an ablation, and any other key is an error (a
typo like `d_stat=` never passes silently). `seq_len` is L = T·P of a training clip (the S4 layer's l_max).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect

from torch import nn

from data.errors import UserError
from heads.attention import Transformer, TransformerMultiScale
from heads.config import HeadConfig
from heads.pooling import MeanPool
from heads.vis4mer import S4MultiScale, S4SingleScale

HEADS: dict[str, type[nn.Module]] = {
    "s4-multiscale": S4MultiScale,
    "s4-singlescale": S4SingleScale,
    "transformer-multiscale": TransformerMultiScale,
    "transformer": Transformer,
    "mean-pool": MeanPool,
}
HEAD_OPTIONS = tuple(f.name for f in dataclasses.fields(HeadConfig))


def build_head(name: str, d_input: int, n_outputs: int, seq_len: int | None = None, **cfg) -> nn.Module:
    """Build head `name` for features of width d_input: (B, T, P, D) -> (B, n_outputs). cfg: `HeadConfig` fields
    (None values mean "default"). Raises UserError for an unknown head name or cfg key (listing the valid ones)."""
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; valid heads: {', '.join(HEADS)}")
    unknown = [key for key in cfg if key not in HEAD_OPTIONS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], HEAD_OPTIONS, n=1)
        raise UserError(f"unknown head option {unknown[0]!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                        f"valid options: {', '.join(HEAD_OPTIONS)}")
    if d_input < 1 or n_outputs < 1:
        raise ValueError(f"Expected d_input >= 1 and n_outputs >= 1, got {d_input}, {n_outputs}")
    cls = HEADS[name]
    takes = inspect.signature(cls).parameters
    return cls(d_input, n_outputs, seq_len, **{k: v for k, v in cfg.items() if v is not None and k in takes})


__all__ = ["HEADS", "HEAD_OPTIONS", "HeadConfig", "build_head"]

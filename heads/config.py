"""The one source of defaults for stage 2 (the paper's values, docs/design.md "Protocols"): the head constructors,
`build_head`, the command line (`python -m heads train|ablate`) and `make help` (which runs this file as a script: no
torch import) all read these dataclasses, so a default is changed in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class HeadConfig:
    """Hyper-parameters of every head; each head takes the fields it uses (`build_head` rejects any other key)."""

    d_model: int = 1024  # width H of the first block (halved by each multi-scale block)
    n_layers: int = 3  # blocks
    d_state: int = 64  # S4 state size N
    dropout: float = 0.2  # channel dropout of the blocks (and S4's own)
    backend: str = "auto"  # S4 kernel backend: auto | torch | keops | naive
    n_heads: int = 8  # attention heads (transformer heads)
    attention: str = "sdpa"  # sdpa | materialized
    attn_dropout: float = 0.0  # dropout on the attention weights (transformer-multiscale)
    mlp_ratio: int = 4  # MLP width / d_model (transformer)
    input_proj: bool | None = None  # Linear(d_input, d_model) in front: None = only when the widths differ


@dataclass(frozen=True)
class TrainConfig:
    """Training defaults of `python -m heads train` (the paper's protocol where it has one)."""

    epochs: int = 100
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    plateau_factor: float = 0.5  # LR factor on a plateau of the validation metric
    plateau_patience: int = 5  # epochs without improvement before the LR is reduced
    seed: int = 0
    workers: int = 2  # data loader workers per process
    eval_stride: int = 1  # segments between evaluation windows
    val_fraction: float = 0.1  # train share held out when the data set has no val split


@dataclass(frozen=True)
class AblationConfig:
    """Defaults of `python -m heads ablate` (`make ablate`): the paper's model, its single-scale ablation, its
    self-attention twin and the order-blind floor, three seeds each."""

    heads: str = "s4-multiscale,s4-singlescale,transformer-multiscale,mean-pool"
    seeds: str = "0,1,2"
    name: str = "default"  # the ablation's folder under <runs-dir>/ablate/<dataset>[-<task>]/


HEAD = HeadConfig()
TRAIN = TrainConfig()
ABLATION = AblationConfig()


def describe_defaults(width: int = 78) -> str:
    """The defaults as `--option value` pairs, wrapped to `width` columns (what `make help` prints)."""
    lines = []
    for title, config in (("training", TRAIN), ("heads", HEAD), ("ablation", ABLATION)):
        line = f"  {title + ':':<10}"
        for f in dataclasses.fields(config):
            pair = f"--{f.name.replace('_', '-')} {getattr(config, f.name)}"
            if len(line) + 1 + len(pair) > width and line.strip() != f"{title}:":
                lines.append(line)
                line = " " * 12
            line += " " + pair
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":  # `make help`: python heads/config.py
    print(describe_defaults())

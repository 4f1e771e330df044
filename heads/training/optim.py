"""AdamW parameter groups from per-tensor `_optim` tags (the state-spaces convention).

A module marks a parameter with `param._optim = {"lr": ..., "weight_decay": ...}` (`heads.s4.S4` tags the SSM tensors
log_dt, A, B and P with lr 1e-3, weight decay 0). `param_groups(model)` puts every untagged trainable parameter in
one default group (lr, weight_decay) and each distinct tag in its own group, so
`torch.optim.AdamW(param_groups(model))` trains the paper's two regimes. Shared parameters appear once.
A module may also declare tags by parameter name in `module._optim_tags = {"log_dt": {...}}`: those survive
`copy.deepcopy` (which drops attributes set on a Parameter); a tag on the tensor itself wins.
"""

from __future__ import annotations

import torch.nn as nn


def param_groups(model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.01) -> list[dict]:
    """Return AdamW groups: [{"params": untagged, "lr": lr, "weight_decay": weight_decay}, one per distinct tag]."""
    by_name: dict[int, dict] = {}
    for module in model.modules():
        for name, tag in getattr(module, "_optim_tags", {}).items():
            param = getattr(module, name, None)
            if isinstance(param, nn.Parameter):
                by_name[id(param)] = tag
    default: list[nn.Parameter] = []
    tagged: dict[tuple, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for param in model.parameters():  # parameters() already de-duplicates shared tensors; `seen` guards anyway
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        tag = getattr(param, "_optim", None) or by_name.get(id(param))
        if tag:
            hp = {"lr": lr, "weight_decay": weight_decay, **tag}
            tagged.setdefault(tuple(sorted(hp.items())), []).append(param)
        else:
            default.append(param)
    groups = [{"params": default, "lr": lr, "weight_decay": weight_decay}] if default else []
    for key, params in tagged.items():
        groups.append({"params": params, **dict(key)})
    return groups

"""AdamW parameter groups from per-tensor `_optim` tags (the state-spaces convention).

A module marks a parameter with `param._optim = {"lr": ..., "weight_decay": ...}` (`heads.s4.S4` tags the SSM tensors
log_dt, A, B and P with lr 1e-3, weight decay 0). `param_groups(model)` puts every untagged trainable parameter in
one default group (lr, weight_decay) and each distinct tag in its own group, so
`torch.optim.AdamW(param_groups(model))` trains the paper's two regimes. Shared parameters appear once.
A module may also declare tags by parameter name in `module._optim_tags = {"log_dt": {...}}`: those survive
`copy.deepcopy` (which drops attributes set on a Parameter); a tag on the tensor itself wins.

With more than one group each carries a "name" (Lightning's LearningRateMonitor logs `lr-AdamW/<name>` instead of
`lr-AdamW/pg1`, `pg2`): the default group is "main", a tagged group takes its tag's "name" (`heads.s4.S4`'s SSM
tensors: "s4-ssm") or, without one, its settings ("lr-0.001-wd-0"); a repeated name gets a "-2", "-3" suffix.
"""

from __future__ import annotations

import torch.nn as nn


def param_groups(model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.01) -> list[dict]:
    """Return AdamW groups: [{"params": untagged, "lr": lr, "weight_decay": weight_decay}, one per distinct tag],
    each with a "name" when there are two or more."""
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
    if len(groups) > 1:
        names: set[str] = set()
        for group in groups:
            name = group.get("name") or ("main" if group["params"] is default else
                                         f"lr-{group['lr']:g}-wd-{group['weight_decay']:g}")
            group["name"] = next(n for i in range(1, len(groups) + 2)
                                 if (n := name if i == 1 else f"{name}-{i}") not in names)
            names.add(group["name"])
    return groups

"""Stable splits: a video's split depends only on its id and the seed, never on which other videos are listed.

Each video id gets a number u in [0, 1) from a hash of (seed, id) (SHA-256, first 8 bytes); fractions cut [0, 1) into
consecutive intervals in the order given (train 0.8, val 0.1, test 0.1: train [0, 0.8), val [0.8, 0.9), test
[0.9, 1)). Adding or removing videos therefore never moves an existing one, unlike a seeded shuffle of the current
list, where one added video can move every held-out one (and an old checkpoint then "validates" on videos it trained
on). Each class is split in the same proportions in expectation (a hash knows no classes). Only a set too small for a
split to receive any video (about 1 / fraction videos) lends that split the video whose u lies nearest its interval,
so that training still gets a val and a test split; only then can adding videos move one.
Standard library only, so that `import data` stays light.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from data.errors import UserError

T = TypeVar("T")

SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}  # the folder adapter's default draw


def unit_hash(video_id: str, seed: int = 0) -> float:
    """u in [0, 1) for `video_id` under `seed`: SHA-256 of "<seed>:<id>" (UTF-8), first 8 bytes / 2**64."""
    digest = hashlib.sha256(f"{int(seed)}:{video_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_fractions(fractions: dict[str, float]) -> list[tuple[str, float, float]]:
    """[(split, lo, hi)] consecutive intervals; UserError unless the fractions are >= 0 and sum to 1."""
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise UserError(f"Expected split fractions >= 0 that sum to 1, got {fractions}")
    intervals, lo = [], 0.0
    for name, fraction in fractions.items():
        intervals.append((name, lo, lo + fraction))
        lo += fraction
    return intervals


def draw(items: Sequence[T], seed: int, fractions: dict[str, float], key: Callable[[T], str] = str
         ) -> dict[str, list[T]]:
    """Split `items` by the stable hash of `key(item)` (a video id) into `fractions` (split name -> share).

    Returns split name -> items in their input order. A split of positive fraction that no item falls into takes
    the item nearest its interval from the largest split (when that has 2 or more), so tiny sets still get every
    split; only then can adding items move one.
    """
    intervals = _check_fractions(fractions)
    u = [unit_hash(key(item), seed) for item in items]
    chosen: dict[str, list[int]] = {name: [] for name in fractions}
    for i, value in enumerate(u):
        chosen[next((n for n, lo, hi in intervals if lo <= value < hi), intervals[-1][0])].append(i)
    for name, lo, hi in intervals:
        if chosen[name] or hi <= lo:
            continue
        largest = max(chosen, key=lambda n: len(chosen[n]))
        if len(chosen[largest]) < 2:
            continue
        nearest = min(chosen[largest], key=lambda i: (abs(min(max(u[i], lo), hi) - u[i]), u[i]))
        chosen[largest].remove(nearest)
        chosen[name].append(nearest)
    return {name: [items[i] for i in sorted(indices)] for name, indices in chosen.items()}


def hold_out(records: Sequence[T], fraction: float, seed: int, key: Callable[[T], str] = str
             ) -> tuple[list[T], list[T]]:
    """(kept, held out): the records whose stable hash falls in the last `fraction` of [0, 1) are held out.

    Used for the validation split of data sets without one (10 % of train): `draw` with {train: 1 - f, val: f}.
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"Expected a held-out fraction in (0, 1), got {fraction}")
    parts = draw(records, seed, {"train": 1.0 - fraction, "val": fraction}, key=key)
    return parts["train"], parts["val"]

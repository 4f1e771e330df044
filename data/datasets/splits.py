"""Stable splits: a video's split depends only on its id and the seed, never on which other videos are listed.

Each video id gets a number u in [0, 1) from a hash of (seed, id) (SHA-256, first 8 bytes); fractions cut [0, 1) into
consecutive intervals in the order given (train 0.8, val 0.1, test 0.1: train [0, 0.8), val [0.8, 0.9), test
[0.9, 1)). Adding or removing videos therefore never moves an existing one, unlike a seeded shuffle of the current list
(issue #20: one added video moved 5 of 5 held-out videos, and an old checkpoint "validated" on its training videos).

Draws are made per group (per class, for classification), so each class is split in the same proportions in
expectation. A group too small for the intervals to give a split any video (fewer than about 1 / fraction videos) lends
that split its video whose u lies nearest the split's interval, as long as the group has a video to spare; only such
tiny groups can see a video move when videos are added. Standard library only: `import data` stays light.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")

SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}  # the folder adapter's default draw


def unit_hash(video_id: str, seed: int = 0) -> float:
    """u in [0, 1) for `video_id` under `seed`: SHA-256 of "<seed>:<id>" (UTF-8), first 8 bytes / 2**64."""
    digest = hashlib.sha256(f"{int(seed)}:{video_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_fractions(fractions: dict[str, float]) -> list[tuple[str, float, float]]:
    """[(split, lo, hi)] consecutive intervals; ValueError unless the fractions are >= 0 and sum to 1."""
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ValueError(f"Expected split fractions >= 0 that sum to 1, got {fractions}")
    intervals, lo = [], 0.0
    for name, fraction in fractions.items():
        intervals.append((name, lo, lo + fraction))
        lo += fraction
    return intervals


def draw(items: Sequence[T], seed: int, fractions: dict[str, float], key: Callable[[T], str] = str,
         group: Callable[[T], Hashable] | None = None) -> dict[str, list[T]]:
    """Split `items` by the stable hash of `key(item)` (a video id) into `fractions` (split name -> share).

    Returns split name -> items in their input order. `group` (e.g. the label) draws each group on its own and
    guarantees, where the group has enough items, at least one item in every split of positive fraction.
    """
    intervals = _check_fractions(fractions)
    out: dict[str, list[T]] = {name: [] for name in fractions}
    groups: dict[Hashable, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(group(item) if group else None, []).append(index)
    assigned: dict[int, str] = {}
    for members in groups.values():
        u = {i: unit_hash(key(items[i]), seed) for i in members}
        chosen: dict[str, list[int]] = {name: [] for name in fractions}
        for i in members:
            name = next((n for n, lo, hi in intervals if lo <= u[i] < hi), intervals[-1][0])
            chosen[name].append(i)
        _fill_empty(chosen, u, intervals)
        for name, indices in chosen.items():
            for i in indices:
                assigned[i] = name
    for i in sorted(assigned):
        out[assigned[i]].append(items[i])
    return out


def _fill_empty(chosen: dict[str, list[int]], u: dict[int, float], intervals) -> None:
    """Give each empty split of positive width the spare item (from a split holding 2 or more) nearest its interval."""
    for name, lo, hi in intervals:
        if chosen[name] or hi <= lo:
            continue
        spare = [(abs(min(max(u[i], lo), hi) - u[i]), u[i], i, other)
                 for other, indices in chosen.items() if len(indices) >= 2 for i in indices]
        if not spare:
            continue
        _, _, i, other = min(spare)
        chosen[other].remove(i)
        chosen[name].append(i)


def hold_out(records: Sequence[T], fraction: float, seed: int, key: Callable[[T], str] = str,
             group: Callable[[T], Hashable] | None = None) -> tuple[list[T], list[T]]:
    """(kept, held out): the records whose stable hash falls in the last `fraction` of [0, 1) are held out.

    Used for the validation split of data sets without one (10 % of train): `draw` with {train: 1 - f, val: f}.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"Expected a held-out fraction in (0, 1), got {fraction}")
    parts = draw(records, seed, {"train": 1.0 - fraction, "val": fraction}, key=key, group=group)
    return parts["train"], parts["val"]


def split_digest(ids: Iterable[str]) -> str:
    """Order-free fingerprint of a set of video ids (SHA-256 of the sorted ids, first 16 hex digits)."""
    digest = hashlib.sha256()
    for video_id in sorted(set(ids)):
        digest.update(video_id.encode() + b"\n")
    return digest.hexdigest()[:16]

"""The clip protocols as segment indices: which segments of a cached video one training or evaluation clip reads.

  ("window", W)  LVU: training reads one random window of W consecutive segments; evaluation reads every window
                 (`window_starts`, stride 1 by default, the last one ending at the end) and averages the softmax.
  ("subset", K)  Breakfast, COIN, folder, synthetic: training reads K random segments in temporal order
                 (`random_subset`); evaluation reads K uniformly spaced ones (`uniform_indices`).
Videos shorter than a clip repeat their last segment (windows) or repeat segments (subsets). numpy only, so that
prediction (predict/) applies the same protocol without importing Lightning.
"""

from __future__ import annotations

import numpy as np


def window_starts(num_segments: int, window: int, stride: int = 1) -> list[int]:
    """Start indices of every window of `window` segments (stride `stride`), the last one ending at the end."""
    last = max(0, num_segments - window)
    starts = list(range(0, last + 1, max(1, stride)))
    if starts[-1] != last:
        starts.append(last)
    return starts


def window_indices(num_segments: int, start: int, window: int) -> np.ndarray:
    """Segment indices of one window; past the end the last segment repeats."""
    return np.minimum(np.arange(start, start + window), num_segments - 1)


def uniform_indices(num_segments: int, k: int) -> np.ndarray:
    """k uniformly spaced segment indices (centres of k equal bins); repeats when num_segments < k."""
    return np.floor((np.arange(k) + 0.5) * num_segments / k).astype(np.int64)


def random_subset(num_segments: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k random segment indices in temporal order (distinct when the video has at least k segments)."""
    if num_segments >= k:
        return np.sort(rng.choice(num_segments, size=k, replace=False))
    return np.sort(rng.integers(0, num_segments, size=k))

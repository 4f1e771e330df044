"""Apply a trained head to one video's cached tokens with the data set's evaluation protocol (what `make eval` does).

* ("subset", K) (Breakfast, COIN, folder): one clip of K uniformly spaced segments (`uniform_indices`).
* ("window", W) (LVU): every window of W consecutive segments, stride `eval_stride` (1), the last one ending at the
  end (`window_starts`, `window_indices`); the softmax (regression: the prediction) is averaged over the windows.
Windows are read from the cache one block at a time (`block` windows share one contiguous read of W + block - 1
segments), so memory holds one batch of windows whatever the video's length. Axis letters: B windows, T segments,
P tokens per segment, D channels, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from heads.training.clips import uniform_indices, window_indices, window_starts


@dataclass
class VideoScores:
    """The head's answer for one video: mean scores (C,) (probabilities; regression: (1,) the value) and, per
    evaluated clip, its span in seconds and scores."""

    scores: np.ndarray
    duration_s: float
    windows: list[tuple[float, float, np.ndarray]] = field(default_factory=list)


def segment_bounds(num_segments: int, duration: float, fps: float | None) -> np.ndarray:
    """(T + 1,) segment boundaries in seconds: segment i covers [i / fps, (i + 1) / fps) at a fixed rate, else an
    equal share of the duration (extract.video.Sampling's plan)."""
    edges = np.arange(num_segments + 1, dtype=np.float64)
    return np.minimum(edges / fps, duration) if fps else edges * (duration / max(num_segments, 1))


@torch.no_grad()
def score_video(head: torch.nn.Module, store, video_id: str, clip: tuple[str, int], *, regression: bool,
                fps: float | None, stride: int = 1, block: int = 16) -> VideoScores:
    """Scores of `video_id` in `store` under `clip`; `head` maps (B, T', P, D) -> (B, C) and is in eval mode."""
    kind, size = clip
    total = store.num_segments(video_id)
    duration = float(store.video_attrs(video_id).get("duration") or 0.0)
    bounds = segment_bounds(total, duration, fps)

    device = next(head.parameters()).device

    def scores_of(tokens: np.ndarray) -> np.ndarray:  # (B, T', P, D) float16 -> (B, C)
        out = head(torch.from_numpy(np.ascontiguousarray(tokens)).to(device)).float()  # (B, C)
        return (out if regression else out.softmax(dim=-1)).cpu().numpy().astype(np.float64)

    if kind == "subset":
        tokens = store.read(video_id, uniform_indices(total, size))[None]  # (1, K, P, D)
        scores = scores_of(tokens)[0]
        return VideoScores(scores, duration, [(0.0, float(bounds[-1]), scores)])
    starts = window_starts(total, size, stride)
    windows, sums = [], None
    for first in range(0, len(starts), block):
        chunk = starts[first:first + block]
        low = chunk[0]
        high = min(total, chunk[-1] + size)
        rows = store.read(video_id, slice(low, high))  # (rows, P, D): the block's segments, read once
        index = np.stack([window_indices(total, s, size) - low for s in chunk])  # (B, W)
        batch = scores_of(rows[index])  # (B, C)
        sums = batch.sum(0) if sums is None else sums + batch.sum(0)
        for s, row in zip(chunk, batch):
            windows.append((float(bounds[s]), float(bounds[min(s + size, total)]), row))
    return VideoScores(sums / len(starts), duration, windows)

"""Stage 1, sampling: which instants of a video become segments, planned in seconds of the video stream's own clock
(so variable frame rate is handled), and the error every unusable video raises (`VideoError`).

ViS4mer (Islam & Bertasius, ECCV 2022, Sec. 4) samples LVU at 1 frame/s and Breakfast/COIN as uniform segments. Two
sampling modes:

* ``fps=f``: segment i covers [i/f, (i+1)/f); only full segments count, T = floor(duration * f).
* ``segments=N``: N equal segments over the whole video, T = N (frames repeat when the video has fewer than N).

and a third, the ViS4mer code's LVU sampling (its extract_vit_features_vit.py): ``durations={video id: d}``, d the
whole seconds its lvu_durations.csv lists; of n frames it takes frame ``int(n / d * i)`` for i < d, then the last
(T = d + 1), at the times ``(index + 1/2) / rate`` (README, "Differences from the paper's code").

With ``frames_per_segment=k`` each segment gets k targets at the centres of k equal sub-bins; an image encoder
averages their tokens. For a video encoder (``frame_interval=dt`` seconds) the k targets are one *clip* around the
segment's centre, dt apart, the window shifted inside the video where it would cross an end (clips of neighbouring
segments may overlap; see ``Sampling.targets``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from data.errors import UserError


class VideoError(Exception):
    """A video that cannot be extracted; ``kind`` names the failure, ``reason`` says what to do."""

    KINDS = (
        "missing", "empty_file", "unreadable", "cannot_open", "no_video_stream", "too_short", "decode_error",
        "truncated",
    )

    def __init__(self, kind: str, reason: str):
        assert kind in self.KINDS, kind
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class Sampling:
    """How frames are chosen: exactly one of ``fps``, ``segments`` or ``durations`` (video id -> listed whole seconds,
    the paper's LVU sampling: one frame each, see the module docstring); ``frames_per_segment`` frames per segment.

    ``frame_interval`` (seconds, video encoders only): the segment's frames form one clip, that far apart, around the
    segment's centre, instead of filling the segment's sub-bins.
    """

    fps: float | None = None
    segments: int | None = None
    frames_per_segment: int = 1
    durations: Mapping[str, int] | None = field(default=None, compare=False, repr=False)
    durations_source: str = "lvu_durations.csv"  # recorded in the cache's provenance with `durations`
    frame_interval: float | None = None

    def __post_init__(self):
        modes = sum(x is not None for x in (self.fps, self.segments, self.durations))
        if modes != 1:
            raise UserError(f"Expected exactly one of FPS, SEGMENTS or listed durations, got fps={self.fps}, "
                             f"segments={self.segments}, durations={'given' if self.durations is not None else None}")
        if self.durations is not None and int(self.frames_per_segment) != 1:
            raise UserError(f"Expected FRAMES_PER_SEGMENT=1 with the paper's LVU sampling (one frame per listed "
                             f"second), got {self.frames_per_segment}")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise UserError(f"Expected FPS > 0 (e.g. FPS=1), got {self.fps}")
        if self.segments is not None and int(self.segments) < 1:
            raise UserError(f"Expected SEGMENTS >= 1 (e.g. SEGMENTS=128), got {self.segments}")
        if int(self.frames_per_segment) < 1:
            raise UserError(f"Expected FRAMES_PER_SEGMENT >= 1, got {self.frames_per_segment}")
        if self.frame_interval is not None and not (self.frame_interval > 0 and math.isfinite(self.frame_interval)):
            raise UserError(f"Expected a clip frame interval > 0 seconds (FRAME_STRIDE >= 1), "
                            f"got {self.frame_interval}")
        if self.frame_interval is not None and self.durations is not None:
            raise UserError("the paper's LVU sampling takes single frames; a video encoder's clips need FPS= or "
                            "SEGMENTS=")

    def as_attrs(self) -> dict:
        """The provenance attrs of this sampling: ``fps``, ``segments`` or ``durations`` (the file the durations came
        from), ``frames_per_segment``, and a video encoder's ``frame_interval``."""
        if self.durations is not None:
            key = {"durations": str(self.durations_source)}
        else:
            key = {"fps": float(self.fps)} if self.fps is not None else {"segments": int(self.segments)}
        clip = {} if self.frame_interval is None else {"frame_interval": float(self.frame_interval)}
        return {**key, "frames_per_segment": int(self.frames_per_segment), **clip}

    def targets(self, duration: float, num_frames: int | None = None, rate: float | None = None,
                listed: int | None = None) -> np.ndarray:
        """Target times in seconds, shape (T, k), for a video of ``duration`` seconds; raises VideoError(too_short).
        The paper's LVU sampling (``durations``) also needs the frame ``rate`` (frames/s), the video's ``listed``
        duration (whole seconds) and its frame count ``num_frames`` (else round(duration * rate)).

        Without ``frame_interval`` they ascend row by row. With it, row t is a clip of k times ``frame_interval``
        apart centred on segment t's centre; a clip that would start before 0 or end after ``duration`` is shifted
        inside the video, and in a video shorter than the clip the times past the end are clamped to it (the last
        frame repeats, as PySlowFast's Kinetics loader clamps its frame indices). Rows may then overlap.
        """
        k = int(self.frames_per_segment)
        if not duration > 0:
            raise VideoError("too_short", f"the video stream lasts {duration:.3f} s; nothing to sample")
        if num_frames is not None and num_frames < 2:
            raise VideoError(
                "too_short",
                f"the video has {num_frames} frame(s); at least 2 are needed (a still image is not a video)",
            )
        if self.durations is not None:
            return self._listed_targets(duration, num_frames, rate, listed)
        if self.fps is not None:
            seg = 1.0 / float(self.fps)
            count = int(math.floor(duration * float(self.fps) + 1e-6))
            if count < 1:
                raise VideoError(
                    "too_short",
                    f"the video lasts {duration:.3f} s, shorter than one segment ({seg:.3f} s at FPS={self.fps:g}); "
                    "lower FPS or drop the video",
                )
        else:
            count = int(self.segments)
            seg = duration / count
        starts = np.arange(count, dtype=np.float64)[:, None] * seg  # (T, 1)
        if self.frame_interval is None:
            offsets = (np.arange(k, dtype=np.float64)[None, :] + 0.5) * (seg / k)  # (1, k)
            return starts + offsets  # (T, k)
        dt = float(self.frame_interval)
        span = k * dt  # the clip's extent: k frames, each standing for dt seconds
        first = np.clip(starts + 0.5 * seg - 0.5 * span, 0.0, max(duration - span, 0.0))  # (T, 1) window starts
        times = first + (np.arange(k, dtype=np.float64)[None, :] + 0.5) * dt  # (T, k)
        return np.minimum(times, np.nextafter(duration, 0.0))  # (T, k)

    @staticmethod
    def _listed_targets(duration: float, num_frames: int | None, rate: float | None, listed: int | None) -> np.ndarray:
        """(d + 1, 1) times of the frames int(n / d * i), i < d, and n - 1 (the ViS4mer code's LVU sampling); n >= 2
        and duration > 0 were checked by `targets`."""
        if listed is None or not rate:  # the caller's slip: SampledVideo passes probe's rate (> 0) and listed=
            raise ValueError(f"the paper's LVU sampling needs listed= and rate=, got listed={listed}, rate={rate}")
        n = int(num_frames) if num_frames is not None else max(2, int(round(duration * rate)))  # checked >= 2
        if int(listed) < 1:
            raise VideoError("too_short", f"lvu_durations.csv lists {listed} s for this video: the paper's sampling "
                                          "needs at least 1 s; drop the video or extract with FPS=1")
        d = int(listed)
        index = [int(n / d * i) for i in range(d)] + [n - 1]  # the ViS4mer code's float expression, verbatim
        return ((np.asarray(index, dtype=np.float64) + 0.5) / float(rate))[:, None]  # (d + 1, 1)

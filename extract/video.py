"""Stage 1, decoding: open a video with PyAV and yield only the sampled frames, resized to RGB inside FFmpeg.

ViS4mer (Islam & Bertasius, ECCV 2022, Sec. 4) samples LVU at 1 frame/s and Breakfast/COIN as uniform segments. Two
sampling modes, both planned in seconds of the video stream's own clock (so variable frame rate is handled):

* ``fps=f``: segment i covers [i/f, (i+1)/f); only full segments count, T = floor(duration * f).
* ``segments=N``: N equal segments over the whole video, T = N (frames repeat when the video has fewer than N).

With ``frames_per_segment=k`` each segment gets k targets at the centres of k equal sub-bins; the encoder averages
their tokens. The frame chosen for a target time t is the one *displayed* at t (the last frame whose timestamp is
<= t). Decoding is sequential and threaded; only the sampled frames are converted (``frame.reformat``: scaling and
RGB conversion in swscale, see ``SampledVideo._rgb``), so memory holds one decoded frame plus the converted
samples of the current batch.

A video that cannot be used raises :class:`VideoError` whose ``kind`` is one of ``VideoError.KINDS``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np


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
    """How frames are chosen: exactly one of ``fps`` or ``segments``; ``frames_per_segment`` frames per segment."""

    fps: float | None = None
    segments: int | None = None
    frames_per_segment: int = 1

    def __post_init__(self):
        if (self.fps is None) == (self.segments is None):
            raise ValueError(f"Expected exactly one of FPS or SEGMENTS, got fps={self.fps}, segments={self.segments}")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"Expected FPS > 0 (e.g. FPS=1), got {self.fps}")
        if self.segments is not None and int(self.segments) < 1:
            raise ValueError(f"Expected SEGMENTS >= 1 (e.g. SEGMENTS=128), got {self.segments}")
        if int(self.frames_per_segment) < 1:
            raise ValueError(f"Expected FRAMES_PER_SEGMENT >= 1, got {self.frames_per_segment}")

    def as_attrs(self) -> dict:
        """The provenance attrs of this sampling (``fps`` or ``segments``, and ``frames_per_segment``)."""
        key = {"fps": float(self.fps)} if self.fps is not None else {"segments": int(self.segments)}
        return {**key, "frames_per_segment": int(self.frames_per_segment)}

    def targets(self, duration: float, num_frames: int | None = None) -> np.ndarray:
        """Target times in seconds, shape (T, k), for a video of ``duration`` seconds; raises VideoError(too_short)."""
        k = int(self.frames_per_segment)
        if not duration > 0:
            raise VideoError("too_short", f"the video stream lasts {duration:.3f} s; nothing to sample")
        if num_frames is not None and num_frames < 2:
            raise VideoError(
                "too_short",
                f"the video has {num_frames} frame(s); at least 2 are needed (a still image is not a video)",
            )
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
        offsets = (np.arange(k, dtype=np.float64)[None, :] + 0.5) * (seg / k)  # (1, k)
        return starts + offsets  # (T, k)


@dataclass
class VideoInfo:
    """What the container says about the video stream (times in seconds, relative to the stream start)."""

    duration: float
    start: float
    rate: float
    width: int
    height: int
    codec: str
    num_frames: int | None  # None when unknown without decoding


def _precheck(path: Path) -> None:
    """Fail early, with a readable reason, on files FFmpeg would only describe cryptically."""
    if not path.exists():
        raise VideoError("missing", f"no file at {path}; download it or fix DATA_ROOT")
    if path.is_dir():
        raise VideoError("cannot_open", f"{path} is a folder, not a video file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except PermissionError as exc:
        raise VideoError("unreadable", f"permission denied reading {path}; fix with `chmod a+r {path}`") from exc
    if not head:
        raise VideoError("empty_file", f"{path} has 0 bytes (an interrupted download?); download it again")


def _open(path: Path):
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except PermissionError as exc:
        raise VideoError("unreadable", f"permission denied reading {path}; fix with `chmod a+r {path}`") from exc
    except (av.FFmpegError, UnicodeDecodeError, OSError) as exc:
        if _mp4_without_index(path):
            raise VideoError(
                "truncated",
                f"{path.name} starts like an mp4 but has no index (moov atom): the download or recording stopped "
                "before the end; download it again",
            ) from exc
        raise VideoError(
            "cannot_open",
            f"FFmpeg cannot open {path.name} as a video ({_short(exc)}); the file is corrupt or not a video",
        ) from exc
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        container.close()
        raise VideoError("no_video_stream", f"{path.name} has no video stream (streams: {kinds})")
    return container


def _mp4_without_index(path: Path) -> bool:
    """An ISO-BMFF file (ftyp box first) with no 'moov' box anywhere: cut before its index was written."""
    try:
        with open(path, "rb") as handle:
            if handle.read(12)[4:8] != b"ftyp":
                return False
            tail = b""
            while chunk := handle.read(1 << 20):
                if b"moov" in tail + chunk:
                    return False
                tail = chunk[-3:]
    except OSError:
        return False
    return True


def _short(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) if isinstance(exc, av.FFmpegError) else None
    text = " ".join(str(text or exc).split())
    return text[:200] or type(exc).__name__


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read the video stream's duration, start, frame rate and size without decoding.

    Duration comes from the stream header; when it is missing (Matroska, raw streams) from the container when the video
    is its only stream; otherwise from one demuxing pass over the video packets (no decoding).
    """
    path = Path(path)
    _precheck(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        tb = float(stream.time_base) if stream.time_base else None
        rate = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0) or 25.0
        start = float(stream.start_time * tb) if (stream.start_time is not None and tb) else 0.0
        num_frames = int(stream.frames) or None
        duration = None
        if stream.duration and tb:
            duration = float(stream.duration * tb)
        elif container.duration and len(container.streams) == 1:
            duration = container.duration / av.time_base - start
        codec = stream.codec_context.name
        width, height = stream.codec_context.width, stream.codec_context.height
    finally:
        container.close()
    if duration is None:
        duration, num_frames = _demux_duration(path, rate)
    if num_frames is not None and num_frames < 1:
        num_frames = None
    return VideoInfo(float(duration), start, rate, width, height, codec, num_frames)


def _demux_duration(path: Path, rate: float) -> tuple[float, int]:
    """Duration and packet count of the video stream from its packets (timestamps, else count / rate)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        tb = float(stream.time_base) if stream.time_base else 0.0
        first, end, count = None, None, 0
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet
                continue
            count += 1
            if packet.pts is not None and tb:
                t0 = packet.pts * tb
                t1 = t0 + (packet.duration * tb if packet.duration else 1.0 / rate)
                first = t0 if first is None else min(first, t0)
                end = t1 if end is None else max(end, t1)
    except av.FFmpegError as exc:
        raise VideoError("decode_error", f"demuxing failed ({_short(exc)}); the file is corrupt") from exc
    finally:
        container.close()
    if end is not None:
        return end - first, count
    return count / rate, count


class SampledVideo:
    """The sampled frames of one video: ``for index, time, rgb in SampledVideo(...)`` (rgb: (H, W, 3) uint8).

    ``targets`` (T, k) are the planned times; items come in target order (index = t * k + j), one per target.
    ``times`` fills with the timestamps of the frames actually used. Iterating to the end checks that the decoded
    frames reached the end the container promised (else VideoError ``truncated``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sampling: Sampling,
        size: int | tuple[int, int] = 224,
        interpolation: str = "BILINEAR",
        threads: int = 0,
    ):
        self.path = Path(path)
        self.info = probe(self.path)
        self.sampling = sampling
        self.height, self.width = (size, size) if isinstance(size, int) else size
        self.interpolation = interpolation
        self.threads = threads
        self.targets = sampling.targets(self.info.duration, self.info.num_frames)  # (T, k)
        self.times = np.full(self.targets.size, np.nan)  # (T*k,)

    @property
    def num_segments(self) -> int:
        return self.targets.shape[0]

    def __len__(self) -> int:
        return self.targets.size

    def _rgb(self, frame) -> np.ndarray:
        # Two swscale passes: YUV -> RGB at the source size, then an antialiased bilinear resize in RGB. This matches
        # "decode to RGB, then ViTImageProcessor" within a grey level; one combined pass scales the subsampled chroma
        # planes on their own and differs by several levels on small outputs. Only sampled frames pay for it.
        if frame.format.name != "rgb24":
            frame = frame.reformat(format="rgb24")
        if (frame.height, frame.width) != (self.height, self.width):
            frame = frame.reformat(width=self.width, height=self.height, interpolation=self.interpolation)
        return frame.to_ndarray()  # (H, W, 3) uint8

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        targets = self.targets.reshape(-1)  # (T*k,) ascending
        n = targets.size
        container = _open(self.path)
        j, decoded, last_time = 0, 0, None
        prev, prev_time, prev_rgb = None, None, None
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.threads
            rate = self.info.rate
            for frame in container.decode(stream):
                t = frame.time
                t = (t - self.info.start) if t is not None else decoded / rate
                decoded += 1
                # Targets strictly before this frame are displayed by the previous one (or this one, if first).
                while j < n and targets[j] < t:
                    if prev is None:
                        prev, prev_time, prev_rgb = frame, t, None
                    if prev_rgb is None:
                        prev_rgb = self._rgb(prev)
                    self.times[j] = prev_time
                    yield j, prev_time, prev_rgb
                    j += 1
                last_time = t
                if j >= n:
                    break
                if prev is not frame:
                    prev, prev_time, prev_rgb = frame, t, None
        except av.FFmpegError as exc:
            where = f"{last_time:.2f} s" if last_time is not None else "the first frame"
            raise VideoError(
                "decode_error", f"decoding failed at {where} ({_short(exc)}); the file is corrupt"
            ) from exc
        finally:
            container.close()
        if j < n:
            if prev is None:
                raise VideoError("decode_error", f"no frame of {self.path.name} could be decoded; the file is corrupt")
            if decoded < 2 and self.info.num_frames is None:
                raise VideoError("too_short", "the video has 1 frame; at least 2 are needed (a still image)")
            # Frames must reach the last target, give or take two frame intervals (the last frame's display time).
            slack = 2.0 / self.info.rate + 1e-3
            if targets[-1] > last_time + slack:
                raise VideoError(
                    "truncated",
                    f"frames stop at {last_time:.2f} s but the video should last {self.info.duration:.2f} s "
                    "(an interrupted download?); download it again",
                )
            if prev_rgb is None:
                prev_rgb = self._rgb(prev)
            while j < n:
                self.times[j] = prev_time
                yield j, prev_time, prev_rgb
                j += 1

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """All sampled frames at once (tests, small videos): frames (T*k, H, W, 3) uint8 and times (T*k,)."""
        frames = [rgb for _, _, rgb in self]
        return np.stack(frames), self.times.copy()

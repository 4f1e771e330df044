"""Stage 1, decoding: open a video with PyAV and yield only the sampled frames, resized to RGB inside FFmpeg.

Which instants are sampled (``Sampling``: fps, segments, the paper's LVU durations, clips for video encoders) and
``VideoError`` live in `extract.sampling` and are re-exported here. The frame chosen for a target time t is the one
*displayed* at t (the last frame whose timestamp is <= t). Decoding is sequential and threaded; only the sampled
frames are converted (``frame.reformat``: scaling and RGB conversion in swscale, then the processor's centre crop,
``extract.resize``), so memory holds one decoded frame plus the converted samples of the current batch (and, for
overlapping clips, the frames decoded ahead of their clip's turn).

Real-world files, each handled by its kind (see the README's bad-video table):

* **Several video streams** (cover art, thumbnails, other angles): the stream FFmpeg's ``av_find_best_stream``
  chooses, never a picture (attached picture, still image or thumbnail disposition, or a single packet); see
  :func:`video_stream`.
* **Display matrix** (phone videos recorded sideways, mirrored front cameras): every sampled frame is turned and
  mirrored as FFmpeg's display-matrix side data says, before it is resized, as players and ``ffmpeg`` show it; see
  `extract.orientation`. The matrix is kept in ``SampledVideo.display_matrix``.
* **Truncation** is decided from the packets: the video is complete when its packets reach the end the container
  states (the last packet's pts + duration against the stream duration; for AVI, the frame count in its header),
  not from the last frame's timestamp, so a slideshow whose last frame is held for seconds is complete (the
  targets after its last frame get the frame on screen at that time). A demuxer error is a truncation too.

A video that cannot be used raises :class:`VideoError` whose ``kind`` is one of ``VideoError.KINDS``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from extract.lengths import PacketSpan, asf_play_duration, counts_frames
from extract.orientation import IDENTITY_MATRIX, apply_orientation, display_matrix, orientation
from extract.resize import Resize
from extract.sampling import Sampling, VideoError


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
    stream_index: int = 0  # the container's index of the video stream used (see video_stream)


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


# Dispositions of streams that hold a picture, not a video (FFmpeg's AV_DISPOSITION_*).
_PICTURE_DISPOSITIONS = (
    av.stream.Disposition.attached_pic | av.stream.Disposition.still_image | av.stream.Disposition.timed_thumbnails
)


def video_stream(container, packets: dict[int, int] | None = None):
    """The video stream to sample: FFmpeg's own choice (``av_find_best_stream``), never a picture stream.

    ``av_find_best_stream`` ranks by disposition (default first), then by whether the stream had several frames
    while probing, bit rate and frame count; it can still pick a one-frame thumbnail marked ``default`` (muxers mark
    the first stream so). A picture is a stream with the attached_pic, still_image or timed_thumbnails disposition,
    or one that states (``frames``) or holds (``packets``: stream index -> packet count, counted by the caller)
    a single frame. When FFmpeg's choice is a picture, the next stream in FFmpeg's own order (disposition, bit
    rate, stream order) that is not one is used. Returns None when there is no video stream.
    """
    videos = list(container.streams.video)
    if not videos:
        return None
    counts = packets or {}

    def is_picture(stream) -> bool:
        count = counts.get(stream.index, stream.frames or None)
        return bool(stream.disposition & _PICTURE_DISPOSITIONS) or count == 1

    best = container.streams.best("video")
    if best is not None and not is_picture(best):
        return best
    moving = [s for s in videos if not is_picture(s)]
    if not moving:
        return best or videos[0]

    def rank(stream) -> tuple:
        disposition = stream.disposition
        impaired = av.stream.Disposition.hearing_impaired | av.stream.Disposition.visual_impaired
        score = int(not disposition & impaired) + int(bool(disposition & av.stream.Disposition.default))
        return score, int(stream.codec_context.bit_rate or 0)

    return max(moving, key=rank)  # max keeps the first of equals, as FFmpeg does


def _count_packets(path: Path, enough: int = 500) -> dict[int, int]:
    """Packets per video stream, demuxed (not decoded) until every video stream has shown two of them, or for
    ``enough`` packets (muxers interleave streams by time, so by then a stream with one packet is a picture).
    Only files with several video streams pay for it."""
    container = _open(path)
    streams = list(container.streams.video)
    counts = {s.index: 0 for s in streams}
    try:
        for number, packet in enumerate(container.demux(*streams)):
            if packet.size:
                counts[packet.stream.index] += 1
            if number >= enough or min(counts.values()) >= 2:
                break
    except av.FFmpegError:
        pass  # a damaged file: the counts so far tell pictures from videos; decoding reports the damage
    finally:
        container.close()
    return counts


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read the video stream's duration, start, frame rate and size without decoding.

    Duration comes from the stream header; when it is missing (Matroska, raw streams) from the container when the video
    is its only stream; otherwise from one demuxing pass over the video packets (no decoding). Containers whose header
    states the length in a way FFmpeg drops when the file is cut are read as they state it: AVI (the frame count)
    and ASF/WMV (the play duration). MPEG program and transport streams (mpg, vob, ts) state no length at all, so a
    cut one is the shorter video FFmpeg sees.
    """
    path = Path(path)
    _precheck(path)
    container = _open(path)
    try:
        counts = _count_packets(path) if len(container.streams.video) > 1 else None
        stream = video_stream(container, counts)
        tb = float(stream.time_base) if stream.time_base else None
        rate = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0) or 25.0
        start = float(stream.start_time * tb) if (stream.start_time is not None and tb) else 0.0
        num_frames = int(stream.frames) or None
        duration = None
        if num_frames and tb and counts_frames(container):
            # AVI: one chunk per tick of 1/rate, and the header states the frame count. FFmpeg's own duration is
            # an estimate from the file size when the index at the end of the file is missing (a cut file).
            duration = num_frames * tb
        elif stream.duration and tb:
            duration = float(stream.duration * tb)
        elif "asf" in container.format.name.split(",") and (stated := asf_play_duration(path)) is not None:
            duration = stated - start  # FFmpeg leaves the stream's duration unset when the file is shorter than stated
        elif container.duration and len(container.streams) == 1:
            duration = container.duration / av.time_base - start
        codec = stream.codec_context.name
        width, height = stream.codec_context.width, stream.codec_context.height
        index = stream.index
    finally:
        container.close()
    if duration is None:
        duration, num_frames = _demux_duration(path, rate, index)
    if num_frames is not None and num_frames < 1:
        num_frames = None
    return VideoInfo(float(duration), start, rate, width, height, codec, num_frames, index)


def _demux_duration(path: Path, rate: float, index: int) -> tuple[float, int]:
    """Duration and packet count of video stream ``index`` from its packets (timestamps, else count / rate)."""
    container = _open(path)
    try:
        stream = container.streams[index]
        packets = PacketSpan(stream, rate)
        for packet in container.demux(stream):
            packets.add(packet)
    except av.FFmpegError as exc:
        raise VideoError("decode_error", f"demuxing failed ({_short(exc)}); the file is corrupt") from exc
    finally:
        container.close()
    return packets.length(), packets.count


class SampledVideo:
    """The sampled frames of one video: ``for index, time, rgb in SampledVideo(...)`` (rgb: (H, W, 3) uint8).

    ``targets`` (T, k) are the planned times; items come in target order (index = t * k + j), one per target, also
    when overlapping clips put them out of time order (one decoding pass; a frame needed by several targets is
    converted once). ``times`` fills with the timestamps of the frames actually used, ``display_matrix`` with the
    display matrix applied to them (FFmpeg's 9 int32; the identity when the file has none). Iterating to the end
    checks that the packets reached the end the container states (else VideoError ``truncated``) and that the decoder
    turned them into frames (else ``decode_error``). ``size`` is an exact output size or a ``Resize`` plan (resize,
    then centre crop).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sampling: Sampling,
        size: int | tuple[int, int] | Resize = 224,
        interpolation: str = "BILINEAR",
        threads: int = 0,
        listed: int | None = None,
    ):
        self.path = Path(path)
        self.info = probe(self.path)
        self.sampling = sampling
        self.resize = size if isinstance(size, Resize) else Resize.exact(size, interpolation)
        self.height, self.width = self.resize.output
        self.threads = threads
        self.targets = sampling.targets(self.info.duration, self.info.num_frames, self.info.rate, listed)  # (T, k)
        self.times = np.full(self.targets.size, np.nan)  # (T*k,)
        self.display_matrix: tuple[int, ...] | None = None

    @property
    def num_segments(self) -> int:
        return self.targets.shape[0]

    def attrs(self) -> dict:
        """The per-video attrs the cache records once the frames are read: the display matrix applied (9 int32,
        the identity when the file has none) and the index of the video stream used."""
        return {"display_matrix": list(self.display_matrix or IDENTITY_MATRIX),
                "video_stream": int(self.info.stream_index)}

    def __len__(self) -> int:
        return self.targets.size

    def _rgb(self, frame) -> np.ndarray:
        # Two swscale passes: YUV -> RGB at the source size, then an antialiased bilinear resize in RGB. This matches
        # "decode to RGB, then ViTImageProcessor" within a grey level; one combined pass scales the subsampled chroma
        # planes on their own and differs by several levels on small outputs. Only sampled frames pay for it.
        # Between the two, the picture is turned as the display matrix says (lossless: a strided view + one copy).
        matrix = display_matrix(frame)
        if self.display_matrix is None:
            self.display_matrix = matrix
        turn = orientation(matrix)
        if frame.format.name != "rgb24":
            frame = frame.reformat(format="rgb24")
        if any(turn):
            rgb = apply_orientation(frame.to_ndarray(), turn)  # (H', W', 3): the displayed picture
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        height, width = self.resize.resized_shape(frame.height, frame.width)
        if (frame.height, frame.width) != (height, width):
            frame = frame.reformat(width=width, height=height, interpolation=self.resize.interpolation)
        return np.ascontiguousarray(self.resize.crop_array(frame.to_ndarray()))  # (H, W, 3) uint8

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        flat = self.targets.reshape(-1)  # (T*k,)
        order = np.argsort(flat, kind="stable")  # the identity whenever the targets ascend (all but clips)
        ahead: dict[int, tuple[float, np.ndarray]] = {}  # frames of later clips decoded before an earlier clip ends
        next_index = 0
        for rank, time, rgb in self._in_time_order(flat[order]):
            index = int(order[rank])
            self.times[index] = time
            ahead[index] = (time, rgb)
            while next_index in ahead:
                time, rgb = ahead.pop(next_index)
                yield next_index, time, rgb
                next_index += 1

    def _in_time_order(self, targets: np.ndarray) -> Iterator[tuple[int, float, np.ndarray]]:
        """(rank, frame time, rgb) for each of the ascending ``targets`` (n,), in that order; one decoding pass."""
        n = targets.size
        container = _open(self.path)
        j, decoded, last_time = 0, 0, None
        prev, prev_time, prev_rgb = None, None, None
        demux_error = decode_error = packets = None
        rate = self.info.rate
        try:
            stream = container.streams[self.info.stream_index]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.threads
            packets = PacketSpan(stream, rate)
            demuxed = container.demux(stream)
            while j < n:
                try:
                    packet = next(demuxed)
                except StopIteration:
                    break
                except av.FFmpegError as exc:  # the container cannot be read on: judged with the packets below
                    demux_error = exc
                    break
                packets.add(packet)
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    decode_error = exc
                    break
                for frame in frames:
                    t = frame.time
                    t = (t - self.info.start) if t is not None else decoded / rate
                    decoded += 1
                    # Targets strictly before this frame are displayed by the previous one (or this one, if first).
                    while j < n and targets[j] < t:
                        if prev is None:
                            prev, prev_time, prev_rgb = frame, t, None
                        if prev_rgb is None:
                            prev_rgb = self._rgb(prev)
                        yield j, prev_time, prev_rgb
                        j += 1
                    last_time = t
                    if j >= n:
                        break
                    if prev is not frame:
                        prev, prev_time, prev_rgb = frame, t, None
            if decode_error is not None:  # a damaged packet: is it the cut end of the file, or damage inside?
                try:
                    for packet in demuxed:
                        packets.add(packet)
                except av.FFmpegError as exc:
                    demux_error = exc
        except av.FFmpegError as exc:
            decode_error = exc
        finally:
            container.close()
        if j == n:
            return
        if packets is None:
            raise VideoError("decode_error", f"FFmpeg cannot decode {self.path.name} ({_short(decode_error)})")
        # The decoder stopped before the last target. The video is complete when its packets reach the end the
        # container states (the last frame is then on screen until that end); a decoder error at a cut is the cut.
        slack = 2.0 / rate + 1e-3
        stop = packets.stop(self.info.start)
        if demux_error is not None or stop < self.info.duration - slack:
            why = demux_error if demux_error is not None else decode_error
            why = f" ({_short(why)})" if why is not None else ""
            raise VideoError(
                "truncated",
                f"packets stop at {stop:.2f} s but the container says the video lasts {self.info.duration:.2f} s"
                f"{why}: the file is cut (an interrupted download?); download it again",
            )
        if decode_error is not None:
            where = f"{last_time:.2f} s" if last_time is not None else "the first frame"
            raise VideoError(
                "decode_error", f"decoding failed at {where} ({_short(decode_error)}); the file is corrupt"
            ) from decode_error
        if prev is None:
            raise VideoError("decode_error", f"no frame of {self.path.name} could be decoded; the file is corrupt")
        if decoded < 2 and self.info.num_frames is None:
            raise VideoError("too_short", "the video has 1 frame; at least 2 are needed (a still image)")
        last_packet = packets.last_start - self.info.start if packets.last_start is not None else None
        if last_packet is not None and last_time < last_packet - slack:
            raise VideoError(
                "decode_error",
                f"frames stop at {last_time:.2f} s but the packets go on to {last_packet:.2f} s (the decoder "
                "dropped the rest); the file is corrupt",
            )
        if prev_rgb is None:
            prev_rgb = self._rgb(prev)
        while j < n:
            yield j, prev_time, prev_rgb
            j += 1

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """All sampled frames at once (tests, small videos): frames (T*k, H, W, 3) uint8 and times (T*k,)."""
        frames = [rgb for _, _, rgb in self]
        return np.stack(frames), self.times.copy()

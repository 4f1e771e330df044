"""Short test videos written with PyAV for the extraction tests (good ones and every kind of bad one).

Frame i of a `write_video` clip is a flat grey of level `level(i)`, so a test can tell which frame the sampler picked
from the decoded pixels alone (lossy codecs keep the mean of a flat frame within a grey level or two).
The helpers are imported by tests/test_extract*.py and tests/test_faults_extract.py; the tests here check that the
helpers make what they claim.
"""

from __future__ import annotations

import fractions
import os
from pathlib import Path

import av
import numpy as np
import pytest

BASE, STEP = 20, 4  # grey level of frame i: BASE + STEP * i (i < 50)


def level(i: int) -> int:
    return BASE + STEP * i


def frame_index(rgb: np.ndarray) -> int:
    """Which `write_video` frame a decoded (H, W, 3) picture shows."""
    return int(round((float(rgb.mean()) - BASE) / STEP))


def write_video(path, n: int = 25, rate: int = 25, size=(64, 48), codec: str = "libx264", pts_ms=None,
                options: dict | None = None, texture: bool = False, container_format: str | None = None) -> Path:
    """n frames of `size` (w, h); `pts_ms`: explicit timestamps in ms (variable frame rate)."""
    path = Path(path)
    w, h = size
    with av.open(str(path), "w", format=container_format, options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "10"}
        else:
            stream.bit_rate = 8_000_000
        if pts_ms is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(n):
            if texture:  # smooth colour pattern for the preprocessing comparison
                rgb = np.stack([128 + 100 * np.sin(xx / 17 + i), 128 + 100 * np.cos(yy / 23 + i),
                                128 + 100 * np.sin((xx + yy) / 31 + i)], -1).astype(np.uint8)
            else:
                rgb = np.full((h, w, 3), level(i) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[i]), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_only(path, seconds: float = 1.0) -> Path:
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        n = int(16000 * seconds)
        samples = (0.1 * np.sin(np.arange(n) / 10)).astype(np.float32)[None]  # (1, n)
        for start in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_bad_videos(folder, good_source: Path) -> dict[str, Path]:
    """One file per bad kind (issue 8, item 2), named <kind>.mp4; `good_source` is a valid clip of >= 2 s."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bad = {}
    bad["zero_bytes"] = folder / "zero_bytes.mp4"
    bad["zero_bytes"].write_bytes(b"")
    data = good_source.read_bytes()
    # an mp4 whose index (moov) comes first, as downloads usually are, cut in the middle of the media data
    faststart = write_video(folder / "_faststart.mp4", n=75, options={"movflags": "faststart"})
    cut = faststart.read_bytes()
    bad["truncated"] = folder / "truncated.mp4"
    bad["truncated"].write_bytes(cut[: len(cut) // 2])
    faststart.unlink()
    bad["text"] = folder / "text.mp4"
    bad["text"].write_text("this is not a video, just some text that someone named .mp4\n" * 20)
    bad["audio_only"] = write_audio_only(folder / "audio_only.mp4")
    bad["single_frame"] = write_video(folder / "single_frame.mp4", n=1)
    bad["too_short"] = write_video(folder / "too_short.mp4", n=7)  # 0.28 s
    bad["unreadable"] = folder / "unreadable.mp4"
    bad["unreadable"].write_bytes(data)
    os.chmod(bad["unreadable"], 0)
    corrupt = bytearray(data)
    corrupt[:256] = np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes()
    bad["corrupt_header"] = folder / "corrupt_header.mp4"
    bad["corrupt_header"].write_bytes(bytes(corrupt))
    return bad


@pytest.mark.parametrize("codec,container,size", [("libx264", "mp4", (64, 48)), ("mpeg4", "mkv", (96, 64))])
def test_written_frames_are_identifiable(tmp_path, codec, container, size):
    path = write_video(tmp_path / f"clip.{container}", n=10, codec=codec, size=size)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == size
        got = [frame_index(f.to_ndarray(format="rgb24")) for f in c.decode(stream)]
    assert got == list(range(10))


def test_bad_video_factory(tmp_path):
    good = write_video(tmp_path / "good.mp4", n=50)
    bad = make_bad_videos(tmp_path / "bad", good)
    assert bad["zero_bytes"].stat().st_size == 0
    assert 0 < bad["truncated"].stat().st_size
    with av.open(str(bad["audio_only"])) as c:
        assert not c.streams.video and c.streams.audio

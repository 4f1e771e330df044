"""Issue 15, points 1-4: real-world files shaped after public bug reports, made here with PyAV (tiny and fast).

Display rotation and mirroring, a slideshow whose last frame is held for seconds, files cut short in every container
the README documents, files holding several video streams (cover art, thumbnails, other angles).
"""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
import pytest
from test_extract_media import frame_index, level, write_video

from extract.video import SampledVideo, Sampling, VideoError, probe

MS = fractions.Fraction(1, 1000)


# ----------------------------------------------------------------------------- 1. display matrix
BLOCK = 16  # the coded picture is a grid of flat 16 x 16 blocks, each of its own grey level


def block_picture(rows: int = 2, cols: int = 4) -> np.ndarray:
    """(rows*16, cols*16, 3) uint8: block (r, c) has grey level 30 + 25 * (r * cols + c), all different."""
    levels = 30 + 25 * np.arange(rows * cols).reshape(rows, cols)
    return np.repeat(np.repeat(levels, BLOCK, 0), BLOCK, 1)[..., None].repeat(3, 2).astype(np.uint8)


def block_levels(rgb: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) mean grey of the central half of each block of a picture of rows x cols blocks (any size)."""
    h, w = rgb.shape[0] // rows, rgb.shape[1] // cols
    grey = rgb.astype(np.float64).mean(-1)
    return np.array([[grey[r * h + h // 4 : r * h + 3 * h // 4, c * w + w // 4 : c * w + 3 * w // 4].mean()
                      for c in range(cols)] for r in range(rows)])


def write_rotated(path: Path, degrees: float, hflip: bool = False, n: int = 4) -> Path:
    """n frames of `block_picture()` (64 x 32 coded), with a display matrix (PyAV's set_display_rotation: degrees
    counter-clockwise, then the mirror; the same side data as `ffmpeg -display_rotation` or `-metadata rotate=`)."""
    picture = block_picture()
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "5"}
        if degrees or hflip:
            stream.set_display_rotation(degrees, hflip=hflip)
        for _ in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def displayed_by_definition(coded: np.ndarray, matrix) -> np.ndarray:
    """Slow, obvious reference: every coded pixel (x, y) goes to (a x + c y, b x + d y), FFmpeg's display.h
    convention for the 9 numbers a b u / c d v / x y w, and the result is shifted into view."""
    a, b, c, d = (matrix[i] / 65536 for i in (0, 1, 3, 4))
    h, w = coded.shape[:2]
    moved = [(y, x, round(b * x + d * y), round(a * x + c * y)) for y in range(h) for x in range(w)]
    top, left = min(m[2] for m in moved), min(m[3] for m in moved)
    out = np.zeros((max(m[2] for m in moved) - top + 1, max(m[3] for m in moved) - left + 1, 3), np.uint8)
    for y, x, y2, x2 in moved:
        out[y2 - top, x2 - left] = coded[y, x]
    return out


def matrix_in_file(path: Path) -> tuple[int, ...]:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        data = frame.side_data[av.sidedata.sidedata.Type.DISPLAYMATRIX]
        return tuple(int(v) for v in np.frombuffer(bytes(data), np.int32))


@pytest.mark.parametrize("hflip", [False, True], ids=["", "mirrored"])
@pytest.mark.parametrize("degrees", [0, 90, 180, -90])
def test_every_rotation_and_mirror_of_the_display_matrix(tmp_path, degrees, hflip):
    path = write_rotated(tmp_path / "phone.mp4", degrees, hflip)
    coded = block_picture()
    if degrees or hflip:
        matrix = matrix_in_file(path)
    else:
        matrix = (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)
    want = displayed_by_definition(coded, matrix)  # (H', W', 3)
    rows, cols = want.shape[0] // BLOCK, want.shape[1] // BLOCK
    assert (rows, cols) == ((4, 2) if degrees in (90, -90) else (2, 4))
    # At the displayed size, and resized to half of it (the turn comes first, then the resize).
    for size in (want.shape[:2], (want.shape[0] // 2, want.shape[1] // 2)):
        video = SampledVideo(path, Sampling(segments=2), size=size)
        frames, _ = video.read()
        assert frames.shape[1:3] == tuple(size)
        got = block_levels(frames[0], rows, cols)
        np.testing.assert_allclose(got, block_levels(want, rows, cols), atol=4)
        assert video.display_matrix == matrix


def test_rotate_90_is_shown_upright_like_players(tmp_path):
    """The issue's file (`ffmpeg ... -metadata:s:v:0 rotate=90`: turned 90 degrees clockwise for display), with the
    expected picture written out by hand: coded 64 x 32, displayed 32 x 64, coded top-left block at the top right."""
    path = write_rotated(tmp_path / "rot90.mp4", -90)  # PyAV counts counter-clockwise
    assert matrix_in_file(path)[:6] == (0, 65536, 0, -65536, 0, 0)  # what mov's tkhd holds for rotate=90
    coded = block_levels(block_picture(), 2, 4)  # [[30, 55, 80, 105], [130, 155, 180, 205]]
    want = np.array([[coded[1, 0], coded[0, 0]], [coded[1, 1], coded[0, 1]],
                     [coded[1, 2], coded[0, 2]], [coded[1, 3], coded[0, 3]]])  # (4 rows, 2 columns of blocks)
    frames, _ = SampledVideo(path, Sampling(segments=2), size=(64, 32)).read()
    np.testing.assert_allclose(block_levels(frames[1], 4, 2), want, atol=4)


@pytest.mark.parametrize("container", ["mkv", "mov", "webm"])
def test_display_matrix_in_other_containers(tmp_path, container):
    path = tmp_path / f"phone.{container}"
    picture = block_picture()
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libvpx" if container == "webm" else "libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.bit_rate = 4_000_000
        stream.set_display_rotation(90)  # counter-clockwise
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    frames, _ = SampledVideo(path, Sampling(segments=2), size=(64, 32)).read()
    want = displayed_by_definition(picture, matrix_in_file(path))
    np.testing.assert_allclose(block_levels(frames[0], 4, 2), block_levels(want, 4, 2), atol=6)


# ----------------------------------------------------------------------------- 2. a held last frame
def write_slideshow(path: Path, last_ms: int = 5500) -> Path:
    """10 frames every 0.5 s (frame i has grey level(i)); the last packet lasts `last_ms` (stream: 4.5 s + that)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=2)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        stream.codec_context.time_base = MS
        stream.options = {"preset": "ultrafast", "crf": "10", "bf": "0"}
        packets = []
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((16, 32, 3), level(i), np.uint8), format="rgb24")
            frame.pts, frame.time_base = 500 * i, MS
            packets += stream.encode(frame)
        packets += stream.encode()
        last = packets[-1]
        last.duration = int(fractions.Fraction(last_ms, 1000) / last.time_base)
        for packet in packets:
            out.mux(packet)
    return path


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_last_frame_held_for_seconds_is_complete(tmp_path, container):
    path = write_slideshow(tmp_path / f"slides.{container}")
    assert probe(path).duration == pytest.approx(10.0)  # what ffprobe and players say
    video = SampledVideo(path, Sampling(fps=1), size=16)
    frames, times = video.read()
    # target t + 0.5 s shows the last frame at or before it; from 4.5 s on that is frame 9, on screen until 10 s
    assert [frame_index(f) for f in frames] == [1, 3, 5, 7, 9, 9, 9, 9, 9, 9]
    np.testing.assert_allclose(times, [0.5, 1.5, 2.5, 3.5, 4.5, 4.5, 4.5, 4.5, 4.5, 4.5])
    frames, _ = SampledVideo(path, Sampling(segments=4), size=16).read()
    assert [frame_index(f) for f in frames] == [2, 7, 9, 9]  # targets 1.25, 3.75, 6.25, 8.75 s


# ----------------------------------------------------------------------------- 3. files cut short
CUT_KINDS = {  # every container that states its length, of those the adapters take for videos (VIDEO_EXTENSIONS)
    "avi": ("mjpeg", None, None),  # Breakfast's container: the length is the frame count in its header
    "mp4": ("libx264", {"movflags": "faststart"}, None),  # index first, as downloads are (index last: media tests)
    "m4v": ("libx264", {"movflags": "faststart"}, None),
    "mov": ("libx264", {"movflags": "faststart"}, None),
    "3gp": ("libx264", {"movflags": "faststart"}, None),
    "mkv": ("libx264", None, None),
    "webm": ("libvpx", None, None),
    "flv": ("flv", None, None),
    "wmv": ("wmv2", None, "asf"),  # the play duration in its header; FFmpeg drops it when the file is cut
    "mxf": ("mpeg2video", None, "mxf"),
}  # MPEG program and transport streams (mpg, vob, ts) state no length: a cut one is a shorter video


@pytest.mark.parametrize("container", sorted(CUT_KINDS))
def test_a_file_cut_at_60_percent_is_truncated_in_every_container(tmp_path, container):
    codec, options, muxer = CUT_KINDS[container]
    whole = write_video(tmp_path / f"whole.{container}", n=200, size=(32, 16), codec=codec, options=options,
                        container_format=muxer)  # 8 s
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{container}"
    cut.write_bytes(data[: len(data) * 6 // 10])
    _, times = SampledVideo(whole, Sampling(segments=8), size=16).read()  # the whole file is fine
    np.testing.assert_allclose(times, np.arange(8) + 0.48, atol=1e-6)  # targets 0.5, 1.5, ... s at 25 fps
    for sampling in (Sampling(fps=1), Sampling(segments=8)):
        with pytest.raises(VideoError, match="download it again") as info:
            SampledVideo(cut, sampling, size=16).read()
        assert info.value.kind == "truncated", str(info.value)


def test_avi_length_is_its_header_frame_count(tmp_path):
    path = write_video(tmp_path / "breakfast.avi", n=60, size=(32, 16), codec="mjpeg")  # 2.4 s
    data = path.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) * 6 // 10])
    assert probe(path).duration == pytest.approx(2.4) and probe(path).num_frames == 60
    info = probe(tmp_path / "cut.avi")  # FFmpeg's own duration of the cut file is an estimate from its size
    assert info.duration == pytest.approx(2.4) and info.num_frames == 60


# ----------------------------------------------------------------------------- 4. several video streams
def write_streams(path: Path, streams: list[dict]) -> Path:
    """One file with several video streams; each dict: n frames of grey `grey` (None: level(i)) at `size`, codec,
    disposition. Streams are written one after the other (the muxer interleaves by timestamp)."""
    with av.open(str(path), "w") as out:
        made = []
        for spec in streams:
            codec = spec.get("codec", "libx264")
            stream = out.add_stream(codec, rate=25)
            stream.width, stream.height = spec["size"]
            stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
            if codec == "libx264":
                stream.options = {"preset": "ultrafast", "crf": "10"}
            if "disposition" in spec:
                stream.disposition = spec["disposition"]
            made.append((stream, spec))
        for stream, spec in made:
            w, h = spec["size"]
            for i in range(spec["n"]):
                grey = spec.get("grey") or level(i)
                frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), grey, np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    return path


Disposition = av.stream.Disposition
THUMB = {"size": (128, 96), "n": 1, "grey": 230}  # a larger one-frame picture (a thumbnail, cover art)
VIDEO = {"size": (64, 48), "n": 50}  # the video: frame i has grey level(i)


@pytest.mark.parametrize("name,streams,index", [
    ("thumbnail_default.mkv", [{**THUMB, "disposition": Disposition.default}, {**VIDEO, "disposition": 0}], 1),
    ("thumbnail_first.mp4", [THUMB, VIDEO], 1),  # the mp4 muxer marks the first stream default
    ("cover_art.mp4", [{**THUMB, "codec": "mjpeg", "disposition": Disposition.attached_pic}, VIDEO], 0),
    ("cover_art.mkv", [{**THUMB, "codec": "mjpeg", "disposition": Disposition.attached_pic}, VIDEO], 1),
    ("two_angles.mkv", [{**VIDEO, "size": (32, 24)}, VIDEO], 0),  # FFmpeg's choice: the first of equals
])
def test_the_video_stream_is_ffmpegs_choice_never_a_picture(tmp_path, name, streams, index):
    path = write_streams(tmp_path / name, streams)
    with av.open(str(path)) as container:
        ffmpeg_choice = container.streams.best("video").index
    if name.startswith(("two_angles", "cover_art")):
        assert ffmpeg_choice == index  # FFmpeg gets these right on its own: we must agree with it
    video = SampledVideo(path, Sampling(segments=5), size=16)
    assert video.info.stream_index == index and video.info.duration == pytest.approx(2.0)
    frames, _ = video.read()
    assert [frame_index(f) for f in frames] == [5, 15, 25, 35, 45]  # the 50-frame video, not the picture


def test_the_display_matrix_and_stream_are_kept_in_the_videos_attrs(tmp_path):
    """Decoding side to the sealed shard, without an encoder (zero tokens): the attrs say what was applied."""
    from data.store import FeatureStore, ShardWriter
    from extract.pipeline import VideoAssembler, pack_videos

    rotated = write_rotated(tmp_path / "phone.mp4", -90)
    cover = write_streams(tmp_path / "cover.mkv", [{**THUMB, "disposition": Disposition.default}, VIDEO])
    items = [("phone", rotated), ("cover", cover)]
    with ShardWriter(tmp_path / "cache", {"encoder": "none", "segments": 2}) as writer:
        assembler = VideoAssembler(writer, tmp_path / "cache")
        for batch in pack_videos(items, Sampling(segments=2), size=(16, 16), batch=3):
            frames = batch["frames"].shape[0]
            assembler.consume(np.zeros((frames, 1, 4), np.float16), batch["spans"], batch["done"], batch["failed"])
    assert assembler.stats.extracted == 2 and not assembler.stats.failed
    store = FeatureStore(tmp_path / "cache")
    phone, cover = store.video_attrs("phone"), store.video_attrs("cover")
    assert tuple(phone["display_matrix"]) == matrix_in_file(rotated) and phone["video_stream"] == 0
    assert tuple(cover["display_matrix"]) == (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30) and cover["video_stream"] == 1

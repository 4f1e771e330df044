"""extract/video.py: sampling plans, which frame is picked for each target time, timestamps, sizes, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_extract_media import frame_index, write_video

from extract.resize import Resize
from extract.video import SampledVideo, Sampling, VideoError, probe


def displayed(times: np.ndarray, frame_times: np.ndarray) -> np.ndarray:
    """Slow, obvious reference: index of the last frame whose timestamp is <= t, for each target t."""
    out = []
    for t in times:
        shown = [i for i, ft in enumerate(frame_times) if ft <= t + 1e-9]
        out.append(shown[-1] if shown else 0)
    return np.array(out)


def test_targets_fps_and_segments():
    fps = Sampling(fps=2).targets(2.3)  # full 0.5 s segments only
    np.testing.assert_allclose(fps[:, 0], [0.25, 0.75, 1.25, 1.75])
    seg = Sampling(segments=4, frames_per_segment=2).targets(2.0)  # (T, k)
    assert seg.shape == (4, 2)
    np.testing.assert_allclose(seg.reshape(-1), (np.arange(8) + 0.5) * 0.25)
    one = Sampling(fps=1, frames_per_segment=3).targets(2.0)
    np.testing.assert_allclose(one[1], [1 + 1 / 6, 1.5, 1 + 5 / 6])


def test_clip_targets_centre_on_the_segment_and_stay_inside_the_video():
    """A video encoder's clip: k frames dt apart around the segment's centre, shifted inside [0, duration]."""
    dt = 0.25
    clips = Sampling(segments=4, frames_per_segment=4, frame_interval=dt).targets(10.0)  # (4, 4), 2.5 s segments
    np.testing.assert_allclose(clips.mean(1), [1.25, 3.75, 6.25, 8.75])
    np.testing.assert_allclose(np.diff(clips, axis=1), dt)
    edges = Sampling(segments=4, frames_per_segment=4, frame_interval=dt).targets(2.0)  # span 1 s > segment 0.5 s
    np.testing.assert_allclose(edges[0], [0.125, 0.375, 0.625, 0.875])  # shifted right from centre 0.25
    np.testing.assert_allclose(edges[-1], [1.125, 1.375, 1.625, 1.875])  # shifted left from centre 1.75
    assert (np.diff(edges.reshape(-1)) < 0).any()  # neighbouring clips overlap
    short = Sampling(segments=1, frames_per_segment=4, frame_interval=dt).targets(0.5)
    assert short[0, :2].tolist() == [0.125, 0.375] and (short[0, 2:] < 0.5).all() and short[0, 2] == short[0, 3]
    assert Sampling(fps=1, frames_per_segment=2, frame_interval=0.1).as_attrs() == {
        "fps": 1.0, "frames_per_segment": 2, "frame_interval": 0.1}
    assert "frame_interval" not in Sampling(fps=1).as_attrs()  # image caches keep their old provenance


def test_overlapping_clips_come_in_segment_order_from_one_pass(tmp_path):
    path = write_video(tmp_path / "clip.mp4", n=50, rate=25)  # 2.0 s
    video = SampledVideo(path, Sampling(segments=5, frames_per_segment=4, frame_interval=0.2), size=16)
    items = list(video)
    assert [index for index, _, _ in items] == list(range(20))
    want = displayed(video.targets.reshape(-1), np.arange(50) / 25)
    assert [frame_index(rgb) for _, _, rgb in items] == want.tolist()
    np.testing.assert_allclose(video.times, want / 25, atol=1e-6)


def test_resize_plan_matches_transformers_geometry():
    from transformers.image_transforms import center_crop, get_resize_output_image_size

    plan = Resize(shortest_edge=36, crop=(32, 30), interpolation="BICUBIC")
    for h, w in [(240, 320), (320, 240), (100, 100), (37, 1000)]:
        image = np.zeros((h, w, 3), np.uint8)
        assert plan.resized_shape(h, w) == get_resize_output_image_size(image, 36, default_to_square=False,
                                                                         input_data_format="channels_last")
        resized = np.arange(np.prod(plan.resized_shape(h, w)) * 3).reshape(*plan.resized_shape(h, w), 3)
        np.testing.assert_array_equal(plan.crop_array(resized), center_crop(resized, (32, 30),
                                                                            input_data_format="channels_last"))
    assert Resize.exact(24).output == (24, 24) and Resize.exact((24, 40)).resized_shape(240, 320) == (24, 40)
    with pytest.raises(ValueError, match="crop"):
        Resize(shortest_edge=36)


@pytest.mark.parametrize("kwargs", [{}, {"fps": 1, "segments": 8}, {"fps": 0}, {"segments": 0},
                                    {"fps": 1, "frames_per_segment": 0}, {"fps": math.inf},
                                    {"fps": 1, "frame_interval": 0.0}])
def test_sampling_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="Expected"):
        Sampling(**kwargs)


@pytest.mark.parametrize("codec,container,size", [("libx264", "mp4", (64, 48)), ("mpeg4", "mkv", (96, 64))])
@pytest.mark.parametrize("sampling", [Sampling(fps=2), Sampling(segments=5, frames_per_segment=2)], ids=["fps", "seg"])
@pytest.mark.parametrize("out_size", [32, (24, 40)])
def test_sampled_frames_and_timestamps(tmp_path, codec, container, size, sampling, out_size):
    path = write_video(tmp_path / f"clip.{container}", n=50, rate=25, codec=codec, size=size)  # 2.0 s
    video = SampledVideo(path, sampling, size=out_size)
    assert video.info.duration == pytest.approx(2.0, abs=1e-6)
    frames, times = video.read()
    expected_t = 4 if sampling.fps else 5
    assert video.num_segments == expected_t and frames.shape[0] == expected_t * sampling.frames_per_segment
    h, w = (out_size, out_size) if isinstance(out_size, int) else out_size
    assert frames.shape[1:] == (h, w, 3) and frames.dtype == np.uint8
    want = displayed(video.targets.reshape(-1), np.arange(50) / 25)
    assert [frame_index(f) for f in frames] == want.tolist()
    np.testing.assert_allclose(times, want / 25, atol=1e-6)


@pytest.mark.parametrize("container", ["mkv", "mp4"])
def test_variable_frame_rate(tmp_path, container):
    pts = [0, 100, 500, 550, 1200, 1300, 2000, 2050, 2100, 3000]
    path = write_video(tmp_path / f"vfr.{container}", n=len(pts), pts_ms=pts)
    video = SampledVideo(path, Sampling(fps=4), size=16)
    frames, times = video.read()
    want = displayed(video.targets.reshape(-1), np.array(pts) / 1000)
    assert [frame_index(f) for f in frames] == want.tolist()
    np.testing.assert_allclose(times, np.array(pts)[want] / 1000, atol=1e-6)
    assert want.tolist()[:10] == [1, 1, 3, 3, 3, 5, 5, 5, 8, 8]  # the irregular clock, not a frame count


def test_missing_duration_metadata(tmp_path):
    # A raw H.264 elementary stream has no container duration and no timestamps at all.
    path = write_video(tmp_path / "raw.h264", n=50, rate=25, container_format="h264")
    info = probe(path)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    frames, times = SampledVideo(path, Sampling(fps=2), size=16).read()
    assert [frame_index(f) for f in frames] == [6, 18, 31, 43]
    np.testing.assert_allclose(times, [0.24, 0.72, 1.24, 1.72], atol=1e-6)


def test_short_videos(tmp_path):
    single = write_video(tmp_path / "one.mp4", n=1)
    for sampling in (Sampling(fps=1), Sampling(segments=8)):
        with pytest.raises(VideoError, match="frame") as info:
            SampledVideo(single, sampling, size=16)
        assert info.value.kind == "too_short"
    short = write_video(tmp_path / "short.mp4", n=7)  # 0.28 s
    with pytest.raises(VideoError, match="shorter than one segment") as info:
        SampledVideo(short, Sampling(fps=2), size=16)
    assert info.value.kind == "too_short"
    # Segments over the whole video still work: 8 segments of 7 frames repeat some frames.
    video = SampledVideo(short, Sampling(segments=8), size=16)
    frames, _ = video.read()
    want = displayed(video.targets.reshape(-1), np.arange(7) / 25)
    assert [frame_index(f) for f in frames] == want.tolist() and len(set(want.tolist())) < 8


def test_decoding_is_lazy(tmp_path):
    """The first sampled frame comes out before the decoder has read the rest of the file."""
    path = write_video(tmp_path / "long.mp4", n=100)
    video = SampledVideo(path, Sampling(segments=4), size=16)
    items = iter(video)
    first = next(items)
    assert first[0] == 0 and np.isnan(video.times[1:]).all()


@pytest.mark.parametrize("n,rate,listed", [(50, 10, 4), (47, 10, 3), (40, 8, 5)])
def test_paper_lvu_sampling_takes_the_papers_frames(tmp_path, n, rate, listed):
    """The ViS4mer code's LVU sampling: of n frames, frame int(n / d * i) for i < d (d = listed seconds), then the
    last one; d is shorter than the file (the CSV leaves out the outro), so the frames spread over all of it."""
    path = write_video(tmp_path / "clip.mp4", n=n, rate=rate)
    sampling = Sampling(durations={"clip": listed})
    video = SampledVideo(path, sampling, size=16, listed=listed)
    frames, times = video.read()
    paper = [int(n / listed * i) for i in range(listed)] + [n - 1]  # written as the paper's script writes it
    assert video.num_segments == listed + 1
    assert [frame_index(f) for f in frames] == paper
    np.testing.assert_allclose(times, np.array(paper) / rate, atol=1e-6)
    assert sampling.as_attrs() == {"durations": "lvu_durations.csv", "frames_per_segment": 1}


def test_paper_lvu_sampling_rejects_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="FRAMES_PER_SEGMENT=1"):
        Sampling(durations={"a": 3}, frames_per_segment=2)
    with pytest.raises(ValueError, match="exactly one of"):
        Sampling(fps=1, durations={"a": 3})
    path = write_video(tmp_path / "clip.mp4", n=20, rate=10)
    with pytest.raises(VideoError, match="lists 0 s") as info:
        SampledVideo(path, Sampling(durations={"clip": 0}), size=16, listed=0)
    assert info.value.kind == "too_short"

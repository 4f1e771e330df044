"""extract/pipeline.py and `python -m extract`: fill the cache, skip what is sealed, resume, average frames, DDP."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data.store import FeatureStore
from extract.__main__ import main
from extract.encoder import FrozenEncoder, load_encoder
from extract.pipeline import pack_videos, run_predict
from extract.video import SampledVideo, Sampling

REPO = Path(__file__).resolve().parents[1]
SEGMENTS = 8


def tag_dir(cache: Path, tag: str = f"vit-tiny-random_seg{SEGMENTS}") -> Path:
    return cache / "synthetic" / tag


def shard_ids(directory: Path) -> collections.Counter:
    """How many sealed shards hold each video id (read with h5py directly, not through FeatureStore)."""
    from data.store import unescape_id

    counts = collections.Counter()
    for shard in sorted(directory.glob("shard-*.h5")):
        with h5py.File(shard, "r") as f:
            counts.update(unescape_id(name) for name in f["videos"])
    return counts


def file_hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("shard-*.h5"))}


@pytest.fixture(scope="module")
def clean_run(tiny_videos, tmp_path_factory, extract_cli) -> Path:
    """One uninterrupted extraction: the reference other runs are compared with."""
    cache = tmp_path_factory.mktemp("clean")
    assert main(extract_cli(tiny_videos, cache, "--segments", str(SEGMENTS))) == 0
    return tag_dir(cache)


def video_ids(root: Path) -> list[str]:
    from data import get_dataset

    return get_dataset("synthetic", root=root).all_video_ids()


def test_extract_fills_the_cache_then_skips_everything(tiny_videos, clean_run, tmp_path, extract_cli, capsys):
    ids = video_ids(tiny_videos)
    store = FeatureStore(clean_run)
    assert sorted(store.ids()) == sorted(ids) and set(shard_ids(clean_run).values()) == {1}
    meta = store.meta
    assert meta["encoder"] == "vit-tiny-random" and meta["segments"] == SEGMENTS and meta["pool"] == "none"
    assert meta["grid"] == [4, 4] and meta["hidden_size"] == 64 and meta["dtype"] == "float16"
    encoder = load_encoder("vit-tiny-random")
    from data import get_dataset

    ds = get_dataset("synthetic", root=tiny_videos)
    for video_id in ids[:3]:
        video = SampledVideo(ds.video_path(video_id), Sampling(segments=SEGMENTS), size=32)
        frames, times = video.read()
        tokens = store.read(video_id)
        assert tokens.shape == (SEGMENTS, 17, 64) and tokens.dtype == np.float16
        np.testing.assert_array_equal(tokens, encoder(torch.from_numpy(frames)).numpy())
        np.testing.assert_allclose(store.timestamps(video_id), times)
        assert np.all(np.diff(times) >= 0)
    manifest = json.loads((clean_run / "manifest.json").read_text())
    assert manifest["videos_sealed"] == len(ids) and manifest["last_run"]["extracted"] == len(ids)
    assert manifest["last_run"]["repeated_frames"] == 0  # 16-24 frames for 8 segments: none repeats

    before = file_hashes(clean_run)
    capsys.readouterr()
    assert main(extract_cli(tiny_videos, clean_run.parents[1], "--segments", str(SEGMENTS))) == 0
    assert file_hashes(clean_run) == before
    manifest = json.loads((clean_run / "manifest.json").read_text())
    assert manifest["last_run"]["extracted"] == 0 and manifest["last_run"]["skipped"] == len(ids)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"nothing to do: {len(ids)} of the {len(ids)} listed videos are already sealed in {clean_run}"


def test_videos_with_fewer_frames_than_segments_are_counted(tiny_videos, tmp_path, capsys, extract_cli):
    """2-3 s at 8 frames/s is 16-24 frames: 40 segments repeat frames of every video, and the summary says so."""
    assert main(extract_cli(tiny_videos, tmp_path / "cache", "--segments", "40")) == 0
    manifest = json.loads((tag_dir(tmp_path / "cache", "vit-tiny-random_seg40") / "manifest.json").read_text())
    n = len(video_ids(tiny_videos))
    assert manifest["last_run"]["repeated_frames"] == n
    assert f"{n} video(s) have fewer frames than SEGMENTS=40 samples" in capsys.readouterr().err


def test_resume_reencodes_nothing_sealed(tiny_videos, clean_run, tmp_path, monkeypatch, extract_cli):
    from data import get_dataset

    ds = get_dataset("synthetic", root=tiny_videos)
    ids = ds.all_video_ids()
    directory = tag_dir(tmp_path)
    encoder = load_encoder("vit-tiny-random")
    attrs = {**encoder.attrs(), "pool": "none", **Sampling(segments=SEGMENTS).as_attrs()}
    first = [(i, str(ds.video_path(i))) for i in ids[:3]]
    run_predict(encoder, first, directory, attrs, Sampling(segments=SEGMENTS), batch=8, workers=0, progress=False)
    sealed_before = file_hashes(directory)
    assert sorted(shard_ids(directory)) == sorted(ids[:3])

    encoded = []
    original = FrozenEncoder.forward

    def counting(self, frames):
        encoded.append(int(frames.shape[0]))
        return original(self, frames)

    monkeypatch.setattr(FrozenEncoder, "forward", counting)
    assert main(extract_cli(tiny_videos, tmp_path, "--segments", str(SEGMENTS))) == 0
    assert sum(encoded) == (len(ids) - 3) * SEGMENTS  # only the videos that were not sealed
    after = file_hashes(directory)
    assert {k: after[k] for k in sealed_before} == sealed_before
    assert set(shard_ids(directory).values()) == {1} and sorted(shard_ids(directory)) == sorted(ids)
    clean, resumed = FeatureStore(clean_run), FeatureStore(directory)
    for video_id in ids:
        np.testing.assert_array_equal(resumed.read(video_id), clean.read(video_id))


def test_resume_into_a_cache_older_than_special_tokens(tiny_videos, tmp_path, extract_cli):
    """Shards written before the family/special_tokens attrs: a rerun adds shards that agree with them."""
    ids = video_ids(tiny_videos)
    from data import get_dataset

    ds = get_dataset("synthetic", root=tiny_videos)
    directory = tag_dir(tmp_path)
    encoder = load_encoder("vit-tiny-random")
    legacy = {k: v for k, v in encoder.attrs().items() if k not in ("family", "special_tokens")}
    attrs = {**legacy, "pool": "none", **Sampling(segments=SEGMENTS).as_attrs()}
    first = [(i, str(ds.video_path(i))) for i in ids[:2]]
    run_predict(encoder, first, directory, attrs, Sampling(segments=SEGMENTS), batch=8, workers=0, progress=False)
    assert main(extract_cli(tiny_videos, tmp_path, "--segments", str(SEGMENTS))) == 0
    store = FeatureStore(directory)
    assert sorted(store.ids()) == sorted(ids) and len(store.shards) == 2
    assert "special_tokens" not in store.meta and store.special_tokens == 1


def test_frames_per_segment_average_in_token_space(tiny_videos, tmp_path, extract_cli):
    assert main(extract_cli(tiny_videos, tmp_path, "--segments", "4", "--frames-per-segment", "2")) == 0
    store = FeatureStore(tag_dir(tmp_path, "vit-tiny-random_seg4_fr2"))
    assert store.meta["frames_per_segment"] == 2
    from data import get_dataset

    video_id = store.ids()[0]
    path = get_dataset("synthetic", root=tiny_videos).video_path(video_id)
    video = SampledVideo(path, Sampling(segments=4, frames_per_segment=2), size=32)
    frames, times = video.read()  # (8, 32, 32, 3)
    tokens = load_encoder("vit-tiny-random")(torch.from_numpy(frames)).float().reshape(4, 2, 17, 64)
    np.testing.assert_allclose(store.read(video_id), tokens.mean(1).numpy(), atol=1e-3)
    np.testing.assert_allclose(store.timestamps(video_id), times.reshape(4, 2).mean(1))


def test_paper_lvu_sampling_end_to_end(tmp_path, capsys):
    """SAMPLING=paper on a tiny LVU tree: its own cache tag and provenance, d + 1 segments per video holding the
    tokens of the paper code's frames; without lvu_durations.csv, or with a video it does not list, one error."""
    from test_extract_media import write_video

    from data.errors import UserError

    root = tmp_path / "lvu"
    clips = {"aaa": (50, 10, 4), "bbb": (40, 8, 3), "ccc": (47, 10, 2)}  # id: frames, rate, listed seconds
    for split, video_id in zip(("train", "val", "test"), clips):
        path = root / "lvu_1.0" / "relationship" / f"{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"class_id class_name youtube_id imdb_id\n1 Friends {video_id} tt1\n")
    for video_id, (n, rate, _) in clips.items():
        (root / "videos").mkdir(exist_ok=True)
        write_video(root / "videos" / f"{video_id}.mp4", n=n, rate=rate, size=(32, 32))
    args = ["--dataset", "lvu", "--data-root", str(root), "--cache-dir", str(tmp_path / "cache"), "--encoder",
            "vit-tiny-random", "--workers", "0", "--batch", "4", "--no-progress"]
    with pytest.raises(UserError, match="SAMPLING=paper needs .*lvu_durations.csv"):
        main([*args, "--sampling", "paper"])
    listed = root / "lvu_1.0" / "lvu_durations.csv"
    listed.write_text("videoid,duration\naaa,4\nbbb,3\n")
    with pytest.raises(UserError, match="1 of 3 videos to extract have no row .* \\(e.g. ccc\\)"):
        main([*args, "--sampling", "paper"])
    with pytest.raises(UserError, match="leave FPS, SEGMENTS and FRAMES_PER_SEGMENT empty"):
        main([*args, "--sampling", "paper", "--fps", "1"])
    listed.write_text("videoid,duration\naaa,4\nbbb,3\nccc,2\n")

    assert main([*args, "--sampling", "paper"]) == 0
    store = FeatureStore(tmp_path / "cache" / "lvu" / "vit-tiny-random_lvu-durations")
    assert store.meta["durations"] == "lvu_durations.csv" and "fps" not in store.meta
    encoder = load_encoder("vit-tiny-random")
    for video_id, (n, rate, d) in clips.items():
        paper = [int(n / d * i) for i in range(d)] + [n - 1]
        assert store.num_segments(video_id) == d + 1
        np.testing.assert_allclose(store.timestamps(video_id), np.array(paper) / rate, atol=1e-6)
        video = SampledVideo(root / "videos" / f"{video_id}.mp4", Sampling(durations={video_id: d}), size=32, listed=d)
        frames, _ = video.read()
        np.testing.assert_array_equal(store.read(video_id), encoder(torch.from_numpy(frames)).numpy())
    capsys.readouterr()
    assert main([*args, "--fps", "1"]) == 0  # the default sampling says that the paper's is on offer
    assert "SAMPLING=paper would take the paper code's frames" in capsys.readouterr().err


def test_packing_fills_every_batch(tiny_videos):
    """Fast path (frames packed across videos) against the slow obvious one (each video on its own)."""
    from data import get_dataset

    ds = get_dataset("synthetic", root=tiny_videos)
    items = [(i, str(ds.video_path(i))) for i in ds.all_video_ids()[:4]]
    sampling = Sampling(segments=7)
    batches = list(pack_videos(items, sampling, (32, 32), batch=5))
    sizes = [b["frames"].shape[0] for b in batches]
    assert all(n == 5 for n in sizes[:-1]) and sum(sizes) == 4 * 7
    rebuilt = collections.defaultdict(list)
    for b in batches:
        offset = 0
        for video_id, start, count in b["spans"]:
            assert start == len(rebuilt[video_id])
            rebuilt[video_id].extend(b["frames"][offset : offset + count].numpy())
            offset += count
    assert [d["video_id"] for b in batches for d in b["done"]] == [i for i, _ in items]
    for video_id, path in items:
        frames, _ = SampledVideo(path, sampling, size=32).read()
        np.testing.assert_array_equal(np.stack(rebuilt[video_id]), frames)


def test_local_vit_folder_gives_the_shard_tokens(tiny_videos, tmp_path, extract_cli):
    """A tiny ViT saved with save_pretrained, loaded back by path: the shard holds exactly HF's tokens."""
    from transformers import ViTConfig, ViTModel

    try:
        from transformers import ViTImageProcessorPil as ViTImageProcessor
    except ImportError:  # pragma: no cover
        from transformers import ViTImageProcessor
    torch.manual_seed(3)
    model = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64), add_pooling_layer=False).eval()
    folder = tmp_path / "my-vit"
    model.save_pretrained(folder)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                                  image_std=[0.229, 0.224, 0.225])
    processor.save_pretrained(folder)
    args = extract_cli(tiny_videos, tmp_path / "cache", "--segments", str(SEGMENTS))
    args[args.index("vit-tiny-random")] = str(folder)
    assert main(args) == 0
    store = FeatureStore(tag_dir(tmp_path / "cache", f"my-vit_seg{SEGMENTS}"))
    assert store.meta["encoder"] == str(folder) and store.meta["hidden_size"] == 32
    from data import get_dataset

    ds = get_dataset("synthetic", root=tiny_videos)
    for video_id in store.ids()[:2]:
        frames, _ = SampledVideo(ds.video_path(video_id), Sampling(segments=SEGMENTS), size=32).read()
        pixel_values = processor(list(frames), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            want = model(pixel_values=pixel_values).last_hidden_state.numpy()
        np.testing.assert_allclose(store.read(video_id).astype(np.float32), want, atol=4e-3, rtol=2e-3)


@pytest.mark.slow
def test_two_processes_gloo_write_every_video_exactly_once(tiny_videos, clean_run, tmp_path, extract_cli):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    args = extract_cli(tiny_videos, tmp_path, "--segments", str(SEGMENTS), "--devices", "2", "--accelerator", "cpu",
                       "--shard-videos", "2")
    proc = subprocess.run([sys.executable, "-m", "extract", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    directory = tag_dir(tmp_path)
    counts = shard_ids(directory)
    ids = video_ids(tiny_videos)
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}
    ranks = {p.name[:9] for p in directory.glob("shard-*.h5")}
    assert ranks == {"shard-r00", "shard-r01"} and not list(directory.glob("*.partial"))
    clean, ddp = FeatureStore(clean_run), FeatureStore(directory)
    for video_id in ids:
        np.testing.assert_array_equal(ddp.read(video_id), clean.read(video_id))
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["last_run"]["extracted"] == len(ids)

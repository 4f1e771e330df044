"""Every encoder family end to end: a tiny checkpoint (hidden 32, 2 layers, 32 px) saved with save_pretrained, its
own image processor beside it, extracted with the arguments `make extract ENCODER=<folder> ...` passes to
`python -m extract` (run in this process) and a head trained on the cache. The cached tokens are checked against the
slow obvious path: the checkpoint's own processor on the decoded frames, the model, and the grid averaged over time by
explicit token indices."""

from __future__ import annotations

import inspect
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from test_train import one_line_error

from data.errors import UserError
from data.store import PROVENANCE_KEYS, FeatureStore
from extract.__main__ import main as extract_main
from extract.encoder import load_encoder, resolve_encoder
from extract.families import FAMILIES
from extract.resize import Resize
from extract.video import SampledVideo, Sampling
from heads.__main__ import main as heads_main
from predict.__main__ import main as predict_main

REPO = Path(__file__).resolve().parents[1]
SEGMENTS = 4
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
SQUARE = {"height": 32, "width": 32}


def _tower(config_class, **kw):
    return config_class(**TINY, image_size=32, patch_size=8, **kw)


# family -> (model builder, processor builder). The processors differ from the identity where the family's real
# checkpoints do: CLIP and DINOv2 resize the short side then crop (bicubic), DINOv2's config asks for a larger input
# than its processor gives (position embeddings interpolated), ViViT rescales to [-1, 1] (offset).
FAMILY_CASES = {
    "deit": (lambda: tf.DeiTModel(_tower(tf.DeiTConfig), add_pooling_layer=False),
             lambda: tf.DeiTImageProcessorPil(size={"height": 40, "width": 40}, crop_size=SQUARE, **IMAGENET)),
    "beit": (lambda: tf.BeitModel(_tower(tf.BeitConfig, use_relative_position_bias=True), add_pooling_layer=False),
             lambda: tf.BeitImageProcessorPil(size=SQUARE, do_center_crop=False)),
    "clip": (lambda: tf.CLIPModel(tf.CLIPConfig(vision_config={**TINY, "image_size": 32, "patch_size": 8},
                                                text_config={**TINY, "vocab_size": 64}, projection_dim=16)),
             lambda: tf.CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size=SQUARE)),
    "siglip": (lambda: tf.SiglipVisionModel(_tower(tf.SiglipVisionConfig)),
               lambda: tf.SiglipImageProcessorPil(size=SQUARE)),
    "dinov2": (lambda: tf.Dinov2Model(tf.Dinov2Config(**TINY, image_size=64, patch_size=8)),
               lambda: tf.BitImageProcessorPil(size={"shortest_edge": 36}, crop_size=SQUARE, **IMAGENET)),
    "dinov2-with-registers": (
        lambda: tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(**TINY, image_size=32, patch_size=8,
                                                                          num_register_tokens=2)),
        lambda: tf.BitImageProcessorPil(size={"shortest_edge": 32}, crop_size=SQUARE, **IMAGENET)),
    "timesformer": (lambda: tf.TimesformerModel(_tower(tf.TimesformerConfig, num_frames=4)),
                    lambda: tf.VideoMAEImageProcessorPil(size={"shortest_edge": 32}, crop_size=SQUARE)),
    "videomae": (lambda: tf.VideoMAEModel(_tower(tf.VideoMAEConfig, num_frames=4, tubelet_size=2)),
                 lambda: tf.VideoMAEImageProcessorPil(size={"shortest_edge": 32}, crop_size=SQUARE, **IMAGENET)),
    "vivit": (lambda: tf.VivitModel(tf.VivitConfig(**TINY, image_size=32, num_frames=4, tubelet_size=[2, 8, 8]),
                                    add_pooling_layer=False),
              lambda: tf.VivitImageProcessor(size={"shortest_edge": 32}, crop_size=SQUARE)),
}


def make_extract_args(**variables) -> list[str]:
    """The arguments `make extract VAR=value ...` passes to `python -m extract` (read from `make -n`), + no progress."""
    out = subprocess.run(["make", "-n", "extract", *(f"{k}={v}" for k, v in variables.items())], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if " -m extract" in line)
    return [*shlex.split(line.split(" -m extract", 1)[1]), "--no-progress"]


def save_checkpoint(family: str, folder):
    build_model, build_processor = FAMILY_CASES[family]
    torch.manual_seed(0)
    model = build_model().eval()
    model.save_pretrained(folder)
    processor = build_processor()
    processor.save_pretrained(folder)
    return model, processor


def reference_tokens(model, processor, frames: np.ndarray, family) -> np.ndarray:
    """The slow path: HF's processor and model, then the temporal mean by explicit token indices (T, S + h*w, D)."""
    config = getattr(model.config, "vision_config", model.config)
    tower = getattr(model, "vision_model", model)
    pixel_values = processor(list(frames), return_tensors="pt")["pixel_values"]  # (n, 3, 32, 32) or (1, n, 3, 32, 32)
    f = family.num_frames(config)
    pixel_values = pixel_values.reshape(-1, *pixel_values.shape[-3:])  # (n, 3, 32, 32): video processors add a dim
    if f > 1:
        pixel_values = pixel_values.reshape(-1, f, *pixel_values.shape[1:])  # (T, F, 3, 32, 32)
    flag = "interpolate_pos_encoding" in inspect.signature(tower.forward).parameters  # DINOv2 always interpolates
    with torch.inference_mode():
        hidden = tower(pixel_values=pixel_values, **({"interpolate_pos_encoding": True} if flag else {}))
    hidden = hidden.last_hidden_state  # (T, S + t*h*w, D)
    s, hw, t = family.special_tokens(config), 16, f // family.tubelet(config)
    if t == 1:
        return hidden.numpy()
    order = [[s + (p * t + i if family.time_fastest else i * hw + p) for i in range(t)] for p in range(hw)]
    grid = torch.stack([hidden[:, idx].mean(1) for idx in order], 1)  # (T, h*w, D)
    return torch.cat([hidden[:, :s], grid], 1).numpy()


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_family_extracts_and_trains(family, tiny_videos, tmp_path, train_cli):
    folder = tmp_path / f"tiny-{family}"
    model, processor = save_checkpoint(family, folder)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    assert extract_main(make_extract_args(DATASET="synthetic", DATA_ROOT=tiny_videos, CACHE_DIR=cache, ENCODER=folder,
                                          SEGMENTS=SEGMENTS, WORKERS=0, BATCH=6)) == 0
    fam = FAMILIES[family]
    config = getattr(model.config, "vision_config", model.config)
    k = fam.num_frames(config)
    tag = f"tiny-{family}_seg{SEGMENTS}" + (f"_fr{k}" if k > 1 else "")
    store = FeatureStore(cache / "synthetic" / tag)
    special = fam.special_tokens(config)
    meta = store.meta
    assert meta["family"] == family and meta["special_tokens"] == special == store.special_tokens
    assert meta["grid"] == [4, 4] and meta["image_size"] == 32 and meta["frames_per_segment"] == k
    assert meta.get("frame_interval") == (pytest.approx(fam.frame_stride / 30) if fam.video else None)

    from data import get_dataset

    ds = get_dataset("synthetic", root=tiny_videos)
    video_id = store.ids()[0]
    sampling = Sampling(**{"segments": SEGMENTS, "frames_per_segment": k,
                           **({"frame_interval": meta["frame_interval"]} if fam.video else {})})
    frames, times = SampledVideo(ds.video_path(video_id), sampling, size=Resize.exact(32)).read()  # decoded, 32 px
    want = reference_tokens(model, processor, frames, fam)  # (T, S + 16, 32)
    got = store.read(video_id).astype(np.float32)
    assert got.shape == want.shape == (SEGMENTS, special + 16, 32)
    # Float16 storage, and where a processor resizes, swscale against PIL (an upscale here: a few grey levels apart;
    # at real sizes they agree within one level, see test_extract_encoder.py).
    err = np.abs(got - want)
    assert err.max() <= 0.03 * np.abs(want).max() and err.mean() <= 0.02 * np.abs(want).mean(), family
    np.testing.assert_allclose(store.timestamps(video_id), times.reshape(SEGMENTS, k).mean(1))

    assert heads_main(train_cli(tiny_videos, cache, runs, "--tag", tag, "--epochs", "1")) == 0
    results = json.loads(next(runs.rglob("results.json")).read_text())
    assert results["cache"]["tag"] == tag and results["cache"]["tokens"] == special + 16
    assert results["cache"]["family"] == family and results["cache"]["special_tokens"] == special


@pytest.mark.parametrize("family,pool", [("videomae", 2), ("dinov2-with-registers", 2)])
def test_predict_encodes_a_new_video_as_extract_did(family, pool, tiny_videos, tmp_path, train_cli):
    """make predict on a file the training cache does not hold goes through the checkpoint's encoder with the cache's
    own sampling (a video encoder's clips), input plan, special tokens and POOL: the same provenance, the same tokens
    as make extract gave that video, the same answer."""
    folder = tmp_path / f"tiny-{family}"
    save_checkpoint(family, folder)
    cache, runs, out = tmp_path / "cache", tmp_path / "runs", tmp_path / "out"
    pooling = {"POOL": pool} if pool else {}
    assert extract_main(make_extract_args(DATASET="synthetic", DATA_ROOT=tiny_videos, CACHE_DIR=cache, ENCODER=folder,
                                          SEGMENTS=SEGMENTS, WORKERS=0, BATCH=6, **pooling)) == 0
    (tag_dir,) = (cache / "synthetic").iterdir()
    assert heads_main(train_cli(tiny_videos, cache, runs, "--tag", tag_dir.name, "--epochs", "1")) == 0
    ckpt = str(next(runs.rglob("best.ckpt")))
    train = FeatureStore(tag_dir)
    video_id = train.ids()[0]
    source = Path(train.video_attrs(video_id)["source"])
    copy = shutil.copy(source, tmp_path / "new.mp4")
    for path in (source, copy):  # from the training cache, then through the encoder
        assert predict_main([str(path), "--ckpt", ckpt, "--out", str(out), "--cache-dir", str(cache), "--no-plot",
                             "--device", "cpu"]) == 0
    predicted = FeatureStore(cache / "predict" / tag_dir.name)
    (key,) = predicted.ids()
    assert key.startswith(str(Path(copy).resolve()))
    keys = [k for k in PROVENANCE_KEYS if k not in ("schema", "dtype")]
    assert {k: predicted.meta.get(k) for k in keys} == {k: train.meta.get(k) for k in keys}
    assert predicted.meta["family"] == family and predicted.meta["pool"] == (pool or "none")
    want = train.read(video_id).astype(np.float32)  # (T, S + grid, D)
    got = predicted.read(key).astype(np.float32)
    assert got.shape == want.shape and got.shape[1] == train.special_tokens + int(np.prod(train.meta["grid"]))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * np.abs(want).max())  # other batches, float16
    np.testing.assert_allclose(predicted.timestamps(key), train.timestamps(video_id))
    answers = [json.loads((out / f"{name}.json").read_text())["top"] for name in (source.stem, "new")]
    assert [entry["label"] for entry in answers[0]] == [entry["label"] for entry in answers[1]]
    for a, b in zip(*answers):
        assert a["probability"] == pytest.approx(b["probability"], abs=2e-3)


def test_pooling_keeps_every_familys_special_tokens(tmp_path):
    """POOL=2 over a grid behind 3 special tokens (CLS + 2 registers): the special tokens pass through unchanged."""
    save_checkpoint("dinov2-with-registers", tmp_path / "reg")
    plain, pooled = load_encoder(str(tmp_path / "reg")), load_encoder(str(tmp_path / "reg"), pool=2)
    frames = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    full, small = plain(frames).float(), pooled(frames).float()  # (2, 3 + 16, 32), (2, 3 + 4, 32)
    assert full.shape == (2, 19, 32) and small.shape == (2, 7, 32) and pooled.attrs()["grid"] == [2, 2]
    torch.testing.assert_close(small[:, :3], full[:, :3], atol=2e-3, rtol=0)
    grid = full[:, 3:].reshape(2, 4, 4, 32)
    want = torch.stack([grid[:, i : i + 2, j : j + 2].mean((1, 2)) for i in (0, 2) for j in (0, 2)], 1)
    torch.testing.assert_close(small[:, 3:], want, atol=2e-3, rtol=0)


def test_unsupported_family_lists_the_supported_ones(tmp_path):
    tf.ConvNextModel(tf.ConvNextConfig(num_channels=3, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])) \
        .save_pretrained(tmp_path / "convnext")
    with pytest.raises(UserError) as info:
        resolve_encoder(str(tmp_path / "convnext"))
    text = str(info.value)
    assert "'convnext'" in text and all(name in text for name in FAMILIES) and "\n" not in text


def test_video_encoder_refuses_another_clip_length(tiny_videos, tmp_path):
    save_checkpoint("videomae", tmp_path / "vmae")
    common = {"DATASET": "synthetic", "DATA_ROOT": tiny_videos, "CACHE_DIR": tmp_path / "cache", "SEGMENTS": 2}
    with pytest.raises(UserError, match="num_frames = 4 frames; leave FRAMES_PER_SEGMENT empty or set it to 4"):
        extract_main(make_extract_args(**common, ENCODER=tmp_path / "vmae", FRAMES_PER_SEGMENT=8))
    with pytest.raises(UserError, match="FRAME_STRIDE applies to video encoders only"):
        extract_main(make_extract_args(**common, ENCODER="vit-tiny-random", FRAME_STRIDE=4))


@pytest.mark.parametrize("family,variables", [("dinov2", {"POOL": 2}), ("videomae", {"FRAME_STRIDE": 2})])
def test_the_hint_to_extract_fills_the_cache_training_uses(family, variables, tiny_videos, tmp_path, capsys,
                                                             monkeypatch, train_cli):
    """A video on disk but not in the cache stops training with the `make extract` command that fills it; that very
    command (data root, encoder, sampling, pool or frame stride, cache dir: none of them the defaults) adds the video
    to the same cache, and training then runs (found by a new user: the hint named only DATASET and CACHE_DIR)."""
    monkeypatch.delenv("DEBUG", raising=False)
    root = tmp_path / "videos"
    shutil.copytree(tiny_videos, root)
    later = next(root.rglob("*.mp4"))
    later.rename(later.with_suffix(".later"))  # not on disk at extraction time
    folder = tmp_path / f"tiny-{family}"
    save_checkpoint(family, folder)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    assert extract_main(make_extract_args(DATASET="synthetic", DATA_ROOT=root, CACHE_DIR=cache, ENCODER=folder,
                                          SEGMENTS=SEGMENTS, WORKERS=0, **variables)) == 0
    (tag_dir,) = (cache / "synthetic").iterdir()
    before = len(FeatureStore(tag_dir))
    later.with_suffix(".later").rename(later)
    err = one_line_error(capsys, train_cli(root, cache, runs, "--epochs", "1"))
    assert "whose media are on disk" in err, err
    hint = shlex.split(err.split("`make extract ", 1)[1].split("`", 1)[0])
    given = dict(word.split("=", 1) for word in hint)
    assert {"DATA_ROOT", "ENCODER", "SEGMENTS", "CACHE_DIR", *variables} <= set(given), hint
    assert extract_main(make_extract_args(**given, WORKERS=0)) == 0
    assert [p.name for p in (cache / "synthetic").iterdir()] == [tag_dir.name]  # the same cache, no second tag
    assert len(FeatureStore(tag_dir)) == before + 1
    assert heads_main(train_cli(root, cache, runs, "--epochs", "1")) == 0

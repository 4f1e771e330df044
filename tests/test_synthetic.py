"""The synthetic long-range set: deterministic files that decode with PyAV, and a class design where only order counts.

The "class design" test is the check the demo's targets rest on: on time-averaged pixels (what an order-blind model
sees) the best simple classifiers stay at chance, while per-step-span means (order-aware) separate the classes.
"""

from __future__ import annotations

import itertools

import av
import numpy as np
import pytest

from data import Record, get_dataset
from data.__main__ import main as data_main
from data.synthetic import (
    STEP_POOL,
    SyntheticConfig,
    class_orders,
    generate,
    labels_csv,
    video_frames,
    video_specs,
)

TINY = {"per_class": {"train": 2, "val": 1, "test": 1}, "seconds": (2.0, 3.0), "fps": 4, "size": 32}


def decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])  # (T, H, W, 3)


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return [generate(root / name, seed=seed, workers=1, **TINY) for name, seed in (("a", 0), ("b", 0), ("c", 1))]


def test_generate_is_deterministic_and_decodes(tiny_sets):
    a, b, c = tiny_sets
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    assert (a / "labels.csv").read_bytes() == labels_csv(SyntheticConfig(**TINY))
    config = SyntheticConfig(**TINY)
    specs = video_specs(config)
    assert len(specs) == 4 * 4 and len(list((a / "videos").glob("*.mp4"))) == 16
    assert not list(a.rglob("*.partial"))
    for video_id, _, _ in specs:  # same seed: byte-identical files (x264 is set up to be reproducible)
        assert (a / "videos" / f"{video_id}.mp4").read_bytes() == (b / "videos" / f"{video_id}.mp4").read_bytes()
    for index, (video_id, _, label) in enumerate(specs[:6]):
        frames_a, frames_b = decode(a / "videos" / f"{video_id}.mp4"), decode(b / "videos" / f"{video_id}.mp4")
        rendered = video_frames(config, 0, index, label)  # (T, S, S, 3)
        assert frames_a.shape == rendered.shape and frames_a.shape[1:] == (32, 32, 3)
        assert 8 <= len(frames_a) <= 12  # 2-3 s at 4 fps
        assert np.array_equal(frames_a, frames_b)  # same seed, same decoded frames
        assert np.abs(frames_a.astype(int) - rendered).mean() < 12  # lossy, but the picture is the picture
        with av.open(str(a / "videos" / f"{video_id}.mp4")) as container:
            assert container.streams.video[0].codec_context.name in ("h264", "mpeg4")
    other = decode(c / "videos" / f"{specs[0][0]}.mp4")
    assert other.shape != frames_a.shape or not np.array_equal(other, decode(a / "videos" / f"{specs[0][0]}.mp4"))


def test_adapter_reads_generated_set(tiny_sets):
    ds = get_dataset("synthetic", root=tiny_sets[0])
    assert ds.splits == ("train", "val", "test") and ds.num_classes == 4 and ds.task_type == "classification"
    assert [len(ds.records(s)) for s in ds.splits] == [8, 4, 4]
    assert ds.records("val") == [Record("syn00008", 0), Record("syn00009", 1), Record("syn00010", 2),
                                 Record("syn00011", 3)]
    assert all(ds.video_path(r.video_id).is_file() for r in ds.records("test"))
    assert ds.missing_media("train") == [] and len(ds.all_video_ids()) == 16
    assert ds.class_names[0] == ">".join(STEP_POOL[s][0] for s in range(4))
    assert ds.default_sampling == {"segments": 64} and ds.clip == ("subset", 32)


def test_rerun_skips_and_force_rewrites(tiny_sets):
    root = tiny_sets[0]
    stamp = (root / "videos" / "syn00000.mp4").stat().st_mtime_ns
    generate(root, seed=0, workers=1, **TINY)
    assert (root / "videos" / "syn00000.mp4").stat().st_mtime_ns == stamp


def test_missing_set_says_how_to_make_it(tmp_path):
    with pytest.raises(ValueError, match=r"no labels.csv .*make data DATASET=synthetic"):
        get_dataset("synthetic", root=tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match="2 <= classes <= 2\\*steps"):
        SyntheticConfig(steps=3, classes=7)
    with pytest.raises(ValueError, match="even frame size"):
        SyntheticConfig(size=33)


@pytest.mark.parametrize(("steps", "classes"), [(4, 4), (4, 8), (3, 5)])
def test_classes_share_steps_and_differ_only_in_order(steps, classes):
    orders = class_orders(steps, classes)
    assert len(set(orders)) == classes
    assert all(sorted(order) == list(range(steps)) for order in orders)  # the same steps, each once
    if classes in (steps, 2 * steps):  # Latin square (+ reversals): every step equally often at every position
        for position in range(steps):
            counts = np.bincount([order[position] for order in orders], minlength=steps)
            assert (counts == classes // steps).all()


def _nearest_centroid(x_train, y_train, x_test) -> np.ndarray:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    centroids = np.stack([x_train[y_train == k].mean(0) for k in np.unique(y_train)])  # (K, F)
    return ((x_test[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)


def _logistic(x_train, y_train, x_test, classes: int, steps: int = 300) -> np.ndarray:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    weights = np.zeros((x_train.shape[1], classes))
    targets = np.eye(classes)[y_train]  # (N, K)
    for _ in range(steps):
        logits = x_train @ weights
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        weights -= 0.5 * (x_train.T @ (prob - targets) / len(x_train) + 1e-3 * weights)
    return (x_test @ weights).argmax(1)


def test_class_design_order_is_the_only_signal():
    """Time-averaged pixels: chance. Means over each quarter of the video: the classes separate."""
    config = SyntheticConfig(per_class={"train": 30, "val": 1, "test": 40}, seconds=(6.0, 9.0), fps=4, size=16)
    pooled, quarters, labels, splits = [], [], [], []
    for index, (_, split, label) in enumerate(video_specs(config)):
        if split == "val":
            continue
        frames = video_frames(config, 0, index, label).astype(np.float32)  # (T, 16, 16, 3)
        cells = frames.reshape(len(frames), 4, 4, 4, 4, 3).mean((2, 4)).reshape(len(frames), -1)  # (T, 48)
        pooled.append(cells.mean(0))
        quarters.append(np.concatenate([part.mean(0) for part in np.array_split(cells, config.steps)]))
        labels.append(label)
        splits.append(split)
    y, train = np.array(labels), np.array(splits) == "train"
    chance = 1 / config.classes
    for features, blind in ((np.stack(pooled), True), (np.stack(quarters), False)):
        for classify in (_nearest_centroid, lambda a, b, c: _logistic(a, b, c, config.classes)):
            accuracy = (classify(features[train], y[train], features[~train]) == y[~train]).mean()
            if blind:
                assert accuracy < chance + 0.12, accuracy  # 160 test videos: sd of chance accuracy ~0.034
            else:
                assert accuracy > 0.95, accuracy


def test_frame_multiset_does_not_depend_on_class():
    """Per class, the share of frames showing each step (and distractors) has the same mean."""
    config = SyntheticConfig(per_class={"train": 60, "val": 1, "test": 1}, seconds=(6.0, 9.0), fps=4, size=16)
    shares = {k: [] for k in range(config.classes)}
    for index, (_, split, label) in enumerate(video_specs(config)):
        if split != "train":
            continue
        frames = video_frames(config, 0, index, label).astype(np.float32)
        # the background hue tells the step; classify each frame by its nearest step colour
        colours = np.stack([frames[:, :2, :2].mean((1, 2))])[0]  # (T, 3) top-left corner
        shares[label].append(colours.mean(0))
    means = np.stack([np.mean(v, 0) for v in shares.values()])  # (K, 3)
    spread = np.stack([np.std(v, 0) / np.sqrt(len(v)) for v in shares.values()]).max()
    for a, b in itertools.combinations(range(config.classes), 2):
        assert np.abs(means[a] - means[b]).max() < 5 * spread + 1.0


def test_cli_make(tmp_path, capsys):
    root = tmp_path / "syn"
    assert data_main(["make", "synthetic", "--root", str(root), "--seed", "3", "--per-class", "1", "1", "1"]) == 0
    out = capsys.readouterr().out
    assert "train 4, val 4, test 4 videos, 4 classes" in out
    assert len(list((root / "videos").glob("*.mp4"))) == 12

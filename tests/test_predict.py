"""Your own videos end to end: a folder in each of the three layouts -> make extract -> make train -> make predict.

Videos are written by the test with PyAV (solid colours plus noise, 32 px, 2 s); the encoder is a tiny ViT built from
a `ViTConfig` and saved with `save_pretrained` (what a user's local model folder looks like). Also: the window
protocol's block reads against one read per window, the predict cache, reuse of the training cache, and the one-line
errors of bad input.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data.errors import run_cli
from data.store import FeatureStore, ShardWriter
from extract.__main__ import main as extract_main
from heads.__main__ import main as heads_main
from heads.training.clips import window_indices, window_starts
from predict.__main__ import main as predict_main
from predict.classify import score_video

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def write_clip(path: Path, colour, seed: int, seconds: float = 2.0, fps: int = 4) -> Path:
    from data.synthetic import pick_codec, write_video

    rng = np.random.default_rng(seed)
    frames = np.clip(np.asarray(colour, np.float32) + rng.normal(0, 25, size=(int(seconds * fps), 32, 32, 3)), 0,
                     255).astype(np.uint8)  # (T, H, W, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, fps, pick_codec())
    return path


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)
    folder = tmp_path_factory.mktemp("encoder")
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def extract_and_train(root: Path, work: Path, encoder: Path, *train_args: str) -> Path:
    """make extract + make train on DATASET=folder; returns the run directory."""
    cache, runs = work / "cache", work / "runs"
    assert extract_main(["--dataset", "folder", "--data-root", str(root), "--cache-dir", str(cache), "--encoder",
                         str(encoder), "--segments", "4", "--workers", "0", "--batch", "16", "--no-progress"]) == 0
    assert heads_main(["train", "--dataset", "folder", "--data-root", str(root), "--cache-dir", str(cache),
                       "--runs-dir", str(runs), "--head", "mean-pool", "--epochs", "2", "--batch", "4", "--workers",
                       "0", "--lr", "0.05", *train_args]) == 0
    return next(runs.rglob("results.json")).parent


def predict(capsys, *args: str) -> tuple[int, list[str], str]:
    """(exit status, stdout lines, stderr) of python -m predict."""
    with pytest.raises(SystemExit) as exc:
        run_cli(predict_main, list(args))
    captured = capsys.readouterr()
    return exc.value.code, captured.out.strip().splitlines(), captured.err


# ------------------------------------------------------------------------------------ layout: class folders
@pytest.fixture(scope="module")
def class_run(tmp_path_factory, encoder_dir):
    work = tmp_path_factory.mktemp("classes")
    root = work / "videos"
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(4):
            write_clip(root / name / f"{name}{i}.mp4", colour, seed=10 * c + i)
    (root / "red" / "notes.txt").write_text("not a video")
    return work, root, extract_and_train(root, work, encoder_dir, "--clip", "subset:4")


def test_class_folders_train_with_names_everywhere(class_run):
    _, root, run = class_run
    results = json.loads((run / "results.json").read_text())
    assert results["class_names"] == ["blue", "green", "red"]
    assert set(results["splits"]) == {"train", "val", "test"}
    assert sorted(sum(results["splits"].values(), [])) == sorted(
        f"{c}/{c}{i}" for c in COLOURS for i in range(4))
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    config = ckpt["hyper_parameters"]["config"]
    assert config["class_names"] == ["blue", "green", "red"] and config["task_type"] == "classification"
    assert {"encoder", "encoder_hash", "segments", "frames_per_segment", "pool"} <= set(config["cache"])
    with (run / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(r["label"] in COLOURS and r["pred"] in COLOURS for r in rows)
    assert {"p_blue", "p_green", "p_red"} <= set(rows[0])


def test_predict_reuses_the_training_cache_then_caches_new_files(class_run, tmp_path, capsys):
    work, root, run = class_run
    ckpt = run / "checkpoints" / "best.ckpt"
    with (run / "predictions.csv").open() as handle:
        row = next(csv.DictReader(handle))
    video = root / f"{row['video_id']}.mp4"
    out = tmp_path / "out"
    # a test video of the training cache: its features are reused, the answer equals the test run's
    status, lines, err = predict(capsys, str(video), "--ckpt", str(ckpt), "--out", str(out))
    assert status == 0 and "(0 encoded" in err
    assert len(lines) == 1 and lines[0].startswith(f"{video}: ")
    document = json.loads((out / f"{video.stem}.json").read_text())
    expected = {name: float(row[f"p_{name}"]) for name in COLOURS}
    assert document["top"][0]["label"] == row["pred"]
    for entry in document["top"]:
        assert entry["probability"] == pytest.approx(expected[entry["label"]], abs=1e-5)
    assert {"video", "checkpoint", "head", "task_type", "duration_s", "top", "windows"} <= set(document)
    assert len(document["windows"]) == 1 and set(document["windows"][0]["probabilities"]) == set(COLOURS)
    assert (out / f"{video.stem}.png").stat().st_size > 0
    # the same video under a new name: decoded and encoded here, the same answer (same sampling, same encoder)
    copy = shutil.copy(video, tmp_path / "tomorrow.mp4")
    status, lines, err = predict(capsys, str(copy), "--ckpt", str(ckpt), "--out", str(out), "--topk", "2",
                                 "--cache-dir", str(work / "cache"))
    assert status == 0 and "(1 encoded" in err
    assert lines[0].startswith(f"{copy}: {row['pred']} 0.") and len(lines[0].split(", ")) == 2  # top-2
    encoded = json.loads((out / "tomorrow.json").read_text())
    for entry in encoded["top"]:
        assert entry["probability"] == pytest.approx(expected[entry["label"]], abs=2e-3)
    (tag_dir,) = list((work / "cache" / "predict").iterdir())  # cache/predict/<tag>/, the training cache's tag
    assert tag_dir.name == Path(json.loads((run / "results.json").read_text())["cache"]["dir"]).name
    (key,) = FeatureStore(tag_dir).ids()
    assert key.startswith(f"{copy.resolve()}#") and len(FeatureStore(tag_dir).video_attrs(key)["display_matrix"]) == 9
    status, _, err = predict(capsys, str(copy), "--ckpt", str(ckpt), "--out", str(out), "--cache-dir",
                             str(work / "cache"))
    assert status == 0 and "(0 encoded" in err  # the second predict encodes nothing
    with (out / "predictions.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["video"] for r in table] == [str(video), str(copy)]  # one row per video, replaced on a rerun
    assert table[0]["label"] == row["pred"] and "label_5" not in table[1]


def test_predict_bad_input_is_one_line(class_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DEBUG", raising=False)
    _, root, run = class_run
    ckpt = str(run / "checkpoints" / "best.ckpt")
    fake = tmp_path / "holiday.mp4"
    fake.write_text("this is not a video\n")
    one_frame = write_clip(tmp_path / "still.mp4", COLOURS["red"], seed=5, seconds=0.25)  # 1 frame
    offline = torch.load(ckpt, map_location="cpu", weights_only=True)
    offline["hyper_parameters"]["config"]["cache"]["encoder"] = "google/vit-not-downloaded"
    torch.save(offline, tmp_path / "offline.ckpt")
    paper = torch.load(ckpt, map_location="cpu", weights_only=True)  # a cache extracted with SAMPLING=paper
    cache = paper["hyper_parameters"]["config"]["cache"]
    cache.pop("fps", None), cache.pop("segments", None)
    cache["durations"] = "lvu_1.0/lvu_durations.csv"
    torch.save(paper, tmp_path / "paper.ckpt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = {
        "a text file named .mp4": ([str(fake), "--ckpt", ckpt], "holiday.mp4: cannot_open"),
        "a video too short for one segment": ([str(one_frame), "--ckpt", ckpt], "still.mp4: too_short"),
        "an encoder not available offline": ([str(shutil.copy(root / "red" / "red0.mp4", tmp_path / "r.mp4")),
                                              "--ckpt", str(tmp_path / "offline.ckpt"), "--cache-dir",
                                              str(tmp_path / "cache")], "HF_HUB_OFFLINE=1 forbids downloading"),
        "a checkpoint of the paper's LVU sampling": ([str(root / "red" / "red0.mp4"), "--ckpt",
                                                     str(tmp_path / "paper.ckpt")], "sampled the paper's LVU way"),
        "a missing file": ([str(tmp_path / "nope.mp4"), "--ckpt", ckpt], "no file or folder at"),
        "not our checkpoint": ([str(fake), "--ckpt", str(fake)], "cannot load checkpoint"),
        "no checkpoint under runs/": ([str(fake), "--runs-dir", str(tmp_path)], "no checkpoints/best.ckpt under"),
    }
    for what, (args, message) in cases.items():
        status, lines, err = predict(capsys, *args, "--out", str(tmp_path / "out"))
        err_lines = err.strip().splitlines()
        assert status == 2 and not lines, what
        assert len(err_lines) == 1 and err_lines[0].startswith("error: ") and message in err_lines[0], (what, err)
    # in a folder, the bad video is reported and the good one is still predicted (exit 1)
    folder = tmp_path / "mixed"
    shutil.copytree(root / "blue", folder)
    shutil.copy(fake, folder / "holiday.mp4")
    (folder / "notes.txt").write_text("not a video")
    status, lines, err = predict(capsys, str(folder), "--ckpt", ckpt, "--out", str(tmp_path / "mixed-out"),
                                 "--no-plot")
    assert status == 1 and len(lines) == 4
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 1 and "holiday.mp4" in err
    assert "skipping 1 files" in err  # notes.txt is not a video


def test_predict_refuses_other_encoder_weights(class_run, tmp_path, capsys, encoder_dir, monkeypatch):
    monkeypatch.delenv("DEBUG", raising=False)
    from transformers import ViTModel

    _, root, run = class_run
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    other = tmp_path / "encoder"
    model = ViTModel.from_pretrained(encoder_dir)
    torch.nn.init.normal_(model.embeddings.cls_token)  # same architecture, other weights
    model.save_pretrained(other)
    ckpt["hyper_parameters"]["config"]["cache"]["encoder"] = str(other)
    torch.save(ckpt, tmp_path / "moved.ckpt")
    clip = write_clip(tmp_path / "new.mp4", COLOURS["red"], seed=99)
    capsys.readouterr()  # transformers' own output while the test saved the model
    status, _, err = predict(capsys, str(clip), "--ckpt", str(tmp_path / "moved.ckpt"), "--cache-dir",
                             str(tmp_path / "cache"))
    assert status == 2 and len(err.strip().splitlines()) == 1 and "was trained on features of weights" in err


# ------------------------------------------------------------------------------------ the other two layouts
def test_split_folders_train_and_predict(tmp_path, encoder_dir, capsys):
    root = tmp_path / "videos"
    for c, name in enumerate(("red", "blue")):
        for split, n in (("train", 4), ("test", 1)):
            for i in range(n):
                write_clip(root / split / name / f"{i}.mkv", COLOURS[name], seed=100 + 10 * c + i)
    run = extract_and_train(root, tmp_path, encoder_dir, "--clip", "subset:4")
    results = json.loads((run / "results.json").read_text())
    assert results["class_names"] == ["blue", "red"] and len(results["splits"]["test"]) == 2
    assert len(results["splits"]["val"]) >= 1 and not set(results["splits"]["val"]) & set(results["splits"]["train"])
    new = write_clip(tmp_path / "new" / "clip.webm", COLOURS["red"], seed=7)
    capsys.readouterr()
    status, lines, err = predict(capsys, str(new), "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"),
                                 "--cache-dir", str(tmp_path / "cache"))
    assert status == 0 and "(1 encoded" in err and lines[0].split(": ")[1].split()[0] in ("red", "blue")


def test_labels_csv_regression_train_and_predict(tmp_path, encoder_dir, capsys):
    root = tmp_path / "videos"
    rows = ["path,target"]
    for i in range(9):
        brightness = 40 + 20 * i
        write_clip(root / "clips" / f"c{i}.mp4", (brightness,) * 3, seed=i)
        rows.append(f"clips/c{i}.mp4,{brightness / 100}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    run = extract_and_train(root, tmp_path, encoder_dir, "--clip", "subset:4")
    results = json.loads((run / "results.json").read_text())
    assert results["task_type"] == "regression" and results["class_names"] is None
    capsys.readouterr()
    status, lines, _ = predict(capsys, str(root / "clips" / "c3.mp4"), "--out", str(tmp_path / "out"),
                               "--runs-dir", str(tmp_path / "runs"), "--no-plot")
    document = json.loads((tmp_path / "out" / "c3.json").read_text())
    assert status == 0 and lines == [f"{root / 'clips' / 'c3.mp4'}: {document['value']:.4g}"]
    assert "top" not in document and set(document["windows"][0]) == {"start_s", "end_s", "value"}


# ------------------------------------------------------------------------------------ the window protocol
class FirstTokenHead(torch.nn.Module):
    """Logits = the first token's first 3 channels of the first segment: each window's scores are known."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):  # (B, T, P, D) -> (B, 3)
        return x[:, 0, 0, :3].float() * self.scale


@pytest.mark.parametrize(("total", "window", "stride", "block"), [(23, 5, 1, 4), (23, 5, 3, 2), (3, 5, 1, 16)])
def test_windows_read_in_blocks_equal_one_read_per_window(tmp_path, total, window, stride, block):
    rng = np.random.default_rng(total)
    tokens = rng.normal(size=(total, 2, 4)).astype(np.float16)  # (T, P, D)
    with ShardWriter(tmp_path, {"hidden_size": 4, "fps": 2.0}) as writer:
        writer.add("v", tokens, np.arange(total) / 2.0, total / 2.0, "v.mp4")
    store = FeatureStore(tmp_path)
    result = score_video(FirstTokenHead(), store, "v", ("window", window), regression=False, fps=2.0,
                         stride=stride, block=block)
    starts = window_starts(total, window, stride)
    expected = [torch.from_numpy(store.read("v", window_indices(total, s, window))[0, 0, :3].astype(np.float32))
                .softmax(-1).numpy() for s in starts]
    assert len(result.windows) == len(starts)
    for (start_s, end_s, scores), s, want in zip(result.windows, starts, expected):
        assert start_s == s / 2.0 and end_s == min(s + window, total) / 2.0
        np.testing.assert_allclose(scores, want, rtol=1e-6)
    np.testing.assert_allclose(result.scores, np.mean(expected, axis=0), rtol=1e-6)

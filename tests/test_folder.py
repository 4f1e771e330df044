"""The folder adapter (`DATASET=folder`) in its three layouts, and the stable split draw every adapter uses."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from data import DatasetError, Record, get_dataset
from data.__main__ import main as data_main
from data.datasets.splits import draw, hold_out, unit_hash


def touch(path: Path, content: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ----------------------------------------------------------------------------- the stable draw
def test_unit_hash_is_sha256_of_seed_and_id():
    expected = int.from_bytes(hashlib.sha256(b"3:cooking/v01").digest()[:8], "big") / 2**64
    assert unit_hash("cooking/v01", 3) == expected and 0.0 <= expected < 1.0
    assert unit_hash("cooking/v01", 4) != expected


def test_draw_follows_the_hash_and_never_moves_a_video():
    ids = [f"v{i:04d}" for i in range(2000)]
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    parts = draw(ids, 7, fractions)
    assert sorted(sum(parts.values(), [])) == ids
    for name, lo, hi in (("train", 0.0, 0.8), ("val", 0.8, 0.9), ("test", 0.9, 1.0)):
        assert all(lo <= unit_hash(v, 7) < hi for v in parts[name])
    assert abs(len(parts["val"]) - 200) < 60 and abs(len(parts["test"]) - 200) < 60
    # adding 500 videos and removing 300 moves none of the others
    more = draw(ids[300:] + [f"new{i}" for i in range(500)], 7, fractions)
    where = {v: name for name, part in parts.items() for v in part}
    assert all(where[v] == name for name, part in more.items() for v in part if v in where)
    assert draw(ids, 8, fractions) != parts  # the seed does change the draw


def test_draw_fills_an_empty_split_of_a_tiny_set():
    parts = draw(["a", "b", "c"], 0, {"train": 0.8, "val": 0.1, "test": 0.1})
    assert sorted(len(p) for p in parts.values()) == [1, 1, 1]
    assert draw(["a"], 0, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": ["a"], "val": [], "test": []}
    records = [Record(f"v{i}", i % 2) for i in range(40)]
    parts = draw(records, 3, {"train": 0.8, "val": 0.1, "test": 0.1}, key=lambda r: r.video_id)
    assert parts["val"] == [r for r in records if 0.8 <= unit_hash(r.video_id, 3) < 0.9]  # no fill needed here


def test_hold_out_is_the_top_of_the_interval():
    ids = [f"x{i}" for i in range(300)]
    kept, held = hold_out(ids, 0.1, seed=1)
    assert sorted(kept + held) == sorted(ids)
    assert held == [v for v in ids if unit_hash(v, 1) >= 0.9]
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\)"):
        hold_out(ids, 1.0, seed=1)


# ----------------------------------------------------------------------------- layout 3: class folders
def class_tree(root: Path, per_class: int = 10) -> None:
    for cls in ("walking", "cooking"):
        for i in range(per_class):
            touch(root / cls / ("2024" if i % 2 else "") / f"v{i:02d}.{('mp4', 'mkv', 'webm')[i % 3]}")
    touch(root / "cooking" / "notes.txt")  # not a video: skipped, counted
    touch(root / "cooking" / "._v00.mp4")  # a macOS resource fork: skipped
    touch(root / "stray.mp4")  # not in a class folder: skipped
    (root / "empty").mkdir()  # no videos: not a class


def test_class_folders(tmp_path):
    class_tree(tmp_path, per_class=20)
    ds = get_dataset("folder", root=tmp_path)
    assert ds.layout_kind == "class folders" and ds.splits == ("train", "val", "test")
    assert ds.class_names == ["cooking", "walking"] and ds.num_classes == 2 and ds.task_type == "classification"
    assert sorted(ds.skipped) == ["cooking/._v00.mp4", "cooking/notes.txt", "stray.mp4"]
    ids = ds.all_video_ids()
    assert len(ids) == 40 and "walking/2024/v01" in ids and "cooking/v00" in ids
    assert ds.video_path("walking/2024/v01") == tmp_path / "walking/2024/v01.mkv"
    for split, (lo, hi) in zip(ds.splits, ((0.0, 0.8), (0.8, 0.9), (0.9, 1.0))):
        records = ds.records(split)
        assert records and all(lo <= unit_hash(r.video_id, 0) < hi for r in records), split
        assert all(r.label == ds.class_names.index(r.video_id.split("/")[0]) for r in records)
    assert ds.missing_media("train") == []


def test_class_folder_splits_are_stable_when_videos_are_added(tmp_path):
    class_tree(tmp_path, per_class=40)
    before = {r.video_id: s for s in ("train", "val", "test") for r in get_dataset("folder", root=tmp_path).records(s)}
    for i in range(40, 55):
        touch(tmp_path / "walking" / f"v{i:02d}.mp4")
    after = {r.video_id: s for s in ("train", "val", "test") for r in get_dataset("folder", root=tmp_path).records(s)}
    assert len(after) == 95 and all(after[v] == s for v, s in before.items())
    other_seed = {r.video_id: s for s in ("train", "val", "test")
                  for r in get_dataset("folder", root=tmp_path, seed=1).records(s)}
    assert other_seed != after


# ----------------------------------------------------------------------------- layout 2: split folders
def test_split_folders_with_and_without_val(tmp_path):
    for split, n in (("train", 4), ("val", 1), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                touch(tmp_path / split / cls / f"{split}{i}.mov")
    touch(tmp_path / "train" / "loose.mp4")  # not in a class folder
    touch(tmp_path / "extra" / "a" / "x.mp4")  # outside train/val/test
    ds = get_dataset("folder", root=tmp_path)
    assert ds.layout_kind == "split folders" and ds.splits == ("train", "val", "test")
    assert [len(ds.records(s)) for s in ds.splits] == [8, 2, 4]
    assert Record("test/b/test1", 1) in ds.records("test")
    assert sorted(ds.skipped) == ["extra/a/x.mp4", "train/loose.mp4"]
    for path in (tmp_path / "val").rglob("*.mov"):
        path.unlink()
    ds = get_dataset("folder", root=tmp_path)
    assert ds.splits == ("train", "test")  # the training side holds out 10 % of train


# ----------------------------------------------------------------------------- layout 1: labels.csv
def test_labels_csv_classification_and_regression(tmp_path):
    touch(tmp_path / "clips" / "a.mp4")
    touch(tmp_path / "clips" / "b.mkv")
    touch(tmp_path / "readme.md")
    touch(tmp_path / "labels.csv", b"path,label,split\nclips/a.mp4,zebra,train\nclips/b.mkv, ant ,test\n"
                                   b"clips/c.mp4,zebra,train\n\n")
    ds = get_dataset("folder", root=tmp_path)
    assert ds.layout_kind == "labels.csv" and ds.splits == ("train", "test") and ds.class_names == ["ant", "zebra"]
    assert ds.records("train") == [Record("clips/a", 1), Record("clips/c", 1)]
    assert ds.records("test") == [Record("clips/b", 0)]
    assert ds.missing_media("train") == ["clips/c"] and ds.skipped == ["readme.md"]
    rows = "".join(f"clips/v{i}.mp4,{i / 4}\n" for i in range(30))
    touch(tmp_path / "labels.csv", ("path,target\n" + rows).encode())
    ds = get_dataset("folder", root=tmp_path)
    assert ds.task_type == "regression" and ds.num_classes is None and ds.class_names is None
    records = sum((ds.records(s) for s in ds.splits), [])
    assert sorted(r.label for r in records) == [i / 4 for i in range(30)]
    assert all(ds.records(s) for s in ds.splits)


@pytest.mark.parametrize(("text", "match"), [
    (b"file,label\nx.mp4,a\n", "header must be path,label"),
    (b"path,label,target\nx.mp4,a,1\n", "header must be path,label"),
    (b"path,target\nx.mp4,tall\n", r"labels.csv:2: target 'tall' is not a finite number"),
    (b"path,label\n../x.mp4,a\n", "must be relative to the root"),
    (b"path,label,split\nx.mp4,a,train\ny.mp4,b,dev\n", r"labels.csv:3: split 'dev' is not one of"),
    (b"path,label,split\nx.mp4,a,train\ny.mp4,b,train\n", "name no test videos"),
    (b"path,label\nx.mp4,a\nx.mkv,b\n", "same video id 'x'"),
    (b"path,label\nx.mp4,a\ny.mp4,a\n", "only the class 'a'"),
])
def test_labels_csv_errors(tmp_path, text, match):
    touch(tmp_path / "labels.csv", text)
    with pytest.raises(DatasetError, match=match):
        get_dataset("folder", root=tmp_path)


def test_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        get_dataset("folder", root=tmp_path / "nope")
    touch(tmp_path / "a.mp4")
    with pytest.raises(DatasetError, match=r"no videos as <class>/<video> .*labels.csv with columns path,label"):
        get_dataset("folder", root=tmp_path)
    touch(tmp_path / "only" / "a.mp4")
    with pytest.raises(DatasetError, match="only the class 'only'"):
        get_dataset("folder", root=tmp_path)
    touch(tmp_path / "train" / "x" / "a.mp4")
    with pytest.raises(DatasetError, match="has train/ but not both train/ and test/"):
        get_dataset("folder", root=tmp_path)
    touch(tmp_path / "test" / "x" / "b.mp4")
    touch(tmp_path / "test" / "y" / "c.mp4")
    touch(tmp_path / "train" / "x" / "a.avi")
    with pytest.raises(DatasetError, match=r"train/x/a.avi and train/x/a.mp4 have the same video id 'train/x/a'"):
        get_dataset("folder", root=tmp_path)
    with pytest.raises(DatasetError, match="folder has no tasks"):
        get_dataset("folder", root=tmp_path, task="s1")


def test_cli_count_folder(tmp_path, capsys):
    class_tree(tmp_path)
    assert data_main(["count", "folder", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("folder (2 classes, class folders) at ")
    counts = [int(line.split()[1]) for line in out[1:4]]
    assert sum(counts) == 20 and all(counts)
    assert "skipped 3 files that are not videos or lie outside the layout" in out[4]

"""Issue 15, point 7: a video id listed twice in any adapter's annotations.

In two splits (test-set leakage) or with two labels: refused with one line naming the ids, how many, and the file.
The same line twice (same split, same label): dropped with a warning. The check lives in the adapters' base class, so
every adapter gets it; each adapter that reads an annotation file is run here on a tiny tree in its own layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data import DATASETS, DatasetError, Record, get_dataset
from data.__main__ import main as data_main
from data.datasets.base import VideoDataset
from data.errors import run_cli


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# Each writer lays out a data set whose annotations list `rows` = [(video id, split, label)] in that order, and
# returns the annotation file that lists `split` (as the error must name it).
def lvu(root: Path, rows) -> dict[str, Path]:
    files = {}
    for split in ("train", "val", "test"):
        lines = [f"{label} Name{label} {vid} tt{n}" for n, (vid, s, label) in enumerate(rows) if s == split]
        files[split] = touch(root / "lvu_1.0" / "relationship" / f"{split}.csv",
                             "\n".join(["class_id class_name youtube_id imdb_id", *lines]) + "\n")
    return files


def coin(root: Path, rows) -> dict[str, Path]:
    subset = {"train": "training", "test": "testing"}
    entries = ", ".join(f'"{vid}": {{"recipe_type": {label}, "class": "Task{label}", "subset": "{subset[s]}"}}'
                        for vid, s, label in rows)  # JSON text: a key may repeat, as in a hand-merged file
    path = touch(root / "COIN.json", f'{{"database": {{{entries}}}}}')
    return {"train": path, "test": path}


def synthetic(root: Path, rows) -> dict[str, Path]:
    touch(root / "meta.json", json.dumps({"class_orders": [["a", "b"], ["b", "a"], ["a", "a"], ["b", "b"]]}))
    path = touch(root / "labels.csv", "video_id,split,label\n" + "".join(f"{v},{s},{label}\n" for v, s, label in rows))
    return {s: path for s in ("train", "val", "test")}


def folder(root: Path, rows) -> dict[str, Path]:
    for vid, _, _ in rows:
        touch(root / f"{vid}.mp4")
    classes = [f"class{label}" for _, _, label in rows]
    path = touch(root / "labels.csv",
                 "path,label,split\n" + "".join(f"{v}.mp4,{c},{s}\n" for (v, s, _), c in zip(rows, classes)))
    return {s: path for s in ("train", "val", "test")}


WRITERS = {"lvu": lvu, "coin": coin, "synthetic": synthetic, "folder": folder}
GOOD = [("v1", "train", 0), ("v2", "train", 1), ("v3", "test", 0), ("v4", "test", 1)]


def test_every_adapter_goes_through_the_base_class_check():
    """No adapter replaces the records the base class checks (Breakfast takes its ids from paths: no repeats)."""
    assert set(WRITERS) | {"breakfast"} == set(DATASETS)
    for cls in DATASETS.values():
        assert "_records" not in vars(cls) and "records" not in vars(cls), cls.__name__


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_an_id_in_train_and_test_is_refused_naming_the_files(tmp_path, name):
    files = WRITERS[name](tmp_path, [*GOOD, ("v2", "test", 1), ("v9", "train", 0), ("v9", "test", 0)])
    with pytest.raises(DatasetError) as info:
        get_dataset(name, root=tmp_path).records("train")
    message = str(info.value)
    assert "\n" not in message and "2 video id(s) listed in more than one split" in message
    assert "'v2' (train/test)" in message and "'v9' (train/test)" in message
    assert str(files["train"]) in message and str(files["test"]) in message


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_an_id_with_two_labels_is_refused(tmp_path, name):
    files = WRITERS[name](tmp_path, [*GOOD, ("v3", "test", 1)])
    with pytest.raises(DatasetError) as info:
        get_dataset(name, root=tmp_path).records("test")
    message = str(info.value)
    assert "1 video id(s) listed with more than one label" in message and "'v3'" in message
    assert str(files["test"]) in message


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_an_exact_repeat_is_dropped_with_a_warning(tmp_path, name):
    files = WRITERS[name](tmp_path, [*GOOD, ("v1", "train", 0), ("v4", "test", 1), ("v4", "test", 1)])
    with pytest.warns(UserWarning, match=r"2 video id\(s\) listed more than once") as caught:
        ds = get_dataset(name, root=tmp_path)
        train, test = ds.records("train"), ds.records("test")
    assert str(files["train"]) in str(caught[0].message)
    assert [r.video_id for r in train] == ["v1", "v2"] and [r.video_id for r in test] == ["v3", "v4"]
    assert ds.all_video_ids() == ["v1", "v2", "v3", "v4"]
    assert isinstance(train[0], Record)


def test_leakage_is_one_error_line_from_the_command_line(tmp_path, capsys):
    lvu(tmp_path, [*GOOD, ("v1", "test", 0)])
    with pytest.raises(SystemExit) as info:
        run_cli(data_main, ["count", "lvu", "--root", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("error: lvu: 1 video id(s)")
    assert "keep each video in one split" in err[0]


def test_the_check_sees_what_load_returns():
    """A minimal adapter: the base class alone refuses, warns and drops (no adapter code involved)."""

    class Listed(VideoDataset):
        name, splits, layout, source = "listed", ("train", "test"), "in memory", "this test"

        def __init__(self, rows):
            self.rows, self.root, self.task, self.seed = rows, Path("."), None, 0

        def _load(self):
            return {s: [Record(v, label) for v, split, label in self.rows if split == s] for s in self.splits}

    assert Listed([("a", "train", 0), ("b", "test", 1)]).records("test") == [Record("b", 1)]
    with pytest.raises(DatasetError, match=r"1 video id\(s\) listed in more than one split.*'a' \(train/test\)"):
        Listed([("a", "train", 0), ("a", "test", 0)]).records("train")
    with pytest.raises(DatasetError, match=r"listed with more than one label: 'a' \(labels 0, 2\)"):
        Listed([("a", "train", 0), ("a", "train", 2)]).records("train")
    with pytest.warns(UserWarning, match=r"1 video id\(s\) listed more than once.*'a'"):
        assert Listed([("a", "train", 0), ("a", "train", 0)]).records("train") == [Record("a", 0)]

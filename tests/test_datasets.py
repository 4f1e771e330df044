"""Dataset adapters on tiny fake trees in each real layout: record counts per split, labels, transforms, ids, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from data import DATASETS, DatasetError, Record, get_dataset
from data.__main__ import main as data_main
from data.datasets.breakfast import ACTIVITIES
from data.datasets.lvu import LIKE_RATIO_MEAN, LOG_VIEW_COUNT_MEAN
from data.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def touch(path: Path, content: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ----------------------------------------------------------------------------- registry
def test_registry_and_unknown_name():
    assert set(DATASETS) == {"breakfast", "coin", "folder", "lvu", "synthetic"}
    with pytest.raises(ValueError, match="valid: breakfast, coin, folder, lvu, synthetic"):
        get_dataset("kinetics")
    assert issubclass(DatasetError, UserError)
    assert DATASETS["lvu"].default_sampling == {"fps": 1.0} and DATASETS["lvu"].clip == ("window", 60)
    for name in ("breakfast", "coin"):
        assert DATASETS[name].default_sampling == {"segments": 128} and DATASETS[name].clip == ("subset", 64)


def test_import_data_is_light():
    code = "import sys, data; bad = [m for m in ('torch', 'av', 'numpy', 'h5py') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_default_root_is_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "elsewhere"))  # get_dataset ignores the environment
    with pytest.raises(DatasetError, match=r"data/raw/coin does not exist"):
        get_dataset("coin")


# ----------------------------------------------------------------------------- Breakfast
def breakfast_tree(root: Path) -> dict[str, int]:
    """Participants 3, 15, 16, 46, 47, 54; 2 activities each; cam01 + webcam01 + stereo (ch0 and ch1)."""
    expected = {}
    for number in (3, 15, 16, 46, 47, 54):
        p = f"P{number:02d}"
        for activity in (ACTIVITIES[number % 10], ACTIVITIES[(number + 3) % 10]):
            for camera in ("cam01", "webcam01"):
                touch(root / p / camera / f"{p}_{activity}.avi")
                expected[f"{p}-{camera}-{p}_{activity}"] = ACTIVITIES.index(activity)
            touch(root / p / "stereo" / f"{p}_{activity}_ch0.avi")
            touch(root / p / "stereo" / f"{p}_{activity}_ch1.avi")  # same recording: not a second video
            expected[f"{p}-stereo-{p}_{activity}_ch0"] = ACTIVITIES.index(activity)
    touch(root / "P16" / "stereo" / "P16_coffee_ch1.avi")  # only channel 1 present: kept
    expected["P16-stereo-P16_coffee_ch1"] = ACTIVITIES.index("coffee")
    touch(root / "P03" / "cam01" / "P03_cereals.avi.labels")  # not a video: ignored
    touch(root / "P03" / "cam01" / "P03_cereals.mp4")  # a video, but not the release's .avi: skipped
    touch(root / "P03" / "cam01" / "P03_lunch.avi")  # unknown activity: skipped
    touch(root / "P03" / "cam01" / "P04_tea.avi")  # wrong participant folder: skipped
    return expected


def test_breakfast_default_split(tmp_path):
    expected = breakfast_tree(tmp_path)
    ds = get_dataset("breakfast", root=tmp_path)
    assert ds.splits == ("train", "test") and ds.task is None and ds.tasks == ("s1", "s2", "s3", "s4")
    train, test = ds.records("train"), ds.records("test")
    # 6 participants x 2 activities x 3 views, + 1 ch1-only stereo video for P16 (train)
    assert (len(train), len(test)) == (4 * 6 + 1, 2 * 6)
    assert {r.video_id[:3] for r in test} == {"P47", "P54"}
    assert dict(train + test) == expected
    assert all(isinstance(r, Record) and isinstance(r.label, int) for r in train)
    assert ds.num_classes == 10 and ds.class_names[0] == "cereals" and ds.task_type == "classification"
    assert sorted(ds.skipped) == ["P03/cam01/P03_cereals.mp4", "P03/cam01/P03_lunch.avi", "P03/cam01/P04_tea.avi"]
    second = next(iter(ds.left_out.values()))  # every _ch1 beside its _ch0, counted instead of dropped silently
    assert len(second) == 6 * 2 and all(path.endswith("_ch1.avi") for path in second)
    assert ds.video_path("P03-stereo-P03_juice_ch0") == tmp_path / "P03/stereo/P03_juice_ch0.avi"
    assert ds.video_path("P03-cam01-P03_juice").is_file()
    assert ds.missing_media("test") == []
    assert sorted(ds.all_video_ids()) == sorted(expected)


@pytest.mark.parametrize(("task", "test_participants"), [
    ("s1", {"P03", "P15"}), ("s2", {"P16"}), ("s3", set()), ("s4", {"P46", "P47", "P54"}),
])
def test_breakfast_standard_splits(tmp_path, task, test_participants):
    breakfast_tree(tmp_path)
    ds = get_dataset("breakfast", root=tmp_path, task=task)
    test_ids = {r.video_id[:3] for r in ds.records("test")}
    train_ids = {r.video_id[:3] for r in ds.records("train")}
    assert test_ids == test_participants
    assert train_ids == {"P03", "P15", "P16", "P46", "P47", "P54"} - test_participants


def test_breakfast_nested_archive_folder_and_errors(tmp_path):
    breakfast_tree(tmp_path / "BreakfastII_15fps_qvga_sync")
    assert len(get_dataset("breakfast", root=tmp_path).records("test")) == 12
    with pytest.raises(DatasetError, match=r"no participant folders.*P03/cam01/P03_cereals.avi.*serre-lab"):
        get_dataset("breakfast", root=tmp_path / "BreakfastII_15fps_qvga_sync" / "P03")
    with pytest.raises(DatasetError, match="does not exist"):
        get_dataset("breakfast", root=tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown TASK 's5' for breakfast; valid: s1, s2, s3, s4"):
        get_dataset("breakfast", root=tmp_path, task="s5")
    with pytest.raises(DatasetError, match="no split 'val'"):
        get_dataset("breakfast", root=tmp_path).records("val")


# ----------------------------------------------------------------------------- COIN
def coin_tree(root: Path) -> None:
    database = {
        "-aZ_0": {"recipe_type": 0, "class": "MakeCoffee", "subset": "training", "duration": 10.0, "annotation": []},
        "bBb11": {"recipe_type": 179, "class": "ChangeTire", "subset": "training", "duration": 5.0, "annotation": []},
        "cCc22": {"recipe_type": 0, "class": "MakeCoffee", "subset": "training", "duration": 7.5, "annotation": []},
        "dDd33": {"recipe_type": 42, "class": "PlantTree", "subset": "testing", "duration": 3.0, "annotation": []},
        "eEe44": {"recipe_type": 179, "class": "ChangeTire", "subset": "testing", "duration": 9.0, "annotation": []},
    }
    touch(root / "COIN.json", json.dumps({"database": database}).encode())
    touch(root / "videos" / "0" / "-aZ_0.mp4")  # the authors' layout
    touch(root / "videos" / "misc" / "dDd33.webm")  # elsewhere: found by id


def test_coin_records_labels_and_missing_media(tmp_path):
    coin_tree(tmp_path)
    ds = get_dataset("coin", root=tmp_path)
    assert ds.splits == ("train", "test") and ds.num_classes == 180
    assert ds.records("train") == [Record("-aZ_0", 0), Record("bBb11", 179), Record("cCc22", 0)]
    assert ds.records("test") == [Record("dDd33", 42), Record("eEe44", 179)]
    assert ds.video_path("-aZ_0") == tmp_path / "videos/0/-aZ_0.mp4"
    assert ds.video_path("dDd33") == tmp_path / "videos/misc/dDd33.webm"
    assert list(ds.left_out.values()) == [[]]
    touch(tmp_path / "videos" / "0" / "-aZ_0.mkv")  # a second download of the same video
    assert list(get_dataset("coin", root=tmp_path).left_out.values()) == [["videos/0/-aZ_0.mkv"]]
    assert ds.video_path("bBb11") == tmp_path / "videos/179/bBb11.mp4"  # expected place, though missing
    assert ds.missing_media("train") == ["bBb11", "cCc22"] and ds.missing_media("test") == ["eEe44"]
    names = ds.class_names
    assert (names[0], names[42], names[179], names[1]) == ("MakeCoffee", "PlantTree", "ChangeTire", "class 1")
    assert ds.all_video_ids() == ["-aZ_0", "bBb11", "cCc22", "dDd33", "eEe44"]


def test_coin_errors(tmp_path):
    tmp_path.joinpath("videos").mkdir()
    with pytest.raises(DatasetError, match=r"no COIN.json .*videos/<recipe_type>/<youtube id>.mp4.*coin-dataset"):
        get_dataset("coin", root=tmp_path)
    touch(tmp_path / "COIN.json", b'{"database": {"x": {"recipe_type": 3, "subset": "validation"}}}')
    with pytest.raises(DatasetError, match="subset='validation'"):
        get_dataset("coin", root=tmp_path)
    touch(tmp_path / "COIN.json", b"not json")
    with pytest.raises(DatasetError, match="not the COIN annotation file"):
        get_dataset("coin", root=tmp_path)
    with pytest.raises(DatasetError, match="coin has no tasks"):
        get_dataset("coin", root=tmp_path, task="s1")


# ----------------------------------------------------------------------------- LVU
LVU_FILES = {
    ("relationship", "train"): "class_id class_name youtube_id imdb_id\n"
    "0 Friends  aaa tt001\n2 Wife And Husband bbb tt002\n\n3 Boyfriend Girlfriend ccc tt003\n",
    ("relationship", "val"): "class_id class_name youtube_id imdb_id\n1 Boss Employee ddd tt004\n",
    ("relationship", "test"): "class_id class_name youtube_id imdb_id\n"
    "0 Friends eee tt005\n2 Wife And Husband fff tt6\n",
    ("writer", "train"): "class_id class_name youtube_id imdb_id\n9 \\N ggg tt007\n4 John Hughes aaa tt001\n",
    ("writer", "val"): "class_id class_name youtube_id imdb_id\n",
    ("writer", "test"): "class_id class_name youtube_id imdb_id\n9 \\N hhh \\N\n",
    ("like_ratio", "train"): "like_count dislike_count youtube_id imdb_id\n900 100 aaa tt001\n50 0 iii tt009\n",
    ("like_ratio", "val"): "like_count dislike_count youtube_id imdb_id\n1 3 jjj tt010\n",
    ("like_ratio", "test"): "like_count dislike_count youtube_id imdb_id\n",
    ("view_count", "train"): "view_count youtube_id imdb_id\n1000 aaa tt001\n",
    ("view_count", "val"): "view_count youtube_id imdb_id\n128000 kkk tt011\n",
    ("view_count", "test"): "view_count youtube_id imdb_id\n1 lll tt012\n",
}


def lvu_tree(root: Path) -> None:
    for (task, split), text in LVU_FILES.items():
        touch(root / "lvu_1.0" / task / f"{split}.csv", text.encode())
    touch(root / "videos" / "aaa.mp4")
    touch(root / "mc_videos" / "bbb.mp4")
    touch(root / "mc_videos" / "aaa.mp4")  # videos/ wins


def test_lvu_classification(tmp_path):
    lvu_tree(tmp_path)
    ds = get_dataset("lvu", root=tmp_path)  # default task
    assert ds.task == "relationship" and ds.splits == ("train", "val", "test")
    assert ds.task_type == "classification" and ds.num_classes == 4
    assert ds.records("train") == [Record("aaa", 0), Record("bbb", 2), Record("ccc", 3)]
    assert ds.records("val") == [Record("ddd", 1)]
    assert [len(ds.records(s)) for s in ds.splits] == [3, 1, 2]
    assert ds.class_names == ["Friends", "Boss Employee", "Wife And Husband", "Boyfriend Girlfriend"]
    assert ds.video_path("aaa") == tmp_path / "videos/aaa.mp4"
    assert ds.video_path("bbb") == tmp_path / "mc_videos/bbb.mp4"
    assert ds.missing_media("train") == ["ccc"] and ds.missing_media("test") == ["eee", "fff"]
    assert list(ds.left_out.values()) == [["mc_videos/aaa.mp4"]]  # the copy not read is counted, not dropped silently
    writer = get_dataset("lvu", root=tmp_path, task="writer")
    assert writer.num_classes == 10 and writer.records("train") == [Record("ggg", 9), Record("aaa", 4)]
    assert writer.records("test") == [Record("hhh", 9)] and writer.records("val") == []
    assert writer.class_names[9] == "\\N" and writer.class_names[4] == "John Hughes"


def test_lvu_regression_transforms(tmp_path):
    lvu_tree(tmp_path)
    like = get_dataset("lvu", root=tmp_path, task="like_ratio")
    assert like.task_type == "regression" and like.num_classes is None and like.class_names is None
    (a, la), (b, lb) = like.records("train")
    assert (a, b) == ("aaa", "iii")
    assert la == pytest.approx(9.0 - 9.138220535629456) and lb == pytest.approx(10.0 - LIKE_RATIO_MEAN)
    assert like.records("val")[0].label == pytest.approx(2.5 - LIKE_RATIO_MEAN)
    views = get_dataset("lvu", root=tmp_path, task="view_count")
    assert views.records("train")[0].label == pytest.approx(math.log(1000) - 11.76425435683139)
    assert views.records("val")[0] == Record("kkk", pytest.approx(math.log(128000) - LOG_VIEW_COUNT_MEAN))
    assert views.records("test")[0].label == pytest.approx(-LOG_VIEW_COUNT_MEAN)


def test_lvu_all_tasks_share_ids_and_errors(tmp_path):
    lvu_tree(tmp_path)
    ds = get_dataset("lvu", root=tmp_path)
    ids = ds.all_video_ids()
    assert ids == ["aaa", "bbb", "ccc", "ddd", "eee", "fff", "ggg", "hhh", "iii", "jjj", "kkk", "lll"]
    with pytest.raises(DatasetError, match="lvu_1.0/scene lacks train.csv, val.csv, test.csv"):
        get_dataset("lvu", root=tmp_path, task="scene")
    with pytest.raises(DatasetError, match="valid: relationship, way_speaking, scene, director, genre, writer, "
                                           "year, like_ratio, view_count"):
        get_dataset("lvu", root=tmp_path, task="speaking")
    touch(tmp_path / "lvu_1.0/genre/train.csv", b"class_id class_name youtube_id imdb_id\n7 Drama xyz tt1\n")
    touch(tmp_path / "lvu_1.0/genre/val.csv", b"class_id class_name youtube_id imdb_id\nabc\n")
    touch(tmp_path / "lvu_1.0/genre/test.csv", b"class_id class_name youtube_id imdb_id\n")
    with pytest.raises(DatasetError, match=r"genre/train.csv:2: .*class_id 7 outside 0..3"):
        get_dataset("lvu", root=tmp_path, task="genre")
    touch(tmp_path / "lvu_1.0/genre/train.csv", b"youtube_id\n")
    with pytest.raises(DatasetError, match="header 'youtube_id' is not LVU's"):
        get_dataset("lvu", root=tmp_path, task="genre")


# ----------------------------------------------------------------------------- CLI
def test_cli_count(tmp_path, capsys, monkeypatch):
    coin_tree(tmp_path)
    assert data_main(["count", "coin", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["train", "3", "records", "2", "missing", "media"]
    assert out[2].split() == ["test", "2", "records", "1", "missing", "media"]
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))  # the CLI honours DATA_ROOT
    assert data_main(["count", "coin"]) == 0
    breakfast_tree(tmp_path / "bf")
    assert data_main(["count", "breakfast", "--root", str(tmp_path / "bf"), "--task", "s1"]) == 0
    out = capsys.readouterr().out
    assert "skipped 3 files" in out and "12 second stereo channels left out" in out
    with pytest.raises(UserError, match="cannot be generated"):
        data_main(["make", "coin"])


def test_cli_error_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "data", "count", "lvu", "--root", str(tmp_path / "x")],
                         cwd=REPO, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: lvu:") and "lvu_1.0/<task>" in lines[0]


def test_lvu_listed_durations(tmp_path):
    """The ViS4mer code's lvu_1.0/lvu_durations.csv is optional: read when present, a one-line error when malformed."""
    lvu_tree(tmp_path)
    ds = get_dataset("lvu", root=tmp_path)
    assert ds.listed_durations() is None and ds.durations_path == tmp_path / "lvu_1.0" / "lvu_durations.csv"
    touch(ds.durations_path, b"videoid,duration\naaa,83\n-4Q-MS_oFkw,128\n\n")
    assert ds.listed_durations() == {"aaa": 83, "-4Q-MS_oFkw": 128}
    touch(ds.durations_path, b"videoid,duration\naaa,83\nbbb,1.5\n")
    with pytest.raises(DatasetError, match=r"lvu_durations.csv:3: cannot parse 'bbb,1.5'"):
        ds.listed_durations()
    touch(ds.durations_path, b"id,seconds\naaa,83\n")
    with pytest.raises(DatasetError, match="is not 'videoid,duration'"):
        ds.listed_durations()

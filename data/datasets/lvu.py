"""LVU, the Long-form Video Understanding benchmark (Wu & Krähenbühl, CVPR 2021): nine tasks on movie clips.

Layout, as the LVU authors distribute it: `<root>/lvu_1.0/<task>/{train,val,test}.csv`, space-separated with a header
line, and the videos `<root>/videos/<youtube id>.mp4` (or `<root>/mc_videos/<youtube id>.mp4`).
- Classification tasks, header `class_id class_name youtube_id imdb_id`: label = first field, youtube id = the
  second-to-last field (class names may contain spaces; `writer` has `\\N` entries). Classes: relationship 4,
  way_speaking 5, scene 6, director 10, genre 4, writer 10, year 9.
- Regression tasks (MSE): `like_ratio` (`like_count dislike_count youtube_id imdb_id`), label =
  like / (like + dislike) * 10 - 9.138220535629456; `view_count` (`view_count youtube_id imdb_id`), label =
  ln(view_count) - 11.76425435683139. The offsets are the constants the LVU/ViS4mer code uses to make them zero-mean.
`task=` picks the task (default `relationship`); all nine share one feature cache, so `all_video_ids()` is the union
over every task found on disk. Protocol (ViS4mer): 1 frame/s, train on a random 60 s window, test on every window.
`lvu_1.0/lvu_durations.csv` (`videoid,duration`, whole seconds), the file the ViS4mer code samples its frames by, is
optional: `listed_durations()` reads it when present (for the paper's frame sampling, `extract.video.Sampling`).
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path

from data.datasets.base import (
    DatasetError,
    Record,
    VideoDataset,
    default_class_names,
    index_media,
    second_copies,
)

CLASSES = {
    "relationship": 4, "way_speaking": 5, "scene": 6, "director": 10, "genre": 4, "writer": 10, "year": 9,
}
REGRESSION = ("like_ratio", "view_count")
LIKE_RATIO_MEAN = 9.138220535629456
LOG_VIEW_COUNT_MEAN = 11.76425435683139
HEADERS = {
    "like_ratio": ("like_count", "dislike_count", "youtube_id", "imdb_id"),
    "view_count": ("view_count", "youtube_id", "imdb_id"),
}
CLASS_HEADER = ("class_id", "class_name", "youtube_id", "imdb_id")
MEDIA_FOLDERS = ("videos", "mc_videos")
DURATIONS_FILE = "lvu_durations.csv"  # the ViS4mer code's per-video durations, under lvu_1.0/


class LVU(VideoDataset):
    name = "lvu"
    splits = ("train", "val", "test")
    tasks = tuple(CLASSES) + REGRESSION
    default_task = "relationship"
    default_sampling = {"fps": 1.0}
    clip = ("window", 60)
    layout = "lvu_1.0/<task>/{train,val,test}.csv and videos/<youtube id>.mp4 (or mc_videos/)"
    source = "https://github.com/chaoyuaw/lvu (lvu_1.0 annotations; videos from YouTube by id)"

    def _check_root(self) -> None:
        super()._check_root()
        folder = self.root / "lvu_1.0" / self.task
        missing = [f"{split}.csv" for split in self.splits if not (folder / f"{split}.csv").is_file()]
        if missing:
            raise self.layout_error(f"{folder.resolve()} lacks {', '.join(missing)}")
        _ = self._records  # parse now so a malformed file fails at the boundary

    @property
    def task_type(self) -> str:
        return "regression" if self.task in REGRESSION else "classification"

    @property
    def num_classes(self) -> int | None:
        return CLASSES.get(self.task)

    @property
    def class_names(self) -> list[str] | None:
        if self.task in REGRESSION:
            return None
        names = default_class_names(CLASSES[self.task])
        for split in self.splits:
            for label, name in self._parse(self.task, split)[1].items():
                names[label] = name
        return names

    def _load(self) -> dict[str, list[Record]]:
        return {split: self._parse(self.task, split)[0] for split in self.splits}

    def listed_in(self, split: str) -> str:
        return str(self.root / "lvu_1.0" / self.task / f"{split}.csv")

    def _parse(self, task: str, split: str) -> tuple[list[Record], dict[int, str]]:
        """Records of one csv, and class id -> class name (classification only)."""
        key = (task, split)
        if key not in self._parsed:
            self._parsed[key] = parse_csv(self.root / "lvu_1.0" / task / f"{split}.csv", task)
        return self._parsed[key]

    @cached_property
    def _parsed(self) -> dict[tuple[str, str], tuple[list[Record], dict[int, str]]]:
        return {}

    def all_video_ids(self) -> list[str]:
        """Every id of every split of all nine tasks present under lvu_1.0/ (they share one cache)."""
        ids: dict[str, None] = {}
        for task in self.tasks:
            for split in self.splits:
                if (self.root / "lvu_1.0" / task / f"{split}.csv").is_file():
                    ids.update(dict.fromkeys(r.video_id for r in self._parse(task, split)[0]))
        return list(ids)

    @property
    def durations_path(self) -> Path:
        """Where the paper's per-video durations are looked for: <root>/lvu_1.0/lvu_durations.csv."""
        return self.root / "lvu_1.0" / DURATIONS_FILE

    def listed_durations(self) -> dict[str, int] | None:
        """youtube id -> duration in whole seconds from `durations_path` (the ViS4mer repository's
        data/lvu_1.0/lvu_durations.csv), or None when the file is absent. Raises DatasetError on a malformed file."""
        path = self.durations_path
        if not path.is_file():
            return None
        return parse_durations(path)

    @cached_property
    def _found(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in MEDIA_FOLDERS:  # videos/ wins over mc_videos/
            for stem, path in index_media(self.root / folder).items():
                found.setdefault(stem, path)
        return found

    def video_path(self, video_id: str) -> Path:
        expected = self.root / "videos" / f"{video_id}.mp4"
        if expected.is_file():
            return expected
        return self._found.get(video_id, expected)

    @property
    def left_out(self) -> dict[str, list[str]]:
        """Video files not read, by reason: second copies of a video (another container, or the other folder)."""
        copies = second_copies([self.root / folder for folder in MEDIA_FOLDERS], self.video_path, self.root)
        return {"second copies of a video left out (another container or folder)": copies}


def parse_csv(path: Path, task: str) -> tuple[list[Record], dict[int, str]]:
    """Parse one LVU csv (space-separated, header line) into records and the class names it mentions."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = tuple(lines[0].split()) if lines else ()
    expected = HEADERS.get(task, CLASS_HEADER)
    if len(header) != len(expected) or header[-2] != "youtube_id":  # lenient on column spelling
        raise DatasetError(f"{path}: header {' '.join(header)!r} is not LVU's {' '.join(expected)!r} for task {task}")
    records: list[Record] = []
    names: dict[int, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        try:
            if task == "view_count":
                if len(fields) != 3:
                    raise ValueError(f"expected 3 fields, got {len(fields)}")
                label: int | float = math.log(float(fields[0])) - LOG_VIEW_COUNT_MEAN
            elif task == "like_ratio":
                if len(fields) != 4:
                    raise ValueError(f"expected 4 fields, got {len(fields)}")
                like, dislike = float(fields[0]), float(fields[1])
                label = like / (like + dislike) * 10.0 - LIKE_RATIO_MEAN
            else:
                if len(fields) < 4:
                    raise ValueError(f"expected at least 4 fields, got {len(fields)}")
                label = int(fields[0])
                if not 0 <= label < CLASSES[task]:
                    raise ValueError(f"class_id {label} outside 0..{CLASSES[task] - 1}")
                names.setdefault(label, " ".join(fields[1:-2]))
        except (ValueError, ZeroDivisionError) as exc:
            raise DatasetError(f"{path}:{number}: cannot parse {line.strip()!r} for task {task} ({exc})") from None
        records.append(Record(fields[-2], label))
    return records, names


def parse_durations(path: Path) -> dict[str, int]:
    """Parse the ViS4mer code's `lvu_durations.csv`: header `videoid,duration`, then `<youtube id>,<seconds>` rows
    (whole seconds >= 0). Raises DatasetError naming the first bad line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = [field.strip() for field in lines[0].split(",")] if lines else []
    if header != ["videoid", "duration"]:
        raise DatasetError(f"{path}: header {','.join(header)!r} is not 'videoid,duration' (the ViS4mer code's "
                           f"{DURATIONS_FILE})")
    durations: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        try:
            if len(fields) != 2 or not fields[0]:
                raise ValueError(f"expected 2 fields, got {len(fields)}")
            seconds = int(fields[1])
            if seconds < 0:
                raise ValueError("negative duration")
        except ValueError as exc:
            raise DatasetError(f"{path}:{number}: cannot parse {line.strip()!r} as videoid,duration ({exc})") from None
        durations[fields[0]] = seconds
    return durations

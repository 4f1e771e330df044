"""The dataset-adapter contract shared by Breakfast, COIN, LVU and the synthetic set (docs/design.md, "Contracts").

An adapter turns a data set *as its authors distribute it* into `Record(video_id, label)` lists per split, built from
the annotations alone (a missing video never changes the record list; `missing_media(split)` reports it instead),
and maps a video id to the file on disk with `video_path`. Only the standard library is imported here, so that
`import data` stays light (no torch, no av, no numpy).

Every adapter's records pass one check here (`check_listing`), so no adapter can skip it: an id listed in two splits
(test-set leakage) or with two labels is refused with one line naming the ids, how many, and the annotation file
(`listed_in`); an exact repeat (same id, split and label) is dropped with a warning. `_load` therefore returns the
records as the annotations list them, repeats included.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import ClassVar, NamedTuple

from data.errors import UserError

# Containers FFmpeg reads that hold video; a file is taken for a video by its extension alone (no av import here).
VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv",
    ".3gp", ".ogv", ".mxf", ".vob", ".dv",
)


class Record(NamedTuple):
    """One labelled video: the id the cache is keyed by and its label (class index, or a float for regression)."""

    video_id: str
    label: int | float


class DatasetError(UserError):
    """The raw data set is missing, laid out differently, or asked for something it does not have."""


def default_root(name: str) -> Path:
    """`data/raw/<name>` relative to the current working directory (the repo root when run through make)."""
    return Path("data") / "raw" / name


class VideoDataset:
    """Base class: subclasses set the class attributes and implement `_load()` (split -> records)."""

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    tasks: ClassVar[tuple[str, ...]] = ()
    default_task: ClassVar[str | None] = None
    default_sampling: ClassVar[dict] = {"segments": 128}
    # The kind of features the paper used (Sec. 4): "frames" (ViT-L/16 tokens per frame, LVU) or "clips" (a video
    # transformer's feature map per segment, Breakfast and COIN); extract/__init__.py's DEFAULT_ENCODERS maps it to
    # the default ENCODER.
    paper_features: ClassVar[str] = "frames"
    clip: ClassVar[tuple[str, int]] = ("subset", 64)
    layout: ClassVar[str] = ""  # the expected layout under the root, one line, for error messages
    source: ClassVar[str] = ""  # where the data set comes from, one line, for error messages

    def __init__(self, root: str | os.PathLike | None = None, task: str | None = None, seed: int = 0) -> None:
        self.root = Path(root) if root not in (None, "") else default_root(self.name)
        self.task = self._check_task(task)
        self.seed = int(seed)  # only adapters that draw their own splits use it (data.datasets.splits)
        self._check_root()

    # ----------------------------------------------------------------- the contract
    @property
    def task_type(self) -> str:
        return "classification"

    @property
    def num_classes(self) -> int | None:
        raise NotImplementedError

    @property
    def class_names(self) -> list[str] | None:
        """Names of the classes in label order, as the data set's authors define them; regression: None."""
        if self.task_type == "regression" or not self.num_classes:
            return None
        return default_class_names(int(self.num_classes))

    def records(self, split: str) -> list[Record]:
        """The labelled videos of `split`, from the annotations only (whether or not the media exist)."""
        return list(self._records[self._check_split(split)])

    def video_path(self, video_id: str) -> Path:
        raise NotImplementedError

    def all_video_ids(self) -> list[str]:
        """Every id of every split (for extraction), in a stable order without duplicates."""
        return _unique(r.video_id for split in self.splits for r in self._records[split])

    def missing_media(self, split: str) -> list[str]:
        """Ids of `split` whose video file is not on disk (normal for COIN: many videos left YouTube)."""
        return _unique(r.video_id for r in self.records(split) if not self.video_path(r.video_id).is_file())

    def __repr__(self) -> str:
        task = f", task={self.task!r}" if self.task else ""
        return f"{type(self).__name__}(root={str(self.root)!r}{task})"

    # ----------------------------------------------------------------- helpers for subclasses
    @cached_property
    def _records(self) -> dict[str, list[Record]]:
        loaded = self._load()
        assert set(loaded) == set(self.splits), (sorted(loaded), self.splits)
        return check_listing(self.name, {split: loaded[split] for split in self.splits}, self.listed_in)

    def _load(self) -> dict[str, list[Record]]:
        """split -> records, as the annotations list them (repeats included: `check_listing` judges them)."""
        raise NotImplementedError

    def listed_in(self, split: str) -> str:
        """Where the records of `split` are listed (an annotation file, or the folder tree), for messages."""
        return str(self.root)

    def _check_root(self) -> None:
        """Raise a one-line DatasetError unless the root holds the layout (subclasses extend)."""
        if not self.root.is_dir():
            raise self.layout_error(f"{self.root.resolve()} does not exist")

    def layout_error(self, problem: str) -> DatasetError:
        return DatasetError(
            f"{self.name}: {problem}. Expected under DATA_ROOT (default data/raw/{self.name}): {self.layout}. "
            f"Get it from {self.source}; then pass DATA_ROOT=<folder> (make) or --root <folder>."
        )

    def _check_task(self, task: str | None) -> str | None:
        if task in (None, ""):
            return self.default_task
        if not self.tasks:
            raise DatasetError(f"{self.name} has no tasks (got TASK={task!r}); leave TASK empty")
        if task not in self.tasks:
            raise DatasetError(f"unknown TASK {task!r} for {self.name}; valid: {', '.join(self.tasks)}")
        return task

    def _check_split(self, split: str) -> str:
        if split not in self.splits:
            raise DatasetError(f"{self.name} has no split {split!r}; valid: {', '.join(self.splits)}")
        return split


def default_class_names(count: int) -> list[str]:
    """`class <i>` for classes the data set leaves unnamed."""
    return [f"class {i}" for i in range(count)]


def is_video_name(path: Path) -> bool:
    """A file FFmpeg should read as a video, judged by its name: a video extension and no leading dot (macOS
    writes `._<name>.mp4` resource forks beside copied videos)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def index_media(folder: Path) -> dict[str, Path]:
    """Map file stem -> path for every video file under `folder` (recursive; first match in sorted order wins)."""
    found: dict[str, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if is_video_name(path) and path.is_file():
                found.setdefault(path.stem, path)
    return found


def check_listing(name: str, loaded: dict[str, list[Record]], listed_in) -> dict[str, list[Record]]:
    """The records per split with exact repeats dropped (one warning); DatasetError when an id is in two splits or
    has two labels. `listed_in(split)` names the file that lists a split, for the messages."""
    first: dict[str, tuple[str, int | float]] = {}  # id -> (split, label) of its first listing
    splits: dict[str, list[str]] = {}  # id -> the splits it is listed in, when more than one
    labels: dict[str, list[int | float]] = {}  # id -> its labels, when more than one
    repeats: dict[str, int] = {}  # id -> how many exact repeats were dropped
    out: dict[str, list[Record]] = {}
    for split, records in loaded.items():
        out[split] = []
        for record in records:
            seen = first.get(record.video_id)
            if seen is None:
                first[record.video_id] = (split, record.label)
            elif seen == (split, record.label):
                repeats[record.video_id] = repeats.get(record.video_id, 0) + 1
                continue
            elif seen[0] != split:
                splits.setdefault(record.video_id, [seen[0]]).append(split)
            elif seen[1] != record.label:
                labels.setdefault(record.video_id, [seen[1]]).append(record.label)
            out[split].append(record)

    def files(split_names) -> str:
        names = list(dict.fromkeys(listed_in(s) for s in split_names))
        return " and ".join(names)

    if splits:
        used = sorted({s for found in splits.values() for s in found}, key=list(loaded).index)
        ids = _some(f"{v!r} ({'/'.join(dict.fromkeys(found))})" for v, found in splits.items())
        raise DatasetError(f"{name}: {len(splits)} video id(s) listed in more than one split (the test set would leak "
                           f"into training): {ids}, in {files(used)}; keep each video in one split")
    if labels:
        ids = _some(f"{v!r} (labels {', '.join(map(str, dict.fromkeys(found)))})" for v, found in labels.items())
        where = sorted({first[v][0] for v in labels}, key=list(loaded).index)
        raise DatasetError(f"{name}: {len(labels)} video id(s) listed with more than one label: {ids}, in "
                           f"{files(where)}; keep one label per video")
    if repeats:
        where = sorted({first[v][0] for v in repeats}, key=list(loaded).index)
        warnings.warn(f"{name}: {len(repeats)} video id(s) listed more than once with the same split and label "
                      f"({_some(map(repr, repeats))}) in {files(where)}; each is used once", stacklevel=4)
    return out


def _some(items: Iterable[str], shown: int = 5) -> str:
    """The first `shown` items joined by commas, and how many more."""
    items = list(items)
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def second_copies(folders: Iterable[Path], used, root: Path) -> list[str]:
    """Video files under `folders` (relative to `root`) that are not the file `used(stem)` reads for their stem: a
    second copy of a video in another container or folder, which an adapter leaves out (and should count)."""
    by_stem: dict[str, list[Path]] = {}
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if is_video_name(path) and path.is_file():
                    by_stem.setdefault(path.stem, []).append(path)
    return [str(path.relative_to(root)) for stem, paths in by_stem.items() if len(paths) > 1
            for path in paths if path != used(stem)]


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))

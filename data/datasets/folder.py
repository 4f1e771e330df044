"""Any folder of videos as a data set (`DATASET=folder`): three layouts under the root, detected in this order.

1. `labels.csv` with columns `path,label[,split]` (classification; `label` is a class name) or `path,target[,split]`
   (regression, a float); `path` is relative to the root. Without a `split` column the splits are drawn (below).
2. `{train,val,test}/<class>/**/<video>`: explicit splits; `val/` is optional (then the training side holds out 10 %
   of train, as for Breakfast and COIN).
3. `<class>/**/<video>`: classes are the folder names; splits are drawn.

Classes are sorted by name. Video id = the path relative to the root without its extension, `/`-separated
(`cooking/2024/v01`). A video is any file whose extension names a container FFmpeg reads (`VIDEO_EXTENSIONS`: mp4,
mkv, webm, avi, mov, ...); other files, hidden ones (`.DS_Store`, macOS `._*` forks) and files outside the layout are
skipped and counted in `.skipped`, not errors. Whether a file really is a video is FFmpeg's call at extraction: a text
file named `.mp4` is recorded there as `cannot_open`.

Drawn splits are 80/10/10 train/val/test (per class in expectation) and **stable**: a video's split depends only on
its id and the seed (`data.datasets.splits`), so adding videos never moves existing ones. Protocol: the Breakfast/COIN
one (`SEGMENTS=128`, train on a random sorted 64, evaluate on 64 uniform); `FPS=1` with `CLIP=window:60` gives LVU's.
"""

from __future__ import annotations

import csv
import math
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from data.datasets.base import DatasetError, Record, VideoDataset, is_video_name
from data.datasets.splits import SPLIT_FRACTIONS, draw

LABELS_FILE = "labels.csv"
SPLITS = ("train", "val", "test")


class Entry(NamedTuple):
    path: Path
    label: str | float  # class name, or the regression target
    split: str | None  # None: drawn


class Scan(NamedTuple):
    kind: str  # "labels.csv" | "split folders" | "class folders"
    entries: dict[str, Entry]  # video id -> entry, in sorted path order
    skipped: list[str]  # paths relative to the root
    regression: bool
    repeats: tuple[tuple[str, Entry], ...] = ()  # labels.csv rows naming an id again (judged by the base class)


class Folder(VideoDataset):
    name = "folder"
    splits = SPLITS  # narrowed per instance to ("train", "test") when an explicit layout has no val
    default_sampling = {"segments": 128}
    clip = ("subset", 64)
    layout = ("<class>/**/<video> (classes = folder names), or {train,val,test}/<class>/**/<video> (val optional), or "
              "labels.csv with columns path,label[,split] or path,target[,split] (paths relative to the root)")
    source = "your own videos (any container FFmpeg reads: mp4, mkv, webm, avi, mov, ...)"
    skipped_kind = "files that are not videos or lie outside the layout"

    def layout_error(self, problem: str) -> DatasetError:
        return DatasetError(f"folder: {problem}. Lay your videos out under DATA_ROOT as {self.layout}; then pass "
                            "DATA_ROOT=<folder> (make) or --root <folder>.")

    def _check_root(self) -> None:
        super()._check_root()
        scan = self._scan
        explicit = {e.split for e in scan.entries.values() if e.split is not None}
        if explicit:
            if not {"train", "test"} <= explicit:
                lacking = " and ".join(s for s in ("train", "test") if s not in explicit)
                where = "split column of labels.csv" if scan.kind == LABELS_FILE else "split folders"
                raise self.layout_error(f"the {where} name no {lacking} videos; give both train and test (val is "
                                        "optional), or leave the splits out to draw 80/10/10")
            self.splits = tuple(s for s in SPLITS if s in explicit)
        if not scan.regression and len(self.class_names) < 2:
            found = f"only the class {self.class_names[0]!r}" if self.class_names else "no class"
            raise self.layout_error(f"{found} in {self.root.resolve()}; a classifier needs at least 2 classes")
        _ = self._records

    # ------------------------------------------------------------------ the contract
    @property
    def layout_kind(self) -> str:
        """Which of the three layouts the root holds: "labels.csv", "split folders" or "class folders"."""
        return self._scan.kind

    @property
    def task_type(self) -> str:
        return "regression" if self._scan.regression else "classification"

    @cached_property
    def _classes(self) -> list[str]:
        entries = [*self._scan.entries.values(), *(e for _, e in self._scan.repeats)]
        return sorted({str(e.label) for e in entries})

    @property
    def num_classes(self) -> int | None:
        return None if self._scan.regression else len(self._classes)

    @property
    def class_names(self) -> list[str] | None:
        return None if self._scan.regression else list(self._classes)

    @property
    def skipped(self) -> list[str]:
        return list(self._scan.skipped)

    def video_path(self, video_id: str) -> Path:
        entry = self._scan.entries.get(video_id)
        return entry.path if entry is not None else self.root / f"{video_id}.mp4"

    def _load(self) -> dict[str, list[Record]]:
        scan = self._scan
        index = {name: i for i, name in enumerate(self._classes)}
        records = {video_id: Record(video_id, e.label if scan.regression else index[str(e.label)])
                   for video_id, e in scan.entries.items()}
        out: dict[str, list[Record]] = {split: [] for split in self.splits}
        drawn = [records[v] for v, e in scan.entries.items() if e.split is None]
        if drawn:
            parts = draw(drawn, self.seed, SPLIT_FRACTIONS, key=lambda r: r.video_id)
            for split, part in parts.items():
                out[split].extend(part)
        for video_id, e in scan.entries.items():
            if e.split is not None:
                out[e.split].append(records[video_id])
        drawn_split = {r.video_id: split for split, part in out.items() for r in part}
        for video_id, e in scan.repeats:  # as listed: the base class drops exact repeats and refuses conflicts
            label = e.label if scan.regression else index[str(e.label)]
            out[e.split or drawn_split[video_id]].append(Record(video_id, label))
        return out

    def listed_in(self, split: str) -> str:
        return str(self.root / LABELS_FILE) if self._scan.kind == LABELS_FILE else str(self.root)

    # ------------------------------------------------------------------ layout detection
    @cached_property
    def _scan(self) -> Scan:
        if (self.root / LABELS_FILE).is_file():
            return self._scan_csv(self.root / LABELS_FILE)
        folders = {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        named = [s for s in SPLITS if s in folders]
        if {"train", "test"} <= folders:
            return self._scan_folders(SPLITS)
        if named:
            raise self.layout_error(
                f"{self.root.resolve()} has {'/, '.join(named)}/ but not both train/ and test/: the split layout needs "
                "train/ and test/ (val/ optional); rename a class folder that is called " + " or ".join(named))
        return self._scan_folders(None)

    def _files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def _add(self, entries: dict[str, Entry], path: Path, label, split: str | None, where: str,
             repeats: list | None = None) -> None:
        relative = PurePosixPath(path.relative_to(self.root).as_posix())
        video_id = str(relative.with_suffix(""))
        if video_id in entries and repeats is not None and entries[video_id].path == path:
            repeats.append((video_id, Entry(path, label, split)))  # the same file listed again
            return
        if video_id in entries:
            raise self.layout_error(f"{entries[video_id].path.relative_to(self.root)} and {relative} have the same "
                                    f"video id {video_id!r} ({where}); rename one of them")
        entries[video_id] = Entry(path, label, split)

    def _scan_folders(self, split_dirs: tuple[str, ...] | None) -> Scan:
        """`<class>/**/<video>` (split_dirs None) or `<split>/<class>/**/<video>`."""
        entries: dict[str, Entry] = {}
        skipped: list[str] = []
        depth = 1 if split_dirs is None else 2  # parts before the class folder's content
        for path in self._files():
            parts = path.relative_to(self.root).parts
            if (len(parts) <= depth or not is_video_name(path) or any(p.startswith(".") for p in parts)
                    or (split_dirs is not None and parts[0] not in split_dirs)):
                skipped.append(path.relative_to(self.root).as_posix())
                continue
            split = None if split_dirs is None else parts[0]
            self._add(entries, path, parts[depth - 1], split, "the same path but another extension")
        if not entries:
            shape = "<class>/<video>" if split_dirs is None else "<split>/<class>/<video>"
            raise self.layout_error(f"no videos as {shape} in {self.root.resolve()} (and no {LABELS_FILE})")
        return Scan("class folders" if split_dirs is None else "split folders", entries, skipped, False)

    def _scan_csv(self, path: Path) -> Scan:
        try:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                rows = list(csv.reader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise self.layout_error(f"cannot read {path} ({exc})") from None
        header = [h.strip().lower() for h in rows[0]] if rows else []
        value = [h for h in ("label", "target") if h in header]
        if "path" not in header or len(value) != 1:
            raise self.layout_error(f"{LABELS_FILE} starts with {','.join(header) or 'nothing'!r}; its header must be "
                                    "path,label[,split] (classification) or path,target[,split] (regression)")
        regression = value[0] == "target"
        col_path, col_value = header.index("path"), header.index(value[0])
        col_split = header.index("split") if "split" in header else None
        entries: dict[str, Entry] = {}
        repeats: list[tuple[str, Entry]] = []
        for number, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            where = f"{LABELS_FILE}:{number}"
            cells = [cell.strip() for cell in row] + [""] * len(header)
            relative, raw = cells[col_path], cells[col_value]
            if not relative or not raw:
                raise self.layout_error(f"{where} has an empty path or {value[0]}")
            pure = PurePosixPath(relative.replace("\\", "/"))
            if pure.is_absolute() or ".." in pure.parts:
                raise self.layout_error(f"{where}: path {relative!r} must be relative to the root, inside it")
            label: str | float = raw
            if regression:
                try:
                    label = float(raw)
                except ValueError:
                    label = math.nan
                if not math.isfinite(label):
                    raise self.layout_error(f"{where}: target {raw!r} is not a finite number")
            split = cells[col_split] if col_split is not None else None
            if col_split is not None and split not in SPLITS:
                raise self.layout_error(f"{where}: split {split!r} is not one of train, val, test")
            self._add(entries, self.root.joinpath(*pure.parts), label, split, f"listed twice, line {number}",
                      repeats)
        if not entries:
            raise self.layout_error(f"{path.resolve()} lists no videos")
        listed = {e.path for e in entries.values()} | {path}
        skipped = [p.relative_to(self.root).as_posix() for p in self._files() if p not in listed]
        return Scan(LABELS_FILE, entries, skipped, regression, tuple(repeats))

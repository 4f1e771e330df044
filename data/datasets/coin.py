"""COIN (Tang et al., CVPR 2019): 11,827 YouTube instructional videos of 180 tasks, read from the authors' COIN.json.

Layout: `<root>/COIN.json` = `{"database": {<youtube id>: {"recipe_type": 0..179, "class": str,
"subset": "training" | "testing", "duration": float, "annotation": [...], ...}}}` and the videos
`<root>/videos/<recipe_type>/<youtube id>.mp4` (the layout of the authors' download script). When a video is not
there, it is found by id anywhere under `videos/` (any usual video extension), so other download layouts work too.
Label = `recipe_type`; `training`/`testing` are exposed as the splits train/test. Many COIN videos have left YouTube:
records still come from the JSON, and `missing_media(split)` lists the ids with no file (a count, not an error).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from data.datasets.base import Record, VideoDataset, default_class_names, index_media, second_copies

NUM_TASKS = 180
SUBSETS = {"training": "train", "testing": "test"}


class Coin(VideoDataset):
    name = "coin"
    splits = ("train", "test")
    default_sampling = {"segments": 128}
    paper_features = "clips"
    clip = ("subset", 64)
    layout = "COIN.json and videos/<recipe_type>/<youtube id>.mp4"
    source = "https://coin-dataset.github.io/ (COIN.json from github.com/coin-dataset/annotations)"

    num_classes = NUM_TASKS

    def _check_root(self) -> None:
        super()._check_root()
        if not (self.root / "COIN.json").is_file():
            raise self.layout_error(f"no COIN.json in {self.root.resolve()}")
        _ = self._entries  # parse now so a broken file fails at the boundary

    @cached_property
    def _entries(self) -> dict[str, tuple[str, int, str]]:
        """youtube id -> (split, recipe_type, class name), from its first entry in COIN.json."""
        entries: dict[str, tuple[str, int, str]] = {}
        for video_id, entry in self._listed:
            entries.setdefault(video_id, entry)
        return entries

    @cached_property
    def _listed(self) -> list[tuple[str, tuple[str, int, str]]]:
        """(youtube id, (split, recipe_type, class name)) for every entry of COIN.json in file order, an id that
        appears twice included (json.loads alone would keep only its last entry, silently)."""
        path = self.root / "COIN.json"
        try:
            database = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_Object)["database"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise self.layout_error(f"{path.resolve()} is not the COIN annotation file ({exc})") from None
        if not isinstance(database, _Object):
            raise self.layout_error(f"{path.resolve()} is not the COIN annotation file (database is not an object)")
        listed: list[tuple[str, tuple[str, int, str]]] = []
        for video_id, entry in database.pairs:
            try:
                subset, recipe = entry["subset"], int(entry["recipe_type"])
            except (KeyError, TypeError, ValueError) as exc:
                raise self.layout_error(f"{path.name}: entry {video_id!r} lacks subset/recipe_type ({exc})") from None
            if subset not in SUBSETS or not 0 <= recipe < NUM_TASKS:
                raise self.layout_error(
                    f"{path.name}: entry {video_id!r} has subset={subset!r}, recipe_type={recipe} "
                    f"(expected training|testing and 0..{NUM_TASKS - 1})"
                )
            listed.append((video_id, (SUBSETS[subset], recipe, str(entry.get("class", "")))))
        return listed

    @property
    def class_names(self) -> list[str]:
        names = default_class_names(NUM_TASKS)
        for _, recipe, name in self._entries.values():
            if name:
                names[recipe] = name
        return names

    def _load(self) -> dict[str, list[Record]]:
        out: dict[str, list[Record]] = {split: [] for split in self.splits}
        for video_id, (split, recipe, _) in self._listed:
            out[split].append(Record(video_id, recipe))
        return out

    def listed_in(self, split: str) -> str:
        return str(self.root / "COIN.json")

    @cached_property
    def _found(self) -> dict[str, Path]:
        return index_media(self.root / "videos")

    def video_path(self, video_id: str) -> Path:
        folder = self.root / "videos"
        if video_id in self._entries:
            folder = folder / str(self._entries[video_id][1])
        expected = folder / f"{video_id}.mp4"
        if expected.is_file():
            return expected
        return self._found.get(video_id, expected)

    @property
    def left_out(self) -> dict[str, list[str]]:
        """Video files not read, by reason: second copies of a video (another container or folder)."""
        return {"second copies of a video left out (another container or folder)":
                second_copies([self.root / "videos"], self.video_path, self.root)}


class _Object(dict):
    """A JSON object that also keeps its (key, value) pairs in file order, repeated keys included."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.pairs = list(pairs)

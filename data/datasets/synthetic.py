"""Adapter for the embedded synthetic long-range set written by `python -m data make synthetic` (data/synthetic.py).

Layout: `<root>/labels.csv` (`video_id,split,label`), `<root>/meta.json` (class orders, step names, config) and
`<root>/videos/<id>.mp4`. Splits train/val/test; classes = orders of the same steps (see data/synthetic.py).

Protocol chosen for the demo's speed (2 CPU cores, a tiny random ViT):
- `default_sampling = {"segments": 64}`: a 20-30 s video at 8 fps has 160-240 frames; 64 segments (one frame every
  ~0.4 s) sample every step (~6 s each) many times and most distractor bursts (1-4 frames) only once or not at all,
  while extraction touches 64 frames per video (~18 k tiny-ViT images for the default 280 videos).
- `clip = ("subset", 32)`: heads train on a random sorted subset of 32 of the 64 segments (augmentation) and test on
  32 uniform segments; 32 x (1 + 16 patches of a 32 px image / 8 px patches) = 544 tokens keeps an S4 epoch at
  seconds. With 4 steps, 32 segments put ~8 segments in each step, so order stays plainly visible.
"""

from __future__ import annotations

import csv
import json
from functools import cached_property
from pathlib import Path

from data.datasets.base import Record, VideoDataset


class Synthetic(VideoDataset):
    name = "synthetic"
    splits = ("train", "val", "test")
    default_sampling = {"segments": 64}
    clip = ("subset", 32)
    layout = "labels.csv (video_id,split,label), meta.json and videos/<id>.mp4"
    source = "this project: run `make data DATASET=synthetic` (or `python -m data make synthetic --root <folder>`)"

    def _check_root(self) -> None:
        super()._check_root()
        for name in ("labels.csv", "meta.json"):
            if not (self.root / name).is_file():
                raise self.layout_error(f"no {name} in {self.root.resolve()} (not generated, or generation stopped)")
        _ = self._records

    @cached_property
    def meta(self) -> dict:
        return json.loads((self.root / "meta.json").read_text())

    @property
    def num_classes(self) -> int:
        return len(self.meta["class_orders"])

    @property
    def class_names(self) -> list[str]:
        return [">".join(order) for order in self.meta["class_orders"]]

    def _load(self) -> dict[str, list[Record]]:
        out: dict[str, list[Record]] = {split: [] for split in self.splits}
        path = self.root / "labels.csv"
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        for number, row in enumerate(rows, start=2):
            try:
                split, label = row["split"], int(row["label"])
                out[split].append(Record(row["video_id"], label))
            except (KeyError, TypeError, ValueError) as exc:
                raise self.layout_error(f"{path.name}:{number} is not video_id,split,label ({exc})") from None
        return out

    def listed_in(self, split: str) -> str:
        return str(self.root / "labels.csv")

    def video_path(self, video_id: str) -> Path:
        return self.root / "videos" / f"{video_id}.mp4"

"""The data side of the pipeline: dataset adapters (labels, splits, video paths) and the feature cache format.

`import data` is light on purpose (standard library only): `data.DATASETS`, `data.get_dataset`, `data.Record`,
`data.DatasetError`. The synthetic generator (`data.synthetic`, numpy + PyAV) and the cache (`data.store`, h5py) are
imported only by those who need them.
"""

from __future__ import annotations

import os

from data.datasets import LVU, Breakfast, Coin, DatasetError, Folder, Record, Synthetic, VideoDataset

DATASETS: dict[str, type[VideoDataset]] = {
    "breakfast": Breakfast,
    "coin": Coin,
    "folder": Folder,
    "lvu": LVU,
    "synthetic": Synthetic,
}


def get_dataset(name: str, root: str | os.PathLike | None = None, task: str | None = None,
                seed: int = 0) -> VideoDataset:
    """The adapter `name` over `root` (None: `data/raw/<name>` under the current directory), for `task`.

    `seed` fixes the splits an adapter draws itself (the folder adapter's 80/10/10, `data.datasets.splits`).
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name](root=root, task=task, seed=seed)


__all__ = ["DATASETS", "DatasetError", "Record", "VideoDataset", "get_dataset"]

"""Lightning data module over a feature cache (`data.store.FeatureStore`) and a dataset's records.

Clips follow the data set's protocol (`ds.clip`, see `heads.training.clips` and docs/design.md): one random clip per
video per epoch for training; every evaluation clip of a video (windows: many, averaged by the module; subsets: one)
for val and test. Videos shorter than a clip repeat their last segment (windows) or repeat segments (subsets); `short`
counts them per split.
Labels always come from the dataset's records, never from the cache. Records without cached features are skipped and
counted (`skipped`) when their media are not on disk or their extraction failed; ones whose media are on disk stop the
run with how many and how to fill them (`allow_missing` skips them too, `require_all` stops on any).
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from data.console import sigterm_to_main
from data.datasets.splits import hold_out
from data.errors import UserError
from heads.training.clips import random_subset, uniform_indices, window_indices, window_starts


# --------------------------------------------------------------------------------------------------------- datasets
class TrainClips(Dataset):
    """One random clip per video per epoch: (tokens float16 (T', P, D), label, video index)."""

    def __init__(self, store, video_ids: list[str], labels: list, lengths: list[int], clip: tuple[str, int],
                 seed: int = 0):
        self.store, self.video_ids, self.labels, self.lengths = store, video_ids, labels, lengths
        self.kind, self.size = clip
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, i: int):
        # A per-item generator seeded by (seed, epoch, item): reproducible with any number of workers or ranks.
        rng = np.random.default_rng((self.seed, self.epoch, i))
        n = self.lengths[i]
        if self.kind == "window":
            start = int(rng.integers(0, max(0, n - self.size) + 1))
            idx = window_indices(n, start, self.size)
        else:
            idx = random_subset(n, self.size, rng)
        tokens = self.store.read(self.video_ids[i], idx)  # any order, repeats allowed
        return torch.from_numpy(np.ascontiguousarray(tokens)), self.labels[i], i


class EvalClips(Dataset):
    """Every evaluation clip of every video (windows: many per video; subsets: one): same items as TrainClips."""

    def __init__(self, store, video_ids: list[str], labels: list, lengths: list[int], clip: tuple[str, int],
                 stride: int = 1):
        self.store, self.video_ids, self.labels = store, video_ids, labels
        self.kind, self.size = clip
        self.items: list[tuple[int, np.ndarray]] = []
        for v, n in enumerate(lengths):
            if self.kind == "window":
                self.items += [(v, window_indices(n, s, self.size)) for s in window_starts(n, self.size, stride)]
            else:
                self.items.append((v, uniform_indices(n, self.size)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        v, idx = self.items[i]
        tokens = self.store.read(self.video_ids[v], idx)  # any order, repeats allowed
        return torch.from_numpy(np.ascontiguousarray(tokens)), self.labels[v], v


def collate(batch, regression: bool = False):
    tokens = torch.stack([b[0] for b in batch])  # (B, T', P, D) float16
    labels = torch.tensor([b[1] for b in batch], dtype=torch.float32 if regression else torch.long)  # (B,)
    videos = torch.tensor([b[2] for b in batch], dtype=torch.long)  # (B,)
    return tokens, labels, videos


def _collate_classification(batch):
    return collate(batch, False)


def _collate_regression(batch):
    return collate(batch, True)


class UnrepeatedSampler(torch.utils.data.Sampler):
    """Evaluation sampler for DDP: rank r takes items r, r + world, ... — every item exactly once over all ranks
    (DistributedSampler would pad with duplicates and bias the per-video averages)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ------------------------------------------------------------------------------------------------------ data module
class FeatureDataModule(pl.LightningDataModule):
    """Splits of `dataset` served from the cache at `store` (a FeatureStore or its tag directory).

    Validation: the dataset's "val" split when it has one, else a held-out `val_fraction` of train, drawn by a hash
    of each video's id and `seed` (`data.datasets.splits.hold_out`), so that it never moves.
    """

    def __init__(self, store, dataset, batch_size: int = 16, workers: int = 2, clip: tuple[str, int] | None = None,
                 eval_stride: int = 1, seed: int = 0, val_fraction: float = 0.1, allow_missing: bool = False,
                 require_all: bool = False, pin_memory: bool | None = None, cache_hint: str = ""):
        super().__init__()
        if not hasattr(store, "read"):
            from data.store import FeatureStore

            store = FeatureStore(store)
        self.store = store
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.clip = tuple(clip or dataset.clip)
        if self.clip[0] not in ("window", "subset") or int(self.clip[1]) < 1:
            raise UserError(f"clip protocol must be ('window', W) or ('subset', K), got {self.clip}")
        self.clip = (self.clip[0], int(self.clip[1]))
        self.notes: list[str] = []
        segments = getattr(store, "meta", {}).get("segments")
        if clip is None and self.clip[0] == "subset" and segments and int(segments) < self.clip[1]:
            # the data set's default subset takes more segments than the cache has per video (SEGMENTS=16 for a
            # folder whose default clip is subset:64): every clip would repeat segments; take them all instead
            self.notes.append(f"CLIP not given: the cache has {int(segments)} segments per video, fewer than "
                              f"{dataset.name}'s default subset:{self.clip[1]}; clips are subset:{int(segments)} "
                              "(CLIP= chooses)")
            self.clip = ("subset", int(segments))
        self.eval_stride = int(eval_stride)
        self.seed = int(seed)
        self.val_fraction = float(val_fraction)
        self.allow_missing = allow_missing
        self.require_all = require_all
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.cache_hint = cache_hint or f"make extract DATASET={dataset.name}"
        self.regression = dataset.task_type == "regression"
        self.splits: dict[str, tuple[list[str], list, list[int]]] = {}
        self.skipped: dict[str, dict[str, int]] = {}  # split -> {"no_media", "failed", "not_extracted"}: counts
        self._build_splits()
        self.short = self._count_short()

    # ---- split resolution and checks
    def _records(self, split: str):
        records = list(self.dataset.records(split))
        if not records:
            raise UserError(f"dataset {self.dataset.name} has no records in split {split!r}; check DATA_ROOT and TASK")
        return records

    def _media_on_disk(self, video_id: str) -> bool:
        """Whether the video's file is on disk (True when the dataset cannot say: then it counts as extractable)."""
        video_path = getattr(self.dataset, "video_path", None)
        if video_path is None:
            return True
        try:
            return video_path(video_id).exists()
        except (OSError, ValueError):
            return False

    def _check_cached(self, split: str, records) -> list:
        """The records of `split` that have cached features. Listed videos without media on disk and those whose
        extraction failed are skipped and counted (DESIGN: LVU and COIN always miss some); videos on disk that are
        not extracted yet stop the run (`make extract` fills them) unless allow_missing; require_all stops on any."""
        from data.store import read_failures

        cached = set(self.store.ids())
        missing = [r for r in records if r.video_id not in cached]
        if not missing:
            return records
        failed = set()
        try:
            failed = {f.get("video_id") for f in read_failures(self.store_dir)}
        except Exception:  # no failures.jsonl is fine
            pass
        known_bad = [r for r in missing if r.video_id in failed]
        no_media = [r for r in missing if r.video_id not in failed and not self._media_on_disk(r.video_id)]
        absent = {r.video_id for r in no_media} | {r.video_id for r in known_bad}
        unfilled = [r for r in missing if r.video_id not in absent]
        why = ", ".join(f"{n} {what}" for n, what in ((len(no_media), "without media on disk"),
                                                      (len(known_bad), "whose extraction failed (failures.jsonl)"),
                                                      (len(unfilled), "on disk but not extracted yet")) if n)
        if self.require_all:
            example = ", ".join(r.video_id for r in missing[:3])
            raise UserError(
                f"the cache {self.store_dir} lacks {len(missing)} of the {len(records)} videos the {split} split "
                f"lists ({why}; e.g. {example}) and REQUIRE_ALL=1 (--require-all) insists on every one; download "
                f"or fix them and run `{self.cache_hint}`, or drop REQUIRE_ALL to train on what is cached")
        if unfilled and not self.allow_missing:
            example = ", ".join(r.video_id for r in unfilled[:3])
            raise UserError(
                f"the cache {self.store_dir} lacks {len(unfilled)} of the {len(records)} videos the {split} split "
                f"needs, whose media are on disk (e.g. {example}); fill it with `{self.cache_hint}` (it resumes and "
                f"encodes only what is missing), or pass ALLOW_MISSING=1 (--allow-missing) to train without them")
        self.skipped[split] = {"no_media": len(no_media), "failed": len(known_bad), "not_extracted": len(unfilled)}
        self.notes.append(f"{split}: skipping {len(missing)} of {len(records)} videos without cached features "
                          f"({why})")
        kept = [r for r in records if r.video_id in cached]
        if not kept:
            raise UserError(f"no video of the {split} split has cached features in {self.store_dir}; "
                            f"run `{self.cache_hint}`")
        return kept

    @property
    def store_dir(self):
        return getattr(self.store, "path", getattr(self.store, "directory", "the cache"))

    def _pack(self, records):
        ids = [r.video_id for r in records]
        labels = [float(r.label) if self.regression else int(r.label) for r in records]
        lengths = [int(self.store.num_segments(v)) for v in ids]
        return ids, labels, lengths

    def _build_splits(self) -> None:
        splits = tuple(self.dataset.splits)
        if "train" not in splits or "test" not in splits:
            raise UserError(f"dataset {self.dataset.name} must have train and test splits, has {splits}")
        train = self._records("train")
        if "val" in splits:
            val = self._check_cached("val", self._records("val"))
        else:
            # Held out by a hash of each id and the seed: adding videos never moves a held-out one, and
            # which videos happen to be cached does not change the draw (data/datasets/splits.py).
            if not 0.0 < self.val_fraction < 1.0:
                raise UserError(f"--val-fraction must lie in (0, 1) for {self.dataset.name}, which has no val split; "
                                f"got {self.val_fraction}")
            kept, held = hold_out(train, self.val_fraction, self.seed, key=lambda r: r.video_id)
            if held:
                train, val = kept, self._check_cached("val", held)
            else:  # a single training video: validate on it
                val = self._check_cached("val", list(train))
            self.notes.append(f"no val split: {len(val)} train videos held out for validation (stable: by a hash of "
                              f"their id and seed {self.seed})")
        train = self._check_cached("train", train)
        test = self._check_cached("test", self._records("test"))
        for name, recs in (("train", train), ("val", val), ("test", test)):
            self.splits[name] = self._pack(recs)

    def _count_short(self) -> dict[str, int]:
        """Videos per split with fewer segments than a clip takes (padded or repeated, see the module docstring)."""
        kind, size = self.clip
        short = {split: sum(n < size for n in lengths) for split, (_, _, lengths) in self.splits.items()}
        how = ("shorter than the {size}-segment window: their last segment repeats" if kind == "window" else
               "with fewer than the {size} segments a clip takes: segments repeat")
        for split, n in short.items():
            if n:
                self.notes.append(f"{split}: {n} of {len(self.splits[split][0])} videos {how.format(size=size)}")
        return short

    # ---- shapes the head needs
    @property
    def feature_shape(self) -> tuple[int, int]:
        """(P, D) of the cached tokens."""
        vid = self.splits["train"][0][0]
        sample = self.store.read(vid, slice(0, 1))  # (1, P, D)
        return int(sample.shape[1]), int(sample.shape[2])

    @property
    def seq_len(self) -> int:
        return self.clip[1] * self.feature_shape[0]

    def video_ids(self, split: str) -> list[str]:
        return self.splits[split][0]

    def split_ids(self) -> dict[str, list[str]]:
        """The ids of every split this module serves (recorded in results.json and the checkpoint)."""
        return {split: list(ids) for split, (ids, _, _) in self.splits.items()}

    def labels(self, split: str) -> list:
        return self.splits[split][1]

    # ---- loaders
    def _loader(self, dataset, sampler=None, shuffle=False, drop_last=False) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, sampler=sampler,
                          num_workers=self.workers, pin_memory=self.pin_memory, drop_last=drop_last,
                          persistent_workers=self.workers > 0, worker_init_fn=sigterm_to_main(),
                          collate_fn=_collate_regression if self.regression else _collate_classification)

    def _dist(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> DataLoader:
        ids, labels, lengths = self.splits["train"]
        self._train_set = TrainClips(self.store, ids, labels, lengths, self.clip, self.seed)
        epoch = self.trainer.current_epoch if getattr(self, "trainer", None) is not None else 0
        self._train_set.epoch = epoch
        rank, world = self._dist()
        if world > 1:
            sampler = DistributedSampler(self._train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
            sampler.set_epoch(epoch)
            return self._loader(self._train_set, sampler=sampler)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return DataLoader(self._train_set, batch_size=self.batch_size,
                          sampler=torch.utils.data.RandomSampler(self._train_set, generator=generator),
                          num_workers=self.workers, pin_memory=self.pin_memory,
                          persistent_workers=False, worker_init_fn=sigterm_to_main(),
                          collate_fn=_collate_regression if self.regression else _collate_classification)

    def eval_dataloader(self, split: str) -> DataLoader:
        ids, labels, lengths = self.splits[split]
        dataset = EvalClips(self.store, ids, labels, lengths, self.clip, self.eval_stride)
        rank, world = self._dist()
        sampler = UnrepeatedSampler(len(dataset), rank, world) if world > 1 else None
        return self._loader(dataset, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

"""Read side of the feature cache: `FeatureStore` reads any subset of segments of a video (see `data.store`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from data.store.layout import (
    DTYPE,
    LEGACY_SPECIAL_TOKENS,
    PER_SHARD_KEYS,
    PROVENANCE_KEYS,
    SCHEMA,
    MissingVideoError,
    StoreError,
    from_attr,
    sealed_shards,
    unescape_id,
)

_HAS_PREADV = hasattr(os, "preadv")


def _normalize_segments(segments, total: int) -> tuple[slice | None, np.ndarray | None]:
    """-> (slice with step 1, None) for contiguous reads or (None, int64 indices in [0, total))."""
    if segments is None:
        return slice(0, total), None
    if isinstance(segments, slice):
        start, stop, step = segments.indices(total)
        if step == 1:
            return slice(start, max(start, stop)), None
        return None, np.arange(start, stop, step, dtype=np.int64)
    if isinstance(segments, (int, np.integer)):
        raise StoreError(f"Expected segments as None, a slice or an index array, got the integer {segments}; "
                         f"use [{segments}] for one segment")
    index = np.asarray(segments)
    if index.dtype == bool:
        if index.shape != (total,):
            raise StoreError(f"Expected a boolean mask of length {total}, got shape {index.shape}")
        return None, np.flatnonzero(index).astype(np.int64)
    if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
        raise StoreError(f"Expected a 1-D integer index array for segments, "
                         f"got {index.dtype} shape {index.shape}")
    index = index.astype(np.int64)
    if index.size and (index.min() < -total or index.max() >= total):
        raise StoreError(f"Segment index out of range for a video of {total} segments: "
                         f"min {index.min()}, max {index.max()}")
    return None, np.where(index < 0, index + total, index)


class FeatureStore:
    """Read side of one cache folder (`cache/<dataset>/<tag>/`): every sealed shard, never `.partial` files.

    The index (id -> shard) is built once when the store is created; shards sealed later are not seen until a
    new store is made. Files are opened lazily and kept open per process; after a fork or unpickling into a
    DataLoader worker the store reopens them in that process.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise StoreError(f"No feature cache at {self.path}: run `make extract` for this dataset first "
                             "(or pass the folder cache/<dataset>/<tag>/ that holds the shard-*.h5 files)")
        self._shards: list[Path] = sealed_shards(self.path)
        self._index: dict[str, tuple[int, str]] = {}  # id -> (shard number, escaped group name)
        self._meta: dict[str, Any] = {}
        self._handles: dict[int, h5py.File] = {}  # shard number -> h5py file, this process only
        self._fds: dict[int, int] = {}  # shard number -> raw read-only fd for pread, this process only
        self._layouts: dict[str, tuple[int, tuple[int, int, int], np.ndarray | None]] = {}
        self._pid = os.getpid()
        self._build_index()

    # -- indexing
    def _build_index(self) -> None:
        shard_attrs: list[dict[str, Any]] = []
        twice: list[str] = []  # "id (first shard, other shard)" for videos that two writers both stored
        for number, shard in enumerate(self._shards):
            try:
                with h5py.File(shard, "r") as handle:
                    attrs = {k: from_attr(v) for k, v in handle.attrs.items()}
                    names = list(handle["videos"].keys()) if "videos" in handle else []
            except OSError as exc:
                raise StoreError(f"Cannot read sealed shard {shard}: {exc}; delete it and rerun "
                                 "`make extract` to redo its videos") from exc
            if attrs.get("schema") != SCHEMA:
                raise StoreError(f"Shard {shard} has schema {attrs.get('schema')!r}, this code reads schema "
                                 f"{SCHEMA}: re-extract into a new cache folder")
            if shard_attrs:
                self._check_provenance(self._shards[0], shard_attrs[0], shard, attrs)
            shard_attrs.append(attrs)
            for name in names:
                video_id = unescape_id(name)
                if video_id in self._index:
                    twice.append(f"{video_id!r} ({self._shards[self._index[video_id][0]].name}, {shard.name})")
                    continue
                self._index[video_id] = (number, name)
        if twice:  # e.g. two extractions ran at once into this folder: the copies hold the same features
            more = f" and {len(twice) - 3} more" if len(twice) > 3 else ""
            warnings.warn(f"{len(twice)} video(s) are in two shards of {self.path}: {', '.join(twice[:3])}{more}; "
                          "each is read from the first", stacklevel=3)
        if shard_attrs:
            meta = {}
            for key, value in shard_attrs[0].items():
                if key in PER_SHARD_KEYS:
                    continue
                if all(other.get(key) == value for other in shard_attrs[1:]):
                    meta[key] = value
            self._meta = meta

    @staticmethod
    def _check_provenance(first: Path, first_attrs: dict, other: Path, other_attrs: dict) -> None:
        diff = [k for k in PROVENANCE_KEYS if first_attrs.get(k) != other_attrs.get(k)]
        if not diff:
            return

        def show(attrs):
            return ", ".join(f"{k}={attrs.get(k)!r}" for k in diff)

        raise StoreError(f"Shards of {first.parent} disagree on provenance: {first.name} has "
                         f"{show(first_attrs)} but {other.name} has {show(other_attrs)}. They come from "
                         "different extractions: move one set into its own cache folder (or delete it) and "
                         "rerun `make extract`")

    # -- mapping-like interface
    def ids(self) -> list[str]:
        return sorted(self._index)

    def __contains__(self, video_id) -> bool:
        return video_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, videos={len(self)}, shards={len(self._shards)})"

    @property
    def meta(self) -> dict[str, Any]:
        """Provenance shared by all shards (encoder, sampling, dims, schema, dtype) as plain Python values."""
        return dict(self._meta)

    @property
    def shards(self) -> list[Path]:
        return list(self._shards)

    @property
    def special_tokens(self) -> int:
        """Tokens before the patch grid in every segment (CLS, registers, ...); 1 for caches older than the attr."""
        return int(self._meta.get("special_tokens", LEGACY_SPECIAL_TOKENS))

    # -- file handles, one set per process
    def _own_process(self) -> None:
        if self._pid != os.getpid():
            # Inherited through fork: HDF5 handles must not be shared across processes; open our own.
            self._handles, self._fds = {}, {}
            self._pid = os.getpid()

    def _fd(self, number: int) -> int:
        self._own_process()
        fd = self._fds.get(number)
        if fd is None:
            fd = os.open(self._shards[number], os.O_RDONLY)
            self._fds[number] = fd
        return fd

    def _file(self, number: int) -> h5py.File:
        self._own_process()
        handle = self._handles.get(number)
        if handle is None:
            handle = h5py.File(self._shards[number], "r")
            self._handles[number] = handle
        return handle

    def _group(self, video_id: str) -> h5py.Group:
        try:
            number, name = self._index[video_id]
        except KeyError:
            raise MissingVideoError(f"Video {video_id!r} is not in the cache at {self.path} ({len(self)} "
                                    "videos in sealed shards): extract it first (`make extract`)") from None
        return self._file(number)["videos"][name]

    def close(self) -> None:
        """Close this process's open files (they reopen on the next read)."""
        if self._pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
            for fd in self._fds.values():
                os.close(fd)
        self._handles, self._fds = {}, {}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing useful to do
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"], state["_fds"] = {}, {}
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # -- reads
    def num_segments(self, video_id: str) -> int:
        return int(self._group(video_id)["tokens"].shape[0])

    def timestamps(self, video_id: str) -> np.ndarray:
        return np.asarray(self._group(video_id).attrs["timestamps"], dtype=np.float64)

    def video_attrs(self, video_id: str) -> dict[str, Any]:
        """Per-video attrs (video_id, timestamps as an array, duration, source), num_segments, shard name."""
        group = self._group(video_id)
        out = {k: (np.asarray(v) if k == "timestamps" else from_attr(v)) for k, v in group.attrs.items()}
        out["num_segments"] = int(group["tokens"].shape[0])
        out["shard"] = self._shards[self._index[video_id][0]].name
        return out

    def read(self, video_id: str, segments=None) -> np.ndarray:
        """Tokens of `video_id` as float16 (T', P, D), reading only the requested segments.

        segments: None (all), a slice, or an integer index array (any order, duplicates allowed, negatives
        count from the end; a boolean mask of length T works too). Rows come back in the order asked.
        """
        number, (total, p, d), offsets = self._layout(video_id)
        window, index = _normalize_segments(segments, total)
        if index is None:
            rows = np.arange(window.start, window.stop, dtype=np.int64)
            return self._read_rows(video_id, number, rows, offsets)
        if index.size == 0:
            return np.empty((0, p, d), dtype=DTYPE)
        unique, inverse = np.unique(index, return_inverse=True)
        data = self._read_rows(video_id, number, unique, offsets)
        if unique.size == index.size and np.array_equal(unique, index):
            return data
        return data[inverse.reshape(-1)]

    def _layout(self, video_id: str) -> tuple[int, tuple[int, int, int], np.ndarray | None]:
        """(shard number, (T, P, D), byte offset of each segment's raw chunk or None); cached per video."""
        layout = self._layouts.get(video_id)
        if layout is None:
            dataset = self._group(video_id)["tokens"]
            layout = (self._index[video_id][0], tuple(dataset.shape), _chunk_offsets(dataset))
            self._layouts[video_id] = layout
        return layout

    def _read_rows(self, video_id: str, number: int, rows: np.ndarray,
                   offsets: np.ndarray | None) -> np.ndarray:
        """Sorted, unique rows of one video -> (T', P, D) float16."""
        if offsets is None:
            return _read_rows_hdf5(self._group(video_id)["tokens"], rows)
        _, (_, p, d), _ = self._layouts[video_id]
        out = np.empty((rows.size, p, d), dtype=DTYPE)  # (T', P, D)
        if rows.size == 0:
            return out
        row_bytes = p * d * DTYPE.itemsize
        flat = out.reshape(rows.size, p * d).view(np.uint8)  # (T', P*D*2) bytes
        positions = offsets[rows]
        # Rows whose chunks follow each other in the file are read with one call (a window: usually one call).
        breaks = np.flatnonzero(np.diff(positions) != row_bytes) + 1
        fd = self._fd(number)
        starts, stops = np.concatenate(([0], breaks)), np.concatenate((breaks, [rows.size]))
        for a, b in zip(starts.tolist(), stops.tolist()):
            _pread_into(fd, memoryview(flat[a:b]).cast("B"), int(positions[a]), self._shards[number])
        return out


def _chunk_offsets(dataset: h5py.Dataset) -> np.ndarray | None:
    """(T,) byte offsets of the chunks of a (T, P, D) dataset stored as raw float16 rows, chunks (1, P, D).

    None when the layout is anything else (other chunking, a filter, another dtype) or when the platform has
    no `os.preadv`: such datasets are read through HDF5.
    """
    total, p, d = dataset.shape
    if (not _HAS_PREADV or dataset.chunks != (1, p, d) or dataset.dtype != DTYPE
            or dataset.id.get_create_plist().get_nfilters() != 0):
        return None
    row_bytes = p * d * DTYPE.itemsize
    offsets = np.full(total, -1, dtype=np.int64)
    dsid = dataset.id
    infos = [dsid.get_chunk_info(i) for i in range(dsid.get_num_chunks())]
    for info in infos:
        if info.size != row_bytes or info.filter_mask or info.byte_offset is None:
            return None
        offsets[info.chunk_offset[0]] = info.byte_offset
    if (offsets < 0).any():  # a chunk never written (cannot happen for ShardWriter files)
        return None
    return offsets


def _pread_into(fd: int, buffer: memoryview, position: int, path: Path) -> None:
    done = 0
    while done < len(buffer):
        count = os.preadv(fd, [buffer[done:]], position + done)
        if count <= 0:
            raise StoreError(f"Shard {path} is shorter than its index says (truncated copy?): delete it and "
                             "rerun `make extract` to redo its videos")
        done += count


def _read_rows_hdf5(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read sorted, unique rows (segments) of a (T, P, D) dataset into one float16 array."""
    _, p, d = dataset.shape
    out = np.empty((rows.size, p, d), dtype=DTYPE)
    if rows.size == 0:
        return out
    raw_chunks = (dataset.chunks == (1, p, d) and dataset.dtype == DTYPE
                  and dataset.id.get_create_plist().get_nfilters() == 0)
    if raw_chunks:
        # One chunk per segment, stored unfiltered: copy its bytes straight into the output row.
        flat = out.reshape(rows.size, p * d).view(np.uint8)  # (T', P*D*2) bytes
        read_chunk = dataset.id.read_direct_chunk
        for k, row in enumerate(rows.tolist()):
            read_chunk((row, 0, 0), out=flat[k])
        return out
    # Generic path (another chunking or a compression filter): one HDF5 read per run of consecutive rows.
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [rows.size]))
    if dataset.dtype == DTYPE:
        for a, b in zip(starts.tolist(), stops.tolist()):
            dataset.read_direct(out, np.s_[rows[a] : rows[a] + (b - a)], np.s_[a:b])
    else:
        for a, b in zip(starts.tolist(), stops.tolist()):
            out[a:b] = dataset[rows[a] : rows[a] + (b - a)]
    return out

"""The feature cache: the boundary between stage 1 (extract) and stage 2 (heads), HDF5 schema 1.

Layout of one cache (see DESIGN.md, "The cache (HDF5 schema 1)"):

    cache/<dataset>/<tag>/shard-r{rank:02d}-{index:05d}.h5   sealed, immutable shard
                          shard-r..-.....h5.partial          shard being written (never read)
                          failures.jsonl                     {"video_id", "path", "error"} per failed video

    file attrs : schema=1, encoder, encoder_hash, image_size, patch_size, hidden_size, grid=[h, w], pool,
                 fps or segments, frames_per_segment, dtype="float16", created, version
    /videos/<escaped id>/tokens : float16 (T, P, D), chunks (1, P, D), uncompressed
    /videos/<escaped id> attrs  : video_id, timestamps (T,) seconds, duration, source

Axis letters: T segments (or frames at a fixed fps), P tokens per segment (1 CLS + h*w patches), D channels.

`ShardWriter` appends videos to a `.partial` file and seals it (flush, fsync, rename to `.h5`, fsync the
folder) after `max_videos` videos or before it would exceed `max_bytes`, and at `close()`. A killed writer
therefore loses only its open `.partial`; `FeatureStore` indexes sealed shards only, so those videos count as
not done and a resumed extraction redoes them. Tokens are stored uncompressed on purpose: ViT activations
barely compress, and training reads random rows of them many times, so read speed matters more than disk.

`FeatureStore` reads any subset of segments of a video. Each segment is one raw (unfiltered) HDF5 chunk: the
store asks HDF5 once per video where its chunks lie (`get_chunk_info`) and then reads the requested rows with
`os.preadv` straight into the output array, one call per run of consecutive rows. h5py's own fancy indexing is
~100x slower for the random sorted subsets that training draws; datasets of any other layout (compressed,
other chunking) are read through HDF5. The store pickles into DataLoader workers and (re)opens its files
lazily in each process.

Only numpy, h5py and the standard library are used here, so both stages can import this module cheaply.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = [
    "PROVENANCE_KEYS",
    "SCHEMA",
    "FeatureStore",
    "MissingVideoError",
    "ShardWriter",
    "StoreError",
    "append_failure",
    "escape_id",
    "find_caches",
    "make_tag",
    "read_failures",
    "unescape_id",
]

SCHEMA = 1
DTYPE = np.dtype("<f2")
_HAS_PREADV = hasattr(os, "preadv")
# Attributes that must agree across every shard of one cache: they decide what the numbers in `tokens` mean.
PROVENANCE_KEYS = (
    "encoder",
    "encoder_hash",
    "image_size",
    "patch_size",
    "hidden_size",
    "grid",
    "pool",
    "fps",
    "segments",
    "frames_per_segment",
    "schema",
    "dtype",
)
# Attributes that legitimately differ from shard to shard (never part of `meta`).
_PER_SHARD_KEYS = ("created", "version", "rank")
_SHARD_RE = re.compile(r"^shard-r(\d{2,})-(\d{5,})\.h5(\.partial)?$")
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
FAILURES_FILE = "failures.jsonl"


class StoreError(ValueError):
    """A cache that cannot be used as asked (missing, mismatched, malformed); the message says what to do."""


class MissingVideoError(StoreError, KeyError):
    """A video id that is not in any sealed shard (a KeyError too, so mappings-style code can catch it)."""

    __str__ = Exception.__str__  # KeyError would wrap the message in quotes


# ----------------------------------------------------------------------------------------------------------
# ids and tags


def escape_id(video_id: str) -> str:
    """Reversible HDF5-safe name for any video id: UTF-8 bytes outside [A-Za-z0-9_-] become %XX."""
    if not isinstance(video_id, str) or not video_id:
        raise StoreError(f"Expected a non-empty string video id, got {video_id!r}")
    return "".join(ch if ch in _SAFE_CHARS else "".join(f"%{b:02X}" for b in ch.encode("utf-8"))
                   for ch in video_id)


def unescape_id(name: str) -> str:
    """Inverse of `escape_id`."""
    out = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "%":
            out.append(int(name[i + 1 : i + 3], 16))
            i += 3
        else:
            out.extend(name[i].encode("utf-8"))
            i += 1
    return out.decode("utf-8")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"


def _number(value: float) -> str:
    return f"{float(value):g}"


def make_tag(encoder: str, fps=None, segments=None, frames_per_segment: int = 1, pool=None) -> str:
    """Folder name of a cache: encoder slug + sampling, e.g. "vit-large-patch16-224-in21k_fps1".

    The slug is the last component of a hub id or local path. Exactly one of `fps` / `segments` must be given.
    `frames_per_segment` > 1 adds "_fr<k>"; a pool other than None/"none" adds "_pool-<pool>".
    """
    if not encoder or not str(encoder).strip("/"):
        raise ValueError(f"Expected an encoder name (hub id or model folder), got {encoder!r}")
    if (fps is None) == (segments is None):
        raise ValueError(f"Expected exactly one of fps= or segments=, got fps={fps!r}, segments={segments!r}")
    slug = _slug(str(encoder).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1])
    if fps is not None:
        if float(fps) <= 0:
            raise ValueError(f"Expected fps > 0, got {fps!r}")
        tag = f"{slug}_fps{_number(fps)}"
    else:
        if int(segments) <= 0 or int(segments) != segments:
            raise ValueError(f"Expected a positive integer number of segments, got {segments!r}")
        tag = f"{slug}_seg{int(segments)}"
    if frames_per_segment is not None and int(frames_per_segment) != 1:
        if int(frames_per_segment) < 1:
            raise ValueError(f"Expected frames_per_segment >= 1, got {frames_per_segment!r}")
        tag += f"_fr{int(frames_per_segment)}"
    if pool is not None and str(pool).lower() != "none":
        tag += f"_pool-{_slug(str(pool))}"
    return tag


def _sealed_shards(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("shard-*.h5") if p.is_file())


def find_caches(cache_root, dataset: str) -> list[Path]:
    """Tag folders of `cache_root/dataset` holding at least one sealed shard, most recently modified first."""
    base = Path(cache_root) / dataset
    if not base.is_dir():
        return []
    found = []
    for tag_dir in base.iterdir():
        if not tag_dir.is_dir():
            continue
        shards = _sealed_shards(tag_dir)
        if shards:
            found.append((max(p.stat().st_mtime for p in shards), tag_dir.name, tag_dir))
    found.sort(key=lambda item: (-item[0], item[1]))
    return [tag_dir for _, _, tag_dir in found]


# ----------------------------------------------------------------------------------------------------------
# failures.jsonl


def append_failure(directory, video_id: str, path, error) -> None:
    """Append one {"video_id", "path", "error", "time"} line to `<directory>/failures.jsonl`.

    One `write` of one line on an O_APPEND file, so several ranks can share the file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}"
    record = {
        "video_id": str(video_id),
        "path": None if path is None else str(path),
        "error": " ".join(str(error).split()),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(directory / FAILURES_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_failures(directory) -> list[dict]:
    """Records of `<directory>/failures.jsonl` in file order ([] if none); a torn last line is skipped."""
    path = Path(directory) / FAILURES_FILE
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: skipping an unreadable line (a writer was killed mid-line?)",
                              stacklevel=2)
    return records


# ----------------------------------------------------------------------------------------------------------
# attribute conversion


def _to_attr(key: str, value):
    """A provenance value as something HDF5 stores and gives back unchanged."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value)
        if array.dtype.kind in "iuf" and array.ndim == 1:
            return array.astype(np.int64 if array.dtype.kind in "iu" else np.float64)
    raise StoreError(f"Expected a str, number or 1-D list of numbers for provenance attr {key!r}, "
                     f"got {value!r}")


def _from_attr(value):
    """HDF5 attr -> plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def package_version() -> str:
    """The installed version of this project ("0+unknown" when run from a tree that is not installed)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("vis4mer-pipeline")
    except PackageNotFoundError:
        return "0+unknown"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------
# write side


class ShardWriter:
    """Append videos to `<directory>/shard-r{rank:02d}-{index:05d}.h5.partial`; seal each shard into `.h5`.

    A shard is sealed after `max_videos` videos, before a video that would push it past `max_bytes` (a
    single video larger than `max_bytes` gets a shard of its own), and at `close()`. Shard indices continue
    after every shard of this rank already in the folder (sealed or partial), so nothing is ever overwritten.
    `attrs` is the provenance (encoder, encoder_hash, image_size, patch_size, hidden_size, grid, pool, fps or
    segments, frames_per_segment); keys whose value is None are not stored. The writer adds schema, dtype,
    created, version and rank. Tokens are stored as float16, chunks (1, P, D), without compression (read
    speed matters more than disk space).

    Use as a context manager: the open shard is sealed on exit, also when an exception ends the block (a
    video whose `add` failed is not in it; if it cannot be undone, the shard stays `.partial`, like a killed
    writer's).
    """

    def __init__(self, directory, attrs: Mapping[str, Any], rank: int = 0, max_videos: int = 256,
                 max_bytes: int = 2**30):
        if int(rank) < 0:
            raise StoreError(f"Expected rank >= 0, got {rank!r}")
        if int(max_videos) < 1 or int(max_bytes) < 1:
            raise StoreError(f"Expected max_videos >= 1 and max_bytes >= 1, "
                             f"got {max_videos!r}, {max_bytes!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rank = int(rank)
        self.max_videos = int(max_videos)
        self.max_bytes = int(max_bytes)
        self.attrs = {k: _to_attr(k, v) for k, v in dict(attrs).items() if v is not None}
        for key in ("schema", "dtype", "created", "version", "rank"):
            self.attrs.pop(key, None)
        self.sealed: list[Path] = []
        self._file: h5py.File | None = None
        self._path: Path | None = None
        self._count = 0
        self._bytes = 0
        self._ids: set[str] = set()  # every id written by this writer (open and sealed shards)
        self._token_shape: tuple[int, int] | None = None  # (P, D) shared by every video of this writer
        self._dirty = False  # True while an add() is half done
        self._next_index = self._first_free_index()

    def _first_free_index(self) -> int:
        used = [-1]
        for path in self.directory.iterdir():
            match = _SHARD_RE.match(path.name)
            if match and int(match.group(1)) == self.rank:
                used.append(int(match.group(2)))
        return max(used) + 1

    # -- checks
    def _check_tokens(self, video_id: str, tokens) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.ndim != 3 or 0 in tokens.shape:
            raise StoreError(f"Expected tokens of shape (T, P, D) with T, P, D > 0 for {video_id!r}, "
                             f"got shape {tokens.shape}")
        if tokens.dtype.kind not in "fiu":
            raise StoreError(f"Expected numeric tokens for {video_id!r}, got dtype {tokens.dtype}")
        _, p, d = tokens.shape
        hidden = self.attrs.get("hidden_size")
        if hidden is not None and d != int(hidden):
            raise StoreError(f"Expected D = hidden_size = {hidden} for {video_id!r}, got tokens of shape "
                             f"{tokens.shape}: the provenance attrs do not describe these features")
        grid = self.attrs.get("grid")
        pool = str(self.attrs.get("pool", "none")).lower()
        one_frame = int(self.attrs.get("frames_per_segment", 1)) == 1
        if grid is not None and len(grid) == 2 and pool == "none" and one_frame:
            expected = 1 + int(grid[0]) * int(grid[1])
            if p != expected:
                raise StoreError(f"Expected P = 1 + grid h*w = {expected} tokens for {video_id!r} (no pool), "
                                 f"got tokens of shape {tokens.shape}")
        if self._token_shape is not None and (p, d) != self._token_shape:
            raise StoreError(f"Expected (P, D) = {self._token_shape} like the earlier videos of this writer "
                             f"for {video_id!r}, got {(p, d)}")
        return tokens

    # -- shard lifecycle
    def _open_shard(self) -> None:
        name = f"shard-r{self.rank:02d}-{self._next_index:05d}.h5"
        self._next_index += 1
        self._path = self.directory / (name + ".partial")
        # v1.10 format: the chunk index of a fixed-size dataset is one small array, not a B-tree interleaved
        # with the data, so (with early allocation below) a video's chunks lie back to back in the file.
        self._file = h5py.File(self._path, "w-", libver=("v110", "v110"))
        attrs = dict(self.attrs)
        attrs.update(schema=SCHEMA, dtype="float16", rank=self.rank, version=package_version(),
                     created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        for key, value in attrs.items():
            self._file.attrs[key] = value
        self._file.create_group("videos")
        self._count = 0
        self._bytes = 0

    def _seal(self) -> None:
        if self._file is None:
            return
        if self._dirty:  # a video could not be written nor undone: abandon the shard as .partial
            self._file.close()
            self._file = None
            return
        partial = self._path
        self._file.flush()
        self._file.close()
        self._file = None
        with open(partial, "rb+") as handle:  # data on disk before the rename makes it visible
            os.fsync(handle.fileno())
        final = partial.with_name(partial.name[: -len(".partial")])
        os.replace(partial, final)
        _fsync_dir(self.directory)
        self.sealed.append(final)
        self._path = None

    def add(self, video_id: str, tokens, timestamps, duration: float, source: str) -> None:
        """Append one video: tokens (T, P, D) (stored as float16), timestamps (T,) in seconds."""
        name = escape_id(video_id)
        if video_id in self._ids:
            raise StoreError(f"Video {video_id!r} was already written by this writer: add each id once")
        tokens = self._check_tokens(video_id, tokens)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        if timestamps.shape != (tokens.shape[0],):
            raise StoreError(f"Expected {tokens.shape[0]} timestamps (one per segment) for {video_id!r}, "
                             f"got shape {timestamps.shape}")
        size = tokens.shape[0] * tokens.shape[1] * tokens.shape[2] * DTYPE.itemsize
        if self._file is not None and self._count > 0 and self._bytes + size > self.max_bytes:
            self._seal()
        with np.errstate(over="ignore"):  # overflow is reported below, with the video's name
            tokens = tokens.astype(DTYPE, copy=False)  # (T, P, D) float16
        if not np.isfinite(tokens).all():  # stored anyway (training reports a NaN loss), but say so now
            warnings.warn(f"Tokens of {video_id!r} contain NaN or inf (as float16, which overflows past "
                          "65504): check the encoder's output for this video", RuntimeWarning, stacklevel=2)
        if self._file is None:
            self._open_shard()
        self._dirty = True
        videos = self._file["videos"]
        try:
            group = videos.create_group(name)
            group.attrs["video_id"] = video_id
            group.attrs["timestamps"] = timestamps
            group.attrs["duration"] = float(duration)
            group.attrs["source"] = str(source)
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # all chunks allocated at once, in segment order
            group.create_dataset("tokens", data=tokens, dcpl=dcpl, fill_time="never",
                                 chunks=(1, tokens.shape[1], tokens.shape[2]))
        except BaseException:
            try:  # undo the half-written video so that the shard's other videos can still be sealed
                if name in videos:
                    del videos[name]
                self._dirty = False
            except Exception:
                pass  # stays dirty: the shard is abandoned as .partial, like a killed writer's
            raise
        self._dirty = False
        self._ids.add(video_id)
        self._token_shape = (tokens.shape[1], tokens.shape[2])
        self._count += 1
        self._bytes += size
        if self._count >= self.max_videos or self._bytes >= self.max_bytes:
            self._seal()

    def close(self) -> list[Path]:
        """Seal the open shard (if any); returns every shard this writer sealed."""
        self._seal()
        return list(self.sealed)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()  # seals the complete videos (a half-written one was undone or leaves a .partial)


# ----------------------------------------------------------------------------------------------------------
# read side


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
        self._shards: list[Path] = _sealed_shards(self.path)
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
        for number, shard in enumerate(self._shards):
            try:
                with h5py.File(shard, "r") as handle:
                    attrs = {k: _from_attr(v) for k, v in handle.attrs.items()}
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
                    first = self._shards[self._index[video_id][0]].name
                    warnings.warn(f"Video {video_id!r} is in both {first} and {shard.name}; "
                                  f"reading it from {first}", stacklevel=3)
                    continue
                self._index[video_id] = (number, name)
        if shard_attrs:
            meta = {}
            for key, value in shard_attrs[0].items():
                if key in _PER_SHARD_KEYS:
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

    def partial_paths(self) -> list[Path]:
        """`.partial` files in the folder: shards of a writer that is running or was killed (never read)."""
        return sorted(p for p in self.path.glob("shard-*.h5.partial") if p.is_file())

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
        out = {k: (np.asarray(v) if k == "timestamps" else _from_attr(v)) for k, v in group.attrs.items()}
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

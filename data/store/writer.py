"""Write side of the feature cache: `ShardWriter` appends videos to a `.partial` shard and seals it (see
`data.store`)."""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from data.store.layout import DTYPE, SCHEMA, SHARD_RE, StoreError, escape_id, fsync_dir, package_version, to_attr


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
        self.attrs = {k: to_attr(k, v) for k, v in dict(attrs).items() if v is not None}
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
            match = SHARD_RE.match(path.name)
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
        fsync_dir(self.directory)
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

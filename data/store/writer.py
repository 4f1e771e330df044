"""Write side of the feature cache: `ShardWriter` appends videos to a `.partial` shard and seals it (see
`data.store`).

Several writers may share one cache folder: the ranks of one run, two runs started by hand, nodes on a shared file
system. Each `.partial` is created exclusively (O_EXCL: no two writers ever get the same name) and its writer holds
an advisory lock on it (`flock`) until it is sealed or abandoned, so `remove_dead_partials` deletes only the
`.partial` files whose writer is provably gone (a killed run); a writer renames only the file it created (same
inode) and never onto an existing shard. Locks are released by the kernel when a process dies, however it dies.

A full disk (ENOSPC, or EDQUOT for a quota) raises `DiskFullError`: the writer removes its open `.partial` (after
truncating it, so that HDF5 can close the file cleanly) and leaves every sealed shard as it is. Before each video
it compares the free space with the video's size, so a full disk is normally found before HDF5 writes a byte.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import os
import shutil
import sys
import warnings
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from data.outputs import code_version
from data.store.layout import (
    DTYPE,
    LEGACY_SPECIAL_TOKENS,
    SCHEMA,
    SHARD_RE,
    StoreError,
    escape_id,
    fsync_dir,
    partial_shards,
    to_attr,
)

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
HEADROOM_BYTES = 64 << 10  # HDF5 metadata of one video (its group, attrs, chunk index) is a few KB


class DiskFullError(StoreError):
    """The file system holding the cache has no room for the next video (ENOSPC, or EDQUOT: the quota)."""


def is_disk_full(exc: BaseException | None) -> bool:
    """True for an OSError with errno ENOSPC/EDQUOT, or an HDF5 error that reports one (h5py raises RuntimeError
    "Unable to flush raw data (... errno = 28, error message = 'No space left on device' ...)")."""
    while exc is not None:
        if getattr(exc, "errno", None) in DISK_FULL_ERRNOS:
            return True
        text = str(exc)
        if any(f"errno = {code}," in text or os.strerror(code) in text for code in DISK_FULL_ERRNOS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def format_bytes(count: float) -> str:
    """1234567 -> "1.2 MB" (decimal units, as df -H)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} PB"


def disk_full_error(directory: Path, detail: str) -> DiskFullError:
    return DiskFullError(f"the disk holding the cache folder {directory} is full ({detail}); sealed shards are "
                         "kept: free space there or set CACHE_DIR to a disk with room, then rerun the same command "
                         "to resume")


@contextlib.contextmanager
def _unraisable_collected(into: list):
    """Collect the errors h5py raises while deallocating objects (printed as "Exception ignored in ..." otherwise)."""
    previous = sys.unraisablehook
    sys.unraisablehook = lambda info: into.append(info.exc_value)
    try:
        yield into
    finally:
        sys.unraisablehook = previous


_LOCKS: weakref.WeakSet = weakref.WeakSet()  # writers holding a lock fd in this process


def _close_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): drop the copies of the parent's lock fds, so that the lock lives and
    dies with the writer's own process (flock locks belong to the open file, which a fork shares)."""
    for writer in list(_LOCKS):
        if writer._lock_fd is not None:
            try:
                os.close(writer._lock_fd)
            except OSError:
                pass
            writer._lock_fd = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def _same_file(path: Path, fd: int) -> bool:
    try:
        here, ours = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)


def remove_dead_partials(directory) -> tuple[list[Path], list[Path]]:
    """Delete the `.partial` shards of `directory` whose writer is gone; returns (removed, kept).

    A `.partial` is removed only when its lock can be taken (its writer was killed, or it predates the locks).
    Kept: the ones a live writer holds, and those whose lock cannot be tested (a file system without locks):
    they are never read, and a later run removes them once their lock can be taken.
    """
    removed, kept = [], []
    for path in partial_shards(directory):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # sealed or removed meanwhile
        except OSError:  # unreadable: its writer cannot be told dead
            kept.append(path)
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by a live writer (EWOULDBLOCK), or locks unsupported here
                kept.append(path)
                continue
            if _same_file(path, fd):  # still the file we locked, not a new one of the same name
                try:
                    path.unlink()
                    removed.append(path)
                except FileNotFoundError:
                    pass
                except OSError:  # e.g. a read-only folder
                    kept.append(path)
        finally:
            os.close(fd)
    if removed:
        fsync_dir(Path(directory))
    return removed, kept


class ShardWriter:
    """Append videos to `<directory>/shard-r{rank:02d}-{index:05d}.h5.partial`; seal each shard into `.h5`.

    A shard is sealed after `max_videos` videos, before a video that would push it past `max_bytes` (a
    single video larger than `max_bytes` gets a shard of its own), and at `close()`. Shard indices continue
    after every shard of this rank already in the folder (sealed or partial), so nothing is ever overwritten.
    `attrs` is the provenance (encoder, encoder_hash, family, image_size, patch_size, hidden_size, grid,
    special_tokens, pool, fps or segments, frames_per_segment, frame_interval); keys whose value is None are not
    stored. The writer adds schema, dtype, created, version and rank. Tokens are stored as float16, chunks
    (1, P, D), without compression (read speed matters more than disk space).

    Use as a context manager: the open shard is sealed on exit, also when an exception ends the block (a
    video whose `add` failed is not in it; if it cannot be undone, the shard stays `.partial`, like a killed
    writer's). Raises `DiskFullError` when the disk is full (the open `.partial` is then removed).
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
        self._lock_fd: int | None = None  # our own fd of the open .partial, holding its flock
        self._next_index = self._first_free_index()
        _LOCKS.add(self)

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
            special = int(self.attrs.get("special_tokens", LEGACY_SPECIAL_TOKENS))
            expected = special + int(grid[0]) * int(grid[1])
            if p != expected:
                raise StoreError(f"Expected P = {special} special + grid h*w = {expected} tokens for {video_id!r} "
                                 f"(no pool), got tokens of shape {tokens.shape}")
        if self._token_shape is not None and (p, d) != self._token_shape:
            raise StoreError(f"Expected (P, D) = {self._token_shape} like the earlier videos of this writer "
                             f"for {video_id!r}, got {(p, d)}")
        return tokens

    # -- shard lifecycle
    def _claim(self) -> Path:
        """Create and lock the next free `.partial` of this rank: exclusively, so no other writer (another run,
        another node) can hold the same name; a name whose `.h5` exists is never taken."""
        while True:
            final = self.directory / f"shard-r{self.rank:02d}-{self._next_index:05d}.h5"
            self._next_index += 1
            partial = final.with_name(final.name + ".partial")
            if final.exists():
                continue
            try:
                fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue  # another writer's
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a cleaner is looking at it this very moment: it will go; take the next
                os.close(fd)
                continue
            except OSError:
                pass  # no locks on this file system: the exclusive name still keeps writers apart
            if not _same_file(partial, fd) or final.exists():  # removed by a cleaner, or sealed meanwhile
                os.close(fd)
                continue
            self._lock_fd = fd
            return partial

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _open_shard(self) -> None:
        self._path = self._claim()
        # v1.10 format: the chunk index of a fixed-size dataset is one small array, not a B-tree interleaved
        # with the data, so (with early allocation below) a video's chunks lie back to back in the file.
        # HDF5's own file locking is off: it would conflict with the writer's lock (HDF5 flocks another fd).
        try:
            self._file = h5py.File(self._path, "w", libver=("v110", "v110"), locking=False)
        except BaseException:
            self._abandon()
            raise
        attrs = dict(self.attrs)
        attrs.update(schema=SCHEMA, dtype="float16", rank=self.rank, version=code_version(),
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
            self._release()
            return
        partial = self._path
        try:
            self._file.flush()
            self._file.close()
            self._file = None
            if self._lock_fd is not None:
                os.fsync(self._lock_fd)  # data on disk before the rename makes it visible (same inode)
        except Exception as exc:
            if is_disk_full(exc):
                self._abandon()
                raise disk_full_error(self.directory, f"sealing {partial.name}: {_short(exc)}") from None
            raise
        final = partial.with_name(partial.name[: -len(".partial")])
        if self._lock_fd is not None and not _same_file(partial, self._lock_fd):
            self._release()
            self._path = None
            raise StoreError(f"{partial} is no longer the file this writer wrote (another process removed or "
                             "replaced it); it is not renamed. Run one extraction per cache folder at a time and "
                             "rerun to redo its videos")
        if final.exists():
            self._release()
            self._path = None
            raise StoreError(f"{final} already exists; {partial.name} is left as it is (never overwrite a sealed "
                             "shard). Rerun to redo its videos")
        os.replace(partial, final)
        fsync_dir(self.directory)
        self._release()
        self.sealed.append(final)
        self._path = None

    def _abandon(self) -> None:
        """Drop the open shard after a failure and remove our `.partial`.

        HDF5 still holds bytes it could not write; closing the file makes it try again, and a file it cannot close
        crashes the interpreter at exit. So its file descriptor is first pointed at a scratch file in memory
        (`memfd_create`, else /dev/null): the last writes succeed there and the file closes cleanly.
        """
        ours = self._path is not None and self._lock_fd is not None and _same_file(self._path, self._lock_fd)
        if ours:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)  # frees the disk space at once
        collected: list = []
        with _unraisable_collected(collected):
            if self._file is not None:
                with contextlib.suppress(Exception):
                    _divert(self._file)
                with contextlib.suppress(Exception):
                    self._file.close()
            self._file = None
        if ours:
            with contextlib.suppress(OSError):
                self._path.unlink()
        self._release()
        self._path = None
        self._dirty = False

    def _check_room(self, size: int) -> None:
        """DiskFullError (after sealing the open shard) when the disk cannot take `size` more bytes."""
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            return
        if free >= size + HEADROOM_BYTES:
            return
        self._seal()
        raise disk_full_error(self.directory, f"{format_bytes(free)} free, the next video needs {format_bytes(size)}")

    def add(self, video_id: str, tokens, timestamps, duration: float, source: str,
            attrs: Mapping[str, Any] | None = None) -> None:
        """Append one video: tokens (T, P, D) (stored as float16), timestamps (T,) in seconds; `attrs`: more
        per-video attrs (a str, number or 1-D list of numbers each, e.g. the display matrix applied)."""
        tokens = self._check_tokens(video_id, tokens)
        self.add_parts(video_id, tokens.shape[0], [(tokens, timestamps)], duration, source, attrs)

    def add_parts(self, video_id: str, num_segments: int, parts: Iterable, duration: float, source: str,
                  attrs: Mapping[str, Any] | None = None) -> None:
        """Append one video whose segments arrive in order, part by part, into the layout `add` writes.

        `parts` yields (tokens (n, P, D), timestamps (n,) seconds), the n summing to `num_segments`; each part is
        written (and flushed) before the next one is asked for, so memory holds one part whatever the video's length
        (prediction streams long videos decode -> encode -> cache this way). `attrs` are written after the last part,
        so the code making the parts may fill them in (the display matrix is known once decoding has begun). An
        exception raised while drawing from `parts` undoes the video (the shard's other videos still seal) and
        propagates.
        """
        name = escape_id(video_id)
        if video_id in self._ids:
            raise StoreError(f"Video {video_id!r} was already written by this writer: add each id once")
        total = int(num_segments)
        parts = iter(parts)
        part = next(parts, None)
        if total < 1 or part is None:
            raise StoreError(f"Expected at least one segment for {video_id!r}, got num_segments={num_segments!r}"
                             f"{'' if part is not None else ' and no tokens'}")
        tokens, times = self._check_part(video_id, *part)
        p, d = tokens.shape[1], tokens.shape[2]
        size = total * p * d * DTYPE.itemsize
        if self._file is not None and self._count > 0 and self._bytes + size > self.max_bytes:
            self._seal()
        self._check_room(size)
        if self._file is None:
            self._open_shard()
        self._dirty = True
        videos = self._file["videos"]
        collected: list = []
        try:
            with _unraisable_collected(collected):
                group = videos.create_group(name)
                group.attrs["video_id"] = video_id
                group.attrs["duration"] = float(duration)
                group.attrs["source"] = str(source)
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # all chunks allocated at once, in segment order
                dataset = group.create_dataset("tokens", shape=(total, p, d), dtype=DTYPE, dcpl=dcpl,
                                               fill_time="never", chunks=(1, p, d))
                timestamps = np.empty(total, dtype=np.float64)  # (T,)
                row = 0
                while part is not None:
                    if row + tokens.shape[0] > total:
                        raise StoreError(f"Expected {total} segments for {video_id!r}, got more")
                    dataset[row:row + tokens.shape[0]] = tokens
                    dataset.flush()  # the bytes go to the OS now: a full disk is an exception here, not at exit
                    timestamps[row:row + tokens.shape[0]] = times
                    row += tokens.shape[0]
                    part = next(parts, None)
                    if part is not None:
                        tokens, times = self._check_part(video_id, *part)
                        if tokens.shape[1:] != (p, d):
                            raise StoreError(f"Expected (P, D) = {(p, d)} in every part of {video_id!r}, got "
                                             f"{tuple(tokens.shape[1:])}")
                if row != total:
                    raise StoreError(f"Expected {total} segments for {video_id!r}, got {row}")
                group.attrs["timestamps"] = timestamps
                for key, value in dict(attrs or {}).items():  # read now: decoding may have filled them in
                    if value is not None:
                        group.attrs[key] = to_attr(key, value)
                del dataset, group
            if collected:  # an error HDF5 could only report while freeing an object
                raise collected[0]
        except BaseException as exc:
            if isinstance(exc, Exception) and is_disk_full(exc):
                self._abandon()
                raise disk_full_error(self.directory, _short(exc)) from None
            try:  # undo the half-written video so that the shard's other videos can still be sealed
                if name in videos:
                    del videos[name]
                self._dirty = False
            except Exception:
                pass  # stays dirty: the shard is abandoned as .partial, like a killed writer's
            raise
        self._dirty = False
        self._ids.add(video_id)
        self._token_shape = (p, d)
        self._count += 1
        self._bytes += size
        if self._count >= self.max_videos or self._bytes >= self.max_bytes:
            self._seal()

    def _check_part(self, video_id: str, tokens, timestamps) -> tuple[np.ndarray, np.ndarray]:
        """One part of a video as float16 tokens (n, P, D) and float64 timestamps (n,); StoreError otherwise."""
        tokens = self._check_tokens(video_id, tokens)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        if timestamps.shape != (tokens.shape[0],):
            raise StoreError(f"Expected {tokens.shape[0]} timestamps (one per segment) for {video_id!r}, "
                             f"got shape {timestamps.shape}")
        with np.errstate(over="ignore"):  # overflow is reported below, with the video's name
            tokens = tokens.astype(DTYPE, copy=False)  # (n, P, D) float16
        if not np.isfinite(tokens).all():  # stored anyway (training reports a NaN loss), but say so now
            warnings.warn(f"Tokens of {video_id!r} contain NaN or inf (as float16, which overflows past "
                          "65504): check the encoder's output for this video", RuntimeWarning, stacklevel=3)
        return tokens, timestamps

    def close(self) -> list[Path]:
        """Seal the open shard (if any); returns every shard this writer sealed."""
        self._seal()
        return list(self.sealed)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()  # seals the complete videos (a half-written one was undone or leaves a .partial)


def _divert(file: h5py.File) -> None:
    """Point the HDF5 file's descriptor at a scratch file in memory, so that its pending writes cannot fail."""
    fd = file.id.get_vfd_handle()
    scratch = os.memfd_create("abandoned-shard") if hasattr(os, "memfd_create") else os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(scratch, fd)
    finally:
        os.close(scratch)


def _short(exc: BaseException) -> str:
    """The OS's words for a disk-full error (HDF5's messages run over several lines)."""
    for code in DISK_FULL_ERRNOS:
        if getattr(exc, "errno", None) == code or os.strerror(code) in str(exc):
            return os.strerror(code)
    return " ".join(str(exc).split())[:200]

"""The feature cache's names and constants (see `data.store`): schema, provenance keys, shard file names, escaped
video ids, cache tags, failures.jsonl, HDF5 attribute conversion."""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np

from data.errors import UserError

SCHEMA = 1
LEGACY_SPECIAL_TOKENS = 1  # caches without a special_tokens attr: ViT tokens, CLS first
DTYPE = np.dtype("<f2")
# Attributes that must agree across every shard of one cache: they decide what the numbers in `tokens` mean.
PROVENANCE_KEYS = (
    "encoder",
    "encoder_hash",
    "family",
    "image_size",
    "patch_size",
    "hidden_size",
    "grid",
    "special_tokens",
    "pool",
    "fps",
    "segments",
    "durations",
    "frames_per_segment",
    "frame_interval",
    "schema",
    "dtype",
)
# The provenance keys that decide what one token vector means: a head trained on features of one cache is refused on
# a cache that differs in any of these (sampling may differ: the protocols resample segments anyway).
FEATURE_KEYS = ("encoder", "encoder_hash", "hidden_size")
# Attributes that legitimately differ from shard to shard (never part of `meta`).
PER_SHARD_KEYS = ("created", "version", "rank")
SHARD_RE = re.compile(r"^shard-r(\d{2,})-(\d{5,})\.h5(\.partial)?$")
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
FAILURES_FILE = "failures.jsonl"


class StoreError(UserError):
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


def make_tag(encoder: str, fps=None, segments=None, frames_per_segment: int = 1, pool=None,
             durations: str | None = None) -> str:
    """Folder name of a cache: encoder slug + sampling, e.g. "vit-large-patch16-224-in21k_fps1".

    The slug is the last component of a hub id or local path. Exactly one of `fps` / `segments` / `durations` (the
    name of the paper's listed-durations sampling, e.g. "lvu-durations": "_lvu-durations") must be given.
    `frames_per_segment` > 1 adds "_fr<k>"; a pool other than None/"none" adds "_pool-<pool>".
    """
    if not encoder or not str(encoder).strip("/"):
        raise UserError(f"Expected an encoder name (hub id or model folder), got {encoder!r}")
    if sum(x is not None for x in (fps, segments, durations)) != 1:
        raise UserError(f"Expected exactly one of fps=, segments= or durations=, got fps={fps!r}, "
                         f"segments={segments!r}, durations={durations!r}")
    slug = _slug(str(encoder).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1])
    if durations is not None:
        tag = f"{slug}_{_slug(str(durations))}"
    elif fps is not None:
        if float(fps) <= 0:
            raise UserError(f"Expected fps > 0, got {fps!r}")
        tag = f"{slug}_fps{_number(fps)}"
    else:
        if int(segments) <= 0 or int(segments) != segments:
            raise UserError(f"Expected a positive integer number of segments, got {segments!r}")
        tag = f"{slug}_seg{int(segments)}"
    if frames_per_segment is not None and int(frames_per_segment) != 1:
        if int(frames_per_segment) < 1:
            raise UserError(f"Expected frames_per_segment >= 1, got {frames_per_segment!r}")
        tag += f"_fr{int(frames_per_segment)}"
    if pool is not None and str(pool).lower() != "none":
        tag += f"_pool-{_slug(str(pool))}"
    return tag


def sealed_shards(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("shard-*.h5") if p.is_file())


def partial_shards(directory: Path) -> list[Path]:
    """`.partial` shards in a cache folder: of a writer that is running or was killed (never read)."""
    return sorted(p for p in Path(directory).glob("shard-*.h5.partial") if p.is_file())


def find_caches(cache_root, dataset: str) -> list[Path]:
    """Tag folders of `cache_root/dataset` holding at least one sealed shard, most recently modified first."""
    base = Path(cache_root) / dataset
    if not base.is_dir():
        return []
    found = []
    for tag_dir in base.iterdir():
        if not tag_dir.is_dir():
            continue
        shards = sealed_shards(tag_dir)
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


def to_attr(key: str, value):
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


def from_attr(value):
    """HDF5 attr -> plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def fsync_dir(directory: Path) -> None:
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

"""Throughput of the HDF5 feature cache (data/store.py) against plain numpy reads of the same bytes.

`python bench/store.py [--quick] [--dir D]` (also `python -m bench.store`; `python -m bench` calls `run`).

Measures, on (60, 197, 1024) float16 videos (one minute of LVU at 1 fps through ViT-L/16, 24.2 MB each):
  - write: ShardWriter (shards sealed with fsync) vs `ndarray.tofile` + fsync of one raw file, in alternating
    rounds;
  - full read: `FeatureStore.read(id)` vs `numpy.fromfile` at the video's offset;
  - random 60-segment reads as training draws them: a random sorted subset of 60 of T=180 segments
    (Breakfast/COIN protocol) vs numpy fancy indexing of a `np.memmap` of the raw file, and a random
    60-segment window (LVU protocol) vs `numpy.fromfile` of that window. Ratio = store MB/s / numpy MB/s
    (aim >= 0.5).
Both sides read the same bytes from files on the same disk, in the same way: "warm" = both files in the page
cache (just written, then read once untimed); "cold" = the pages of both files evicted first with
posix_fadvise(DONTNEED) (no root needed; a VM host's cache may still serve them).
Saves bench/results/store.json (`--quick`: store-quick.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/store.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import evict_page_cache, interleaved_medians, mb_per_s, save_json, scratch_dir  # noqa: E402
from data.errors import UserError, run_cli  # noqa: E402
from data.store import FeatureStore, ShardWriter  # noqa: E402

T, P, D = 60, 197, 1024  # one LVU minute: 60 frames x (1 CLS + 14x14 patches) x ViT-L width
LONG_T = 180  # the longer videos that training subsamples 60 segments from
ATTRS = {"encoder": "bench-random", "encoder_hash": "0", "image_size": 224, "patch_size": 16,
         "hidden_size": D, "grid": [14, 14], "segments": LONG_T, "frames_per_segment": 1}
FULL = {"videos": 40, "long_videos": 8, "reads": 200, "repeat": 5}
QUICK = {"videos": 3, "long_videos": 2, "reads": 20, "repeat": 3}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_pair(directory: Path, name: str, videos: int, t: int, data: np.ndarray, max_videos: int,
                rounds: int = 1):
    """Write `videos` copies of `data` (t, P, D) into a store folder and into one raw file; time both.

    The work is split into `rounds`, store first in even rounds and raw first in odd ones, each round ending
    with its data on disk (shards sealed with fsync; raw file fsync'ed), so neither side always writes while
    the other's dirty pages are still being flushed.
    """
    store_dir, raw = directory / name, directory / f"{name}.raw"
    times = {"store": 0.0, "raw": 0.0}
    per_round = np.array_split(np.arange(videos), max(1, min(rounds, videos)))

    def write_store(numbers) -> None:
        with ShardWriter(store_dir, ATTRS, max_videos=max_videos) as writer:
            for i in numbers:
                writer.add(f"video{i:03d}", data, np.arange(t, dtype=np.float64), float(t), "bench")

    def write_raw(numbers) -> None:
        with open(raw, "ab") as handle:
            for _ in numbers:
                data.tofile(handle)
            handle.flush()
            os.fsync(handle.fileno())

    for number, chunk in enumerate(per_round):
        order = [("store", write_store), ("raw", write_raw)]
        for side, write in order if number % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            write(chunk.tolist())
            times[side] += time.perf_counter() - start
    return store_dir, raw, times["store"], times["raw"]


def run(quick: bool = False, directory: str | Path | None = None, sizes: dict | None = None) -> dict:
    """Measure and return {"write_mb_s", "read_mb_s", "read_ratio", ...}; `directory` = where files go."""
    cfg = dict(QUICK if quick else FULL, **(sizes or {}))
    rng = np.random.default_rng(0)
    video_bytes, long_bytes, row_bytes = T * P * D * 2, LONG_T * P * D * 2, P * D * 2
    base = scratch_dir("store-bench-", directory)
    try:
        # ---- write: ShardWriter vs raw tofile, both fsync'ed
        data = rng.standard_normal((T, P, D), dtype=np.float32).astype(np.float16)  # (T, P, D)
        store_dir, raw, store_s, raw_s = _write_pair(base, "short", cfg["videos"], T, data, max_videos=16,
                                                     rounds=4)
        write_bytes = cfg["videos"] * video_bytes
        long_data = rng.standard_normal((LONG_T, P, D), dtype=np.float32).astype(np.float16)
        long_dir, long_raw, _, _ = _write_pair(base, "long", cfg["long_videos"], LONG_T, long_data,
                                               max_videos=4)

        store, long_store = FeatureStore(store_dir), FeatureStore(long_dir)
        ids, long_ids = store.ids(), long_store.ids()
        assert np.array_equal(store.read(ids[-1]), data)
        assert np.array_equal(long_store.read(long_ids[0]), long_data)

        # ---- full-video reads (warm)
        def store_full():
            for vid in ids:
                store.read(vid)

        def numpy_full():
            for i in range(len(ids)):
                np.fromfile(raw, dtype=np.float16, count=T * P * D, offset=i * video_bytes)

        medians = interleaved_medians({"full_store": store_full, "full_numpy": numpy_full}, cfg["repeat"])

        # ---- random 60-segment reads, as training draws them
        picks = rng.integers(0, len(long_ids), cfg["reads"])
        subsets = [np.sort(rng.choice(LONG_T, T, replace=False)) for _ in range(cfg["reads"])]
        starts = rng.integers(0, LONG_T - T + 1, cfg["reads"])
        def open_memmap() -> np.memmap:
            return np.memmap(long_raw, dtype=np.float16, mode="r", shape=(len(long_ids), LONG_T, P, D))

        mapped = {"raw": open_memmap()}  # (videos, LONG_T, P, D)
        got = long_store.read(long_ids[picks[0]], subsets[0])
        assert np.array_equal(got, np.asarray(mapped["raw"][picks[0], subsets[0]]))
        read_bytes = cfg["reads"] * T * row_bytes

        def store_subsets():
            for v, idx in zip(picks, subsets):
                long_store.read(long_ids[v], idx)

        def numpy_subsets():
            raw_tokens = mapped["raw"]
            for v, idx in zip(picks, subsets):
                raw_tokens[v, idx]  # fancy indexing copies: (60, P, D)

        def store_windows():
            for v, s in zip(picks, starts):
                long_store.read(long_ids[v], slice(int(s), int(s) + T))

        def numpy_windows():
            with open(long_raw, "rb") as handle:
                for v, s in zip(picks, starts):
                    handle.seek(int(v) * long_bytes + int(s) * row_bytes)
                    np.fromfile(handle, dtype=np.float16, count=T * P * D)

        medians.update(interleaved_medians({"sub_store": store_subsets, "sub_numpy": numpy_subsets,
                                            "win_store": store_windows, "win_numpy": numpy_windows},
                                           cfg["repeat"]))
        full_store_s, full_numpy_s = medians["full_store"], medians["full_numpy"]
        sub_store_s, sub_numpy_s = medians["sub_store"], medians["sub_numpy"]
        win_store_s, win_numpy_s = medians["win_store"], medians["win_numpy"]

        # ---- the same random subsets with the pages of both files evicted first (one pass each); no handle
        # or mapping may be open while evicting, or the kernel keeps the pages
        long_store.close()
        del mapped["raw"]
        cold = {}
        shards = long_store.shards
        if all(evict_page_cache(p) for p in [*shards, long_raw]):
            start = time.perf_counter()
            store_subsets()
            cold["store"] = time.perf_counter() - start
            for p in [*shards, long_raw]:
                evict_page_cache(p)
            mapped["raw"] = open_memmap()
            start = time.perf_counter()
            numpy_subsets()
            cold["numpy"] = time.perf_counter() - start
        mapped.clear()
        store.close()
        long_store.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    result = {
        "shape": [T, P, D],
        "dtype": "float16",
        "videos": cfg["videos"],
        "write_mb": write_bytes / 1e6,
        "write_mb_s": mb_per_s(write_bytes, store_s),
        "raw_write_mb_s": mb_per_s(write_bytes, raw_s),
        "write_ratio": raw_s / store_s,
        "read_mb_s": mb_per_s(write_bytes, full_store_s),
        "numpy_read_mb_s": mb_per_s(write_bytes, full_numpy_s),
        "full_read_ratio": full_numpy_s / full_store_s,
        "subset_reads": cfg["reads"],
        "subset_of": LONG_T,
        "subset_mb_s": mb_per_s(read_bytes, sub_store_s),
        "numpy_subset_mb_s": mb_per_s(read_bytes, sub_numpy_s),
        "read_ratio": sub_numpy_s / sub_store_s,
        "window_mb_s": mb_per_s(read_bytes, win_store_s),
        "numpy_window_mb_s": mb_per_s(read_bytes, win_numpy_s),
        "window_ratio": win_numpy_s / win_store_s,
        "repeat": cfg["repeat"],
        "cache": "warm: both sides read files already in the page cache (medians of interleaved repeats)",
    }
    if cold:
        result.update(cold_subset_mb_s=mb_per_s(read_bytes, cold["store"]),
                      cold_numpy_subset_mb_s=mb_per_s(read_bytes, cold["numpy"]),
                      cold_read_ratio=cold["numpy"] / cold["store"])
    return result


def report(result: dict) -> str:
    mb = result["write_mb"]
    lines = [
        f"store bench: {result['videos']} videos of {tuple(result['shape'])} float16 = {mb:.0f} MB; "
        f"random reads: {result['subset_reads']} x 60 of {result['subset_of']} segments",
        f"  write          store {result['write_mb_s']:8.0f} MB/s   raw tofile   "
        f"{result['raw_write_mb_s']:8.0f} MB/s   ratio {result['write_ratio']:.2f}   (fsync'ed, alternating)",
        f"  full read      store {result['read_mb_s']:8.0f} MB/s   np.fromfile  "
        f"{result['numpy_read_mb_s']:8.0f} MB/s   ratio {result['full_read_ratio']:.2f}   (warm)",
        f"  60 of 180      store {result['subset_mb_s']:8.0f} MB/s   np.memmap[] "
        f"{result['numpy_subset_mb_s']:8.0f} MB/s   ratio {result['read_ratio']:.2f}   (warm, random subset)",
        f"  60-seg window  store {result['window_mb_s']:8.0f} MB/s   np.fromfile  "
        f"{result['numpy_window_mb_s']:8.0f} MB/s   ratio {result['window_ratio']:.2f}   (warm)",
    ]
    if "cold_read_ratio" in result:
        lines.append(f"  60 of 180 cold store {result['cold_subset_mb_s']:8.0f} MB/s   np.memmap[] "
                     f"{result['cold_numpy_subset_mb_s']:8.0f} MB/s   ratio {result['cold_read_ratio']:.2f}"
                     "   (pages evicted with fadvise, one pass)")
    verdict = "meets" if result["read_ratio"] >= 0.5 else "misses"
    lines.append(f"  random 60-segment read ratio {result['read_ratio']:.2f} {verdict} the aim of >= 0.5")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/store.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few videos: runs in seconds")
    parser.add_argument("--dir", default=None, help="folder (on the disk to measure) for the scratch files "
                        "[bench/results/]; they are deleted at the end")
    parser.add_argument("--videos", type=int, default=None, help="number of (60, 197, 1024) videos to write")
    parser.add_argument("--out", default=None, help="folder for store.json [bench/results/]")
    args = parser.parse_args(argv)
    if args.videos is not None and args.videos < 1:
        raise UserError(f"Expected --videos >= 1, got {args.videos}")
    if args.dir is not None and not Path(args.dir).is_dir():
        raise UserError(f"--dir {args.dir} is not a folder: create it or pick another")
    sizes = {"videos": args.videos} if args.videos else None
    result = run(quick=args.quick, directory=args.dir, sizes=sizes)
    print(report(result))
    path = save_json("store-quick" if args.quick else "store", result, args.out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)

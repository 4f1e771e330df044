"""`python bench/faults.py [--trials 10] [--quick]`: kill -9 extraction at random moments, rerun, count what was lost.

Issue 8, item 1. Each trial starts `python -m extract` (tiny synthetic set, `vit-tiny-random`, small shards so a run
seals many of them) as a separate process, waits until it has started writing, sleeps a random time and sends
SIGKILL. Then the same command runs again to completion, and the trial checks:

* every video of the data set is in exactly one sealed shard (lost = missing, duplicated = in two shards);
* every sealed shard opens (h5py and FeatureStore);
* nothing sealed before the rerun was re-encoded (the rerun encodes exactly the frames of the unsealed videos, and
  the shards sealed before it are byte for byte unchanged);
* the tokens equal those of a clean, uninterrupted run (the encoder is deterministic on CPU).

Prints one line per trial and the totals (trials, failures found, lost videos) and saves
bench/results/faults.json. tests/test_faults_extract.py runs a few trials through `kill_trial`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from data.outputs import write_json  # noqa: E402

SEGMENTS = 8
TAG = f"vit-tiny-random_seg{SEGMENTS}"


def make_dataset(root: Path, videos_per_class: int = 3) -> Path:
    """A tiny synthetic set: 2 classes x (videos_per_class train + 1 val + 1 test), 2-3 s, 32 px."""
    from data.synthetic import generate

    return generate(root, seed=0, workers=1, classes=2, seconds=(2.0, 3.0), size=32,
                    per_class={"train": videos_per_class, "val": 1, "test": 1})


def extract_args(root: Path, cache: Path, shard_videos: int = 2, workers: int = 1) -> list[str]:
    return ["--dataset", "synthetic", "--data-root", str(root), "--cache-dir", str(cache), "--encoder",
            "vit-tiny-random", "--segments", str(SEGMENTS), "--batch", "8", "--workers", str(workers),
            "--shard-videos", str(shard_videos), "--no-progress"]


def shard_counts(directory: Path) -> tuple[collections.Counter, list[str]]:
    """How many sealed shards hold each id, and the shards that do not open."""
    import h5py

    from data.store import unescape_id

    counts, broken = collections.Counter(), []
    for shard in sorted(directory.glob("shard-*.h5")):
        try:
            with h5py.File(shard, "r") as f:
                counts.update(unescape_id(name) for name in f["videos"])
        except Exception as exc:  # noqa: BLE001 - a shard that does not open is exactly what we look for
            broken.append(f"{shard.name}: {exc}")
    return counts, broken


def hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("shard-*.h5"))}


@contextlib.contextmanager
def count_encoded_frames():
    """Counts the frames the encoder sees in this process (the rerun runs in-process with workers=0)."""
    from extract.encoder import FrozenEncoder

    seen = []
    original = FrozenEncoder.forward

    def counting(self, frames):
        seen.append(int(frames.shape[0]))
        return original(self, frames)

    FrozenEncoder.forward = counting
    try:
        yield seen
    finally:
        FrozenEncoder.forward = original


def clean_reference(root: Path, cache: Path) -> Path:
    """An uninterrupted run (in-process) whose tokens every trial must reproduce."""
    from extract.__main__ import main

    with contextlib.redirect_stderr(io.StringIO()):
        status = main(extract_args(root, cache, workers=0))
    assert status == 0, f"the clean run failed (exit {status})"
    return cache / "synthetic" / TAG


def kill_trial(root: Path, cache: Path, reference: Path, seed: int, window: float = 0.3, shard_videos: int = 2) -> dict:
    """One kill -9 trial; returns what it found (``problems`` is empty when everything held).

    The moment is random in two steps, so kills spread over the whole run rather than piling up after its end: a
    random stage s (wait until s shards are sealed; s = 0 waits for the first .partial), then a uniform delay in
    [0, window) seconds.
    """
    from data import get_dataset
    from data.store import FeatureStore
    from extract.__main__ import main

    rng = random.Random(seed)
    directory = cache / "synthetic" / TAG
    total = len(get_dataset("synthetic", root=root).all_video_ids())
    stage = rng.randrange(max(1, -(-total // shard_videos)))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "extract", *extract_args(root, cache, shard_videos)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()

    def reached() -> bool:
        if not directory.is_dir():
            return False
        sealed = len(list(directory.glob("shard-*.h5")))
        return sealed >= stage and (sealed > 0 or any(directory.glob("shard-*.partial")))

    while proc.poll() is None and not reached() and time.monotonic() - started < 120:
        time.sleep(0.002)
    delay = rng.uniform(0.0, window)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partials = len(list(directory.glob("*.partial"))) if directory.is_dir() else 0
    counts_before, broken_before = shard_counts(directory) if directory.is_dir() else (collections.Counter(), [])
    sealed_before = hashes(directory) if directory.is_dir() else {}

    log = io.StringIO()
    with count_encoded_frames() as seen, contextlib.redirect_stderr(log):
        status = main(extract_args(root, cache, workers=0))
    ids = get_dataset("synthetic", root=root).all_video_ids()
    counts, broken = shard_counts(directory)
    after = hashes(directory)
    problems = []
    lost = sorted(set(ids) - set(counts))
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    if status != 0:
        problems.append(f"rerun exit status {status}")
    if lost:
        problems.append(f"lost {lost}")
    if duplicated:
        problems.append(f"in two shards {duplicated}")
    if broken or broken_before:
        problems.append(f"shards that do not open {broken or broken_before}")
    expected_frames = (len(ids) - len(set(counts_before))) * SEGMENTS
    if sum(seen) != expected_frames:
        problems.append(f"rerun encoded {sum(seen)} frames, expected {expected_frames} (re-encoded sealed work?)")
    changed = [name for name, digest in sealed_before.items() if after.get(name) != digest]
    if changed:
        problems.append(f"sealed shards changed {changed}")
    mismatched = []
    if not lost:
        store, ref = FeatureStore(directory), FeatureStore(reference)
        import numpy as np

        mismatched = [i for i in ids if not np.array_equal(store.read(i), ref.read(i))]
        if mismatched:
            problems.append(f"tokens differ from the clean run {mismatched}")
    return {
        "seed": seed, "stage": stage, "delay_s": round(delay, 3), "killed": killed,
        "sealed_before": len(set(counts_before)),
        "partials_left": partials, "videos": len(ids), "reencoded_frames": sum(seen), "lost": len(lost),
        "duplicated": len(duplicated), "problems": problems,
    }


def run(trials: int = 10, quick: bool = False, out: Path | None = None, workdir: Path | None = None) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        root = make_dataset(tmp / "data", videos_per_class=2 if quick else 4)
        reference = clean_reference(root, tmp / "clean")
        results = []
        for trial in range(trials):
            start = time.perf_counter()
            result = kill_trial(root, tmp / f"trial{trial:02d}", reference, seed=trial)
            result["seconds"] = round(time.perf_counter() - start, 2)
            results.append(result)
            print(f"trial {trial:2d}: killed={result['killed']!s:5} at stage {result['stage']} "
                  f"+{result['delay_s']:.2f} s, "
                  f"{result['sealed_before']:2d}/{result['videos']} sealed, {result['partials_left']} .partial, "
                  f"rerun encoded {result['reencoded_frames']:3d} frames, lost {result['lost']}, "
                  f"{'OK' if not result['problems'] else 'PROBLEMS: ' + '; '.join(result['problems'])}", flush=True)
    summary = {
        "trials": len(results),
        "killed_mid_run": sum(r["killed"] for r in results),
        "failures_found": sum(bool(r["problems"]) for r in results),
        "lost_videos": sum(r["lost"] for r in results),
        "duplicated_videos": sum(r["duplicated"] for r in results),
        "trial_results": results,
    }
    print(f"trials: {summary['trials']} ({summary['killed_mid_run']} killed mid-run), failures found: "
          f"{summary['failures_found']}, lost videos: {summary['lost_videos']}, duplicated videos: "
          f"{summary['duplicated_videos']}")
    if out is not None:
        write_json(out, summary)
        print(f"saved {out}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="kill -9 trials [10]")
    parser.add_argument("--quick", action="store_true", help="a smaller data set (faster trials)")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "faults.json"))
    args = parser.parse_args(argv)
    summary = run(args.trials, args.quick, Path(args.out))
    return 1 if summary["failures_found"] else 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from data.errors import run_cli

    run_cli(main)

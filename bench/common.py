"""Small helpers shared by the benchmark scripts: timing medians, JSON results, peak RSS of a subprocess.

Benchmarks are not tests (docs/design.md, "Principles"): they print figures measured in one run and save them as JSON
under `bench/results/` (git-ignored). On a shared machine timings are noisy, so report medians and ratios of
two things measured side by side in the same run.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data.outputs import write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeat: int = 5,
                        warmup: int = 1) -> dict[str, float]:
    """Median wall time (s) of each function, timed in alternation (a b, b a, a b, ...) so that a change of
    load on a shared machine, or running first in a round, hits every side alike; `warmup` untimed rounds
    first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_number in range(repeat):
        order = list(fns.items()) if round_number % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def evict_page_cache(path: str | Path) -> bool:
    """Drop the page-cache pages of one file (clean pages only, after an fdatasync; needs no privileges), so the next
    read comes from the disk. False where posix_fadvise does not exist."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def mb_per_s(nbytes: float, seconds: float) -> float:
    """Throughput in MB/s (1 MB = 1e6 bytes)."""
    return nbytes / 1e6 / seconds if seconds > 0 else math.inf


def save_json(name: str, data: dict, out_dir: str | Path | None = None) -> Path:
    """Write `data` to `<out_dir or bench/results>/<name>.json` (atomically, `data.outputs.write_json`)."""
    return write_json(Path(out_dir if out_dir is not None else RESULTS_DIR) / f"{name}.json", data)


def proc_status_mb(field: str = "VmRSS") -> float:
    """A memory field of /proc/self/status in MiB (VmRSS: resident now, VmHWM: peak resident); NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def measure_subprocess(command: Sequence[str], timeout: float | None = None, cwd: str | Path | None = None,
                       env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `command` and return {returncode, wall_s, peak_rss_mb, stdout, stderr, timed_out}.

    peak_rss_mb is the child's own maximum resident set (from `wait4`, Linux/macOS), not the sum over children
    that `RUSAGE_CHILDREN` would give. Output goes through temporary files, so a chatty child cannot block.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=out, stderr=err, cwd=cwd or REPO_ROOT,
                                   env=None if env is None else {**os.environ, **env})
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            if timer:
                timer.cancel()
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        # ru_maxrss is in KiB on Linux and in bytes on macOS
        rss_bytes = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
        return {
            "returncode": process.returncode,
            "wall_s": wall,
            "peak_rss_mb": rss_bytes / 2**20,
            "stdout": out.read().decode("utf-8", "replace"),
            "stderr": err.read().decode("utf-8", "replace"),
            "timed_out": timed_out.is_set(),
        }


def scratch_dir(prefix: str, parent: str | Path | None = None) -> Path:
    """A fresh temporary folder for benchmark files, by default under bench/results/ (the repo's disk)."""
    base = Path(parent) if parent is not None else RESULTS_DIR
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))



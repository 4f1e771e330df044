"""`make demo`: the whole idea, offline, in about ten minutes on a 2-core laptop CPU.

synthetic videos (order is the only signal) -> PyAV + a random tiny ViT -> HDF5 cache -> a small ablation on the one
cache (`python -m heads ablate`, what `make ablate` runs), three heads x 2 seeds:
  s4-multiscale          the paper's model: sees order, should be near-perfect
  transformer-multiscale its self-attention twin
  mean-pool              order-blind floor: should stay near chance
Prints the mean ± std table; <out>/ablate/synthetic/demo/summary.{json,md,png} keep it and the runs are ordinary run
directories under <out>/synthetic/<head>/. Every step is idempotent: the data set, the cache and the finished runs are
reused when present, an interrupted run is resumed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from data.errors import UserError, run_cli

HEADS = ("s4-multiscale", "transformer-multiscale", "mean-pool")
SEEDS = "0,1"
# Small widths keep the demo to minutes on 2 cores; the architecture is the paper's, only narrower.
HEAD_ARGS = ["--d-model", "64", "--n-layers", "3", "--d-state", "64", "--dropout", "0.1"]


def step(title: str, command: list[str]) -> float:
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    status = subprocess.call(command)
    if status != 0:
        raise UserError(f"demo step failed ({title}); run it alone to see why: {' '.join(command)}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.splitlines()[0])
    # 20 epochs x 2 seeds: the training part within twice the one-seed, 30-epoch demo before it (README, Results)
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", 0) or 20))
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--data-root", default=None, help="synthetic set location [data/raw/synthetic]")
    args = parser.parse_args(argv)

    py = sys.executable
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root_args = ["--root", args.data_root] if args.data_root else []
    data_root_args = ["--data-root", args.data_root] if args.data_root else []
    if not _synthetic_present(args.data_root):
        step("1/3 write the synthetic videos", [py, "-m", "data", "make", "synthetic", *root_args])
    else:
        print("=== 1/3 synthetic videos present: reusing them")
    step("2/3 extract features (vit-tiny-random; skips what is cached)",
         [py, "-m", "extract", "--dataset", "synthetic", "--encoder", "vit-tiny-random", "--cache-dir", args.cache_dir,
          *data_root_args])

    train_s = step(f"3/3 train {', '.join(HEADS)} x seeds {SEEDS} on the one cache (skips finished runs)",
                   [py, "-m", "heads", "ablate", "--heads", ",".join(HEADS), "--seeds", SEEDS, "--name", "demo",
                    "--dataset", "synthetic", "--epochs", str(args.epochs), "--cache-dir", args.cache_dir,
                    "--runs-dir", str(out), *data_root_args, *HEAD_ARGS])
    print(f"training part: {train_s:.0f} s")
    return 0


def _synthetic_present(root: str | None) -> bool:
    """True when the synthetic set's annotations and its first video exist (a missing root raises a UserError)."""
    from data import get_dataset

    try:
        ds = get_dataset("synthetic", root=root)
        records = ds.records(ds.splits[0])
    except UserError:
        return False
    return bool(records) and ds.video_path(records[0].video_id).exists()


if __name__ == "__main__":
    run_cli(main)

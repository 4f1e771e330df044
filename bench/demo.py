"""`make demo`: the whole idea, offline, in a few minutes on a laptop CPU.

synthetic videos (order is the only signal) -> PyAV + a random tiny ViT -> HDF5 cache -> three heads on the one cache:
  s4-multiscale          the paper's model: sees order, should be near-perfect
  transformer-multiscale its self-attention twin
  mean-pool              order-blind floor: should stay near chance
Prints a table (head, test accuracy, train time, parameters) and writes runs/demo/summary.json and summary.png.
Every step is idempotent: the data set and the cache are reused when present.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from data.errors import UserError, run_cli

HEADS = ("s4-multiscale", "transformer-multiscale", "mean-pool")
# Small widths keep the demo to minutes on 2 cores; the architecture is the paper's, only narrower.
HEAD_ARGS = ["--d-model", "64", "--n-layers", "3", "--d-state", "64", "--dropout", "0.1"]


def step(title: str, command: list[str]) -> float:
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    status = subprocess.call(command)
    if status != 0:
        raise UserError(f"demo step failed ({title}); run it alone to see why: {' '.join(command)}")
    return time.perf_counter() - start


def newest_results(runs_dir: Path, head: str) -> dict:
    candidates = sorted((p for p in runs_dir.rglob("results.json") if f"/{head}/" in p.as_posix()),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(f"training {head} wrote no results.json under {runs_dir}")
    return json.loads(candidates[-1].read_text())


def plot_summary(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(summary["heads"])
    accs = [summary["heads"][h]["test_acc"] for h in heads]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    bars = ax.bar(heads, accs, color=["tab:green", "tab:blue", "tab:gray"][: len(heads)])
    ax.axhline(summary["chance"], color="tab:red", ls="--", lw=1, label=f"chance ({summary['chance']:.2f})")
    for bar, h in zip(bars, heads):
        info = summary["heads"][h]
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01,
                f"{info['test_acc']:.2f}\n{info['train_s']:.0f} s", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("test accuracy")
    ax.set_title("synthetic procedural activities: classes differ only in step order", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", 0) or 30))
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--data-root", default=None, help="synthetic set location [data/raw/synthetic]")
    args = parser.parse_args(argv)

    from data import get_dataset

    py = sys.executable
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root_args = ["--root", args.data_root] if args.data_root else []
    data_root_args = ["--data-root", args.data_root] if args.data_root else []
    if not _synthetic_present(args.data_root):
        step("1/3 write the synthetic videos", [py, "-m", "data", "make", "synthetic", *root_args])
    else:
        print("=== 1/3 synthetic videos present: reusing them")
    ds = get_dataset("synthetic", root=args.data_root)
    step("2/3 extract features (vit-tiny-random; skips what is cached)",
         [py, "-m", "extract", "--dataset", "synthetic", "--encoder", "vit-tiny-random", "--cache-dir", args.cache_dir,
          *data_root_args])

    summary = {"heads": {}, "chance": 1.0 / ds.num_classes, "dataset": "synthetic", "epochs": args.epochs}
    for i, head in enumerate(HEADS, 1):
        train_s = step(f"3/3 train {head} ({i}/{len(HEADS)})",
                       [py, "-m", "heads", "train", "--head", head, "--dataset", "synthetic", "--epochs",
                        str(args.epochs), "--cache-dir", args.cache_dir, "--runs-dir", str(out), *data_root_args,
                        *HEAD_ARGS])
        results = newest_results(out, head)
        summary["heads"][head] = {"test_acc": float(results["test"]["acc"]), "train_s": round(train_s, 1),
                                  "params": int(results.get("params", 0))}

    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_summary(summary, out / "summary.png")
    print(f"\n{'head':<24}{'test acc':>10}{'train s':>10}{'params':>12}")
    for head, info in summary["heads"].items():
        print(f"{head:<24}{info['test_acc']:>10.3f}{info['train_s']:>10.1f}{info['params']:>12,}")
    print(f"{'chance':<24}{summary['chance']:>10.3f}")
    print(f"saved {out / 'summary.json'} and {out / 'summary.png'}")
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

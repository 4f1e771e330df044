"""Command line for the data sets: write the synthetic set, count records of any adapter.

    python -m data make synthetic [--root R] [--seed S] [--per-class TRAIN VAL TEST] [--force]
    python -m data count <dataset> [--root R] [--task T] [--seed S]

`--root` defaults to $DATA_ROOT, then to data/raw/<dataset> (the environment variable is read here only, never by
`data.get_dataset`). Bad input prints one `error: ...` line (exit 2) through `data.errors.run_cli`.
"""

from __future__ import annotations

import argparse
import os
import time

from data import DATASETS, get_dataset
from data.datasets.base import default_root
from data.errors import UserError, run_cli


def _root(args: argparse.Namespace) -> str | None:
    return args.root or os.environ.get("DATA_ROOT") or None


def make(args: argparse.Namespace) -> int:
    if args.dataset != "synthetic":
        if args.dataset not in DATASETS:
            raise UserError(f"unknown dataset {args.dataset!r}; valid: {', '.join(DATASETS)}")
        cls = DATASETS[args.dataset]
        raise UserError(
            f"{args.dataset} cannot be generated, only synthetic can: download it from {cls.source}, lay it out as "
            f"{cls.layout} and pass DATA_ROOT=<folder>"
        )
    from data import synthetic  # numpy + PyAV, only here

    root = _root(args) or str(default_root("synthetic"))
    size = {}
    if args.per_class:
        if min(args.per_class) < 1:
            raise UserError(f"--per-class needs three counts >= 1 (train val test), got {args.per_class}")
        size["per_class"] = dict(zip(synthetic.SPLITS, args.per_class))
    start = time.perf_counter()
    print(f"writing the synthetic set into {root} (seed {args.seed})", flush=True)
    synthetic.generate(root, seed=args.seed, force=args.force, progress=True, **size)
    ds = get_dataset("synthetic", root=root)
    counts = ", ".join(f"{split} {len(ds.records(split))}" for split in ds.splits)
    print(f"done in {time.perf_counter() - start:.1f} s: {counts} videos, {ds.num_classes} classes")
    return 0


def count(args: argparse.Namespace) -> int:
    ds = get_dataset(args.dataset, root=_root(args), task=args.task, seed=args.seed)
    task = f" task {ds.task}" if ds.task else ""
    kind = f"{ds.num_classes} classes" if ds.task_type == "classification" else "regression"
    layout = getattr(ds, "layout_kind", None)
    print(f"{ds.name}{task} ({kind}{', ' + layout if layout else ''}) at {ds.root}")
    for split in ds.splits:
        records = ds.records(split)
        print(f"  {split:<5} {len(records):>6} records  {len(ds.missing_media(split)):>6} missing media")
    skipped = getattr(ds, "skipped", [])
    if skipped:
        what = getattr(ds, "skipped_kind", "files")
        print(f"  skipped {len(skipped)} {what} (e.g. {skipped[0]})")
    for why, paths in getattr(ds, "left_out", {}).items():
        if paths:
            print(f"  {len(paths)} {why} (e.g. {paths[0]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_make = sub.add_parser("make", help="write a generated data set (synthetic)")
    p_make.add_argument("dataset", help="synthetic")
    p_make.add_argument("--root", help="output folder [$DATA_ROOT, else data/raw/synthetic]")
    p_make.add_argument("--seed", type=int, default=0, help="random seed [0]")
    p_make.add_argument("--per-class", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                        help="videos per class and split [40 10 20]")
    p_make.add_argument("--force", action="store_true", help="rewrite even if the same set is already there")
    p_make.set_defaults(func=make)
    p_count = sub.add_parser("count", help="print record counts per split and missing media")
    p_count.add_argument("dataset", help=" | ".join(DATASETS))
    p_count.add_argument("--root", help="data set folder [$DATA_ROOT, else data/raw/<dataset>]")
    p_count.add_argument("--task", help="LVU task or Breakfast split s1..s4")
    p_count.add_argument("--seed", type=int, default=0, help="seed of the splits the folder adapter draws [0]")
    p_count.set_defaults(func=count)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    run_cli(main)

"""`make bench` / `python -m bench [--quick] [--out DIR]`: every benchmark, one JSON, the pictures.

Runs bench/store.py, bench/s4_kernel.py, bench/heads.py, bench/step.py, bench/extract.py, bench/predict.py and
bench/gpu.py through their `run(quick)` functions (each of them measures in its own subprocesses where the issue asks
for it), gathers the figures into `<out>/latest.json` (`--quick`: `<out>/quick.json`; `--only` updates those sections
of the file and keeps the others) and draws:
  - `scaling.png`: training-step time (and peak memory when measured) against sequence length L, log-log, S4 vs
    attention — the paper's efficiency claim on this machine;
  - `kernel.png`: the Cauchy-kernel backends, time and extra memory.
`--quick` runs every code path at tiny sizes (part of `make test`, so the benchmarks cannot rot).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from data.console import quiet_libraries
from data.errors import run_cli
from data.outputs import cpu_name, write_json

SECTIONS = {  # key in latest.json -> module
    "store": "bench.store",
    "kernel": "bench.s4_kernel",
    "heads": "bench.heads",
    "step": "bench.step",  # the LVU step's efficiency, where its time goes, evaluation windows/s, data wait
    "extract": "bench.extract",
    "predict": "bench.predict",
    "gpu": "bench.gpu",  # recorded as skipped without CUDA; `make bench GPU=1` runs only this one
}


def describe_device() -> str:
    import torch

    cpu = cpu_name()
    text = f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def run_section(key: str, quick: bool) -> dict:
    module = importlib.import_module(SECTIONS[key])
    result = module.run(quick=quick)
    # A section may return its figures flat or nested under its own key (extra keys kept as "detail").
    if isinstance(result, dict) and isinstance(result.get(key), dict):
        extras = {k: v for k, v in result.items() if k != key}
        result = dict(result[key])
        if extras:
            result["detail"] = extras
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every path in well under a minute")
    parser.add_argument("--out", default="bench/results", help="folder for the JSON and PNG files")
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="run only these sections")
    args = parser.parse_args(argv)
    quiet_libraries()  # e.g. KeOps' "CUDA libraries not found" on a CPU machine (VERBOSE=1 shows them)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else "latest"
    path = out / f"{name}.json"
    results: dict = {}
    if args.only and path.is_file():  # a partial run updates its sections and keeps the others' figures
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            results = {}
    results.update({"device": describe_device(), "quick": args.quick,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if args.only:
        results.setdefault("section_created", {}).update({k: results["created"] for k in args.only})
    failed = []
    for key in args.only or list(SECTIONS):
        start = time.perf_counter()
        print(f"== bench {key}{' (quick)' if args.quick else ''}", flush=True)
        try:
            results[key] = run_section(key, args.quick)
        except Exception as exc:  # one broken section must not hide the others' figures
            failed.append(key)
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"bench {key} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"== bench {key}: {time.perf_counter() - start:.1f} s", flush=True)

    write_json(path, results)
    from bench.plots import plot_all

    pictures = plot_all(results, out, prefix="quick-" if args.quick else "")
    print(f"saved {path}" + "".join(f", {p}" for p in pictures))
    if failed:
        print(f"error: bench sections failed: {', '.join(failed)} (rerun with --only {' '.join(failed)})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)

"""`make bench GPU=1` (`python -m bench --only gpu`): the CUDA path measured, in one process per configuration.

Without a CUDA device the section is recorded as skipped (`{"skipped": ...}`); `--device cpu` runs the same code at
tiny sizes on the CPU (what the test suite does, so this file cannot rot where no GPU is lent). On CUDA it measures:
  lvu        the paper's LVU setting at batch 16 (L = 60 x 197 = 11,820, d = 1024, 3 blocks): s4-multiscale with the
             keops and with the torch kernel, transformer-multiscale with sdpa and with materialized L x L attention;
             median step time (forward + backward + AdamW, synchronised) and `torch.cuda.max_memory_allocated`. The
             materialized twin rarely fits at batch 16: the largest batch that fits (16, 8, 4, 2, 1) is measured for
             it and for s4-multiscale, so the speed ratio compares equal batches.
  kernel     the S4 kernel, forward + backward, per backend at H = 1024, N = 64, L = 11,820 and 2,048
             (`bench.s4_kernel` on CUDA: time and peak allocation delta).
  extract    frames/s of a ViT-L/16-shaped encoder (random weights, 304 M parameters) in bf16 autocast: encoder alone
             vs end to end from video files to sealed shards (`bench.extract`).
  gradcheck  float64 `torch.autograd.gradcheck` of the keops and torch kernels on the device at small size, and
             their values and gradients against each other (11-smooth L and a mixed-radix L).
Goals (issue 19, after the paper's 5.15 GB vs 41.38 GB and 2.63x): s4-multiscale <= 2.6 GB peak at batch 16 and
>= 5x faster than the materialized twin; keops and torch agree.

    python bench/gpu.py [--device cuda|cpu] [--quick] [--parts gradcheck kernel lvu extract] [--out ...gpu.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]  # bench/heads.py != heads/
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import write_json  # noqa: E402

LVU = {"T": 60, "P": 197, "d": 1024, "layers": 3, "classes": 10}
QUICK = {"T": 4, "P": 5, "d": 16, "layers": 3, "classes": 10}
BATCH = 16
GOALS = {"s4_peak_gb": 2.6, "materialized_over_s4_step": 5.0}
S4_VARIANTS = {"s4-multiscale (keops)": "keops", "s4-multiscale (torch kernel)": "torch"}


def _lvu_jobs(labels: list[str], setting: dict, batch: int, device: str, steps: int) -> list[dict]:
    """Measure the labelled heads, all in ONE fresh interpreter (bench.heads.in_subprocess); an OOM reads as "OOM"."""
    from bench import heads as heads_bench

    jobs = []
    for label in labels:
        variant, backend = (("s4-multiscale", S4_VARIANTS[label]) if label in S4_VARIANTS else (label, None))
        jobs.append({"variant": variant, **setting, "steps": steps, "batch": batch, "device": device,
                     "backend": backend})
    return [{**r, "label": label} for r, label in zip(heads_bench.in_subprocess(jobs, timeout=900), labels)]


def lvu(quick: bool, device: str, steps: int = 3, say=print) -> dict:
    """Step time and peak memory of the four heads at batch 16; the materialized twin at the largest batch that
    fits, next to s4-multiscale at that batch. Each configuration in its own interpreter (a fresh CUDA allocator;
    `--quick`: one interpreter for all)."""
    from heads.s4.keops_health import probe

    setting = QUICK if quick else LVU
    labels = list(S4_VARIANTS) + ["transformer-multiscale (sdpa)", "transformer-multiscale (materialized)"]
    runnable = [lb for lb in labels if S4_VARIANTS.get(lb) != "keops" or probe(device).ok]
    measured = (_lvu_jobs(runnable, setting, BATCH, device, steps) if quick else
                [_lvu_jobs([lb], setting, BATCH, device, steps)[0] for lb in runnable])
    by_label = {r["label"]: r for r in measured}
    rows = [by_label.get(lb) or {"label": lb, "batch": BATCH, "step_s": "skipped", "peak_gb": "skipped",
                                 "detail": probe(device).cause} for lb in labels]
    for r in rows:
        say(f"  lvu batch {r['batch']}: {r['label']:<40} {_fmt(r['step_s'])} s/step, peak {_fmt(r['peak_gb'])} GB",
            flush=True)
    materialized = rows[-1]
    fit = materialized if isinstance(materialized["step_s"], float) else None
    if fit is None and _out_of_memory(materialized):
        batch = BATCH // 2
        while batch >= 1 and fit is None:
            row = _lvu_jobs(["transformer-multiscale (materialized)"], setting, batch, device, steps)[0]
            say(f"  lvu batch {batch}: materialized {_fmt(row['step_s'])} s/step, peak {_fmt(row['peak_gb'])} GB",
                flush=True)
            if isinstance(row["step_s"], float):
                fit = row
            elif not _out_of_memory(row):
                break  # another failure: smaller batches will not tell more
            batch //= 2
    s4_label = next((r["label"] for r in rows[:2] if isinstance(r["step_s"], float)), None)
    same_batch = None
    if fit is not None and s4_label is not None:
        same_batch = (next(r for r in rows if r["label"] == s4_label) if fit["batch"] == BATCH
                      else _lvu_jobs([s4_label], setting, fit["batch"], device, steps)[0])
    s4 = next((r for r in rows[:2] if isinstance(r["step_s"], float)), None)
    out = {"setting": {**setting, "L": setting["T"] * setting["P"], "batch": BATCH, "steps": steps},
           "step_s": {r["label"]: r["step_s"] for r in rows}, "peak_gb": {r["label"]: r["peak_gb"] for r in rows},
           "materialized_fits_at_batch": fit["batch"] if fit else None, "detail": rows}
    if fit is not None and same_batch is not None and isinstance(same_batch["step_s"], float):
        out["materialized_vs_s4_same_batch"] = {
            "batch": fit["batch"], "s4": same_batch["label"],
            "step_ratio": round(fit["step_s"] / same_batch["step_s"], 2),
            "peak_ratio": round(fit["peak_gb"] / same_batch["peak_gb"], 2)}
    if s4 is not None:
        out["goals"] = {"s4_peak_gb": {"measured": s4["peak_gb"], "goal": GOALS["s4_peak_gb"]},
                        "materialized_over_s4_step": {"measured": out.get("materialized_vs_s4_same_batch", {})
                                                      .get("step_ratio"), "goal": GOALS["materialized_over_s4_step"]}}
    return out


def _out_of_memory(row: dict) -> bool:
    """An OOM as `bench.heads` reports it, or a crash whose last words are about memory (cuBLAS/cuDNN allocation)."""
    return row["step_s"] == "OOM" or "memory" in str(row.get("detail", "")).lower() or "ALLOC" in str(
        row.get("detail", ""))


def gradcheck(device: str) -> dict:
    """float64 gradcheck of the keops and torch kernels on `device`, and keops against torch (value, gradients)."""
    import torch

    from heads.s4 import S4
    from heads.s4.kernels import BACKENDS, keops_available

    out = {}
    for L in (32, 78):  # 32: the 11-smooth (time-domain) path; 78 = 13 * 6: the mixed-radix path
        torch.manual_seed(L)
        layer = S4(2, d_state=8, l_max=L, backend="naive").to(torch.float64)  # H = 2, N = 8
        with torch.no_grad():  # off the init, so that P != Q and the four pairs differ
            layer.B.add_(0.2 * torch.randn_like(layer.B))
            layer.C.add_(0.2 * torch.randn_like(layer.C))
        v, a, dt = (t.detach() for t in layer._nplr())  # (4, H, M) complex128, (H, M) complex128, (H,) float64
        H = dt.shape[0]
        g = torch.randn(H, L, dtype=torch.float64, generator=torch.Generator().manual_seed(L)).to(device)  # (H, L)
        inputs = [t.to(device).clone().requires_grad_() for t in (v, a, dt)]
        per_backend = {}
        for name in ("torch", "keops"):
            if name == "keops" and not keops_available(device):
                per_backend[name] = {"skipped": "pykeops cannot run here"}
                continue
            fn = BACKENDS[name]
            # full Jacobians on CUDA; on a CPU (the test suite) the fast mode's random projections, since each
            # PyKeOps call there costs milliseconds and the full mode makes hundreds
            passed = torch.autograd.gradcheck(lambda v_, a_, dt_, fn=fn, L=L: fn(v_, a_, dt_, L), inputs, eps=1e-6,
                                              atol=1e-7, rtol=1e-5, raise_exception=False,
                                              fast_mode=not device.startswith("cuda"))
            k = fn(*inputs, L)
            grads = torch.autograd.grad(k, inputs, g)
            per_backend[name] = {"gradcheck": bool(passed), "k": k.detach().cpu(), "grads": [x.cpu() for x in grads]}
        row = {name: {"gradcheck": r["gradcheck"]} if "gradcheck" in r else r for name, r in per_backend.items()}
        if all("k" in r for r in per_backend.values()):
            ref, other = per_backend["torch"], per_backend["keops"]
            pairs = [(other["k"], ref["k"])] + list(zip(other["grads"], ref["grads"]))
            row["keops_vs_torch_max_rel"] = max(float((x - y).abs().max() / y.abs().max()) for x, y in pairs)
        out[f"L={L}"] = row
    return out


PARTS = ("gradcheck", "kernel", "lvu", "extract")


def run(quick: bool = False, device: str | None = None, parts: tuple[str, ...] = PARTS, say=print) -> dict:
    """The GPU section of `python -m bench`; {"skipped": why} without CUDA unless `device` forces one.
    `parts` picks among gradcheck, kernel, lvu, extract (in that order: correctness first)."""
    import torch

    if device is None:
        if not torch.cuda.is_available():
            reason = (f"no CUDA device (torch {torch.__version__}"
                      f"{', a CPU build' if torch.version.cuda is None else ''}); run `make bench GPU=1` on a GPU "
                      "machine")
            say(f"  skipped: {reason}")
            return {"skipped": reason}
        device = "cuda"
    from bench import extract as extract_bench
    from bench import s4_kernel

    out: dict = {"device": device, "quick": quick}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(device)
    sections = {
        "gradcheck": lambda: gradcheck(device),
        "kernel": lambda: s4_kernel.run(quick=quick, device=device),
        "lvu": lambda: lvu(quick, device, steps=1 if quick else 3, say=say),
        "extract": lambda: extract_bench.run(quick=quick, only="vit-tiny-random" if quick else "vit-l16-random",
                                             save=False, device=device),
    }
    for key, section in sections.items():
        if key not in parts:
            continue
        say(f"  gpu/{key} ...", flush=True)
        try:
            out[key] = section()
        except Exception as exc:  # one broken part must not hide the others' figures
            out[key] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
            say(f"  gpu/{key} failed: {out[key]['error']}", flush=True)
    return out


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu (tiny sizes, tests)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS), help="[all, in this order]")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu.json"))
    args = parser.parse_args(argv)
    result = run(quick=args.quick or args.device == "cpu", device=args.device, parts=tuple(args.parts))
    print(f"saved {write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    from data.errors import run_cli

    run_cli(main)

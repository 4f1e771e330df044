"""Training-step cost of the heads (issue 4, item 7): the paper's efficiency claim measured on this machine.

LVU setting of the paper: batch 1, T = 60 segments × P = 197 tokens (L = 11,820), d = 1024, 3 layers, 10 classes.
One step = forward + backward + AdamW step (S4 parameter groups). Each configuration runs in its own subprocess
(so peak RSS is its own), one warm-up step, then the median of `--steps` (>= 3) timed steps.
  lvu_step_s / lvu_peak_gb  s4-multiscale, transformer-multiscale (sdpa), transformer-multiscale (materialized;
                            "OOM" when it does not fit the memory budget, enforced with RLIMIT_AS in its subprocess)
  scaling_step_s            s4-multiscale vs transformer-multiscale (sdpa) at L = 2,955 / 5,910 / 11,820 / 23,640
Peak memory is the process's peak RSS (ru_maxrss, includes the ~0.3-0.5 GB of the Python + torch runtime) and,
separately, the growth over the RSS before the first step ("extra"). One line per configuration is printed as its
figures come ("  lvu s4-multiscale L=11820: 1.2 s/step, peak 0.9 GB"), `--quick`'s too (one interpreter for all).
Targets (2-core CPU): s4 <= 1.5 s/step and <= 1.5 GB; >= 6x faster than sdpa; >= 8x less peak memory than
materialized; step(L=23,640) <= 10x step(L=2,955).

    python bench/heads.py [--quick] [--steps 3] [--mem-budget-gb GB] [--out bench/results/heads.json]
`run(quick)` returns the figures for `python -m bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import proc_status_mb  # noqa: E402
from data.outputs import write_json  # noqa: E402

LVU = {"T": 60, "P": 197, "d": 1024, "layers": 3, "classes": 10}
SCALING_T = (15, 30, 60, 120)  # × 197 tokens = 2,955 / 5,910 / 11,820 / 23,640
QUICK = {"T": 8, "P": 5, "d": 32, "layers": 3, "classes": 10}
QUICK_T = (4, 8, 16)
VARIANTS = {  # label -> (head, extra cfg)
    "s4-multiscale": ("s4-multiscale", {}),
    "transformer-multiscale (sdpa)": ("transformer-multiscale", {"attention": "sdpa"}),
    "transformer-multiscale (materialized)": ("transformer-multiscale", {"attention": "materialized"}),
}


def default_budget_gb() -> float:
    """3/4 of the memory available now (MemAvailable), so an attention run that does not fit fails as "OOM" in
    its own subprocess instead of waking the kernel's OOM killer."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return round(0.75 * int(line.split()[1]) / 1e6, 1)
    except OSError:
        pass
    return 12.0


def _vm_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def measure(variant: str, T: int, P: int, d: int, layers: int, classes: int, steps: int = 3,
            mem_budget_gb: float | None = None, batch: int = 1, device: str = "cpu",
            backend: str | None = None) -> dict:
    """Time `steps` training steps (after one warm-up) of one head in this process.

    On CUDA each step is bracketed by synchronisations and the memory is `torch.cuda.max_memory_allocated` over the
    steps (warm-up included; the input batch and the model are part of it); on CPU it is the process's peak RSS.
    `backend` overrides the S4 Cauchy backend of the variant (s4 heads only)."""
    import torch

    from heads import build_head
    from heads.s4.cpu import retain_freed_memory
    from heads.training.module import make_adamw
    from heads.training.optim import param_groups

    retain_freed_memory()  # as the training module does (HeadModule.setup)
    name, extra = VARIANTS[variant]
    if backend is not None:
        extra = {**extra, "backend": backend}
    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    head = build_head(name, d, classes, T * P, d_model=d, n_layers=layers, dropout=0.2, **extra).to(device)
    optimizer = make_adamw(param_groups(head, lr=1e-3, weight_decay=0.01), lr=1e-3, weight_decay=0.01)
    y = torch.arange(batch, device=device) % classes
    head.train()
    if mem_budget_gb and not cuda:
        limit = _vm_bytes() + int(mem_budget_gb * 1e9)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    base_rss = proc_status_mb("VmRSS") * 2**20 / 1e9  # GB, like ru_maxrss below
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    try:
        x = torch.randn(batch, T, P, d, device=device).half()  # (B, T, P, D) float16, as read from the cache
        for i in range(steps + 1):
            sync()
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(head(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            if i:  # the first step is the warm-up
                times.append(time.perf_counter() - start)
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if "memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        return {"variant": variant, "L": T * P, "batch": batch, "device": device, "step_s": "OOM", "peak_gb": "OOM",
                "detail": f"did not fit {mem_budget_gb or 'the device'} GB: {str(exc).splitlines()[0][:160]}"}
    out = {"variant": variant, "L": T * P, "batch": batch, "device": device, "step_s": statistics.median(times),
           "steps_s": times, "params": sum(p.numel() for p in head.parameters()), "threads": torch.get_num_threads()}
    if cuda:
        out.update(peak_gb=torch.cuda.max_memory_allocated(device) / 1e9, memory="torch.cuda.max_memory_allocated",
                   gpu=torch.cuda.get_device_name(device), tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
        if name.startswith("s4"):
            from heads.s4.kernels import resolve_backend

            out["s4_backend"] = resolve_backend(extra.get("backend", "auto"), device)
        return out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB -> GB
    return {**out, "peak_gb": peak, "extra_gb": peak - base_rss}


def in_subprocess(jobs: list[dict], timeout: float = 900, on_result=None) -> list[dict]:
    """Run measure(**job) for each job in one fresh interpreter; a crash (e.g. the OOM killer) reads as OOM, running
    past `timeout` (seconds, all the jobs together) as timeout. `on_result(result)` is called as each result comes."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(jobs)]
    done: list[dict] = []
    killed = threading.Event()
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=REPO)

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            for line in proc.stdout:
                if line.startswith("{"):
                    done.append(json.loads(line))
                    if on_result:
                        on_result(done[-1])
            returncode = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:  # interrupted here: the worker goes too
                proc.kill()
                proc.wait()
        errors.seek(0)
        tail = errors.read().strip().splitlines()[-1:]
    if returncode == 0 and len(done) == len(jobs):
        return done
    if killed.is_set():
        reason = f"timeout (> {timeout / (jobs[0].get('steps', 3) + 1):.0f} s/step)"
        rest = [{"step_s": reason, "peak_gb": "timeout"} for _ in jobs[len(done):]]
    else:
        reason = "OOM" if returncode in (-9, 137) else f"failed (exit {returncode})"
        rest = [{"step_s": reason, "peak_gb": reason, "detail": " ".join(tail)[:300]} for _ in jobs[len(done):]]
    rest = [{"variant": j["variant"], "L": j["T"] * j["P"], "batch": j.get("batch", 1), **r}
            for j, r in zip(jobs[len(done):], rest)]
    for result in rest:
        if on_result:
            on_result(result)
    return done + rest


def _figure(value, unit: str) -> str:
    return f"{value:.3g} {unit}" if isinstance(value, float) else str(value)


def progress_line(kind: str, r: dict) -> str:
    """'  lvu s4-multiscale L=40: 0.892 s/step, peak 0.539 GB' (scaling lines: the step time alone)."""
    line = f"  {kind} {r['variant']} L={r['L']}: {_figure(r['step_s'], 's/step')}"
    return line + (f", peak {_figure(r['peak_gb'], 'GB')}" if kind == "lvu" else "")


def _ratio(a, b):
    return round(a / b, 2) if isinstance(a, float) and isinstance(b, float) and b > 0 else None


def run(quick: bool = False, steps: int = 3, mem_budget_gb: float | None = None, verbose: bool = True,
        job_timeout: float = 900.0) -> dict:
    setting = QUICK if quick else LVU
    mem_budget_gb = mem_budget_gb or default_budget_gb()
    scaling_t = QUICK_T if quick else SCALING_T
    say = print if verbose else (lambda *a, **k: None)
    base = {"P": setting["P"], "d": setting["d"], "layers": setting["layers"], "classes": setting["classes"],
            "steps": steps}
    lvu_jobs = [{"variant": v, "T": setting["T"], **base,
                 "mem_budget_gb": mem_budget_gb if "materialized" in v else None} for v in VARIANTS]
    scale_jobs = [{"variant": v, "T": t, **base} for v in list(VARIANTS)[:2] for t in scaling_t]
    if quick:  # every code path, one interpreter, seconds; a line per configuration as its result comes
        count = iter(range(len(lvu_jobs + scale_jobs)))
        results = in_subprocess(lvu_jobs + scale_jobs, on_result=lambda r: say(
            progress_line("lvu" if next(count) < len(lvu_jobs) else "scaling", r), flush=True))
        lvu, scale = results[: len(lvu_jobs)], results[len(lvu_jobs):]
    else:
        lvu, scale = [], []
        for job in lvu_jobs:
            say(f"  lvu {job['variant']} L={job['T'] * job['P']} ...", flush=True)
            lvu += in_subprocess([job], timeout=job_timeout)
            say(progress_line("lvu", lvu[-1]), flush=True)
        for job in scale_jobs:
            same = [r for r in lvu if r["variant"] == job["variant"] and r["L"] == job["T"] * job["P"]]
            if same:  # the LVU point is the L = 11,820 point of the scaling curve
                scale += same
                continue
            scale += in_subprocess([job], timeout=job_timeout)
            say(progress_line("scaling", scale[-1]), flush=True)
    out = {
        "setting": {**setting, "L": setting["T"] * setting["P"], "batch": 1, "steps": steps, "quick": quick,
                    "mem_budget_gb_materialized": mem_budget_gb, "cpus": os.cpu_count(),
                    "load_average_at_start": os.getloadavg()},
        "lvu_step_s": {r["variant"]: r["step_s"] for r in lvu},
        "lvu_peak_gb": {r["variant"]: r["peak_gb"] for r in lvu},
        "lvu_extra_gb": {r["variant"]: r.get("extra_gb") for r in lvu},
        "scaling_step_s": {},
        "detail": lvu + scale,
    }
    for r in scale:
        out["scaling_step_s"].setdefault(r["variant"], {})[str(r["L"])] = r["step_s"]
    s4, sdpa, mat = (out["lvu_step_s"].get(v) for v in VARIANTS)
    s4_mem, mat_mem = out["lvu_peak_gb"].get("s4-multiscale"), out["lvu_peak_gb"].get(list(VARIANTS)[2])
    curve = out["scaling_step_s"].get("s4-multiscale", {})
    Ls = sorted(int(k) for k in curve)
    out["ratios"] = {
        "sdpa_over_s4_step": _ratio(sdpa, s4),
        "materialized_over_s4_step": _ratio(mat, s4),
        "materialized_over_s4_peak": _ratio(mat_mem, s4_mem) if mat_mem != "OOM" else
        f">= {_ratio(float(mem_budget_gb), s4_mem)} (materialized OOM at {mem_budget_gb} GB)",
        "s4_step_longest_over_shortest_L": _ratio(curve.get(str(Ls[-1])), curve.get(str(Ls[0]))) if Ls else None,
    }
    return out


def print_table(out: dict) -> None:
    s = out["setting"]
    print(f"\ntraining step, batch 1, L = {s['T']} x {s['P']} = {s['L']}, d = {s['d']}, {s['layers']} layers "
          f"(median of {s['steps']} after a warm-up)")
    print(f"{'head':<40}{'s/step':>10}{'peak GB':>10}{'extra GB':>10}")
    for v in out["lvu_step_s"]:
        t, m, e = out["lvu_step_s"][v], out["lvu_peak_gb"][v], out["lvu_extra_gb"].get(v)
        fmt = lambda z: f"{z:>10.3f}" if isinstance(z, float) else f"{str(z):>10}"  # noqa: E731
        print(f"{v:<40}{fmt(t)}{fmt(m)}{fmt(e)}")
    print("\nstep time (s) against L")
    curves = out["scaling_step_s"]
    Ls = sorted({int(k) for c in curves.values() for k in c})
    print(f"{'head':<40}" + "".join(f"{L:>10}" for L in Ls))
    for v, c in curves.items():
        print(f"{v:<40}" + "".join(f"{c.get(str(L)):>10.3f}" if isinstance(c.get(str(L)), float)
                                   else f"{str(c.get(str(L))):>10}" for L in Ls))
    print("\nratios:", json.dumps(out["ratios"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every code path in seconds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (>= 3)")
    parser.add_argument("--mem-budget-gb", type=float, default=None,
                        help="address-space budget of the materialized-attention subprocess, beyond it: OOM "
                             "[3/4 of MemAvailable]")
    parser.add_argument("--job-timeout", type=float, default=900.0, help="seconds per measured configuration")
    parser.add_argument("--out", default=None, help="JSON path [bench/results/heads.json, quick: heads-quick.json]")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        for job in json.loads(args.worker):
            print(json.dumps(measure(**job)), flush=True)
        return 0
    if args.steps < 3:
        from data.errors import UserError

        raise UserError(f"--steps must be >= 3 (medians of at least 3 steps), got {args.steps}")
    out = run(quick=args.quick, steps=args.steps, mem_budget_gb=args.mem_budget_gb, job_timeout=args.job_timeout)
    print_table(out)
    path = Path(args.out or REPO / "bench" / "results" / ("heads-quick.json" if args.quick else "heads.json"))
    write_json(path, out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    from data.errors import run_cli

    run_cli(main)

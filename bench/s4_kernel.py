"""Benchmark of the S4 kernel backends (issue 3): forward+backward time and peak extra memory per backend.

`python bench/s4_kernel.py [--quick] [--out bench/results/s4_kernel.json]`, or `run(quick)` from `python -m bench`.
Each measurement runs in its own subprocess (fresh allocator, no cross-talk). Peak extra memory = peak RSS
(VmHWM, reset through /proc/self/clear_refs) minus the RSS after the inputs and a warm-up are in place, so it counts
everything the kernel computation allocates: its output, saved tensors, temporaries and the gradients.
Time = median of `repeats` forward+backward passes (forward also reported), wall clock; `cpu_s` is the process
CPU time of the same passes (all threads), a contention-robust companion when other jobs share the cores.
The kernel is that of a freshly initialised layer (HiPPO-LegS, N = 64); the upstream gradient is random.
Full run: H = 1024, N = 64 at L = 11,820 (the paper's LVU length) and L = 2,048 (where `naive` fits).
`--quick`: every available backend at tiny sizes in seconds (part of `make test` through `python -m bench --quick`).
On CUDA the same code times the GPU (peak extra = torch.cuda.max_memory_allocated delta).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, sys.path[0] is bench/, where bench/heads.py would shadow the `heads` package: use the root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import proc_status_mb  # noqa: E402
from data.outputs import write_json  # noqa: E402

FULL_CASES = [  # (backend, H, L)
    ("torch", 1024, 11820), ("keops", 1024, 11820),
    ("naive", 1024, 2048), ("torch", 1024, 2048), ("keops", 1024, 2048),
]
QUICK_CASES = [("naive", 8, 256), ("torch", 8, 256), ("keops", 8, 256)]
BUDGET = {"s": 0.5, "extra_mb": 256}  # issue 3 target for the best CPU backend at H=1024, L=11,820


def measure(backend: str, H: int, L: int, repeats: int, device: str = "cpu") -> dict:
    """One measurement in THIS process (called inside the subprocess)."""
    import torch

    from heads.s4 import S4
    from heads.s4.kernels import ssm_kernel
    from heads.s4.numba_loops import describe

    torch.manual_seed(0)
    layer = S4(H, d_state=64, l_max=L, backend=backend).to(device)
    v, a, dt = (t.detach().requires_grad_() for t in layer._nplr())
    g = torch.randn(H, L, device=device)

    def step() -> tuple[float, float, float]:
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        c0, t0 = time.process_time(), time.perf_counter()
        k = ssm_kernel(v, a, dt, L, backend)  # (H, L)
        sync()
        t1 = time.perf_counter()
        k.backward(g)
        sync()
        t2, c2 = time.perf_counter(), time.process_time()
        v.grad = a.grad = dt.grad = None
        return t1 - t0, t2 - t0, c2 - c0

    # warm-up at a small channel count: imports, KeOps compilation, FFT plans
    small = min(H, 8)
    ssm_kernel(v[:, :small], a[:small], dt[:small], L, backend).backward(g[:small])
    v.grad = a.grad = dt.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = proc_status_mb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
    load = os.getloadavg()[0]
    times = [step() for _ in range(repeats)]
    if device == "cuda":
        extra = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        extra = proc_status_mb("VmHWM") - base
    return {
        "backend": backend, "H": H, "N": 64, "L": L, "device": device, "threads": torch.get_num_threads(),
        "s": statistics.median(t for _, t, _ in times), "forward_s": statistics.median(f for f, _, _ in times),
        "cpu_s": statistics.median(c for _, _, c in times), "all_s": [round(t, 4) for _, t, _ in times],
        "extra_mb": round(extra, 1), "repeats": repeats, "load_before": round(load, 2),
        "memory": "peak CUDA allocation delta" if device == "cuda" else "peak RSS delta (VmHWM)",
        "loops": describe(device) if backend == "torch" else None,  # the torch kernel's elementwise chains
    }


def _available(backend: str, device: str) -> bool:
    if backend != "keops":
        return True
    from heads.s4.kernels import keops_available

    return keops_available(device)


def _subprocess(backend: str, H: int, L: int, repeats: int, device: str, timeout: float,
                threads: int | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", backend, str(H), str(L), str(repeats), device]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "H": H, "L": L, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"backend": backend, "H": H, "L": L, "error": f"exit {proc.returncode}: {tail[0][:300]}"}


def run(quick: bool = False, device: str | None = None, repeats: int | None = None,
        threads: int | None = None) -> dict:
    """Measure every available backend; returns {"kernel": {backend: {"s", "extra_mb"}}, "cases": [...], ...}."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cases = QUICK_CASES if quick else FULL_CASES
    repeats = repeats or (2 if quick else 3)
    results = []
    for backend, H, L in cases:
        if not _available(backend, device):
            from heads.s4.keops_health import probe

            results.append({"backend": backend, "H": H, "L": L, "skipped": probe(device).cause})
            continue
        slow = not quick and backend == "keops" and device == "cpu"  # ~20 s per pass at the paper size
        timeout = 120 if quick else (900 if slow else 600)
        results.append(_subprocess(backend, H, L, 1 if slow else repeats, device, timeout, threads))
        print(_row(results[-1]), flush=True)
    busy = [r for r in results if r.get("load_before", 0) > (os.cpu_count() or 1) and r.get("threads", 1) > 1]
    if busy:
        print(f"note: load {busy[0]['load_before']} > {os.cpu_count()} cores during {len(busy)} multi-threaded "
              "measurement(s): OpenMP regions wait for descheduled worker threads, so these times are inflated "
              "(up to ~100x seen here); rerun when quiet or with --threads 1", flush=True)
    L_head = max(L for _, _, L in cases)
    summary = {r["backend"]: {"s": r["s"], "extra_mb": r["extra_mb"]} for r in results
               if r.get("L") == L_head and "s" in r}
    return {"kernel": summary, "cases": results, "budget": BUDGET, "device": device,
            "size": {"H": cases[0][1], "N": 64, "L": L_head}}


def _row(r: dict) -> str:
    head = f"{r['backend']:>6} H={r['H']:<5} L={r['L']:<6}"
    if "s" in r:
        return (f"{head} fwd+bwd {r['s']:8.3f} s  (fwd {r['forward_s']:.3f} s, cpu {r['cpu_s']:.3f} s)"
                f"  extra {r['extra_mb']:8.1f} MB  [{r['device']}, {r['threads']} threads, load {r['load_before']}"
                + (f", loops: {r['loops']}]" if r.get("loops") else "]"))
    return f"{head} {r.get('error') or r.get('skipped')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, every backend, seconds")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each measurement [torch default]")
    parser.add_argument("--out", default=None, help="JSON path [bench/results/s4_kernel.json; quick: not saved]")
    parser.add_argument("--one", nargs=5, metavar=("BACKEND", "H", "L", "REPEATS", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        backend, H, L, repeats, device = args.one
        print(json.dumps(measure(backend, int(H), int(L), int(repeats), device)))
        return 0
    result = run(quick=args.quick, device=args.device, repeats=args.repeats, threads=args.threads)
    out = args.out or (None if args.quick else str(ROOT / "bench" / "results" / "s4_kernel.json"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json(out, result)
        print(f"saved {out}")
    return 0


if __name__ == "__main__":
    from data.errors import run_cli

    run_cli(main)

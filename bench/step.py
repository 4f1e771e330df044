"""The LVU training step on CPU as ratios that hold on any machine (issue 19, part 3), measured in ONE process:

  efficiency  floor time / step time. The floor is the step's FLOPs (GEMMs and FFTs, counted by running one step
              at one thread under a dispatch mode: 2 m n k per real GEMM, 2.5 n log2 n per real FFT of length n,
              5 n log2 n per complex one; elementwise work counts 0) over the GFLOP/s of a large fp32 GEMM timed in
              alternation with the steps. Goal >= 0.75.
  where       the step's time split into the S4 kernel (forward + backward of the three layers' kernels), the fused
              core (FFT convolution, D u, GELU, dropout, pool, LayerNorm affine; forward + backward), the GEMMs (the
              step's own matrix products replayed at their shapes) and the rest (copies, LayerNorm, elementwise,
              AdamW) = step - the three; each part next to its own floor.
  evaluation  windows/s of the paper's evaluation (every 60 s window): forward only in inference mode, the S4 kernel
              computed once per evaluation (the layer's cache), `eval_batch` windows a batch; one window's time over
              one training step's. Goal <= 1/5.
  data        the share of step time spent waiting for the next batch when training from an HDF5 cache at the
              paper's token size (60 x 197 x 1024 float16 = 24 MB a window) through the default loader
              (`FeatureDataModule`, 2 workers), its pages evicted first (a cache larger than RAM). Goal <= 5 %.

Batch 1 (the README's step), L = 60 x 197 = 11,820, d = 1024, 3 blocks, s4-multiscale.
    python bench/step.py [--quick] [--parts efficiency evaluation data] [--out bench/results/step.json]
`run(quick)` is the `step` section of `python -m bench`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]  # bench/heads.py != heads/
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import evict_page_cache, interleaved_medians, scratch_dir, write_json  # noqa: E402

LVU = {"T": 60, "P": 197, "d": 1024, "layers": 3, "classes": 10}
QUICK = {"T": 6, "P": 5, "d": 32, "layers": 3, "classes": 10}
GOALS = {"efficiency": 0.75, "eval_window_over_step": 0.2, "data_wait_share": 0.05}
PARTS = ("efficiency", "evaluation", "data")


# ---------------------------------------------------------------------------------------------------- FLOP count
def _fft_flops(func, args) -> float:
    """FLOPs of one aten FFT call: 2.5 n log2 n per real transform of length n, 5 n log2 n per complex one."""
    x = args[0]
    dims = list(args[1])
    name = func.__name__
    if name.startswith("_fft_c2r"):
        lengths = [x.shape[d] for d in dims[:-1]] + [args[3]]  # last_dim_size
    else:
        lengths = [x.shape[d] for d in dims]
    n = math.prod(lengths)
    batch = x.numel() // max(1, math.prod(x.shape[d] for d in dims))
    per = (5.0 if name.startswith("_fft_c2c") else 2.5) * n * math.log2(max(n, 2))
    return batch * per


def _gemm(func, args) -> tuple[float, tuple] | None:
    """(FLOPs, shape key) of a matrix product, None for any other op."""
    name = func.__name__.split(".")[0]
    if name in ("mm", "addmm", "bmm", "baddbmm"):
        a, b = (args[0], args[1]) if name in ("mm", "bmm") else (args[1], args[2])
        batch = a.shape[0] if a.dim() == 3 else 1
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        scale = 4 if a.is_complex() else 1
        return 2.0 * batch * m * k * n * scale, (name, batch, m, k, n, str(a.dtype))
    return None


class FlopCount:
    """Context manager: counts GEMM and FFT FLOPs of the ops run in THIS thread (use with torch threads = 1, so the
    S4 chunk pool runs inline) and logs every GEMM's shape."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                gemm = _gemm(func, args)
                if gemm is not None:
                    counter.gemm_flops += gemm[0]
                    counter.gemms[gemm[1]] += 1
                elif func.__name__.startswith(("_fft_r2c", "_fft_c2r", "_fft_c2c")):
                    counter.fft_flops += _fft_flops(func, args)
                return out

        self.mode = _Mode()
        self.gemm_flops = 0.0
        self.fft_flops = 0.0
        self.gemms: Counter = Counter()

    @property
    def flops(self) -> float:
        return self.gemm_flops + self.fft_flops

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def single_thread_count(fn) -> FlopCount:
    """Count one call of `fn` at one torch thread (the S4 chunk pool then runs inline, in this thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with FlopCount() as count:
            fn()
    finally:
        torch.set_num_threads(threads)
    return count


# ------------------------------------------------------------------------------------------------------ the parts
def build(setting: dict):
    """The paper's head at the setting, its AdamW, one float16 input window and a label."""
    import torch

    from heads import build_head
    from heads.s4.cpu import retain_freed_memory
    from heads.training.module import make_adamw
    from heads.training.optim import param_groups

    retain_freed_memory()  # as the training module does (HeadModule.setup)
    torch.manual_seed(0)
    head = build_head("s4-multiscale", setting["d"], setting["classes"], setting["T"] * setting["P"],
                      d_model=setting["d"], n_layers=setting["layers"], dropout=0.2)
    optimizer = make_adamw(param_groups(head, lr=1e-3, weight_decay=0.01), lr=1e-3, weight_decay=0.01)
    x = torch.randn(1, setting["T"], setting["P"], setting["d"]).half()  # (B, T, P, D) as read from the cache
    return head, optimizer, x, torch.tensor([1])


def train_step(head, optimizer, x, y) -> None:
    import torch

    head.train()
    loss = torch.nn.functional.cross_entropy(head(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _s4_layers(head) -> list:
    return [block.mixer.s4 for block in head.blocks]


def kernel_pass(head, L: int):
    """Forward + backward of every block's S4 kernel, as in a training step (returns a callable)."""
    import torch

    from heads.s4.kernels import ssm_kernel

    cases = []
    for i, layer in enumerate(_s4_layers(head)):
        Li = L >> i
        v, a, dt = (t.detach().requires_grad_() for t in layer._nplr())
        Lk = layer._kernel_length(Li)
        cases.append((layer, v, a, dt, Lk, torch.randn(layer.d_model, Lk)))  # g (H, Lk)

    def run() -> None:
        for layer, v, a, dt, Lk, g in cases:
            ssm_kernel(v, a, dt, Lk, layer.backend).backward(g)
            v.grad = a.grad = dt.grad = None

    return run


def core_pass(head, L: int):
    """Forward + backward of every block's fused core (pool, dropout, LayerNorm affine) at the step's shapes and
    memory layouts (input (B, L, H) seen as (B, H, L); gradient w.r.t. the input for the blocks after the first)."""
    import torch

    from heads.s4.conv import fft_length, fused_core

    cases = []
    for i, (block, layer) in enumerate(zip(head.blocks, _s4_layers(head))):
        H, Li = layer.d_model, L >> i
        xl = torch.randn(1, Li, H).requires_grad_(i > 0)  # (B, L, H)
        k = torch.randn(H, Li).mul_(0.01).requires_grad_()  # (H, L)
        D = torch.randn(H).requires_grad_()
        gamma, beta = (block.norm.weight.detach().clone().requires_grad_(),
                       block.norm.bias.detach().clone().requires_grad_())
        keep = (torch.rand(1, H) >= layer.dropout).float() / (1 - layer.dropout)  # (B, H)
        gz = torch.randn(1, Li // 2, H).transpose(1, 2)  # (B, H, L/2) in the (B, L/2, H) layout of the Linear
        cases.append((xl, k, D, gamma, beta, keep, gz, fft_length(2 * Li)))

    def run() -> None:
        for xl, k, D, gamma, beta, keep, gz, n in cases:
            z = fused_core(xl.transpose(1, 2), k, D, keep, True, n, affine=(gamma, beta))  # (B, H, L/2)
            z.backward(gz)
            for t in (xl, k, D, gamma, beta):
                t.grad = None

    return run


def gemm_replay(gemms: Counter):
    """Every logged GEMM once per count, at its shape, on fresh contiguous operands (returns a callable)."""
    import torch

    calls = []
    for (name, batch, m, k, n, dtype), count in gemms.items():
        dt = getattr(torch, dtype.split(".")[-1])
        lead = (batch,) if name in ("bmm", "baddbmm") else ()
        a, b = torch.randn(*lead, m, k, dtype=dt), torch.randn(*lead, k, n, dtype=dt)
        out = torch.empty(*a.shape[:-2], m, n, dtype=dt)
        fn = torch.bmm if a.dim() == 3 else torch.mm
        calls += [(fn, a, b, out)] * count

    def run() -> None:
        for fn, a, b, out in calls:
            fn(a, b, out=out)

    return run


def gemm_rate_fn(size: int):
    """(callable, FLOPs): one fp32 GEMM of size^3 into a preallocated output."""
    import torch

    a, b, out = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * size**3


def efficiency(setting: dict, repeat: int = 5, gemm_size: int = 2048, warmup: int = 1) -> dict:
    """Step time, GEMM rate, FLOPs, floor, efficiency and the breakdown, all in this process."""
    import torch

    head, optimizer, x, y = build(setting)
    L = setting["T"] * setting["P"]
    step = lambda: train_step(head, optimizer, x, y)  # noqa: E731
    step()  # warm-up: numba compilation, FFT plans, first-touch of the buffers
    count_step = single_thread_count(step)
    kernel, core = kernel_pass(head, L), core_pass(head, L)
    kernel()
    core()
    count_kernel, count_core = single_thread_count(kernel), single_thread_count(core)
    other_gemms = count_step.gemms - count_kernel.gemms - count_core.gemms
    gemms = gemm_replay(other_gemms)
    gemm, gemm_flops = gemm_rate_fn(gemm_size)
    times = interleaved_medians({"step": step, "gemm": gemm, "kernel": kernel, "core": core, "gemms": gemms},
                                repeat=repeat, warmup=warmup)
    rate = gemm_flops / times["gemm"]  # FLOP/s
    other_flops = sum(2.0 * b * m * k * n * (4 if "complex" in d else 1) * c
                      for (_, b, m, k, n, d), c in other_gemms.items())
    floors = {"kernel": count_kernel.flops / rate, "core": count_core.flops / rate, "gemms": other_flops / rate}
    floor = count_step.flops / rate
    rest = times["step"] - times["kernel"] - times["core"] - times["gemms"]
    return {
        "step_s": times["step"], "gemm_gflop_s": rate / 1e9, "gemm_size": gemm_size,
        "step_gflop": count_step.flops / 1e9, "step_gemm_gflop": count_step.gemm_flops / 1e9,
        "step_fft_gflop": count_step.fft_flops / 1e9, "floor_s": floor, "efficiency": floor / times["step"],
        "parts_s": {"kernel": times["kernel"], "core": times["core"], "gemms": times["gemms"], "rest": rest},
        "parts_floor_s": {**floors, "rest": max(0.0, floor - sum(floors.values()))},
        "parts_gflop": {"kernel": count_kernel.flops / 1e9, "core": count_core.flops / 1e9,
                        "gemms": other_flops / 1e9},
        "threads": torch.get_num_threads(), "repeat": repeat, "load_before": os.getloadavg()[0],
    }


def evaluation(setting: dict, eval_batch: int = 16, repeat: int = 3) -> dict:
    """Windows/s of forward-only inference next to training steps/s, in alternating rounds: a training step, then an
    evaluation batch that recomputes the S4 kernels (the step changed the weights), then one with them cached."""
    import torch

    head, optimizer, x, y = build(setting)
    windows = x.expand(eval_batch, *x.shape[1:]).clone()  # (B, T, P, D) float16
    windows.add_(torch.randn_like(windows).mul_(0.1))  # distinct windows

    def evaluate() -> float:
        head.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            head(windows)
        return time.perf_counter() - start

    def step() -> float:
        start = time.perf_counter()
        train_step(head, optimizer, x, y)
        return time.perf_counter() - start

    step(), evaluate(), evaluate()  # warm-up
    rounds = [(step(), evaluate(), evaluate()) for _ in range(repeat)]
    step_s, first_s, warm_s = (statistics.median(r[i] for r in rounds) for i in range(3))
    window_s = warm_s / eval_batch
    return {"train_step_s": step_s, "train_steps_per_s": 1 / step_s, "eval_batch": eval_batch,
            "eval_batch_s": warm_s, "eval_kernel_s": max(0.0, first_s - warm_s), "windows_per_s": 1 / window_s,
            "window_over_step": window_s / step_s, "repeat": repeat}


# ------------------------------------------------------------------------------------------------------------ data
class _Windows:
    """A minimal data set over the bench cache: one record per video, LVU's window protocol."""

    name, task_type, num_classes, clip, splits = "bench", "classification", 10, ("window", 60), ("train", "test")

    def __init__(self, ids: list[str], window: int):
        from data.datasets.base import Record

        self.clip = ("window", window)
        self._records = [Record(v, i % 10) for i, v in enumerate(ids)]

    def records(self, split: str):
        return list(self._records)


def data_wait(setting: dict, steps: int = 6, videos: int = 8, segments: int = 90) -> dict:
    """Train `steps` batch-1 steps from an HDF5 cache through the default loader; the share of time in next()."""
    import numpy as np

    from data.store import ShardWriter
    from heads.training.datamodule import FeatureDataModule

    T, P, D = setting["T"], setting["P"], setting["d"]
    folder = scratch_dir("bench-step-data-")  # on the repo's disk (bench/results/, made when missing)
    try:
        attrs = {"encoder": "bench-random", "encoder_hash": "0", "image_size": 224, "patch_size": 16,
                 "hidden_size": D, "grid": [1, P - 1], "fps": 1.0, "frames_per_segment": 1}
        rng = np.random.default_rng(0)
        ids = [f"video{i:03d}" for i in range(videos)]
        with ShardWriter(folder / "cache", attrs) as writer:
            for vid in ids:
                tokens = rng.standard_normal((segments, P, D), dtype=np.float32).astype(np.float16)
                writer.add(vid, tokens, np.arange(segments, dtype=np.float64), float(segments), "bench")
        evicted = all([evict_page_cache(p) for p in sorted((folder / "cache").glob("*.h5"))])
        module = FeatureDataModule(folder / "cache", _Windows(ids, T), batch_size=1)  # the default workers (2)
        head, optimizer, _, _ = build(setting)
        waits, computes = [], []
        loader = iter(module.train_dataloader())
        for _ in range(min(steps + 1, videos)):
            start = time.perf_counter()
            tokens, labels, _ = next(loader)
            got = time.perf_counter()
            train_step(head, optimizer, tokens, labels)
            waits.append(got - start)
            computes.append(time.perf_counter() - got)
        del loader
        waits, computes = waits[1:], computes[1:]  # the first batch includes the workers' start
        return {"wait_share": sum(waits) / (sum(waits) + sum(computes)), "wait_s": statistics.median(waits),
                "step_s": statistics.median(computes), "workers": module.workers, "batch": 1,
                "window_mb": T * P * D * 2 / 1e6, "pages_evicted": evicted, "steps": len(waits)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ the runner
def measure(quick: bool, parts: tuple[str, ...]) -> dict:
    setting = QUICK if quick else LVU
    out: dict = {"setting": {**setting, "L": setting["T"] * setting["P"], "batch": 1}}
    if "efficiency" in parts:  # quick: every code path once, the figures mean nothing
        out["efficiency"] = (efficiency(setting, repeat=1, gemm_size=256, warmup=0) if quick else
                             efficiency(setting, repeat=5, gemm_size=2048))
    if "evaluation" in parts:
        out["evaluation"] = evaluation(setting, eval_batch=4 if quick else 16, repeat=1 if quick else 3)
    if "data" in parts:
        out["data"] = data_wait(setting, steps=1 if quick else 6, videos=3 if quick else 8,
                                segments=setting["T"] + 10)
    return out


def run(quick: bool = False, parts: tuple[str, ...] = PARTS, timeout: float = 1800, say=print) -> dict:
    """Measure in a fresh interpreter (one process: the ratios compare figures taken side by side)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps({"quick": quick,
                                                                                   "parts": list(parts)})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"bench/step.py worker failed (exit {proc.returncode}): {tail[0][:300]}")
    out = json.loads(lines[-1])
    out["goals"] = GOALS
    for line in report(out):
        say(line)
    return out


def report(out: dict) -> list[str]:
    s = out["setting"]
    lines = [f"LVU training step, batch 1, L = {s['T']} x {s['P']} = {s['L']}, d = {s['d']}, {s['layers']} blocks"]
    e = out.get("efficiency")
    if e:
        parts = ", ".join(f"{k} {e['parts_s'][k]:.3f} s (floor {e['parts_floor_s'][k]:.3f})" for k in e["parts_s"])
        lines += [f"  fp32 GEMM {e['gemm_size']}^3: {e['gemm_gflop_s']:.1f} GFLOP/s; step {e['step_s']:.3f} s, "
                  f"{e['step_gflop']:.1f} GFLOP (GEMMs {e['step_gemm_gflop']:.1f}, FFTs {e['step_fft_gflop']:.1f}) "
                  f"-> floor {e['floor_s']:.3f} s, efficiency {e['efficiency']:.2f} (goal >= "
                  f"{GOALS['efficiency']})",
                  f"  where the time goes: {parts}"]
    v = out.get("evaluation")
    if v:
        lines.append(f"  evaluation (inference mode, kernel once per evaluation: {v['eval_kernel_s']:.3f} s; "
                     f"{v['eval_batch']} windows a batch): {v['windows_per_s']:.2f} windows/s vs "
                     f"{v['train_steps_per_s']:.2f} training steps/s: a window costs {v['window_over_step']:.2f} "
                     f"of a step (goal <= {GOALS['eval_window_over_step']})")
    d = out.get("data")
    if d:
        lines.append(f"  data: default loader ({d['workers']} workers, HDF5 cache, {d['window_mb']:.0f} MB a window, "
                     f"pages {'evicted' if d['pages_evicted'] else 'warm'}): waiting {100 * d['wait_share']:.1f} % "
                     f"of step time (goal <= {100 * GOALS['data_wait_share']:.0f} %)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every code path in seconds")
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "step.json"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(measure(job["quick"], tuple(job["parts"]))), flush=True)
        return 0
    out = run(quick=args.quick, parts=tuple(args.parts))
    print(f"saved {write_json(args.out, out)}")
    return 0


if __name__ == "__main__":
    from data.errors import run_cli

    run_cli(main)

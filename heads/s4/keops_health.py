"""PyKeOps health: can the `keops` Cauchy backend run on a device here? One probe per process and device type.

PyKeOps is the most reported failure of S4 code in the wild (state-spaces/s4 made it optional): `libnvrtc` not found,
CUDA headers missing, no C++ compiler, or a build that imports fine and fails at the first reduction. So before
`backend="auto"` picks `keops`, `probe(device)` runs the real thing once, at a small size on that device:
  1. import pykeops (and, on CUDA, PyKeOps's own view: libcuda + libnvrtc loadable, a GPU seen);
  2. compile and run the very reduction `heads.s4.kernels.cauchy_keops_at` uses, in float32 (the training dtype),
     forward and backward (the backward is a second compiled formula);
  3. compare the kernel k (H, L) and the gradients w.r.t. (v, a, dt) with the `torch` kernel on the same inputs
     (relative error <= `TOLERANCE`).
Any failure gives a `Health(ok=False, cause=...)` whose cause names what is missing and the fix, in one line.
Results are cached per device type ("cpu", "cuda") for the life of the process; `forget()` clears them (tests).

`heads.s4.kernels.resolve_backend` uses it: "auto" falls back to `torch` and prints the cause once; an explicit
`backend="keops"` raises `KeopsUnavailable` with it. `python -m doctor` (`make doctor`) prints it for every device.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
import time
from dataclasses import dataclass

import torch

from data.errors import UserError

TOLERANCE = 1e-3  # relative L2 error allowed between keops and torch (float32 at H = 2, N = 8, L = 48: ~1e-6)
PROBE_SIZE = {"H": 2, "N": 8, "L": 48}  # L = 48: 11-smooth, the torch kernel's time-domain path


class KeopsUnavailable(UserError):
    """backend='keops' was asked for on a device where PyKeOps cannot run; the message says what is missing."""


@dataclass(frozen=True)
class Health:
    """The probe's verdict for one device type: ok, or the one-line cause (what is missing, and the fix)."""

    device: str  # "cpu" | "cuda"
    ok: bool
    cause: str = ""
    seconds: float = 0.0  # the probe's wall time (compilation included; ~0.1 s once PyKeOps's disk cache is warm)
    max_rel_error: float | None = None  # worst of value and gradients against the torch kernel, when it ran


_RESULTS: dict[str, Health] = {}
_LOCK = threading.Lock()
_ANNOUNCED: set[str] = set()


def device_type(device) -> str:
    """"cpu" / "cuda" / ... of a torch.device, a string such as "cuda:1", or None (= "cpu")."""
    return torch.device(device).type if device is not None else "cpu"


def forget() -> None:
    """Drop the cached verdicts (and the record of which fallbacks were announced): the next call probes again."""
    with _LOCK:
        _RESULTS.clear()
        _ANNOUNCED.clear()


def probe(device="cpu") -> Health:
    """The cached verdict for `device`'s type, probing once per process (thread-safe)."""
    kind = device_type(device)
    with _LOCK:
        if kind not in _RESULTS:
            start = time.perf_counter()
            try:  # the probe needs autograd even when the first kernel is asked for under no_grad / inference
                with torch.inference_mode(False), torch.enable_grad(), _no_autocast(kind):
                    cause, err = _check(kind)
            except Exception as exc:  # noqa: BLE001 - whatever breaks, the verdict is "not here", with the reason
                cause, err = _explain(kind, exc), None
            _RESULTS[kind] = Health(kind, not cause, cause, time.perf_counter() - start, err)
        return _RESULTS[kind]


def _no_autocast(kind: str):
    """The probe runs in float32 even inside a mixed-precision region (Lightning's 16-mixed / bf16-mixed)."""
    usable = kind == "cpu" or (kind == "cuda" and torch.cuda.is_available())
    return torch.autocast(kind, enabled=False) if usable else contextlib.nullcontext()


def announce_fallback(health: Health, fallback: str) -> None:
    """Print, once per process and device type, the one line that says `auto` did not take keops, and why."""
    if health.ok or health.device in _ANNOUNCED:
        return
    _ANNOUNCED.add(health.device)
    print(f"note: S4 uses the {fallback} kernel on {health.device}: {health.cause} "
          "(`make doctor` checks the set-up)", file=sys.stderr, flush=True)


def require(device) -> None:
    """Raise `KeopsUnavailable` (one line: what is missing, the fix) unless PyKeOps runs on `device`. With
    device=None only checks that pykeops is installed (a layer built before it is moved to its device)."""
    if device is None:
        if importlib.util.find_spec("pykeops") is None:
            raise KeopsUnavailable("backend='keops' needs PyKeOps: pip install pykeops, or use backend='torch'")
        return
    health = probe(device)
    if not health.ok:
        raise KeopsUnavailable(f"backend='keops' cannot run on {health.device}: {health.cause}; "
                               "or use backend='torch' (or 'auto', which falls back to it)")


# ----------------------------------------------------------------------------------------------------- the probe
def _check(kind: str) -> tuple[str, float | None]:
    """("", max relative error) when keops runs on `kind` and agrees with torch, else (cause, None)."""
    if importlib.util.find_spec("pykeops") is None:
        return "PyKeOps is not installed (pip install pykeops)", None
    if kind == "cuda":
        if not torch.cuda.is_available():
            return "torch sees no CUDA device (a CPU build of torch, or no GPU / driver visible)", None
        import pykeops.config

        if not pykeops.config.gpu_available:
            return _cuda_missing(), None
    elif kind != "cpu":
        return f"PyKeOps runs on CPU and CUDA only, not on {kind}", None
    import pykeops

    from heads.s4.kernels import cauchy_keops, torch_kernel  # late: kernels imports this module
    from heads.s4.reference import kernel_from_spectrum

    H, N, L = PROBE_SIZE["H"], PROBE_SIZE["N"], PROBE_SIZE["L"]
    gen = torch.Generator().manual_seed(0)
    M = N // 2
    v = torch.complex(torch.randn(4, H, M, generator=gen), torch.randn(4, H, M, generator=gen))  # (4, H, M)
    a = torch.complex(-0.5 - torch.rand(H, M, generator=gen), 3 * torch.randn(H, M, generator=gen)) * 0.05  # (H, M)
    dt = 0.01 + 0.09 * torch.rand(H, generator=gen)  # (H,)
    g = torch.randn(H, L, generator=gen)  # (H, L) upstream gradient

    def run(kernel) -> list[torch.Tensor]:
        inputs = [t.to(kind).requires_grad_() for t in (v, a, dt)]
        k = kernel(*inputs)  # (H, L)
        k.backward(g.to(kind))
        return [k.detach().cpu()] + [t.grad.cpu() for t in inputs]

    verbose = getattr(pykeops, "verbose", True)
    pykeops.set_verbose(False)  # its compile log prints whole formulas: the verdict is the one line that matters
    try:
        got = run(lambda v_, a_, dt_: kernel_from_spectrum(cauchy_keops(v_, a_, L), dt_, L))
    finally:
        pykeops.set_verbose(verbose)
    want = run(lambda v_, a_, dt_: torch_kernel(v_, a_, dt_, L))
    errors = [float((x - y).abs().norm() / y.abs().norm().clamp_min(1e-30)) for x, y in zip(got, want)]
    worst = max(errors)
    if not worst <= TOLERANCE:  # also catches NaN
        names = ("kernel", "dL/dv", "dL/da", "dL/ddt")
        bad = ", ".join(f"{n} {e:.1e}" for n, e in zip(names, errors) if not e <= TOLERANCE)
        return (f"PyKeOps compiles but disagrees with the torch kernel (relative error {bad} > {TOLERANCE:g}): "
                f"a broken build; clear its cache (python -c 'import pykeops; pykeops.clean_pykeops()')"), None
    return "", worst


def _cuda_missing() -> str:
    """What PyKeOps's CUDA set-up lacks, from the libraries and headers it looks for."""
    from ctypes.util import find_library

    missing = [name for lib, name in (("cuda", "libcuda (the NVIDIA driver)"),
                                      ("nvrtc", "libnvrtc (the CUDA runtime compiler)")) if not find_library(lib)]
    if missing:
        return (f"PyKeOps finds no {' and no '.join(missing)}; install the CUDA toolkit (or the nvidia-cuda-nvrtc "
                "wheel) and put its lib folder on LD_LIBRARY_PATH")
    try:
        from keopscore.config import cuda_config

        message = " ".join(str(getattr(cuda_config, "cuda_message", "")).split())
    except Exception:  # noqa: BLE001 - an older PyKeOps without this attribute
        message = ""
    return f"PyKeOps has CUDA disabled ({message or 'no GPU found by its driver query'})"


def _explain(kind: str, exc: BaseException) -> str:
    """One line from a failed import / compile / run: the likely missing piece first, then PyKeOps's own words."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    lower = text.lower()
    hints = []
    if "nvrtc" in lower:
        hints.append("the CUDA runtime compiler (libnvrtc) failed or is missing: install the CUDA toolkit matching "
                     "the driver")
    if "cuda.h" in lower or "nvrtc.h" in lower or ("include" in lower and kind == "cuda"):
        hints.append("CUDA headers (cuda.h, nvrtc.h) not found: install the CUDA toolkit or set CUDA_PATH")
    if any(w in lower for w in ("g++", "c++", "compiler", "cxx")) or isinstance(exc, FileNotFoundError):
        hints.append("no working C++ compiler: install g++ or set CXX")
    if not hints:
        try:
            from keopscore.config import cuda_config

            if getattr(cuda_config, "cxx_compiler", "g++") is None:
                hints.append("no C++ compiler found: install g++ or set CXX")
        except Exception:  # noqa: BLE001
            pass
    head = "; ".join(hints) or "PyKeOps failed"
    return f"{head} ({type(exc).__name__}: {text[:200]})"

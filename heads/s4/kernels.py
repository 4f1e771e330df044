"""The S4 kernel backends: the registry, the `auto` policy, and the `naive` and `keops` members.

Two registries with interchangeable members:
  CAUCHY[name](v, a, L) -> D   v (Q, H, M) complex, a (H, M) complex, D (Q, H, K) at the rfft nodes of length L.
      `naive` and `keops` evaluate the formula of `heads.s4.reference` at explicit nodes (`cauchy_naive_at` /
      `cauchy_keops_at` take any nodes w); `torch` uses the structure of the rfft nodes: `heads.s4.smooth` for
      11-smooth L, `heads.s4.mixed_radix` otherwise. Tests compare these spectra directly.
  BACKENDS[name](v, a, dt, L) -> k (H, L)   the whole kernel: Cauchy sums, Woodbury rank-1 correction, inverse
      rfft. `naive`/`keops` compose CAUCHY with `kernel_from_spectrum`; `torch` is fused and channel-chunked with a
      hand-written backward, so its peak memory is bounded (nothing of size H*N*L).
`ssm_kernel(v, a, dt, L, backend)` dispatches; `resolve_backend("auto", device)` picks the measured winner.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from heads.s4 import keops_health
from heads.s4.mixed_radix import mixed_radix_cauchy, mixed_radix_kernel, split_length
from heads.s4.reference import cauchy_naive, kernel_from_spectrum, rfft_nodes
from heads.s4.smooth import smooth_cauchy, smooth_kernel

__all__ = [
    "AUTO_CPU",
    "AUTO_POLICY",
    "BACKENDS",
    "CAUCHY",
    "cauchy_keops",
    "cauchy_keops_at",
    "cauchy_torch",
    "keops_available",
    "resolve_backend",
    "ssm_kernel",
    "torch_kernel",
]


def cauchy_torch(v: torch.Tensor, a: torch.Tensor, L: int) -> torch.Tensor:
    """Same values as `cauchy_naive` at the rfft nodes of length L, without any (H, M, K) tensor: for 11-smooth L
    one small real GEMM + one rfft, otherwise the mixed-radix evaluation.

    Returns the full (Q, H, K) spectrum with plain autograd (for comparisons; `ssm_kernel` uses the fused,
    memory-bounded kernels instead).
    """
    if split_length(L)[0] > 1:
        return mixed_radix_cauchy(v, a, L)
    return smooth_cauchy(v, a, L)


def torch_kernel(v: torch.Tensor, a: torch.Tensor, dt: torch.Tensor, L: int, chunk: int | None = None) -> torch.Tensor:
    """The `torch` backend end to end: k (H, L) with peak extra memory ~ one chunk + two (H, K) spectra.
    `chunk` channels per task (default: 8 on the mixed-radix path at L >= 8,192, else 16: shorter kernels leave
    per-op dispatch a larger part of each chunk; figures in bench/history.md)."""
    smooth = split_length(L)[0] == 1
    chunk = min(chunk or (8 if not smooth and L >= 8192 else 16), v.shape[1])
    if smooth:  # 11-smooth L: time-domain sequences + pocketfft
        return smooth_kernel(v, a, dt, L, chunk)
    return mixed_radix_kernel(v, a, dt, L, chunk)


_KEOPS_ROUTINES: dict = {}


def keops_available(device="cpu") -> bool:
    """True when PyKeOps compiles and runs the `keops` Cauchy kernel on `device` and agrees with `torch` there
    (`heads.s4.keops_health.probe`: once per process and device type)."""
    return keops_health.probe(device).ok


def _keops_routine(dtype: str):
    """One Genred: per (node i, mode j) one shared complex reciprocal, four complex outputs (8 reals).

    Node variable n = Vi(10) packs Zt = 2(1-w), E = 1+w and the products Zt^2, Zt*E, E^2 (complex as 2 reals).
    Mode variable p = Vj(10) packs Re a, |a|^2, c1 = 2 Re v (4 pairs), c2 = 2 Re(v conj a) (4 pairs). Then
        v/(Zt - E a) + conj(v)/(Zt - E conj a) = (c1 Zt - c2 E) / den,   den = Zt^2 - 2 Re(a) Zt E + |a|^2 E^2,
    so U = Zt conj(den)/|den|^2 and W = E conj(den)/|den|^2 are shared by the four pairs: out = c1 (x) U - c2 (x) W.
    Real operations only (the complex-op backward is what PyKeOps 2.x is reported to break), and one packed
    differentiable variable, so the backward is a single extra compiled formula.
    """
    if dtype not in _KEOPS_ROUTINES:
        from pykeops.torch import Genred

        zt, e, z2, ze, e2 = (f"Extract(n, {i}, 2)" for i in range(0, 10, 2))
        den = f"({z2} - IntCst(2) * Elem(p, 0) * {ze} + Elem(p, 1) * {e2})"
        dr, di = f"Elem({den}, 0)", f"Elem({den}, 1)"
        inv = f"Inv({dr} * {dr} + {di} * {di})"

        def times_conj_den(x):  # x * conj(den) / |den|^2 as 2 reals
            xr, xi = f"Elem({x}, 0)", f"Elem({x}, 1)"
            return f"(Concat({xr} * {dr} + {xi} * {di}, {xi} * {dr} - {xr} * {di}) * {inv})"

        formula = (f"TensorProd(Extract(p, 2, 4), {times_conj_den(zt)})"
                   f" - TensorProd(Extract(p, 6, 4), {times_conj_den(e)})")
        # (PyKeOps 2.3 infers the precision from the tensors; the cache key keeps one routine per dtype anyway)
        _KEOPS_ROUTINES[dtype] = Genred(formula, ["n = Vi(10)", "p = Vj(10)"], reduction_op="Sum", axis=1)
    return _KEOPS_ROUTINES[dtype]


def cauchy_keops_at(v: torch.Tensor, a: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """PyKeOps reduction over modes: v (4, H, M), a (H, M), nodes (K,) -> D (4, H, K). Needs exactly Q = 4 pairs."""
    Q, H, M = v.shape
    assert Q == 4, "the KeOps formula is written for the four (B|P) x (C~|Q) pairs"
    real = v.real.dtype
    routine = _keops_routine("float64" if real == torch.float64 else "float32")
    nodes = nodes.to(v.dtype)
    zt, e = 2 * (1 - nodes), 1 + nodes  # (K,)
    n = torch.view_as_real(torch.stack([zt, e, zt * zt, zt * e, e * e], dim=-1))  # (K, 5, 2)
    n = n.reshape(1, -1, 10).expand(H, -1, -1).contiguous()  # (H, K, 10)
    p = torch.cat([a.real[..., None], (a.real**2 + a.imag**2)[..., None],
                   (2 * v.real).permute(1, 2, 0), (2 * (v * a.conj()).real).permute(1, 2, 0)], dim=-1)  # (H, M, 10)
    out = routine(n, p.contiguous(), backend="GPU" if v.is_cuda else "CPU")  # (H, K, 8)
    out = torch.view_as_complex(out.reshape(H, -1, 4, 2).contiguous())  # (H, K, 4)
    return out.permute(2, 0, 1)  # (4, H, K)


def cauchy_keops(v: torch.Tensor, a: torch.Tensor, L: int) -> torch.Tensor:
    """`cauchy_keops_at` at the rfft nodes of length L.  # (4, H, K)"""
    return cauchy_keops_at(v, a, rfft_nodes(L, v.dtype, v.device))



# Cauchy sums at the rfft nodes: name -> fn(v (4, H, M), a (H, M), L) -> D (4, H, K)
CAUCHY: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "naive": cauchy_naive,
    "torch": cauchy_torch,
    "keops": cauchy_keops,
}


def _spectrum_kernel(cauchy):
    return lambda v, a, dt, L: kernel_from_spectrum(cauchy(v, a, L), dt, L)


# Whole kernels: name -> fn(v, a, dt, L) -> k (H, L). `torch` is the fused bounded-memory path.
BACKENDS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "naive": _spectrum_kernel(cauchy_naive),
    "torch": torch_kernel,
    "keops": _spectrum_kernel(cauchy_keops),
}


def ssm_kernel(v: torch.Tensor, a: torch.Tensor, dt: torch.Tensor, L: int, backend: str = "auto") -> torch.Tensor:
    """The S4 convolution kernel from the NPLR parameters, with the named (or measured-best) backend.

    v (4, H, M) complex = B * conj(C) per pair [(C~,B), (C~,P), (Q,B), (Q,P)]; a (H, M) = dt * A_diag; dt (H,).
    Returns k (H, L) real.
    """
    return BACKENDS[resolve_backend(backend, v.device)](v, a, dt, L)


# "auto" on CPU = torch: 20x faster than keops at the paper size, and naive does not fit (bench/history.md); on CUDA
# "auto" = keops when its health probe passes (compiles, runs, agrees with torch), else torch
AUTO_CPU = "torch"
# device type -> backends in order of preference; a `keops` entry is taken only where `keops_health.probe` passes.
# A device type not listed gets `torch`. (Tests put ("keops", "torch") on "cpu" to exercise the CUDA logic here.)
AUTO_POLICY: dict[str, tuple[str, ...]] = {"cuda": ("keops", "torch"), "cpu": (AUTO_CPU,)}


def resolve_backend(backend: str, device: torch.device | str | None = None) -> str:
    """Map "auto" to the preferred backend for the device (`AUTO_POLICY`) that works there; validate names.

    `auto`: a `keops` candidate is taken only when PyKeOps passes its health probe on the device (once per process);
    otherwise the next candidate, and one line on stderr says why (once per process and device type).
    `keops` asked explicitly: `KeopsUnavailable` (a ValueError) with what is missing, when it cannot run there
    (device=None checks only that pykeops is installed). An unknown name: ValueError listing the valid ones.
    """
    if backend == "auto":
        candidates = AUTO_POLICY.get(keops_health.device_type(device), ("torch",))
        for name in candidates[:-1]:
            if name != "keops":
                return name
            health = keops_health.probe(device)
            if health.ok:
                return name
            keops_health.announce_fallback(health, candidates[-1])
        return candidates[-1]
    if backend not in BACKENDS:
        raise ValueError(f"Expected a Cauchy backend in {sorted(BACKENDS) + ['auto']}, got {backend!r}")
    if backend == "keops":
        keops_health.require(device)
    return backend

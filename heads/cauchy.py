"""Cauchy-kernel backends for the S4 convolution kernel (S4 paper, Section 3.3 and Algorithm 1).

Axis letters: H channels, M = N/2 stored conjugate-pair modes, L kernel length, K = L//2 + 1 rfft nodes, Q = 4
(B|P) x (C~|Q) pairs.

The S4 kernel needs, at the K rfft nodes w_l = exp(-2 pi i l / L), the four Cauchy sums of the NPLR resolvent. We
evaluate them in a bilinear-friendly normalisation that stays finite at w_l = -1 (the last node of an even L):

    D_q(w) = sum_m  v_qm / (2(1-w) - (1+w) a_m)  +  conj(v_qm) / (2(1-w) - (1+w) conj(a_m))

where a = dt * A_diag (already dt-scaled) and v = B * conj(C) per pair. With z = 2(1-w)/(1+w) this is
(1/(1+w)) * [sum v/(z-a) + conj(v)/(z-conj(a))], i.e. the paper's Cauchy sum divided by (1+w); the factor cancels
against the bilinear correction 2/(1+w), so `ssm_kernel` never divides by (1+w).

API (the choice, documented): every backend is `fn(v, a, L) -> D` with v (Q, H, M) complex, a (H, M) complex and
D (Q, H, K) complex at the structured nodes of length L. `naive` and `keops` evaluate the formula at explicit nodes
(`cauchy_naive_at` / `cauchy_keops_at` take any nodes w); `torch` exploits the structure of the rfft nodes (the sum
is one DFT of a real sequence, computed as a small batched GEMM + one rfft). `ssm_kernel(v, a, dt, L, backend)` runs
a backend, the Woodbury rank-1 correction and the inverse rfft, chunking channels under checkpointing where the
backend asks for bounded memory. `BACKENDS` is the registry; `resolve_backend("auto", device)` picks by measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

__all__ = [
    "BACKENDS",
    "cauchy_keops",
    "cauchy_keops_at",
    "cauchy_naive",
    "cauchy_naive_at",
    "cauchy_torch",
    "keops_available",
    "resolve_backend",
    "rfft_nodes",
    "ssm_kernel",
]


def rfft_nodes(L: int, dtype: torch.dtype = torch.complex64, device=None) -> torch.Tensor:
    """The K = L//2 + 1 rfft nodes exp(-2 pi i l / L), computed in float64 then cast.  # (K,)"""
    angle = -2.0 * math.pi * torch.arange(L // 2 + 1, dtype=torch.float64, device=device) / L  # (K,)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)  # (K,)


# --------------------------------------------------------------------------------------------------------- naive
def cauchy_naive_at(v: torch.Tensor, a: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """The obvious broadcast, the reference: v (Q, H, M), a (H, M), nodes (K,) -> D (Q, H, K).

    Materialises two (H, M, K) complex reciprocals, so it is only for small sizes and tests.
    """
    zeta = (2 * (1 - nodes))[None, None, :]  # (1, 1, K)
    eta = (1 + nodes)[None, None, :]  # (1, 1, K)
    r1 = 1.0 / (zeta - eta * a[..., None])  # (H, M, K)
    r2 = 1.0 / (zeta - eta * a.conj()[..., None])  # (H, M, K)
    return torch.einsum("qhm,hmk->qhk", v, r1) + torch.einsum("qhm,hmk->qhk", v.conj(), r2)  # (Q, H, K)


def cauchy_naive(v: torch.Tensor, a: torch.Tensor, L: int) -> torch.Tensor:
    """`cauchy_naive_at` at the rfft nodes of length L.  # (Q, H, K)"""
    return cauchy_naive_at(v, a, rfft_nodes(L, v.dtype, v.device))


# --------------------------------------------------------------------------------------------------------- torch
def _powers(lam_log: torch.Tensor, n: int, step: int) -> torch.Tensor:
    """exp(k * step * log(lam)) for k < n.  lam_log (H, M) complex128 -> (H, M, n) complex128."""
    k = torch.arange(n, dtype=torch.float64, device=lam_log.device) * step  # (n,)
    return torch.exp(lam_log[..., None] * k)  # (H, M, n)


def _cauchy_torch_dense(v: torch.Tensor, a: torch.Tensor, L: int) -> torch.Tensor:
    """Structured-node Cauchy sums for one channel chunk.  v (Q, h, M), a (h, M) -> (Q, h, K).

    With lam = (2+a)/(2-a) (the bilinear pole) and w^L = 1,
        1 / (2(1-w) - (1+w) a) = 1/((2-a)(1 - lam w)) = sum_{k<L} lam^k w^k / ((2-a)(1-lam^L)),
    so D(w_l) = rfft(x)[l] with the REAL sequence x_k = 2 Re sum_m coef_m lam_m^k, coef = v / ((2-a)(1-lam^L)).
    Writing k = b*j + r (b ~ sqrt L), x[(q, j), r] = 2 Re sum_m (coef lam^{bj})[q, j, m] * (lam^r)[m, r]: a batched
    GEMM of tiny factors, done in real arithmetic ([Re, -Im] @ [Re; Im]) so only Re is ever formed.
    Powers are taken in float64 (exp of k*log lam: angles reach L*pi) and cast to the working precision.
    """
    Q, h, M = v.shape
    real = v.real.dtype  # float32 for complex64 input
    b = max(1, math.isqrt(L - 1) + 1) if L > 1 else 1  # block size ~ sqrt(L)
    J = -(-L // b)  # blocks, J * b >= L
    a64 = a.to(torch.complex128)  # (h, M)
    lam_log = torch.log((2 + a64) / (2 - a64))  # (h, M)
    lam_L = torch.exp(lam_log * L)  # (h, M)
    coef = v.to(torch.complex128) / ((2 - a64) * (1 - lam_L))  # (Q, h, M)
    outer = coef[:, :, :, None] * _powers(lam_log, J, b)[None]  # (Q, h, M, J)
    inner = _powers(lam_log, b, 1)  # (h, M, b)
    left = outer.permute(1, 0, 3, 2).reshape(h, Q * J, M)  # (h, Q*J, M)
    left = torch.cat([left.real, -left.imag], dim=-1).to(real)  # (h, Q*J, 2M)
    right = torch.cat([inner.real, inner.imag], dim=-2).to(real)  # (h, 2M, b)
    x = 2 * torch.bmm(left, right)  # (h, Q*J, b)
    x = x.reshape(h, Q, J * b)[..., :L]  # (h, Q, L)
    D = torch.fft.rfft(x, n=L)  # (h, Q, K)
    return D.permute(1, 0, 2)  # (Q, h, K)


def cauchy_torch(v: torch.Tensor, a: torch.Tensor, L: int) -> torch.Tensor:
    """Same values as `cauchy_naive` at the rfft nodes of length L, via one real GEMM + rfft per chunk.

    Returns the full (Q, H, K) spectrum (not memory-bounded by itself: `ssm_kernel` chunks channels around it).
    """
    return _cauchy_torch_dense(v, a, L)


# --------------------------------------------------------------------------------------------------------- keops
_KEOPS_OK: bool | None = None
_KEOPS_ROUTINES: dict = {}


def keops_available() -> bool:
    """True when pykeops imports and can compile a tiny reduction here (result cached per process)."""
    global _KEOPS_OK
    if _KEOPS_OK is None:
        try:
            import pykeops  # noqa: F401
            from pykeops.torch import Genred

            x = torch.randn(3, 1)
            fn = Genred("SqNorm2(x - y)", ["x = Vi(1)", "y = Vj(1)"], reduction_op="Sum", axis=1)
            out = fn(x, x, backend="CPU")
            _KEOPS_OK = bool(torch.allclose(out[:, 0], ((x - x.T) ** 2).sum(1)))
        except Exception:  # any import/compile failure means "not available here"
            _KEOPS_OK = False
    return _KEOPS_OK


def _keops_routine(dtype: str):
    """One Genred: per (node i, mode j) one shared complex reciprocal, four complex outputs (8 reals).

    Node variables (Vi): Zt = 2(1-w), E = 1+w, their products Z2 = Zt^2, ZE = Zt*E, E2 = E^2 (complex as 2 reals).
    Mode variables (Vj): ar = Re a, aa = |a|^2, c1 = 2 Re v (4), c2 = 2 Re(v conj a) (4).
    v/(Zt - E a) + conj(v)/(Zt - E conj a) = (c1 Zt - c2 E) / den,  den = Z2 - 2 ar ZE + aa E2;
    so U = Zt conj(den)/|den|^2 and W = E conj(den)/|den|^2 are shared by the four pairs: out = c1 (x) U - c2 (x) W.
    Real operations only (the complex-op backward is what PyKeOps 2.x is reported to break).
    """
    if dtype not in _KEOPS_ROUTINES:
        from pykeops.torch import Genred

        den = "(Z2 - IntCst(2) * ar * ZE + aa * E2)"
        dr, di = f"Elem({den}, 0)", f"Elem({den}, 1)"
        inv = f"Inv({dr} * {dr} + {di} * {di})"

        def cmul_conj_den(x):  # x * conj(den) / |den|^2 as 2 reals
            xr, xi = f"Elem({x}, 0)", f"Elem({x}, 1)"
            return f"(Concat({xr} * {dr} + {xi} * {di}, {xi} * {dr} - {xr} * {di}) * {inv})"

        formula = f"TensorProd(c1, {cmul_conj_den('Zt')}) - TensorProd(c2, {cmul_conj_den('E')})"
        variables = ["Zt = Vi(2)", "E = Vi(2)", "Z2 = Vi(2)", "ZE = Vi(2)", "E2 = Vi(2)",
                     "ar = Vj(1)", "aa = Vj(1)", "c1 = Vj(4)", "c2 = Vj(4)"]
        _KEOPS_ROUTINES[dtype] = Genred(formula, variables, reduction_op="Sum", axis=1, dtype=dtype)
    return _KEOPS_ROUTINES[dtype]


def cauchy_keops_at(v: torch.Tensor, a: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """PyKeOps reduction over modes: v (4, H, M), a (H, M), nodes (K,) -> D (4, H, K). Needs exactly Q = 4 pairs."""
    Q, H, M = v.shape
    assert Q == 4, "the KeOps formula is written for the four (B|P) x (C~|Q) pairs"
    real = v.real.dtype
    routine = _keops_routine("float64" if real == torch.float64 else "float32")
    zt, e = 2 * (1 - nodes), 1 + nodes  # (K,)

    def node_var(x):  # complex (K,) -> (H, K, 2) real, broadcast over channels
        return torch.view_as_real(x.to(v.dtype)).expand(H, -1, -1).contiguous()  # (H, K, 2)

    c1 = (2 * v.real).permute(1, 2, 0).contiguous()  # (H, M, 4)
    c2 = (2 * (v * a.conj()).real).permute(1, 2, 0).contiguous()  # (H, M, 4)
    ar = a.real[..., None].contiguous()  # (H, M, 1)
    aa = (a.real**2 + a.imag**2)[..., None].contiguous()  # (H, M, 1)
    backend = "GPU" if v.is_cuda else "CPU"
    out = routine(node_var(zt), node_var(e), node_var(zt * zt), node_var(zt * e), node_var(e * e),
                  ar, aa, c1, c2, backend=backend)  # (H, K, 8)
    out = torch.view_as_complex(out.reshape(H, -1, 4, 2).contiguous())  # (H, K, 4)
    return out.permute(2, 0, 1)  # (4, H, K)


def cauchy_keops(v: torch.Tensor, a: torch.Tensor, L: int) -> torch.Tensor:
    """`cauchy_keops_at` at the rfft nodes of length L.  # (4, H, K)"""
    return cauchy_keops_at(v, a, rfft_nodes(L, v.dtype, v.device))


# ------------------------------------------------------------------------------------------------ kernel assembly
# name -> (Cauchy function, channels per checkpointed chunk or None for one unchunked call)
BACKENDS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], int | None]] = {
    "naive": (cauchy_naive, None),
    "torch": (cauchy_torch, 64),
    "keops": (cauchy_keops, None),
}


def _kernel_from_spectrum(D: torch.Tensor, dt: torch.Tensor, L: int) -> torch.Tensor:
    """Woodbury rank-1 correction, bilinear factor, inverse rfft.  D (4, h, K), dt (h,) -> k (h, L).

    With r = dt (1+w) D (the paper's dt-scaled Cauchy sums), k_f = 2/(1+w) [r00 - r01 r10 / (1 + r11)]
    = 2 dt [D00 - s D01 D10 / (1 + s D11)],  s = dt (1+w): no division by (1+w), exact at w = -1.
    Pair order in D: (C~,B), (C~,P), (Q,B), (Q,P).
    """
    nodes = rfft_nodes(L, D.dtype, D.device)  # (K,)
    s = dt[:, None].to(D.dtype) * (1 + nodes)  # (h, K)
    k_f = D[0] - s * D[1] * D[2] / (1 + s * D[3])  # (h, K)
    k_f = 2 * dt[:, None] * k_f  # (h, K)
    return torch.fft.irfft(k_f, n=L)  # (h, L)


def _chunk_kernel(fn, L: int, v: torch.Tensor, a: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    return _kernel_from_spectrum(fn(v, a, L), dt, L)  # (h, L)


def ssm_kernel(v: torch.Tensor, a: torch.Tensor, dt: torch.Tensor, L: int, backend: str = "auto") -> torch.Tensor:
    """The S4 convolution kernel from the NPLR parameters.

    v (4, H, M) complex = B * conj(C) per pair [(C~,B), (C~,P), (Q,B), (Q,P)]; a (H, M) = dt * A_diag; dt (H,).
    Returns k (H, L) real. Backends that ask for it run per chunk of channels under `torch.utils.checkpoint`, so
    autograd keeps only the tiny inputs of each chunk and the (H, L) output: the peak extra memory is one chunk.
    """
    name = resolve_backend(backend, v.device)
    fn, chunk = BACKENDS[name]
    H = v.shape[1]
    if chunk is None or H <= chunk:
        return _chunk_kernel(fn, L, v, a, dt)  # (H, L)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (v, a, dt))
    parts = []
    for lo in range(0, H, chunk):
        args = (v[:, lo:lo + chunk], a[lo:lo + chunk], dt[lo:lo + chunk])
        if grad:
            parts.append(checkpoint(_chunk_kernel, fn, L, *args, use_reentrant=False))  # (h, L)
        else:
            parts.append(_chunk_kernel(fn, L, *args))  # (h, L)
    return torch.cat(parts, dim=0)  # (H, L)


# Measured on this project's 2-core CPU (bench/s4_kernel.py, H=1024, N=64, L=11,820, forward+backward):
# see AUTO_CPU below; "auto" on CUDA is keops (the GPU path) when it compiles, else torch.
AUTO_CPU = "torch"


def resolve_backend(backend: str, device: torch.device | str | None = None) -> str:
    """Map "auto" to the measured winner for the device; validate names (the error lists the valid ones)."""
    if backend == "auto":
        is_cuda = torch.device(device).type == "cuda" if device is not None else False
        if is_cuda:
            return "keops" if keops_available() else "torch"
        return AUTO_CPU
    if backend not in BACKENDS:
        raise ValueError(f"Expected a Cauchy backend in {sorted(BACKENDS) + ['auto']}, got {backend!r}")
    if backend == "keops" and not keops_available():
        raise ValueError("backend='keops' needs PyKeOps with a working compiler (g++ on CPU, nvcc on GPU); "
                         "pip install pykeops, or use backend='torch'")
    return backend

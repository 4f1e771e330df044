"""Cauchy-kernel backends for the S4 convolution kernel (S4 paper, Section 3.3 and Algorithm 1).

Axis letters: H channels, M = N/2 stored conjugate-pair modes, L kernel length, K = L//2 + 1 rfft nodes, Q = 4
(B|P) x (C~|Q) pairs.

The S4 kernel needs, at the K rfft nodes w_l = exp(-2 pi i l / L), the four Cauchy sums of the NPLR resolvent. We
evaluate them in a bilinear-friendly normalisation that stays finite at w_l = -1 (the last node of an even L):

    D_q(w) = sum_m  v_qm / (2(1-w) - (1+w) a_m)  +  conj(v_qm) / (2(1-w) - (1+w) conj(a_m))

where a = dt * A_diag (already dt-scaled) and v = B * conj(C) per pair. With z = 2(1-w)/(1+w) this is
(1/(1+w)) * [sum v/(z-a) + conj(v)/(z-conj(a))], i.e. the paper's Cauchy sum divided by (1+w); the factor cancels
against the bilinear correction 2/(1+w), so `ssm_kernel` never divides by (1+w).

API (the choice, documented), two registries with interchangeable members:
  CAUCHY[name](v, a, L) -> D   v (Q, H, M) complex, a (H, M) complex, D (Q, H, K) at the rfft nodes of length L.
      `naive` and `keops` evaluate the formula at explicit nodes (`cauchy_naive_at` / `cauchy_keops_at` take any
      nodes w); `torch` uses the structure of the rfft nodes: the sum is the DFT of a REAL sequence that is a sum of
      geometric sequences. For 11-smooth L it is built by a small batched GEMM and transformed by one rfft; when L
      has a prime factor > 11 (LVU: 11,820 = 197 * 60, where pocketfft/MKL need a slow generic 197-point pass) the
      DFT is split L = P * R, its P-axis taken in closed form (a geometric series: an (M, P/2) reciprocal table per
      channel), the modes summed by one real GEMM and the R-axis done by length-R FFTs (`_spectral`).
      Tests compare these spectra directly.
  BACKENDS[name](v, a, dt, L) -> k (H, L)   the whole kernel: Cauchy sums, Woodbury rank-1 correction, inverse
      rfft. `naive`/`keops` compose CAUCHY with `kernel_from_spectrum`; `torch` is fused and channel-chunked with a
      hand-written backward, so its peak memory is bounded (nothing of size H*N*L): `_StructuredKernel` for
      11-smooth L, `_MixedRadixKernel` otherwise, which stays on the (P/2, R) grid of the split: its inverse rfft is
      length-R FFTs + one real GEMM against a cached (P, P+1) inverse-DFT matrix (`_grid_irfft`), its backward the
      adjoint, so it does no length-L transform at all.
`ssm_kernel(v, a, dt, L, backend)` dispatches; `resolve_backend("auto", device)` picks the measured winner.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch

__all__ = [
    "BACKENDS",
    "CAUCHY",
    "cauchy_keops",
    "cauchy_keops_at",
    "cauchy_naive",
    "cauchy_naive_at",
    "cauchy_torch",
    "kernel_from_spectrum",
    "keops_available",
    "resolve_backend",
    "rfft_nodes",
    "ssm_kernel",
    "torch_kernel",
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
def _blocks(L: int) -> tuple[int, int]:
    """Block size b ~ sqrt(L) and block count J with J * b >= L (k = b*j + r)."""
    b = math.isqrt(max(L - 1, 0)) + 1
    return b, -(-L // b)


def _geometric(v: torch.Tensor, a: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """coef (Q, H, M) and log(lam) (H, M) in complex128: x_k = 2 Re sum_m coef_m lam_m^k.

    With lam = (2+a)/(2-a) (the bilinear pole) and w^L = 1,
        1 / (2(1-w) - (1+w) a) = 1/((2-a)(1 - lam w)) = sum_{k<L} lam^k w^k / ((2-a)(1-lam^L)),
    so D(w_l) = rfft(x)[l] for the REAL sequence x_k = 2 Re sum_m coef_m lam_m^k, coef = v / ((2-a)(1-lam^L)).
    """
    a64 = a.to(torch.complex128)  # (H, M)
    lam_log = torch.log((2 + a64) / (2 - a64))  # (H, M)
    coef = v.to(torch.complex128) / ((2 - a64) * (1 - torch.exp(lam_log * L)))  # (Q, H, M)
    return coef, lam_log


def _power_table(lam_log: torch.Tensor, t: torch.Tensor, cplx: torch.dtype) -> torch.Tensor:
    """lam^t = exp(t log lam) for t (n,) float64: lam_log (..., 1) broadcast -> (..., n) in `cplx`.

    Angles t*Im(log lam) reach L*pi, beyond float32, so the exponent is formed and the angle reduced mod 2 pi in
    float64; the transcendental functions then run in the working precision (complex64: ~1e-7 relative).
    """
    if cplx == torch.complex128:
        return torch.exp(lam_log * t)
    mag = torch.exp((lam_log.real * t).to(torch.float32))
    phase = torch.remainder(lam_log.imag * t, 2 * math.pi).to(torch.float32)
    return torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))


def _factors(coef: torch.Tensor, lam_log: torch.Tensor, L: int, real: torch.dtype):
    """GEMM factors of x for a chunk: left (h, Q*J, 2M), right (h, 2M, b) with x = 2 * left @ right, and the
    power tables p_out = lam^{bj} (h, J, M), p_in = lam^r (h, M, b).

    x[(q, j), r] = 2 Re sum_m (coef lam^{bj})[q, j, m] (lam^r)[m, r] (k = b*j + r), in real arithmetic
    ([Re, -Im] @ [Re; Im]) so only the real part is ever formed.
    """
    Q, h, M = coef.shape
    b, J = _blocks(L)
    cplx = torch.complex64 if real == torch.float32 else torch.complex128
    t_out = torch.arange(J, dtype=torch.float64, device=coef.device)[:, None] * b  # (J, 1)
    t_in = torch.arange(b, dtype=torch.float64, device=coef.device)  # (b,)
    p_out = _power_table(lam_log[:, None, :], t_out, cplx)  # (h, J, M)
    p_in = _power_table(lam_log[:, :, None], t_in, cplx)  # (h, M, b)
    # conj(coef lam^{bj}) as interleaved (re, -im) pairs: a fresh product, so view_as_real costs no copy
    outer = coef.to(cplx).conj().transpose(0, 1)[:, :, None, :] * p_out.conj()[:, None]  # (h, Q, J, M)
    left = torch.view_as_real(outer).reshape(h, Q * J, 2 * M)  # (h, Q*J, 2M) = [Re, -Im] per mode
    right = torch.stack([p_in.real, p_in.imag], dim=2).reshape(h, 2 * M, b)  # (h, 2M, b) = [Re; Im] per mode
    return left, right, p_out, p_in


def _sequence(left: torch.Tensor, right: torch.Tensor, Q: int, L: int) -> torch.Tensor:
    """x (h, Q, L) from the GEMM factors."""
    h = left.shape[0]
    return (2 * torch.bmm(left, right)).reshape(h, Q, -1)[..., :L]  # (h, Q, L)


def _factor_grads(coef, g_left, g_right, p_out, p_in, L: int):
    """Adjoint of `_factors`: (grad coef (Q, h, M), grad log lam (h, M)) from grad left / right (torch's
    conjugate-Wirtinger convention: grad z = dl/dRe z + i dl/dIm z; for z = a b, grad a = conj(b) grad z)."""
    Q, h, M = coef.shape
    b, J = _blocks(L)
    g_outer = torch.view_as_complex(g_left.reshape(h, Q, J, M, 2)).conj()  # (h, Q, J, M): g_re - i g_imneg
    g_right = g_right.reshape(h, M, 2, b)  # (h, M, 2, b)
    g_in = torch.complex(g_right[:, :, 0], g_right[:, :, 1])  # (h, M, b)
    t_out = torch.arange(J, dtype=g_left.dtype, device=g_left.device)[:, None] * b  # (J, 1)
    t_in = torch.arange(b, dtype=g_left.dtype, device=g_left.device)  # (b,)
    prod = p_out.conj()[:, None] * g_outer  # (h, Q, J, M)
    grad_coef = prod.sum(2).transpose(0, 1)  # (Q, h, M)
    weighted = (prod * t_out).sum(2).transpose(0, 1)  # (Q, h, M) sum_j t_j conj(p) g
    grad_lam = (coef.to(weighted.dtype).conj() * weighted).sum(0) + (t_in * p_in.conj() * g_in).sum(-1)  # (h, M)
    return grad_coef, grad_lam


# ---------------------------------------------------------------- mixed-radix spectra (L with a large prime factor)
_SMOOTH = 11  # pocketfft has fast radix passes up to 11; a larger prime factor p costs a generic O(p) pass


def _split(L: int) -> tuple[int, int]:
    """L = P * R with P the product of L's prime factors > 11 (1 when L is 11-smooth) and R = L / P."""
    P, n, f = 1, L, 2
    while f * f <= n:
        while n % f == 0:
            P *= f if f > _SMOOTH else 1
            n //= f
        f += 1
    if n > _SMOOTH:
        P *= n
    return P, L // P


_PLANS: dict = {}


class _Scratch(threading.local):
    """Per-thread scratch buffers for one kernel call: chunk after chunk reuses the same memory (fresh ~1 MB
    temporaries per chunk cost page faults and cold caches; with the 2-thread pool they also went through glibc's
    per-thread arenas, which return freed tops to the OS). Not for FFT outputs: torch's fft with out= computes into
    a temporary and copies (measured 1.7x slower). `get(name, shape, dtype)` is a view of the named buffer
    (grown when needed); buffers with different names never alias. Freed with the object (end of the call)."""

    def __init__(self, device) -> None:
        self.device, self.bufs = device, {}

    def get(self, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self.bufs[name] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)
_MADVISE: list = []  # [libc.madvise or None], resolved on first use


def _empty_huge(*shape: int, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty for the big per-call CPU buffers (k, e1, e2: 48 MB each at the paper size), advised to use
    transparent huge pages on Linux: their first touch then faults 2 MB pages instead of 4 KB ones (measured here:
    ~4 ms instead of ~22 ms per 48 MB; the whole kernel 0.52 -> 0.48 s at the paper size). Only a hint: where
    madvise is unavailable or refuses, the buffer is a plain torch.empty."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if out.device.type != "cpu" or nbytes < 1 << 23:
        return out
    if not _MADVISE:
        try:
            import ctypes
            import sys

            libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
            if libc is not None:
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _MADVISE.append(libc.madvise if libc is not None else None)
        except (OSError, AttributeError):
            _MADVISE.append(None)
    if _MADVISE[0] is not None:
        huge = 1 << 21
        lo = (out.data_ptr() + huge - 1) & ~(huge - 1)
        hi = (out.data_ptr() + nbytes) & ~(huge - 1)
        if hi > lo:
            _MADVISE[0](lo, hi - lo, 14)  # MADV_HUGEPAGE; the return code is ignored (a hint)
    return out


def _plan(L: int, cplx: torch.dtype, device) -> dict:
    """Constants of the mixed-radix evaluation for length L (cached). Spectra live on a (Pc, R) grid [t, u] holding
    X(P u + t) for t < Pc = P//2 + 1 (P is odd), u < R: every rfft bin l < K is one grid entry, directly or (for
    t >= Pc) through X(l) = conj X(L - l), L - l = P (R-1-u) + (P - t): `tk`, `uk`, `flip` (K,) say where.
      theta, theta_conj (Pc,) complex128: theta_t = exp(-2 pi i t / P) and its conjugate;
      basis, basis_conj (4, 6 Pc) float64: [1, x, y, x^2 + y^2] @ basis = [den, S num, Dd num] (3 x Pc complex)
          of `_tables` at mu = x + i y (conj: theta -> conj theta);
      th12 (2, Pc) = [theta, theta^2];  tw (R, Pc) = w^{r t} and ctw = conj(tw), w = exp(-2 pi i / L);
      snodes_conj (Pc, R) = conj(1 + w^{P u + t});
      cmat (P, 2 Pc) real: x_{R j + r} = sum_(t, c) cmat[j, (t, c)] [Re Y; Im Y](t, r), the inverse length-P DFT
          of a half spectrum Hermitian in t, entries (c_t / L) (cos, -sin)(2 pi t j / P), c_0 = 1, else 2;
          cmat_conj_t (2 Pc, P): the transpose of the same acting on conj(Y) (sin column signs flipped)."""
    key = (L, cplx, str(device))
    if key not in _PLANS:
        P, R = _split(L)
        Pc = P // 2 + 1
        real = torch.float32 if cplx == torch.complex64 else torch.float64
        t = torch.arange(Pc, dtype=torch.float64, device=device)  # (Pc,)
        r = torch.arange(R, dtype=torch.float64, device=device)  # (R,)
        one = torch.ones_like(t)
        theta = torch.polar(one, -2 * math.pi * t / P)  # (Pc,) complex128

        def basis(th: torch.Tensor) -> torch.Tensor:  # rows: coefficients of 1, x, y, |mu|^2
            zero = torch.zeros_like(th)
            rows = [[1 + zero, 2 + zero, zero], [-2 * th, -2 * th, zero], [zero, zero, -2 * th], [th * th, zero, zero]]
            return torch.view_as_real(torch.stack([torch.stack(row) for row in rows])).reshape(4, 6 * Pc)

        ang = lambda x: torch.polar(torch.ones_like(x), -2 * math.pi * torch.remainder(x, L) / L)  # noqa: E731
        j = torch.arange(P, dtype=torch.float64, device=device)[:, None]  # (P, 1)
        phase = 2 * math.pi * torch.remainder(j * t, P) / P  # (P, Pc)
        c = torch.full_like(t, 2.0 / L)  # (Pc,) c_t / L
        c[0] = 1.0 / L
        cmat = torch.stack([c * torch.cos(phase), -c * torch.sin(phase)], dim=-1).reshape(P, 2 * Pc)
        cmat_conj = torch.stack([c * torch.cos(phase), c * torch.sin(phase)], dim=-1).reshape(P, 2 * Pc)
        l = torch.arange(L // 2 + 1, device=device)  # (K,)
        tl, ul = l % P, l // P
        flip = tl >= Pc
        tw = ang(r[:, None] * t)  # (R, Pc)
        _PLANS[key] = dict(
            P=P, R=R, Pc=Pc, theta=theta, theta_conj=theta.conj_physical(), basis=basis(theta),
            basis_conj=basis(theta.conj()),
            th12=torch.stack([theta, theta * theta]).to(cplx), tw=tw.to(cplx), ctw=tw.conj_physical().to(cplx),
            snodes_conj=(1 + ang(P * r + t[:, None])).conj_physical().to(cplx), cmat=cmat.to(real),
            cmat_conj_t=cmat_conj.t().contiguous().to(real),
            tk=torch.where(flip, P - tl, tl), uk=torch.where(flip, R - 1 - ul, ul), flip=flip)
    return _PLANS[key]


def _grid_to_bins(X: torch.Tensor, plan: dict) -> torch.Tensor:
    """(..., Pc, R) grid -> (..., K) rfft bins (a gather; conj for the bins stored as their mirror)."""
    X = X[..., plan["tk"], plan["uk"]]  # (..., K)
    return torch.where(plan["flip"], X.conj(), X)


def _table_inputs(lam_log: torch.Tensor, plan: dict, cplx: torch.dtype, powers: bool = True):
    """The channel-wise inputs of `_tables` (the small ones can be formed once for all channels of a call):
    mu = lam^R (h, M) complex128, feats (h, M, 4) float64 = [1, x, y, x^2 + y^2] at mu = x + i y, and (powers=True)
    p = lam^r (h, R, M) for r < R (`_powers`)."""
    mu = torch.exp(plan["R"] * lam_log)  # (h, M)
    xy = torch.view_as_real(mu)  # (h, M, 2)
    feats = torch.cat([torch.ones_like(xy[..., :1]), xy, (xy * xy).sum(-1, keepdim=True)], -1)  # (h, M, 4)
    return mu, feats, _powers(lam_log, plan, cplx) if powers else None


def _powers(lam_log: torch.Tensor, plan: dict, cplx: torch.dtype) -> torch.Tensor:
    """p = lam^r (h, R, M) for r < R, in `cplx` (`_powers_of` exp(log lam))."""
    return _powers_of(torch.exp(lam_log), plan["R"]).to(cplx)


def _powers_of(lam: torch.Tensor, R: int) -> torch.Tensor:
    """lam^r (h, R, M) complex128 for r < R from lam (h, M) complex128: a cumulative product."""
    h, M = lam.shape
    lam = lam[:, None]  # (h, 1, M)
    return torch.cumprod(torch.cat([torch.ones_like(lam), lam.expand(h, R - 1, M)], 1), 1)


def _tables(inputs: tuple, plan: dict, cplx: torch.dtype, conj: bool = False, ws: _Scratch | None = None):
    """The per-channel factors of the mixed-radix spectra (see `_spectral`), for h channels, from
    `_table_inputs` (mu, feats, p): returns mu, sd (h, M, 2, Pc) = [S; Dd] (or their conjugates), inv = 1 / den
    (h, M, Pc) and p. With theta_t = exp(-2 pi i t / P), G = 1 / (1 - mu theta), G~ = 1 / (1 - conj(mu) theta) and
    mu = x + i y,  den = (1 - mu theta)(1 - conj(mu) theta) = 1 - 2 x theta + |mu|^2 theta^2,
        S = G + G~ = (2 - 2 x theta) / den,   Dd = i (G - G~) = -2 y theta / den:
    real-coefficient polynomials in theta, formed by one float64 GEMM (1 - mu theta cancels when |lam^R| ~ 1; the
    quotient is taken in the working precision). Plain autograd works without `ws` (with it the results live in
    its buffers)."""
    mu, feats, p = inputs
    h, M = mu.shape
    Pc = plan["Pc"]
    basis = plan["basis_conj" if conj else "basis"]  # (4, 6 Pc)
    if ws is None:
        poly = feats.reshape(h * M, 4) @ basis  # (h M, 6 Pc)
        poly = torch.view_as_complex(poly.view(h, M, 3, Pc, 2)).to(cplx)  # (h, M, 3, Pc): den, S num, Dd num
        inv = torch.reciprocal(poly[:, :, 0])  # (h, M, Pc)
        return mu, poly[:, :, 1:] * inv[:, :, None], inv, p
    poly64 = torch.mm(feats.reshape(h * M, 4), basis, out=ws.get("poly64", (h * M, 6 * Pc), basis.dtype))
    poly = ws.get("poly", (h, M, 3, Pc), cplx).copy_(torch.view_as_complex(poly64.view(h, M, 3, Pc, 2)))
    inv = torch.reciprocal(poly[:, :, 0], out=ws.get("inv", (h, M, Pc), cplx))
    sd = torch.mul(poly[:, :, 1:], inv[:, :, None], out=ws.get("sd", (h, M, 2, Pc), cplx))
    return mu, sd, inv, p


def _spectral_bmm(rho: torch.Tensor, sd: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """A (h, Q, R, Pc) complex of `_spectral` from rho (h, Q, R, M) and the tables sd (h, M, 2, Pc): one real GEMM
    per channel, [Re rho, Im rho] (Q R x 2M) @ [S; Dd] (2M x 2 Pc interleaved reals) (`out`: its real buffer)."""
    h, Q, R, M = rho.shape
    Pc = sd.shape[-1]
    A = torch.bmm(torch.view_as_real(rho).reshape(h, Q * R, 2 * M), torch.view_as_real(sd).reshape(h, 2 * M, 2 * Pc),
                  out=out)  # (h, (q, r), (t, c))
    return torch.view_as_complex(A.view(h, Q, R, Pc, 2))  # (h, Q, R, Pc)


def _spectral(cp: torch.Tensor, lam_log: torch.Tensor, plan: dict, cplx: torch.dtype) -> torch.Tensor:
    """The spectra on the (Pc, R) grid of `_plan`: D (h, Q, Pc, R) = X_q(P u + t) at [q, t, u], from cp (h, Q, M)
    (= v / (2 - a)) and log(lam) (h, M) complex128.

    Split k = R j + r (j < P, r < R) and l = P u + t. The DFT over j of a geometric sequence is closed-form:
        X_q(l) = sum_r e^{-2 pi i u r / R} w^{r t} A_qr(t),
        A_qr(t) = sum_m G_mt rho_qmr + G~_mt conj(rho_qmr) = sum_m S_mt Re(rho_qmr) + Dd_mt Im(rho_qmr),
        rho = cp lam^r,  G = 1 / (1 - lam^R theta_t),  G~ = 1 / (1 - conj(lam)^R theta_t),  S = G + G~,
        Dd = i (G - G~).
    A_qr(t) is Hermitian in t (a DFT over j of the real x_{Rj+r}), so only t < Pc = P//2 + 1 is formed: one real
    GEMM [Re rho, Im rho] (Q R x 2M) @ [S; Dd] (2M x Pc complex as 2 Pc interleaved reals) per channel, 2 L M
    multiply-adds per pair (as many as the time-domain GEMM), whose output is already complex (Q, R, Pc)
    (`_spectral_bmm`); then the twiddle w^{r t} and length-R FFTs along r (run t-major, on the contiguous axis).
    The generic length-P FFT pass (P = 197 at L = 11,820) is replaced by the pair-independent (M, Pc) tables S, Dd.
    Plain autograd works (the fused `_MixedRadixKernel` does the same steps with its own backward)."""
    _, sd, _, p = _tables(_table_inputs(lam_log, plan, cplx), plan, cplx)  # (h, M, 2, Pc), (h, R, M)
    A = _spectral_bmm(cp.to(cplx)[:, :, None, :] * p[:, None], sd)  # (h, Q, R, Pc)
    return torch.fft.fft((A * plan["tw"]).transpose(-1, -2), dim=-1)  # (h, Q, Pc, R)


def _grid_irfft(Fc: torch.Tensor, plan: dict, scale: torch.Tensor | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """The inverse rfft of length L of a spectrum given on the (Pc, R) grid, from its CONJUGATE Fc (h, Pc, R):
    x (h, P, R) real, x[j, r] = x_{R j + r} (times `scale` (h,) if given). With l = P u + t and n = R j + r,
        x_{R j + r} = (1/L) sum_{t < P} Y(t, r) e^{2 pi i t j / P},  Y(t, r) = e^{2 pi i t r / L} sum_u X(P u + t)
        e^{2 pi i u r / R},
    and Y is Hermitian in t mod P (as X is in l), so the t-sum is a real-output inverse DFT of length P over
    t < Pc: one real GEMM against the cached `cmat`. conj(Y) = tw * fft_u(conj X) (a length-R FFT), so
    x = cmat_conj @ [Re; Im] conj(Y). No length-L transform (pocketfft's is Bluestein when L has a large prime)."""
    h, Pc, R = Fc.shape
    Yt = torch.fft.fft(Fc, dim=-1)  # (h, Pc, R) [t, r]
    Y = (Yt.transpose(1, 2) * plan["tw"]).contiguous()  # (h, R, Pc) conj(Y), r-major for the GEMM
    return _p_stage(Y, plan, scale, out)


def _p_stage(Yc: torch.Tensor, plan: dict, scale: torch.Tensor | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """The length-P stage of `_grid_irfft`: x (h, P, R) = cmat_conj @ [Re; Im] Yc, Yc = conj(Y) (h, R, Pc)."""
    h, R, Pc = Yc.shape
    xt = torch.mm(torch.view_as_real(Yc).view(h * R, 2 * Pc), plan["cmat_conj_t"]).view(h, R, -1)  # (h, R, P)
    if out is None:
        out = torch.empty(h, xt.shape[-1], R, dtype=xt.dtype, device=xt.device)
    if scale is None:
        return out.copy_(xt.transpose(1, 2))
    return torch.mul(xt.transpose(1, 2), scale[:, None, None], out=out)  # (h, P, R)


def _grid_irfft_adjoint(g: torch.Tensor, plan: dict, gy_out: torch.Tensor | None = None,
                        ws: _Scratch | None = None) -> torch.Tensor:
    """Adjoint of x = irfft(X) through `_grid_irfft`: grad X (h, Pc, R) on the grid from g = grad x (h, P, R)
    (torch's convention for complex gradients: grad z = dl/dRe z + i dl/dIm z):
        grad X(P u + t) = sum_r e^{-2 pi i u r / R} w^{r t} gY(r, t),  gY = [cmat^T g] as complex (h, R, Pc)
    (a GEMM, a twiddle, length-R FFTs). gY is also copied into `gy_out` if given; `ws`: scratch buffers."""
    h, P, R = g.shape
    Pc = plan["Pc"]
    gY = torch.view_as_complex(torch.matmul(g.transpose(1, 2), plan["cmat"]).view(h, R, Pc, 2))  # (h, R, Pc)
    if gy_out is not None:
        gy_out.copy_(gY)
    cplx = gY.dtype
    gYt = torch.empty(h, Pc, R, dtype=cplx, device=g.device) if ws is None else ws.get("gYt", (h, Pc, R), cplx)
    torch.mul(gY, plan["tw"], out=gYt.transpose(1, 2))  # (h, Pc, R) t-major
    return torch.fft.fft(gYt, dim=-1)  # (h, Pc, R)


def cauchy_torch(v: torch.Tensor, a: torch.Tensor, L: int) -> torch.Tensor:
    """Same values as `cauchy_naive` at the rfft nodes of length L, without any (H, M, K) tensor: for 11-smooth L
    one small real GEMM + one rfft, otherwise the mixed-radix evaluation of `_spectral`.

    Returns the full (Q, H, K) spectrum with plain autograd (for comparisons; `ssm_kernel` uses the fused,
    memory-bounded `_StructuredKernel` / `_MixedRadixKernel` instead).
    """
    if _split(L)[0] > 1:
        a64 = a.to(torch.complex128)
        cp = v.to(torch.complex128) / (2 - a64)  # (Q, H, M)
        lam_log = torch.log((2 + a64) / (2 - a64))  # (H, M)
        plan = _plan(L, v.dtype, v.device)
        D = _spectral(cp.transpose(0, 1), lam_log, plan, v.dtype)  # (H, Q, Pc, R)
        return _grid_to_bins(D, plan).transpose(0, 1)  # (Q, H, K)
    coef, lam_log = _geometric(v, a, L)
    left, right, _, _ = _factors(coef, lam_log, L, v.real.dtype)
    x = _sequence(left, right, v.shape[0], L)  # (H, Q, L)
    return torch.fft.rfft(x, n=L).transpose(0, 1)  # (Q, H, K)


class _StructuredKernel(torch.autograd.Function):
    """The `torch` kernel for 11-smooth L (pocketfft is fast there): k = Woodbury-corrected S4 kernel from the
    geometric form, chunked over channels, hand-written backward.

        k = 2 dt irfft(D0 - T),  T = s D1 D2 R,  R = 1 / (1 + s D3),  s = dt (1 + w),
    with x_q (coef (4, H, M)) by the time-domain GEMM, D_q = rfft(x_q) at the K rfft nodes for q = 1..3 and x_0 used
    directly (irfft(D_0) = x_0), so k = 2 dt (x_0 - irfft(T)).
    Saved for backward: the tiny coef/log(lam)/dt, a1 = R D1 and a2 = R D2 (two (H, K) complex spectra), k.
    Backward per chunk, with Y = rfft(-2 dt g) and W = c_l / L (c_l = 1 at the DC/Nyquist bins, else 2):
        grad T = W Y,  grad D1 = conj(s a2) W Y,  grad D2 = conj(s a1) W Y,
        grad D3 = -conj(s^2 a1 a2) W Y,  grad dt = sum g k / dt + sum_l Re(conj((1+w) a1 a2) W_l Y_l);
    then 3 irfft + the time-domain GEMM adjoints (grad x_0 = 2 dt g). Length-L FFTs per chunk: 3+1 forward, 1+3
    backward. Nothing of size H*N*L is formed.
    """

    @staticmethod
    def forward(ctx, coef, lam_log, dt, L: int, chunk: int, real: torch.dtype):
        H, dev = lam_log.shape[0], lam_log.device
        cplx = torch.complex64 if real == torch.float32 else torch.complex128
        nodes = rfft_nodes(L, cplx, dev)  # (K,)
        k = torch.empty(H, L, dtype=real, device=dev)  # (H, L)
        a1 = torch.empty(H, L // 2 + 1, dtype=cplx, device=dev)  # (H, K)
        a2 = torch.empty_like(a1)
        dtr = dt.detach().to(real)  # (H,)

        def one(lo: int, hi: int) -> None:
            left, right, _, _ = _factors(coef[:, lo:hi], lam_log[lo:hi], L, real)
            x = _sequence(left, right, 4, L)  # (h, 4, L)
            D = torch.fft.rfft(x[:, 1:], n=L)  # (h, 3, K)
            D1, D2, D3 = D.unbind(1)  # (h, K)
            s = dtr[lo:hi, None] * (1 + nodes)  # (h, K)
            Rw = torch.reciprocal(1 + s * D3)  # (h, K)
            torch.mul(Rw, D1, out=a1[lo:hi])
            torch.mul(Rw, D2, out=a2[lo:hi])
            T = s * a1[lo:hi] * D2  # (h, K)
            k[lo:hi] = 2 * dtr[lo:hi, None] * (x[:, 0] - torch.fft.irfft(T, n=L))  # (h, L)

        _run_chunks(one, H, chunk, dev)
        ctx.save_for_backward(coef, lam_log, dt, a1, a2, k)
        ctx.L, ctx.chunk, ctx.real = L, chunk, real
        return k

    @staticmethod
    def backward(ctx, g):
        coef, lam_log, dt, a1, a2, k = ctx.saved_tensors
        L, chunk, real = ctx.L, ctx.chunk, ctx.real
        Q, H = coef.shape[0], lam_log.shape[0]
        b, J = _blocks(L)
        nodes = rfft_nodes(L, a1.dtype, g.device)  # (K,)
        weight = torch.full((L // 2 + 1,), 2.0 / L, dtype=real, device=g.device)  # (K,) c_l / L
        weight[0] = 1.0 / L
        if L % 2 == 0:
            weight[-1] = 1.0 / L
        dtr = dt.to(real)  # (H,)
        g = g.to(real)  # (H, L)
        grad_coef = torch.empty_like(coef)  # (4, H, M)
        grad_lam = torch.empty_like(lam_log)  # (H, M)
        grad_dt = torch.empty_like(dtr)  # (H,)

        def one(lo: int, hi: int) -> None:
            h = hi - lo
            s = dtr[lo:hi, None] * (1 + nodes)  # (h, K)
            p1, p2 = a1[lo:hi], a2[lo:hi]  # (h, K)
            gdt = torch.linalg.vecdot(g[lo:hi], k[lo:hi]) / dtr[lo:hi]  # (h,) from the 2 dt factor
            Y = torch.fft.rfft(g[lo:hi], n=L).mul_(-2 * dtr[lo:hi, None])  # (h, K) spectrum of grad y = -2 dt g
            WY = Y.mul_(weight)  # (h, K) grad T
            sp12 = s * p1 * p2  # (h, K) s a1 a2: dT/ddt = (1 + w) a1 a2 = sp12 / dt
            grad_dt[lo:hi] = gdt + torch.linalg.vecdot(sp12, WY).real / dtr[lo:hi]
            cY = s.conj_physical().mul_(WY)  # (h, K) conj(s) grad T
            # 2 grad x_q = irfft(2 grad D_q / W) (the factor 2 of x = 2 left @ right), 2 grad x_0 = 4 dt g
            gx = torch.empty(h, Q, J * b, dtype=real, device=g.device)  # (h, 4, J*b) = 2 grad x, zero tail
            gx[..., L:] = 0
            torch.mul(g[lo:hi], 4 * dtr[lo:hi, None], out=gx[:, 0, :L])
            spectra = torch.empty(h, 3, L // 2 + 1, dtype=a1.dtype, device=g.device)  # (h, 3, K)
            cY = cY.mul_(2 / weight)
            torch.mul(p2.conj(), cY, out=spectra[:, 0])
            torch.mul(p1.conj(), cY, out=spectra[:, 1])
            torch.mul(sp12.conj_physical_().neg_(), cY, out=spectra[:, 2])
            gx[:, 1:, :L] = torch.fft.irfft(spectra, n=L)  # (h, 3, L)
            gxm = gx.reshape(h, Q * J, b)  # (h, 4 J, b)
            left, right, p_out, p_in = _factors(coef[:, lo:hi], lam_log[lo:hi], L, real)
            g_left = torch.bmm(gxm, right.transpose(1, 2))  # (h, 4 J, 2M) (x = 2 left @ right)
            g_right = torch.bmm(left.transpose(1, 2), gxm)  # (h, 2M, b)
            grad_coef[:, lo:hi], grad_lam[lo:hi] = _factor_grads(coef[:, lo:hi], g_left, g_right, p_out, p_in, L)

        _run_chunks(one, H, chunk, g.device)
        return grad_coef, grad_lam, grad_dt.to(dt.dtype), None, None, None


class _TorchLoops:
    """The elementwise chains of `_MixedRadixKernel` in torch ops: the path on GPUs (and on CPUs without numba) and
    the reference of their compiled CPU twins, `cauchy_loops.NumbaLoops` (same signatures, see there). `ws` is the
    call's `_Scratch`."""

    @staticmethod
    def rho(lam: torch.Tensor, cp: torch.Tensor, plan: dict, out: torch.Tensor) -> torch.Tensor:
        """out (h, Q, R, M) = cp (h, Q, M) * lam^r (lam (h, M) complex128), r < R."""
        p = _powers_of(lam, plan["R"]).to(out.dtype)  # (h, R, M)
        return torch.mul(cp.to(out.dtype)[:, :, None, :], p[:, None], out=out)

    @staticmethod
    def tables(mu: torch.Tensor, feats: torch.Tensor, plan: dict, cplx: torch.dtype, conj: bool, ws):
        """sd (h, M, 2, Pc) and inv (h, M, Pc) of `_tables`, in `ws` buffers."""
        _, sd, inv, _ = _tables((mu, feats, None), plan, cplx, conj, ws)
        return sd, inv

    @staticmethod
    def woodbury(D: torch.Tensor, s_nodes: torch.Tensor, dt: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor,
                 ws) -> torch.Tensor:
        """From D (h, 3, Pc, R) = [D1, D2, D3]: e1 = Rw D1, e2 = Rw s D2 (Rw = 1 / (1 + s D3), s = s_nodes dt),
        written into e1 / e2 (h, Pc, R); returns T = D1 e2 (h, Pc, R) (D1's memory)."""
        D1, D2, D3 = D.unbind(1)  # (h, Pc, R)
        s = torch.mul(s_nodes, dt[:, None, None], out=ws.get("s", D1.shape, D.dtype))
        Rw = torch.mul(s, D3, out=ws.get("Rw", D1.shape, D.dtype)).add_(1).reciprocal_()
        torch.mul(Rw, D1, out=e1)
        torch.mul(Rw.mul_(s), D2, out=e2)
        return D1.mul_(e2)

    @staticmethod
    def grad_spectra(e1: torch.Tensor, e2: torch.Tensor, gF: torch.Tensor, s_nodes: torch.Tensor,
                     dt: torch.Tensor, gD: torch.Tensor, ws) -> torch.Tensor:
        """gD (3, h, Pc, R) = [e2 gF, s e1 gF, s e1 e2 gF]; returns sum Re(e1 e2 gF) per channel (h,)."""
        torch.mul(e2, gF, out=gD[0])
        q = torch.mul(e1, gD[0], out=gD[2])  # e1 e2 gF
        sums = q.real.sum((1, 2))  # (h,)
        s = torch.mul(s_nodes, dt[:, None, None], out=ws.get("s", gF.shape, gF.dtype))
        q.mul_(s)
        torch.mul(s.mul_(e1), gF, out=gD[1])
        return sums

    @staticmethod
    def table_adjoint(sd: torch.Tensor, inv: torch.Tensor, g_sd: torch.Tensor, plan: dict, g_mu: torch.Tensor,
                      r2: torch.Tensor) -> None:
        """With psib = conj(gS) S + conj(gDd) Dd conjugated (vecdot(x, y) = sum conj(x) y), phi = inv [theta,
        theta^2]: g_mu (h, M, 2) = Re sum_t conj(phi1) [gS - psib, gDd], r2 (h, M) = Re sum_t conj(phi2) psib.
        Overwrites g_sd."""
        psib = torch.linalg.vecdot(sd, g_sd, dim=2)  # (h, M, Pc)
        g_sd[:, :, 0].sub_(psib)
        phi = inv[:, :, None] * plan["th12"]  # (h, M, 2, Pc) [phi1, phi2]
        g_mu.copy_(torch.linalg.vecdot(phi[:, :, :1], g_sd).real)  # (h, M, 2)
        r2.copy_(torch.linalg.vecdot(phi[:, :, 1], psib).real)  # (h, M)

    @staticmethod
    def grad_coeffs(g_rho: torch.Tensor, lam: torch.Tensor, out: torch.Tensor) -> None:
        """out (h, Q, 2, M) = sum_r conj(lam^r) [1, r] g_rho (h, Q, R, M) (lam (h, M) complex128)."""
        R = g_rho.shape[2]
        p = _powers_of(lam, R).to(g_rho.dtype)  # (h, R, M)
        rw = torch.arange(R, dtype=g_rho.real.dtype, device=g_rho.device)[:, None]  # (R, 1)
        pw = torch.stack([p.conj(), p.conj() * rw], 1)  # (h, 2, R, M) conj(lam^r) [1, r]
        torch.sum(g_rho[:, :, None] * pw[:, None], 3, out=out)  # (h, Q, 2, M)


def _loops(device):
    """The elementwise-chain implementation for `device`: numba-compiled loops on CPU when numba imports."""
    from heads import cauchy_loops

    return cauchy_loops.NumbaLoops if cauchy_loops.used_on(device) else _TorchLoops


class _MixedRadixKernel(torch.autograd.Function):
    """The `torch` kernel when L has a prime factor > 11 (LVU: 11,820 = 197 * 60): everything on the (Pc, R) grid
    of `_plan`, chunked over channels, hand-written backward, no length-L FFT.

        k = 2 dt irfft(F),  F = D0 - T,  T = s D1 D2 Rw,  Rw = 1 / (1 + s D3),  s = dt (1 + w),
    with the four pair spectra D_q = fft_r(tw A_q) of `_spectral`. The forward works with conjugates throughout (so
    that what the backward needs is stored without a conj pass): conj(A) from the conjugate tables, conj(D_q)
    = ifft_r(conj(tw A_q)) (unnormalised) for q = 1..3 only, the Woodbury algebra at conj(s), saving
    e1 = conj(a1) and e2 = conj(s a2) (a1 = Rw D1, a2 = Rw D2: two (H, Pc, R) complex spectra), and
    k = 2 dt `_p_stage`(conj Y) with conj Y = tw fft_r(conj F) = R conj(A_0) - tw fft_r(conj T): D_0 never goes
    through the length-R FFTs (fft_r of its inverse is R times its input; R is folded into cp_0).
    Backward per chunk, with gF = `_grid_irfft_adjoint`(g) (so grad F = 2 dt gF, grad T = -2 dt gF):
        grad D0 = 2 dt gF,  grad D1 = -2 dt conj(s a2) gF,  grad D2 = -2 dt conj(s a1) gF,
        grad D3 = 2 dt conj(s^2 a1 a2) gF,  grad dt = sum g k / dt - 2 sum Re(conj(s a1 a2) gF),
    formed without the factors +-2 dt, which are real, per channel and pair, and are applied to cp (for the GEMM
    that sums over pairs) and to the per-pair outputs instead. Then the adjoint of `_spectral`: grad A_q =
    conj(tw) ifft_r(grad D_q) (unnormalised; for q = 0 that is R gY of `_grid_irfft_adjoint`, no FFT), two GEMMs
    (grad rho, grad [S; Dd]) and the tables' closed-form adjoint:
        with mu = x + i y, psi = conj(gS) S + conj(gDd) Dd, phi1 = theta / den, phi2 = theta^2 / den,
        dl/dx = -2 Re sum_t phi1 (conj(gS) - psi) - 2 x Re sum_t phi2 psi,
        dl/dy = -2 Re sum_t phi1 conj(gDd) - 2 y Re sum_t phi2 psi;
    grad cp = sum_r conj(lam^r) grad rho, grad log lam = conj(R mu) grad mu + sum_r r conj(lam^r) grad lam^r.
    Saved for backward: the tiny cp/log(lam)/dt, e1, e2 and k. Nothing of size H*N*L is formed.
    Per chunk, torch runs the GEMMs, the length-R FFTs and the transposes; the elementwise chains between them (power
    and Cauchy tables, the Woodbury algebra, their adjoints) go through `_loops(device)`: compiled numba loops on CPU
    (`cauchy_loops`), `_TorchLoops` elsewhere.
    """

    @staticmethod
    def forward(ctx, cp, lam_log, dt, L: int, chunk: int, real: torch.dtype):
        H, M = lam_log.shape
        dev = lam_log.device
        cplx = torch.complex64 if real == torch.float32 else torch.complex128
        plan = _plan(L, cplx, dev)
        P, R, Pc = plan["P"], plan["R"], plan["Pc"]
        k = _empty_huge(H, L, dtype=real, device=dev)  # (H, L)
        e1 = _empty_huge(H, Pc, R, dtype=cplx, device=dev)  # (H, Pc, R) conj(a1)
        e2 = _empty_huge(H, Pc, R, dtype=cplx, device=dev)  # (H, Pc, R) conj(s a2)
        dtr = dt.detach().to(real).contiguous()  # (H,)
        cph = cp.transpose(0, 1) * torch.tensor([R, 1, 1, 1], dtype=cp.dtype, device=dev)[:, None]  # (H, 4, M)
        cph = cph.to(cplx).contiguous()
        mu, feats, _ = _table_inputs(lam_log, plan, cplx, powers=False)  # (H, M), (H, M, 4)
        lam = torch.exp(lam_log)  # (H, M) complex128
        loops, ws = _loops(dev), _Scratch(dev)

        def one(lo: int, hi: int) -> None:
            h = hi - lo
            rho = loops.rho(lam[lo:hi], cph[lo:hi], plan, ws.get("rho", (h, 4, R, M), cplx))  # (h, 4, R, M)
            sd, _ = loops.tables(mu[lo:hi], feats[lo:hi], plan, cplx, True, ws)  # conj tables
            A = _spectral_bmm(rho, sd, ws.get("A", (h, 4 * R, 2 * Pc), real))  # (h, 4, R, Pc) conj(A)
            At = ws.get("At", (h, 3, Pc, R), cplx)  # (h, 3, Pc, R) t-major
            torch.mul(A[:, 1:], plan["ctw"], out=At.transpose(-1, -2))
            D = torch.fft.ifft(At, dim=-1, norm="forward")  # (h, 3, Pc, R) conj(D_q)
            T = loops.woodbury(D, plan["snodes_conj"], dtr[lo:hi], e1[lo:hi], e2[lo:hi], ws)  # conj(s Rw D1 D2)
            T = torch.fft.fft(T, dim=-1)  # (h, Pc, R)
            Y = torch.addcmul(A[:, 0], T.transpose(1, 2), plan["tw"], value=-1,
                              out=ws.get("Y", (h, R, Pc), cplx))  # (h, R, Pc) conj(Y)
            _p_stage(Y, plan, 2 * dtr[lo:hi], out=k[lo:hi].view(h, P, R))

        _run_chunks(one, H, chunk, dev)
        ctx.save_for_backward(cp, lam_log, dt, e1, e2, k)
        ctx.L, ctx.chunk, ctx.real = L, chunk, real
        return k

    @staticmethod
    def backward(ctx, g):
        cp, lam_log, dt, e1, e2, k = ctx.saved_tensors
        L, chunk, real = ctx.L, ctx.chunk, ctx.real
        cplx = e1.dtype
        H, M = lam_log.shape
        plan = _plan(L, cplx, g.device)
        P, R, Pc = plan["P"], plan["R"], plan["Pc"]
        dtr = dt.to(real).contiguous()  # (H,)
        g = g.to(real).contiguous()  # (H, L)
        sign = torch.tensor([2.0 * R, -2.0, -2.0, 2.0], dtype=torch.float64, device=g.device)  # (4,)
        scale = sign[:, None] * dt.to(torch.float64)  # (4, H) grad A_q / gA_q (2 R dt, -2 dt, -2 dt, 2 dt)
        cps = (cp * scale[..., None]).transpose(0, 1)  # (H, 4, M) complex128, the factors applied
        cps_c = cps.to(cplx).contiguous()
        mu, feats, _ = _table_inputs(lam_log, plan, cplx, powers=False)  # (H, M), (H, M, 4)
        lam = torch.exp(lam_log)  # (H, M) complex128
        Gq = torch.empty(H, 4, 2, M, dtype=cplx, device=g.device)  # sum_r conj(lam^r) [1, r] gA-scaled grad rho
        g_mu = torch.empty(H, M, 2, dtype=real, device=g.device)  # Re sum conj(phi1) [gS - conj(psi), gDd]
        r2 = torch.empty(H, M, dtype=real, device=g.device)  # Re sum conj(phi2) conj(psi)
        grad_dt = torch.empty_like(dtr)  # (H,)
        loops, ws = _loops(g.device), _Scratch(g.device)

        def one(lo: int, hi: int) -> None:
            h = hi - lo
            gk = torch.linalg.vecdot(g[lo:hi], k[lo:hi]) / dtr[lo:hi]  # (h,) from the 2 dt factor
            gA = ws.get("gA", (h, 4, R, Pc), cplx)  # (h, 4, R, Pc) gA_q = grad A_q / scale_q
            gF = _grid_irfft_adjoint(g[lo:hi].view(h, P, R), plan, gy_out=gA[:, 0], ws=ws)  # (h, Pc, R)
            gD = ws.get("gD", (3, h, Pc, R), cplx)  # (3, h, Pc, R) gD_q = grad D_q / scale_q
            # [conj(s a2), conj(s a1), conj(s^2 a1 a2)] gF and sum Re conj(s a1 a2) gF
            re_sum = loops.grad_spectra(e1[lo:hi], e2[lo:hi], gF, plan["snodes_conj"], dtr[lo:hi], gD, ws)
            grad_dt[lo:hi] = gk - 2 * re_sum
            X = torch.fft.ifft(gD, dim=-1, norm="forward")  # (3, h, Pc, R)
            torch.mul(X.permute(1, 0, 3, 2), plan["ctw"], out=gA[:, 1:])
            gA = torch.view_as_real(gA).view(h, 4 * R, 2 * Pc)  # (h, (q, r), (t, c))
            sd, inv = loops.tables(mu[lo:hi], feats[lo:hi], plan, cplx, False, ws)  # (h, M, 2, Pc), (h, M, Pc)
            rho = loops.rho(lam[lo:hi], cps_c[lo:hi], plan, ws.get("rho", (h, 4, R, M), cplx))  # (h, 4, R, M)
            g_rho = torch.bmm(gA, torch.view_as_real(sd).view(h, 2 * M, 2 * Pc).transpose(1, 2),
                              out=ws.get("g_rho", (h, 4 * R, 2 * M), real))  # (h, 4R, 2M)
            g_rho = torch.view_as_complex(g_rho.view(h, 4, R, M, 2))  # (h, 4, R, M) without the factors
            g_sd = torch.bmm(torch.view_as_real(rho).view(h, 4 * R, 2 * M).transpose(1, 2), gA,
                             out=ws.get("g_sd", (h, 2 * M, 2 * Pc), real))  # (h, 2M, 2Pc)
            g_sd = torch.view_as_complex(g_sd.view(h, M, 2, Pc, 2))  # (h, M, 2, Pc) [gS; gDd]
            loops.table_adjoint(sd, inv, g_sd, plan, g_mu[lo:hi], r2[lo:hi])
            loops.grad_coeffs(g_rho, lam[lo:hi], Gq[lo:hi])  # (h, 4, 2, M)

        _run_chunks(one, H, chunk, g.device)
        # per channel, all channels at once: grad mu = -2 (g_mu[0] + i g_mu[1] + mu r2), mu = lam^R; rho = cp lam^r
        grad_mu = -2 * (torch.view_as_complex(g_mu.to(torch.float64)) + mu * r2.to(torch.float64))  # (H, M)
        grad_cp = (Gq[:, :, 0] * scale.t()[..., None]).transpose(0, 1).to(cp.dtype)  # (4, H, M)
        grad_lam = (R * mu).conj() * grad_mu + torch.linalg.vecdot(cps, Gq[:, :, 1].to(mu.dtype), dim=1)  # (H, M)
        return grad_cp, grad_lam, grad_dt.to(dt.dtype), None, None, None


def _run_chunks(fn, H: int, chunk: int, device) -> None:
    """Call fn(lo, hi) over channel chunks. On CPU with T > 1 torch threads, T Python threads each take whole
    chunks with ONE intra-op thread: coarse-grained parallelism needs no per-op OpenMP barrier, so it keeps both
    cores busy even when other jobs share them (per-op barriers waiting for a descheduled worker made the 2-thread
    run 10-100x slower than 1 thread on this project's loaded 2-core machine). Chunks write disjoint slices."""
    spans = [(lo, min(H, lo + chunk)) for lo in range(0, H, chunk)]
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads <= 1 or len(spans) < 2:
        for lo, hi in spans:
            fn(lo, hi)
        return
    from concurrent.futures import ThreadPoolExecutor

    grad_mode = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()  # Lightning validates under inference_mode: tensors made there
    # are inference tensors, and a worker thread not in that mode may not write into them

    def init() -> None:
        torch.set_num_threads(1)  # OpenMP's thread count is per calling thread: this worker only
        torch.set_grad_enabled(grad_mode)

    def call(lo: int, hi: int) -> None:
        if not inference:  # NB inference_mode(False) would switch grad mode ON: enter it only when needed
            return fn(lo, hi)
        with torch.inference_mode():
            fn(lo, hi)

    try:
        with ThreadPoolExecutor(min(threads, len(spans)), initializer=init) as pool:
            for future in [pool.submit(call, lo, hi) for lo, hi in spans]:
                future.result()
    finally:
        torch.set_num_threads(threads)  # MKL's count is process-wide: restore it


def torch_kernel(v: torch.Tensor, a: torch.Tensor, dt: torch.Tensor, L: int, chunk: int | None = None) -> torch.Tensor:
    """The `torch` backend end to end: k (H, L) with peak extra memory ~ one chunk + two (H, K) spectra.
    `chunk` channels per task (default: 8 on the mixed-radix path at L >= 8,192, else 16; measured: at the LVU
    blocks' H, L = 512, 5,910 / 256, 2,955 chunks of 16 take 0.14 / 0.059 s against 0.17 / 0.071 s for 8, since
    shorter kernels leave per-op dispatch (and the GIL the pool threads share) a larger part of each chunk)."""
    coef, lam_log = _geometric(v, a, L)
    smooth = _split(L)[0] == 1
    chunk = min(chunk or (8 if not smooth and L >= 8192 else 16), v.shape[1])
    if smooth:  # 11-smooth L: time-domain sequences + pocketfft
        return _StructuredKernel.apply(coef, lam_log, dt, L, chunk, v.real.dtype)
    cp = v.to(torch.complex128) / (2 - a.to(torch.complex128))  # (4, H, M) = coef (1 - lam^L)
    return _MixedRadixKernel.apply(cp, lam_log, dt, L, chunk, v.real.dtype)


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


# ------------------------------------------------------------------------------------------------ kernel assembly
def kernel_from_spectrum(D: torch.Tensor, dt: torch.Tensor, L: int) -> torch.Tensor:
    """Woodbury rank-1 correction, bilinear factor, inverse rfft.  D (4, H, K), dt (H,) -> k (H, L).

    With r = dt (1+w) D (the paper's dt-scaled Cauchy sums), k_f = 2/(1+w) [r00 - r01 r10 / (1 + r11)]
    = 2 dt [D00 - s D01 D10 / (1 + s D11)],  s = dt (1+w): no division by (1+w), exact at w = -1.
    Pair order in D: (C~,B), (C~,P), (Q,B), (Q,P).
    """
    nodes = rfft_nodes(L, D.dtype, D.device)  # (K,)
    s = dt[:, None].to(D.dtype) * (1 + nodes)  # (H, K)
    k_f = D[0] - s * D[1] * D[2] / (1 + s * D[3])  # (H, K)
    k_f = 2 * dt[:, None] * k_f  # (H, K)
    return torch.fft.irfft(k_f, n=L)  # (H, L)


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


# "auto" on CPU = torch, by measurement (bench/s4_kernel.py, H = 1024, N = 64, L = 11,820, forward+backward, median
# of 5, on this project's 2-core AMD EPYC, 2 threads, quiet machine):
#   torch (mixed-radix path, grid inverse, no length-L FFT, numba loops): 0.36-0.45 s wall / 0.74-0.79 s CPU
#     (forward 0.16-0.19 s), 187-200 MB extra; in the same session with the torch-op chains instead of the loops:
#     0.50-0.51 s. Before the loops, 0.45-0.52 s over one day (VM drift); before the grid inverse (gather to rfft
#     bins + length-L irfft/rfft, which pocketfft/MKL do by Bluestein at 11,820): 0.65-0.66 s. Without the huge-page
#     hint on k and the saved spectra: +0.04 s.
#   keops (one pass): 9.2 s wall / 18.0 s CPU and 1.06 GB (it keeps the (4, H, K) spectra).
# At L = 2,048 (11-smooth: the time-domain path): torch 0.18-0.22 s, keops 1.6 s, naive 2.4 s (2.2 GB).
# On CUDA "auto" = keops when it compiles.
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

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
      channel), the modes summed by one real GEMM and the R-axis done by length-R FFTs (`_spectral_factors`).
      Tests compare these spectra directly.
  BACKENDS[name](v, a, dt, L) -> k (H, L)   the whole kernel: Cauchy sums, Woodbury rank-1 correction, inverse
      rfft. `naive`/`keops` compose CAUCHY with `kernel_from_spectrum`; `torch` is the fused, channel-chunked
      `_StructuredKernel` with a hand-written backward, so its peak memory is bounded (nothing of size H*N*L);
      on the mixed-radix path it needs only 2 length-L transforms per channel (irfft forward, rfft backward).
`ssm_kernel(v, a, dt, L, backend)` dispatches; `resolve_backend("auto", device)` picks the measured winner.
"""

from __future__ import annotations

import math
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


def _plan(L: int, cplx: torch.dtype, device) -> dict:
    """Constants of the mixed-radix evaluation for length L (cached). The spectra live on a (Pc, R) grid
    (t < Pc = P//2 + 1, u < R) holding X(P u + t); every rfft bin l < K is one grid entry, directly or (for
    t >= Pc) through X(l) = conj X(L - l), L - l = P (R-1-u) + (P - t): `tk`, `uk`, `flip` (K,) say where.
    theta (Pc,) complex128 = exp(-2 pi i t / P); tw (R, Pc) = w^{r t}; nodes (Pc, R) = w^{P u + t}; weight (Pc, R)
    = c_l / L at the grid entries of the bins l < K (c_l = 1 at the DC/Nyquist bins, else 2), 0 elsewhere."""
    key = (L, cplx, str(device))
    if key not in _PLANS:
        P, R = _split(L)
        Pc = P // 2 + 1
        t = torch.arange(Pc, dtype=torch.float64, device=device)  # (Pc,)
        r = torch.arange(R, dtype=torch.float64, device=device)  # (R,)
        theta = torch.polar(torch.ones_like(t), -2 * math.pi * t / P)  # (Pc,)
        ang = lambda x: torch.polar(torch.ones_like(x), -2 * math.pi * torch.remainder(x, L) / L).to(cplx)  # noqa: E731
        l = torch.arange(L // 2 + 1, device=device)  # (K,)
        tl, ul = l % P, l // P
        flip = tl >= Pc
        tk, uk = torch.where(flip, P - tl, tl), torch.where(flip, R - 1 - ul, ul)  # (K,) grid entry of bin l
        weight = torch.full((L // 2 + 1,), 2.0 / L, dtype=torch.float64, device=device)  # (K,)
        weight[0] = 1.0 / L
        if L % 2 == 0:
            weight[-1] = 1.0 / L
        weight_grid = torch.zeros(Pc, R, dtype=torch.float64, device=device)
        weight_grid[tk, uk] = weight
        _PLANS[key] = dict(P=P, R=R, Pc=Pc, theta=theta, tw=ang(r[:, None] * t), nodes=ang(P * r + t[:, None]),
                           weight=weight_grid.to(torch.float32 if cplx == torch.complex64 else torch.float64),
                           tk=tk, uk=uk, flip=flip)
    return _PLANS[key]


def _grid_to_bins(X: torch.Tensor, plan: dict) -> torch.Tensor:
    """(..., Pc, R) grid -> (..., K) rfft bins (a gather; conj for the bins stored as their mirror)."""
    X = X[..., plan["tk"], plan["uk"]]  # (..., K)
    return torch.where(plan["flip"], X.conj(), X)


def _bins_to_grid(Y: torch.Tensor, plan: dict) -> torch.Tensor:
    """Adjoint of `_grid_to_bins`: (..., K) -> (..., Pc, R), zero at the grid entries no bin reads."""
    out = Y.new_zeros(*Y.shape[:-1], plan["Pc"], plan["R"])
    out[..., plan["tk"], plan["uk"]] = torch.where(plan["flip"], Y.conj(), Y)
    return out


def _spectral_factors(cp: torch.Tensor, lam_log: torch.Tensor, L: int, real: torch.dtype):
    """Real GEMM factors of the mixed-radix spectra: rho (h, Q*R, 2M) and sd (h, 2M, 2*Pc), plus the tables.

    Split k = R j + r (j < P, r < R) and l = P u + t. The DFT over j of a geometric sequence is closed-form:
        X_q(l) = sum_r e^{-2 pi i u r / R} w^{r t} A_qr(t),
        A_qr(t) = sum_m G_mt rho_qmr + G~_mt conj(rho_qmr) = sum_m S_mt Re(rho_qmr) + Dd_mt Im(rho_qmr),
        rho = cp lam^r,  G = 1 / (1 - lam^R theta_t),  G~ = 1 / (1 - conj(lam)^R theta_t),
        S = G + G~,  Dd = i (G - G~),  cp = v / (2 - a) (= coef (1 - lam^L)).
    A_qr(t) is Hermitian in t (a DFT over j of the real x_{Rj+r}), so only t < Pc = P//2 + 1 is formed: one real
    GEMM [Re rho, Im rho] (Q R x 2M) @ [S; Dd] (2M x Pc complex as 2 Pc interleaved reals) per channel, 2 L M
    multiply-adds per pair (as many as the time-domain GEMM), whose output is already complex (Q, R, Pc); then a
    twiddle, length-R FFTs along r. The generic length-P FFT pass (P = 197 at L = 11,820) is replaced by the
    pair-independent (M, Pc) tables S, Dd (complex128: 1 - lam^R theta cancels when |lam^R| ~ 1).
    """
    Q, h, M = cp.shape
    cplx = torch.complex64 if real == torch.float32 else torch.complex128
    plan = _plan(L, cplx, cp.device)
    R, Pc, theta = plan["R"], plan["Pc"], plan["theta"]
    mu = torch.exp(R * lam_log)  # (h, M) lam^R in complex128
    G = torch.reciprocal((1 - mu[..., None] * theta).to(cplx))  # (h, M, Pc) the difference in complex128
    Gt = torch.reciprocal((1 - mu.conj()[..., None] * theta).to(cplx))  # (h, M, Pc)
    sd = torch.stack([G + Gt, (G - Gt) * 1j], dim=2)  # (h, M, 2, Pc) [S; Dd]
    sd = torch.view_as_real(sd).reshape(h, 2 * M, 2 * Pc)  # (h, (m, s), (t, c))
    p_in = _power_table(lam_log[:, None, :], torch.arange(R, dtype=torch.float64, device=cp.device)[:, None], cplx)
    rho = cp.to(cplx).transpose(0, 1)[:, :, None, :] * p_in[:, None]  # (h, Q, R, M)
    rho = torch.view_as_real(rho).reshape(h, Q * R, 2 * M)  # (h, (q, r), (m, s))
    return rho, sd, (mu, G, Gt, p_in)


def _transpose(x: torch.Tensor) -> torch.Tensor:
    """x (..., a, b) complex -> contiguous (..., b, a). complex64 moves as 8-byte integers (torch's fast copy path,
    several times a complex copy); without autograd only (the backward and no-grad forwards)."""
    x = x.transpose(-1, -2)
    if x.dtype == torch.complex64 and not (torch.is_grad_enabled() and x.requires_grad):
        return x.view(torch.int64).contiguous().view(torch.complex64)
    return x.contiguous()


def _spectral(rho: torch.Tensor, sd: torch.Tensor, Q: int, L: int) -> torch.Tensor:
    """The spectra on the (Pc, R) grid of `_plan`: (h, Q, Pc, R), from the factors of `_spectral_factors`.
    `_grid_to_bins(D, plan)` gives the (h, Q, K) rfft bins; plain autograd works through both."""
    h = rho.shape[0]
    plan = _plan(L, torch.complex64 if rho.dtype == torch.float32 else torch.complex128, rho.device)
    A = torch.view_as_complex(torch.bmm(rho, sd).reshape(h, Q, plan["R"], plan["Pc"], 2))  # (h, Q, R, Pc)
    A = _transpose(A * plan["tw"])  # (h, Q, Pc, R): the FFT axis innermost
    return torch.fft.fft(A, dim=-1)  # (h, Q, Pc, R): X_q(P u + t) at [q, t, u]


def _spectral_grads(cp, lam_log, gD, L: int, real: torch.dtype):
    """Adjoint of `_spectral_factors` + `_spectral`: grad cp (Q, h, M), grad log lam (h, M) from grad D on the grid
    (h, Q, Pc, R) (torch's conjugate-Wirtinger convention; for holomorphic z = f(x), grad x = conj(f'(x)) grad z)."""
    Q, h, M = cp.shape
    cplx = gD.dtype
    plan = _plan(L, cplx, gD.device)
    R, Pc, theta = plan["R"], plan["Pc"], plan["theta"]
    gA = _transpose(torch.fft.ifft(gD, dim=-1, norm="forward")).mul_(plan["tw"].conj())  # (h, Q, R, Pc)
    gA = torch.view_as_real(gA).reshape(h, Q * R, 2 * Pc)  # (h, (q, r), (t, c)) a view
    rho, sd, (mu, G, Gt, p_in) = _spectral_factors(cp, lam_log, L, real)
    g_rho = torch.view_as_complex(torch.bmm(gA, sd.transpose(1, 2)).reshape(h, Q, R, M, 2))  # (h, Q, R, M)
    g_sd = torch.view_as_complex(torch.bmm(rho.transpose(1, 2), gA).reshape(h, M, 2, Pc, 2))  # (h, M, 2, Pc)
    gS, gDd = g_sd[:, :, 0], g_sd[:, :, 1]  # (h, M, Pc)
    gG, gGt = gS - 1j * gDd, gS + 1j * gDd  # S = G + G~, Dd = i (G - G~)
    th = theta.to(cplx)  # (Pc,)  dG/dmu = theta G^2, dG~/dconj(mu) = theta G~^2; vecdot(x, y) = sum conj(x) y
    g_mu = torch.linalg.vecdot(G * G * th, gG) + torch.linalg.vecdot(Gt * Gt * th, gGt).conj()  # (h, M)
    grad_cp = (p_in.conj()[:, None] * g_rho).sum(2).transpose(0, 1)  # (Q, h, M)
    g_pow = (cp.to(cplx).conj().transpose(0, 1)[:, :, None, :] * g_rho).sum(1)  # (h, R, M)
    r = torch.arange(R, dtype=real, device=gD.device)[:, None]  # (R, 1)
    grad_lam = (R * mu).conj() * g_mu.to(mu.dtype) + (r * p_in.conj() * g_pow).sum(1).to(mu.dtype)  # (h, M)
    return grad_cp.to(cp.dtype), grad_lam


def cauchy_torch(v: torch.Tensor, a: torch.Tensor, L: int) -> torch.Tensor:
    """Same values as `cauchy_naive` at the rfft nodes of length L, without any (H, M, K) tensor: for 11-smooth L
    one small real GEMM + one rfft, otherwise the mixed-radix evaluation of `_spectral_factors`.

    Returns the full (Q, H, K) spectrum with plain autograd (for comparisons; `ssm_kernel` uses the fused,
    memory-bounded `_StructuredKernel` instead).
    """
    if _split(L)[0] > 1:
        cp = v.to(torch.complex128) / (2 - a.to(torch.complex128))  # (Q, H, M)
        lam_log = torch.log((2 + a.to(torch.complex128)) / (2 - a.to(torch.complex128)))  # (H, M)
        left, right, _ = _spectral_factors(cp, lam_log, L, v.real.dtype)
        D = _spectral(left, right, v.shape[0], L)  # (H, Q, Pc, R)
        return _grid_to_bins(D, _plan(L, v.dtype, v.device)).transpose(0, 1)  # (Q, H, K)
    coef, lam_log = _geometric(v, a, L)
    left, right, _, _ = _factors(coef, lam_log, L, v.real.dtype)
    x = _sequence(left, right, v.shape[0], L)  # (H, Q, L)
    return torch.fft.rfft(x, n=L).transpose(0, 1)  # (Q, H, K)


class _StructuredKernel(torch.autograd.Function):
    """k = Woodbury-corrected S4 kernel from the geometric form, chunked over channels, hand-written backward.

        k = 2 dt irfft(D0 - T),  T = s D1 D2 R,  R = 1 / (1 + s D3),  s = dt (1 + w),
    with the four pair spectra D_q at the K rfft nodes from one of two exact evaluations of the same sums:
      * 11-smooth L (`cp is None`, coef (4, H, M)): x_q by the time-domain GEMM, D_q = rfft(x_q) for q = 1..3 and
        x_0 used directly (irfft(D_0) = x_0), so k = 2 dt (x_0 - irfft(T)) (pocketfft is fast at such L);
      * L with a prime factor > 11 (`cp` (4, H, M), 11,820 = 197 * 60): `_spectral` on the (Pc, R) grid of `_plan`
        (closed-form DFT over the 197-axis, one real GEMM, length-60 FFTs), the Woodbury algebra on that grid, one
        gather to the rfft bins and one irfft.
    Saved for backward: the tiny coef/cp/log(lam)/dt, a1 = R D1 and a2 = R D2 (two (H, K)-sized complex spectra), k.
    Backward per chunk, with Y = rfft(-2 dt g) and W = c_l / L (c_l = 1 at the DC/Nyquist bins, else 2):
        grad T = W Y,  grad D0 = -W Y,  grad D1 = conj(s a2) W Y,  grad D2 = conj(s a1) W Y,
        grad D3 = -conj(s^2 a1 a2) W Y,  grad dt = sum g k / dt + sum_l Re(conj((1+w) a1 a2) W_l Y_l);
    then the adjoint of the D evaluation: `_spectral_grads` (inverse length-60 FFTs, two GEMMs, the tables'
    closed-form adjoint), or 3 irfft + the time-domain GEMM adjoints (grad x_0 = 2 dt g).
    Length-L FFTs per chunk: mixed path 1 irfft forward + 1 rfft backward; smooth path 3+1 forward, 1+3 backward.
    Nothing of size H*N*L is formed.
    """

    @staticmethod
    def forward(ctx, coef, cp, lam_log, dt, L: int, chunk: int, real: torch.dtype):
        H, dev = lam_log.shape[0], lam_log.device
        cplx = torch.complex64 if real == torch.float32 else torch.complex128
        mixed = cp is not None
        plan = _plan(L, cplx, dev) if mixed else None
        nodes = plan["nodes"] if mixed else rfft_nodes(L, cplx, dev)  # (Pc, R) grid or (K,) bins
        k = torch.empty(H, L, dtype=real, device=dev)  # (H, L)
        a1 = torch.empty(H, *nodes.shape, dtype=cplx, device=dev)  # (H, Pc, R) or (H, K)
        a2 = torch.empty_like(a1)
        dtr = dt.detach().to(real)  # (H,)

        def one(lo: int, hi: int) -> None:
            if mixed:  # cp (4, H, M): the four spectra on the (Pc, R) grid
                D = _spectral(*_spectral_factors(cp[:, lo:hi], lam_log[lo:hi], L, real)[:2], 4, L)  # (h,4,Pc,R)
                D0, D1, D2, D3 = D.unbind(1)  # (h, Pc, R)
            else:  # coef (4, H, M): the four sequences in the time domain; irfft(rfft(x_0)) = x_0
                left, right, _, _ = _factors(coef[:, lo:hi], lam_log[lo:hi], L, real)
                x = _sequence(left, right, 4, L)  # (h, 4, L)
                D = torch.fft.rfft(x[:, 1:], n=L)  # (h, 3, K)
                D1, D2, D3 = D.unbind(1)  # (h, K)
            dt_c = dtr[lo:hi].reshape(-1, *([1] * nodes.dim()))  # (h, 1[, 1])
            s = dt_c * (1 + nodes)  # (h, ...)
            Rw = torch.reciprocal(1 + s * D3)  # (h, ...)
            torch.mul(Rw, D1, out=a1[lo:hi])
            torch.mul(Rw, D2, out=a2[lo:hi])
            T = s * a1[lo:hi] * D2  # (h, ...)
            if mixed:
                k[lo:hi] = torch.fft.irfft(_grid_to_bins(D0 - T, plan), n=L).mul_(2 * dtr[lo:hi, None])  # (h, L)
            else:
                k[lo:hi] = 2 * dtr[lo:hi, None] * (x[:, 0] - torch.fft.irfft(T, n=L))  # (h, L)

        _run_chunks(one, H, chunk, dev)
        ctx.mixed = mixed
        ctx.save_for_backward(cp[:0] if mixed else coef, cp if mixed else coef[:0], lam_log, dt, a1, a2, k)
        ctx.L, ctx.chunk, ctx.real = L, chunk, real
        return k

    @staticmethod
    def backward(ctx, g):
        coef, cp, lam_log, dt, a1, a2, k = ctx.saved_tensors
        L, chunk, real, mixed = ctx.L, ctx.chunk, ctx.real, ctx.mixed
        Q, H = coef.shape[0], lam_log.shape[0]
        b, J = _blocks(L)
        if mixed:
            plan = _plan(L, a1.dtype, g.device)
            nodes, weight = plan["nodes"], plan["weight"]  # (Pc, R) each
        else:
            nodes = rfft_nodes(L, a1.dtype, g.device)  # (K,)
            weight = torch.full((L // 2 + 1,), 2.0 / L, dtype=real, device=g.device)  # (K,) c_l / L
            weight[0] = 1.0 / L
            if L % 2 == 0:
                weight[-1] = 1.0 / L
        dtr = dt.to(real)  # (H,)
        g = g.to(real)  # (H, L)
        grad_coef = torch.empty_like(coef)  # (4, H, M) smooth path, (0, H, M) mixed
        grad_cp = torch.empty_like(cp) if mixed else None  # (4, H, M)
        grad_lam = torch.empty_like(lam_log)  # (H, M)
        grad_dt = torch.empty_like(dtr)  # (H,)

        def one(lo: int, hi: int) -> None:
            h = hi - lo
            dt_c = dtr[lo:hi].reshape(-1, *([1] * nodes.dim()))  # (h, 1[, 1])
            s = dt_c * (1 + nodes)  # (h, ...)
            p1, p2 = a1[lo:hi], a2[lo:hi]  # (h, ...)
            gdt = torch.linalg.vecdot(g[lo:hi], k[lo:hi]) / dtr[lo:hi]  # (h,) from the 2 dt factor
            Y = torch.fft.rfft(g[lo:hi], n=L).mul_(-2 * dtr[lo:hi, None])  # (h, K) spectrum of grad y = -2 dt g
            if mixed:
                Y = _bins_to_grid(Y, plan)  # (h, Pc, R)
            WY = Y.mul_(weight)  # (h, ...) grad T
            sp12 = s * p1 * p2  # (h, ...) s a1 a2: dT/ddt = (1 + w) a1 a2 = sp12 / dt
            grad_dt[lo:hi] = gdt + torch.linalg.vecdot(sp12.flatten(1), WY.flatten(1)).real / dtr[lo:hi]
            cY = s.conj_physical().mul_(WY)  # (h, ...) conj(s) grad T
            if mixed:  # grad D_0 = -grad T
                gD = torch.empty(h, 4, plan["Pc"], plan["R"], dtype=a1.dtype, device=g.device)  # (h, 4, Pc, R)
                torch.neg(WY, out=gD[:, 0])
                torch.mul(p2.conj(), cY, out=gD[:, 1])
                torch.mul(p1.conj(), cY, out=gD[:, 2])
                torch.mul(sp12.conj_physical_().neg_(), cY, out=gD[:, 3])
                grad_cp[:, lo:hi], grad_lam[lo:hi] = _spectral_grads(cp[:, lo:hi], lam_log[lo:hi], gD, L, real)
                return
            # smooth path: 2 grad x_q = irfft(2 grad D_q / W) (the factor 2 of x = 2 left @ right), 2 grad x_0 = 4 dt g
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
        return (None if mixed else grad_coef), grad_cp, grad_lam, grad_dt.to(dt.dtype), None, None, None


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
    `chunk` channels per task (default: 8 on the mixed-radix path, 16 on the smooth path; measured)."""
    coef, lam_log = _geometric(v, a, L)
    smooth = _split(L)[0] == 1
    chunk = min(chunk or (16 if smooth else 8), v.shape[1])
    if smooth:  # 11-smooth L: time-domain sequences + pocketfft
        return _StructuredKernel.apply(coef, None, lam_log, dt, L, chunk, v.real.dtype)
    cp = v.to(torch.complex128) / (2 - a.to(torch.complex128))  # (4, H, M) = coef (1 - lam^L)
    return _StructuredKernel.apply(None, cp, lam_log, dt, L, chunk, v.real.dtype)


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
# of 3, on this project's 2-core AMD EPYC while another job kept 2-4 more threads busy, so wall ~ CPU time):
#   torch (mixed-radix path): 1.45 s wall / 1.35 s CPU, 185 MB extra (full bench run, load 2.0); run alternately with
#     the previous time-domain + length-L rfft path in separate processes: 1.30-1.39 s vs 1.71-1.77 s (2 threads,
#     load 3.9), 1.19 s vs 1.57-1.61 s (1 thread), 174-185 MB vs 198-206 MB; 0.77-1.38 s vs 0.89-1.93 s at load 1.9-2.4.
#   keops (one pass): 36.4 s wall / 28.1 s CPU and 1.06 GB (it keeps the (4, H, K) spectra).
# At L = 2,048 (11-smooth: the time-domain path, unchanged): torch 0.58 s, keops 10.9 s, naive 7.0 s (2.2 GB).
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

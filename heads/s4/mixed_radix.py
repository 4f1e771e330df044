"""The `torch` S4 kernel when L has a prime factor > 11 (LVU: 11,820 = 197 * 60, where pocketfft/MKL need a slow
generic 197-point pass): the DFT is split L = P * R, its P-axis taken in closed form (a geometric series: an
(M, P/2) reciprocal table per channel), the modes summed by one real GEMM and the R-axis done by length-R FFTs
(`_spectral`, `mixed_radix_cauchy`). The fused kernel (`mixed_radix_kernel`, `_MixedRadixKernel`) stays on the
(P/2, R) grid of the split: its inverse rfft is length-R FFTs + one real GEMM against a cached (P, P+1) inverse-DFT
matrix (`_grid_irfft`), its backward the adjoint, so it does no length-L transform at all. The elementwise chains
between the GEMMs and FFTs run as torch ops (`_TorchLoops`) or compiled CPU loops (`heads.s4.numba_loops`).
Notation as in `heads.s4.reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from heads.s4.cpu import Scratch, empty_huge, run_chunks
from heads.s4.resonant import near_bounds, pair_list, terms_for

_SMOOTH = 11  # pocketfft has fast radix passes up to 11; a larger prime factor p costs a generic O(p) pass


def split_length(L: int) -> tuple[int, int]:
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


@dataclass(frozen=True)
class MixedRadixPlan:
    """Constants of the mixed-radix evaluation for one length L = P * R, dtype and device (`_plan`, cached).

    Spectra live on a (Pc, R) grid [t, u] holding X(P u + t) for t < Pc = P//2 + 1 (P is odd), u < R: every rfft
    bin l < K is one grid entry, directly or (for t >= Pc) through X(l) = conj X(L - l), L - l = P (R-1-u) + (P - t):
    `tk`, `uk`, `flip` (K,) say where.
      theta, theta_conj (Pc,) complex128: theta_t = exp(-2 pi i t / P) and its conjugate;
      basis, basis_conj (4, 6 Pc) float64: [1, x, y, x^2 + y^2] @ basis = [den, S num, Dd num] (3 x Pc complex)
          of `_tables` at mu = x + i y (conj: theta -> conj theta);
      th12 (2, Pc) = [theta, theta^2];  tw (R, Pc) = w^{r t} and ctw = conj(tw), w = exp(-2 pi i / L);
      nodes (Pc, R) complex128 = w^{P u + t} (the grid's nodes);  snodes_conj (Pc, R) = conj(1 + nodes);
      cmat (P, 2 Pc) real: x_{R j + r} = sum_(t, c) cmat[j, (t, c)] [Re Y; Im Y](t, r), the inverse length-P DFT
          of a half spectrum Hermitian in t, entries (c_t / L) (cos, -sin)(2 pi t j / P), c_0 = 1, else 2;
      cmat_conj_t (2 Pc, P): the transpose of the same acting on conj(Y) (sin column signs flipped).
    """

    P: int
    R: int
    Pc: int
    theta: torch.Tensor
    theta_conj: torch.Tensor
    basis: torch.Tensor
    basis_conj: torch.Tensor
    th12: torch.Tensor
    tw: torch.Tensor
    ctw: torch.Tensor
    nodes: torch.Tensor
    snodes_conj: torch.Tensor
    cmat: torch.Tensor
    cmat_conj_t: torch.Tensor
    tk: torch.Tensor
    uk: torch.Tensor
    flip: torch.Tensor


_PLANS: dict[tuple, MixedRadixPlan] = {}


def _plan(L: int, cplx: torch.dtype, device) -> MixedRadixPlan:
    """The `MixedRadixPlan` of length L in precision `cplx` on `device` (built once per process)."""
    key = (L, cplx, str(device))
    if key not in _PLANS:
        P, R = split_length(L)
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
        _PLANS[key] = MixedRadixPlan(
            P=P, R=R, Pc=Pc, theta=theta, theta_conj=theta.conj_physical(), basis=basis(theta),
            basis_conj=basis(theta.conj()),
            th12=torch.stack([theta, theta * theta]).to(cplx), tw=tw.to(cplx), ctw=tw.conj_physical().to(cplx),
            nodes=ang(P * r + t[:, None]), snodes_conj=(1 + ang(P * r + t[:, None])).conj_physical().to(cplx),
            cmat=cmat.to(real), cmat_conj_t=cmat_conj.t().contiguous().to(real),
            tk=torch.where(flip, P - tl, tl), uk=torch.where(flip, R - 1 - ul, ul), flip=flip)
    return _PLANS[key]


def _grid_to_bins(X: torch.Tensor, plan: MixedRadixPlan) -> torch.Tensor:
    """(..., Pc, R) grid -> (..., K) rfft bins (a gather; conj for the bins stored as their mirror)."""
    X = X[..., plan.tk, plan.uk]  # (..., K)
    return torch.where(plan.flip, X.conj(), X)


def _table_inputs(lam_log: torch.Tensor, plan: MixedRadixPlan, cplx: torch.dtype, powers: bool = True):
    """The channel-wise inputs of `_tables` (the small ones can be formed once for all channels of a call):
    mu = lam^R (h, M) complex128, feats (h, M, 4) float64 = [1, x, y, x^2 + y^2] at mu = x + i y, and (powers=True)
    p = lam^r (h, R, M) for r < R (`_powers`)."""
    mu = torch.exp(plan.R * lam_log)  # (h, M)
    xy = torch.view_as_real(mu)  # (h, M, 2)
    feats = torch.cat([torch.ones_like(xy[..., :1]), xy, (xy * xy).sum(-1, keepdim=True)], -1)  # (h, M, 4)
    return mu, feats, _powers(lam_log, plan, cplx) if powers else None


def _powers(lam_log: torch.Tensor, plan: MixedRadixPlan, cplx: torch.dtype) -> torch.Tensor:
    """p = lam^r (h, R, M) for r < R, in `cplx` (`_powers_of` exp(log lam))."""
    return _powers_of(torch.exp(lam_log), plan.R).to(cplx)


def _powers_of(lam: torch.Tensor, R: int) -> torch.Tensor:
    """lam^r (h, R, M) complex128 for r < R from lam (h, M) complex128: a cumulative product."""
    h, M = lam.shape
    lam = lam[:, None]  # (h, 1, M)
    return torch.cumprod(torch.cat([torch.ones_like(lam), lam.expand(h, R - 1, M)], 1), 1)


def _tables(inputs: tuple, plan: MixedRadixPlan, cplx: torch.dtype, conj: bool = False, ws: Scratch | None = None):
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
    Pc = plan.Pc
    basis = plan.basis_conj if conj else plan.basis  # (4, 6 Pc)
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


def _spectral(cp: torch.Tensor, lam_log: torch.Tensor, plan: MixedRadixPlan, cplx: torch.dtype) -> torch.Tensor:
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
    return torch.fft.fft((A * plan.tw).transpose(-1, -2), dim=-1)  # (h, Q, Pc, R)


def _grid_irfft(Fc: torch.Tensor, plan: MixedRadixPlan, scale: torch.Tensor | None = None,
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
    Y = (Yt.transpose(1, 2) * plan.tw).contiguous()  # (h, R, Pc) conj(Y), r-major for the GEMM
    return _p_stage(Y, plan, scale, out)


def _p_stage(Yc: torch.Tensor, plan: MixedRadixPlan, scale: torch.Tensor | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """The length-P stage of `_grid_irfft`: x (h, P, R) = cmat_conj @ [Re; Im] Yc, Yc = conj(Y) (h, R, Pc)."""
    h, R, Pc = Yc.shape
    xt = torch.mm(torch.view_as_real(Yc).view(h * R, 2 * Pc), plan.cmat_conj_t).view(h, R, -1)  # (h, R, P)
    if out is None:
        out = torch.empty(h, xt.shape[-1], R, dtype=xt.dtype, device=xt.device)
    if scale is None:
        return out.copy_(xt.transpose(1, 2))
    return torch.mul(xt.transpose(1, 2), scale[:, None, None], out=out)  # (h, P, R)


def _grid_irfft_adjoint(g: torch.Tensor, plan: MixedRadixPlan, gy_out: torch.Tensor | None = None,
                        ws: Scratch | None = None) -> torch.Tensor:
    """Adjoint of x = irfft(X) through `_grid_irfft`: grad X (h, Pc, R) on the grid from g = grad x (h, P, R)
    (torch's convention for complex gradients: grad z = dl/dRe z + i dl/dIm z):
        grad X(P u + t) = sum_r e^{-2 pi i u r / R} w^{r t} gY(r, t),  gY = [cmat^T g] as complex (h, R, Pc)
    (a GEMM, a twiddle, length-R FFTs). gY is also copied into `gy_out` if given; `ws`: scratch buffers."""
    h, P, R = g.shape
    Pc = plan.Pc
    gY = torch.view_as_complex(torch.matmul(g.transpose(1, 2), plan.cmat).view(h, R, Pc, 2))  # (h, R, Pc)
    if gy_out is not None:
        gy_out.copy_(gY)
    cplx = gY.dtype
    gYt = torch.empty(h, Pc, R, dtype=cplx, device=g.device) if ws is None else ws.get("gYt", (h, Pc, R), cplx)
    torch.mul(gY, plan.tw, out=gYt.transpose(1, 2))  # (h, Pc, R) t-major
    return torch.fft.fft(gYt, dim=-1)  # (h, Pc, R)


def mixed_radix_cauchy(v: torch.Tensor, a: torch.Tensor, L: int) -> torch.Tensor:
    """`cauchy_naive`'s values at the rfft nodes of length L with plain autograd, by `_spectral`.  # (Q, H, K)"""
    a64 = a.to(torch.complex128)
    cp = v.to(torch.complex128) / (2 - a64)  # (Q, H, M)
    lam_log = torch.log((2 + a64) / (2 - a64))  # (H, M)
    plan = _plan(L, v.dtype, v.device)
    D = _spectral(cp.transpose(0, 1), lam_log, plan, v.dtype)  # (H, Q, Pc, R)
    return _grid_to_bins(D, plan).transpose(0, 1)  # (Q, H, K)


def mixed_radix_kernel(v: torch.Tensor, a: torch.Tensor, dt: torch.Tensor, L: int, chunk: int) -> torch.Tensor:
    """The whole kernel k (H, L), `chunk` channels per task (`_MixedRadixKernel`)."""
    a64 = a.to(torch.complex128)
    lam_log = torch.log((2 + a64) / (2 - a64))  # (H, M)
    cp = v.to(torch.complex128) / (2 - a64)  # (4, H, M) = coef (1 - lam^L)
    return _MixedRadixKernel.apply(cp, lam_log, dt, L, chunk, v.real.dtype)


class _TorchLoops:
    """The elementwise chains of `_MixedRadixKernel` in torch ops: the path on GPUs (and on CPUs without numba) and
    the reference of their compiled CPU twins, `numba_loops.NumbaLoops` (same signatures, see there). `ws` is the
    call's `Scratch`."""

    @staticmethod
    def rho(lam: torch.Tensor, cp: torch.Tensor, plan: MixedRadixPlan, out: torch.Tensor) -> torch.Tensor:
        """out (h, Q, R, M) = cp (h, Q, M) * lam^r (lam (h, M) complex128), r < R."""
        p = _powers_of(lam, plan.R).to(out.dtype)  # (h, R, M)
        return torch.mul(cp.to(out.dtype)[:, :, None, :], p[:, None], out=out)

    @staticmethod
    def tables(mu: torch.Tensor, feats: torch.Tensor, plan: MixedRadixPlan, cplx: torch.dtype, conj: bool, ws,
               sel: torch.Tensor):
        """sd (h, M, 2, Pc) and inv (h, M, Pc) of `_tables`, in `ws` buffers, zero where `sel` (h, M, Pc) marks an
        exact pair (`heads.s4.resonant`)."""
        _, sd, inv, _ = _tables((mu, feats, None), plan, cplx, conj, ws)
        inv.masked_fill_(sel, 0)
        sd.masked_fill_(sel[:, :, None], 0)
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
    def table_adjoint(sd: torch.Tensor, inv: torch.Tensor, g_sd: torch.Tensor, plan: MixedRadixPlan, g_mu: torch.Tensor,
                      r2: torch.Tensor) -> None:
        """With psib = conj(gS) S + conj(gDd) Dd conjugated (vecdot(x, y) = sum conj(x) y), phi = inv [theta,
        theta^2]: g_mu (h, M, 2) = Re sum_t conj(phi1) [gS - psib, gDd], r2 (h, M) = Re sum_t conj(phi2) psib.
        Overwrites g_sd."""
        psib = torch.linalg.vecdot(sd, g_sd, dim=2)  # (h, M, Pc)
        g_sd[:, :, 0].sub_(psib)
        phi = inv[:, :, None] * plan.th12  # (h, M, 2, Pc) [phi1, phi2]
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
    from heads.s4 import numba_loops

    return numba_loops.NumbaLoops if numba_loops.used_on(device) else _TorchLoops


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
    (`numba_loops`), `_TorchLoops` elsewhere.
    Table entries next to a pole (|1 - mu theta_t| below `resonant.near_bounds`, `sel`) are zero: their whole column
    of terms, cp / (1 - lam w^l) + conj(cp) / (1 - conj(lam) w^l) at l = P u + t, is added to conj(D_q) (and
    subtracted from conj(T) for q = 0) in float64 by `heads.s4.resonant`, which also returns their gradients (float32
    would lose |G| times its precision in the DFT over r that has to cancel them).
    """

    @staticmethod
    def forward(ctx, cp, lam_log, dt, L: int, chunk: int, real: torch.dtype):
        H, M = lam_log.shape
        dev = lam_log.device
        cplx = torch.complex64 if real == torch.float32 else torch.complex128
        plan = _plan(L, cplx, dev)
        P, R, Pc = plan.P, plan.R, plan.Pc
        k = empty_huge(H, L, dtype=real, device=dev)  # (H, L)
        e1 = empty_huge(H, Pc, R, dtype=cplx, device=dev)  # (H, Pc, R) conj(a1)
        e2 = empty_huge(H, Pc, R, dtype=cplx, device=dev)  # (H, Pc, R) conj(s a2)
        dtr = dt.detach().to(real).contiguous()  # (H,)
        cph = cp.transpose(0, 1) * torch.tensor([R, 1, 1, 1], dtype=cp.dtype, device=dev)[:, None]  # (H, 4, M)
        cph = cph.to(cplx).contiguous()
        cp0, cp123 = (x.contiguous() for x in cp.transpose(0, 1).split([1, 3], 1))  # (H, 1, M), (H, 3, M) complex128
        mu, feats, _ = _table_inputs(lam_log, plan, cplx, powers=False)  # (H, M), (H, M, 4)
        lam = torch.exp(lam_log)  # (H, M) complex128
        loops, terms, ws = _loops(dev), terms_for(dev), Scratch(dev)
        sel = torch.empty(H, M, Pc, dtype=torch.bool, device=dev)  # the exact pairs (`heads.s4.resonant`)
        pairs, first = pair_list(terms.near(mu, plan.theta, near_bounds(lam), sel))  # (n_p, 3), (H + 1,)
        g12 = torch.empty(len(pairs), 2, R, dtype=torch.complex128, device=dev)  # their reciprocals, kept for backward
        terms.columns(lam, plan.nodes, pairs, 0, g12)

        def one(lo: int, hi: int) -> None:
            h = hi - lo
            rho = loops.rho(lam[lo:hi], cph[lo:hi], plan, ws.get("rho", (h, 4, R, M), cplx))  # (h, 4, R, M)
            sd, _ = loops.tables(mu[lo:hi], feats[lo:hi], plan, cplx, True, ws, sel[lo:hi])  # conj tables
            A = _spectral_bmm(rho, sd, ws.get("A", (h, 4 * R, 2 * Pc), real))  # (h, 4, R, Pc) conj(A)
            At = ws.get("At", (h, 3, Pc, R), cplx)  # (h, 3, Pc, R) t-major
            torch.mul(A[:, 1:], plan.ctw, out=At.transpose(-1, -2))
            D = torch.fft.ifft(At, dim=-1, norm="forward")  # (h, 3, Pc, R) conj(D_q)
            pr, g12c = pairs[first[lo]:first[hi]], g12[first[lo]:first[hi]]  # this chunk's exact pairs
            terms.add(cp123[lo:hi], g12c, pr, lo, D, True, 1.0)
            T = loops.woodbury(D, plan.snodes_conj, dtr[lo:hi], e1[lo:hi], e2[lo:hi], ws)  # conj(s Rw D1 D2)
            terms.add(cp0[lo:hi], g12c, pr, lo, T[:, None], True, -1.0)  # conj(T - D0)
            T = torch.fft.fft(T, dim=-1)  # (h, Pc, R)
            Y = torch.addcmul(A[:, 0], T.transpose(1, 2), plan.tw, value=-1,
                              out=ws.get("Y", (h, R, Pc), cplx))  # (h, R, Pc) conj(Y)
            _p_stage(Y, plan, 2 * dtr[lo:hi], out=k[lo:hi].view(h, P, R))

        run_chunks(one, H, chunk, dev)
        ctx.save_for_backward(cp, lam_log, dt, e1, e2, k, sel, pairs, g12)
        ctx.L, ctx.chunk, ctx.real, ctx.first = L, chunk, real, first
        return k

    @staticmethod
    def backward(ctx, g):
        cp, lam_log, dt, e1, e2, k, sel, pairs, g12 = ctx.saved_tensors
        L, chunk, real, first = ctx.L, ctx.chunk, ctx.real, ctx.first
        cplx = e1.dtype
        H, M = lam_log.shape
        plan = _plan(L, cplx, g.device)
        P, R, Pc = plan.P, plan.R, plan.Pc
        dtr = dt.to(real).contiguous()  # (H,)
        g = g.to(real).contiguous()  # (H, L)
        sign = torch.tensor([2.0 * R, -2.0, -2.0, 2.0], dtype=torch.float64, device=g.device)  # (4,)
        scale = sign[:, None] * dt.to(torch.float64)  # (4, H) grad A_q / gA_q (2 R dt, -2 dt, -2 dt, 2 dt)
        cps = (cp * scale[..., None]).transpose(0, 1)  # (H, 4, M) complex128, the factors applied
        cps_c = cps.to(cplx).contiguous()
        cpt = cp.transpose(0, 1).contiguous()  # (H, 4, M) complex128
        exact_scale = (torch.tensor([2.0, -2.0, -2.0, 2.0], dtype=torch.float64, device=g.device)
                       * dt.to(torch.float64)[:, None]).contiguous()  # (H, 4) grad D_q / [gF, gD_q]
        g_cp_exact = torch.zeros(H, 4, M, dtype=torch.complex128, device=g.device)
        g_lam_exact = torch.zeros(H, M, dtype=torch.complex128, device=g.device)
        mu, feats, _ = _table_inputs(lam_log, plan, cplx, powers=False)  # (H, M), (H, M, 4)
        lam = torch.exp(lam_log)  # (H, M) complex128
        Gq = torch.empty(H, 4, 2, M, dtype=cplx, device=g.device)  # sum_r conj(lam^r) [1, r] gA-scaled grad rho
        g_mu = torch.empty(H, M, 2, dtype=real, device=g.device)  # Re sum conj(phi1) [gS - conj(psi), gDd]
        r2 = torch.empty(H, M, dtype=real, device=g.device)  # Re sum conj(phi2) conj(psi)
        grad_dt = torch.empty_like(dtr)  # (H,)
        loops, terms, ws = _loops(g.device), terms_for(g.device), Scratch(g.device)

        def one(lo: int, hi: int) -> None:
            h = hi - lo
            gk = torch.linalg.vecdot(g[lo:hi], k[lo:hi]) / dtr[lo:hi]  # (h,) from the 2 dt factor
            gA = ws.get("gA", (h, 4, R, Pc), cplx)  # (h, 4, R, Pc) gA_q = grad A_q / scale_q
            gF = _grid_irfft_adjoint(g[lo:hi].view(h, P, R), plan, gy_out=gA[:, 0], ws=ws)  # (h, Pc, R)
            gD = ws.get("gD", (3, h, Pc, R), cplx)  # (3, h, Pc, R) gD_q = grad D_q / scale_q
            # [conj(s a2), conj(s a1), conj(s^2 a1 a2)] gF and sum Re conj(s a1 a2) gF
            re_sum = loops.grad_spectra(e1[lo:hi], e2[lo:hi], gF, plan.snodes_conj, dtr[lo:hi], gD, ws)
            grad_dt[lo:hi] = gk - 2 * re_sum
            terms.grads(cpt[lo:hi], lam[lo:hi], plan.nodes, g12[first[lo]:first[hi]], pairs[first[lo]:first[hi]], lo,
                        gF, gD, exact_scale[lo:hi], g_cp_exact[lo:hi], g_lam_exact[lo:hi])
            X = torch.fft.ifft(gD, dim=-1, norm="forward")  # (3, h, Pc, R)
            torch.mul(X.permute(1, 0, 3, 2), plan.ctw, out=gA[:, 1:])
            gA = torch.view_as_real(gA).view(h, 4 * R, 2 * Pc)  # (h, (q, r), (t, c))
            sd, inv = loops.tables(mu[lo:hi], feats[lo:hi], plan, cplx, False, ws, sel[lo:hi])  # (h, M, {2,} Pc)
            rho = loops.rho(lam[lo:hi], cps_c[lo:hi], plan, ws.get("rho", (h, 4, R, M), cplx))  # (h, 4, R, M)
            g_rho = torch.bmm(gA, torch.view_as_real(sd).view(h, 2 * M, 2 * Pc).transpose(1, 2),
                              out=ws.get("g_rho", (h, 4 * R, 2 * M), real))  # (h, 4R, 2M)
            g_rho = torch.view_as_complex(g_rho.view(h, 4, R, M, 2))  # (h, 4, R, M) without the factors
            g_sd = torch.bmm(torch.view_as_real(rho).view(h, 4 * R, 2 * M).transpose(1, 2), gA,
                             out=ws.get("g_sd", (h, 2 * M, 2 * Pc), real))  # (h, 2M, 2Pc)
            g_sd = torch.view_as_complex(g_sd.view(h, M, 2, Pc, 2))  # (h, M, 2, Pc) [gS; gDd]
            loops.table_adjoint(sd, inv, g_sd, plan, g_mu[lo:hi], r2[lo:hi])
            loops.grad_coeffs(g_rho, lam[lo:hi], Gq[lo:hi])  # (h, 4, 2, M)

        run_chunks(one, H, chunk, g.device)
        # per channel, all channels at once: grad mu = -2 (g_mu[0] + i g_mu[1] + mu r2), mu = lam^R; rho = cp lam^r
        grad_mu = -2 * (torch.view_as_complex(g_mu.to(torch.float64)) + mu * r2.to(torch.float64))  # (H, M)
        grad_cp = (Gq[:, :, 0] * scale.t()[..., None] + g_cp_exact).transpose(0, 1).to(cp.dtype)  # (4, H, M)
        grad_lam = ((R * mu).conj() * grad_mu + torch.linalg.vecdot(cps, Gq[:, :, 1].to(mu.dtype), dim=1)
                    + g_lam_exact)  # (H, M)
        return grad_cp, grad_lam, grad_dt.to(dt.dtype), None, None, None

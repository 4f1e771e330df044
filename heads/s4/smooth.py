"""The `torch` S4 kernel for 11-smooth L (pocketfft is fast there): the Cauchy sums as the rfft of a REAL sequence
that is a sum of geometric sequences, built by a small batched GEMM and transformed by one rfft (`smooth_cauchy`);
the whole kernel fused and channel-chunked with a hand-written backward (`smooth_kernel`, `_StructuredKernel`).
Notation as in `heads.s4.reference`.
"""

from __future__ import annotations

import math

import torch

from heads.s4.cpu import run_chunks
from heads.s4.reference import rfft_nodes
from heads.s4.resonant import pair_list, periodic_modes, terms_for


def _blocks(L: int) -> tuple[int, int]:
    """Block size b ~ sqrt(L) and block count J with J * b >= L (k = b*j + r)."""
    b = math.isqrt(max(L - 1, 0)) + 1
    return b, -(-L // b)


def _geometric(v: torch.Tensor, a: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cp = v / (2-a) (Q, H, M), gain = 1 / (1 - lam^L) (H, M) and log(lam) (H, M) in complex128:
    x_k = 2 Re sum_m coef_m lam_m^k with coef = cp gain.

    With lam = (2+a)/(2-a) (the bilinear pole) and w^L = 1,
        1 / (2(1-w) - (1+w) a) = 1/((2-a)(1 - lam w)) = sum_{k<L} lam^k w^k / ((2-a)(1-lam^L)),
    so D(w_l) = rfft(x)[l] for the REAL sequence x_k = 2 Re sum_m coef_m lam_m^k, coef = v / ((2-a)(1-lam^L)).
    The divisions are on (H, M) and broadcast by a product (torch's complex division is slow).
    """
    a64 = a.to(torch.complex128)  # (H, M)
    lam_log = torch.log((2 + a64) / (2 - a64))  # (H, M)
    cp = v.to(torch.complex128) * torch.reciprocal(2 - a64)  # (Q, H, M)
    return cp, torch.reciprocal(1 - torch.exp(lam_log * L)), lam_log


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



def smooth_cauchy(v: torch.Tensor, a: torch.Tensor, L: int) -> torch.Tensor:
    """`cauchy_naive`'s values for 11-smooth L with plain autograd: one small real GEMM + one rfft.  # (Q, H, K)"""
    cp, gain, lam_log = _geometric(v, a, L)
    left, right, _, _ = _factors(cp * gain, lam_log, L, v.real.dtype)
    x = _sequence(left, right, v.shape[0], L)  # (H, Q, L)
    return torch.fft.rfft(x, n=L).transpose(0, 1)  # (Q, H, K)


def _reciprocals(n: int, nodes: torch.Tensor) -> torch.Tensor:
    """An empty (n, 2, K) complex128 buffer for `resonant` columns at `nodes` (1, K)."""
    return torch.empty(n, 2, nodes.shape[1], dtype=torch.complex128, device=nodes.device)


def smooth_kernel(v: torch.Tensor, a: torch.Tensor, dt: torch.Tensor, L: int, chunk: int) -> torch.Tensor:
    """The whole kernel k (H, L) for 11-smooth L, `chunk` channels per task (`_StructuredKernel`). The modes of
    `resonant.periodic_modes` leave the time-domain GEMM (their coef is zero) for exact float64 terms."""
    cp, gain, lam_log = _geometric(v, a, L)
    exact = periodic_modes(lam_log.detach(), L)  # (H, M)
    coef = cp * gain.masked_fill(exact, 0)  # (Q, H, M)
    return _StructuredKernel.apply(coef, cp, lam_log, dt, exact, L, chunk, v.real.dtype)


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
    The modes marked `exact` (H, M) come with coef = 0 and their terms cp / (1 - lam w) + conj(cp) / (1 - conj(lam) w)
    (cp (4, H, M) complex128) are added to D_q (subtracted from T for q = 0) and differentiated in float64 by
    `heads.s4.resonant`: with |lam^L| near 1 the time-domain form would need a large coef = cp / (1 - lam^L) and
    float32 gradients that nearly cancel.
    """

    @staticmethod
    def forward(ctx, coef, cp, lam_log, dt, exact, L: int, chunk: int, real: torch.dtype):
        H, dev = lam_log.shape[0], lam_log.device
        cplx = torch.complex64 if real == torch.float32 else torch.complex128
        nodes = rfft_nodes(L, cplx, dev)  # (K,)
        nodes64 = rfft_nodes(L, torch.complex128, dev)[None]  # (1, K): one group of nodes
        cp0, cp123 = (x.contiguous() for x in cp.transpose(0, 1).split([1, 3], 1))  # (H, 1, M), (H, 3, M)
        lam, terms = torch.exp(lam_log), terms_for(dev)  # (H, M) complex128
        pairs, first = pair_list(exact[..., None])  # (n_p, 3) rows (i, m, 0) of the exact modes
        k = torch.empty(H, L, dtype=real, device=dev)  # (H, L)
        a1 = torch.empty(H, L // 2 + 1, dtype=cplx, device=dev)  # (H, K)
        a2 = torch.empty_like(a1)
        dtr = dt.detach().to(real)  # (H,)

        def one(lo: int, hi: int) -> None:
            left, right, _, _ = _factors(coef[:, lo:hi], lam_log[lo:hi], L, real)
            x = _sequence(left, right, 4, L)  # (h, 4, L)
            D = torch.fft.rfft(x[:, 1:], n=L)  # (h, 3, K)
            pr = pairs[first[lo]:first[hi]]  # this chunk's exact modes and their reciprocals (K per mode:
            g12 = terms.columns(lam[lo:hi], nodes64, pr, lo, _reciprocals(len(pr), nodes64))  # formed per chunk)
            terms.add(cp123[lo:hi], g12, pr, lo, D[:, :, None], False, 1.0)
            D1, D2, D3 = D.unbind(1)  # (h, K)
            s = dtr[lo:hi, None] * (1 + nodes)  # (h, K)
            Rw = torch.reciprocal(1 + s * D3)  # (h, K)
            torch.mul(Rw, D1, out=a1[lo:hi])
            torch.mul(Rw, D2, out=a2[lo:hi])
            T = s * a1[lo:hi] * D2  # (h, K)
            terms.add(cp0[lo:hi], g12, pr, lo, T[:, None, None], False, -1.0)  # T - D0
            k[lo:hi] = 2 * dtr[lo:hi, None] * (x[:, 0] - torch.fft.irfft(T, n=L))  # (h, L)

        run_chunks(one, H, chunk, dev)
        ctx.save_for_backward(coef, cp, lam_log, dt, pairs, a1, a2, k)
        ctx.L, ctx.chunk, ctx.real, ctx.first = L, chunk, real, first
        return k

    @staticmethod
    def backward(ctx, g):
        coef, cp, lam_log, dt, pairs, a1, a2, k = ctx.saved_tensors
        L, chunk, real, first = ctx.L, ctx.chunk, ctx.real, ctx.first
        Q, H = coef.shape[0], lam_log.shape[0]
        nodes64 = rfft_nodes(L, torch.complex128, g.device)[None]  # (1, K)
        cpt, lam, terms = cp.transpose(0, 1).contiguous(), torch.exp(lam_log), terms_for(g.device)  # (H, 4, M)
        exact_scale = torch.tensor([[-1.0, 1.0, 1.0, 1.0]], dtype=torch.float64, device=g.device).expand(H, 4)
        exact_scale = exact_scale.contiguous()  # grad D_q / [grad T, the three spectra below]
        g_cp = torch.zeros(H, Q, coef.shape[-1], dtype=torch.complex128, device=g.device)  # exact modes' grads
        g_lam_exact = torch.zeros_like(lam_log)
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
            spectra = torch.empty(3, h, L // 2 + 1, dtype=a1.dtype, device=g.device)  # (3, h, K) grad D_1..3
            torch.mul(p2.conj(), cY, out=spectra[0])
            torch.mul(p1.conj(), cY, out=spectra[1])
            torch.mul(sp12.conj_physical_().neg_(), cY, out=spectra[2])
            pr = pairs[first[lo]:first[hi]]
            g12 = terms.columns(lam[lo:hi], nodes64, pr, lo, _reciprocals(len(pr), nodes64))
            terms.grads(cpt[lo:hi], lam[lo:hi], nodes64, g12, pr, lo, WY[:, None], spectra[:, :, None],
                        exact_scale[lo:hi], g_cp[lo:hi], g_lam_exact[lo:hi])
            gx[:, 1:, :L] = torch.fft.irfft(spectra.mul_(2 / weight).transpose(0, 1), n=L)  # (h, 3, L)
            gxm = gx.reshape(h, Q * J, b)  # (h, 4 J, b)
            left, right, p_out, p_in = _factors(coef[:, lo:hi], lam_log[lo:hi], L, real)
            g_left = torch.bmm(gxm, right.transpose(1, 2))  # (h, 4 J, 2M) (x = 2 left @ right)
            g_right = torch.bmm(left.transpose(1, 2), gxm)  # (h, 2M, b)
            grad_coef[:, lo:hi], grad_lam[lo:hi] = _factor_grads(coef[:, lo:hi], g_left, g_right, p_out, p_in, L)

        run_chunks(one, H, chunk, g.device)
        return (grad_coef, g_cp.transpose(0, 1), grad_lam + g_lam_exact, grad_dt.to(dt.dtype), None, None, None,
                None)

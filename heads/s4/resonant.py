"""Exact Cauchy terms for the (mode, node) pairs the fast `torch` kernels evaluate badly in float32.

Both fast kernels trade the Cauchy sum D(w) = sum_m cp_m / (1 - lam_m w) + conj(cp_m) / (1 - conj(lam_m) w)
(`heads.s4.reference`, cp = v / (2 - a), lam = (2 + a) / (2 - a)) for a geometric-series form whose error does not
stay relative to each term:
  * mixed radix (`heads.s4.mixed_radix`): the P-axis in closed form, G = 1 / (1 - lam^R theta_t), then a length-R
    DFT over r. When |1 - lam^R theta_t| is small (a pole lam near the unit circle, near column t) G is large and the
    DFT must cancel it down to the true values at the other bins u of that column, so float32 rounding of the
    GEMM and FFT is amplified by |G|: the kernel 8x and grad log_dt 39x the naive float32 error at the paper's
    L = 11,820 (high-frequency HiPPO modes, which the bilinear map puts next to the unit circle, did it).
  * 11-smooth L (`heads.s4.smooth`): the time-domain sequence coef lam^k with coef = cp / (1 - lam^L). When
    |lam^L| is close to 1 coef is large, and the gradient of a mode (through coef and through lam^k) is a near
    cancellation of two large float32 sums.
The fix of the cause: such pairs leave the fast path (their table entries, or their coef, are zeroed) and their
terms are evaluated here in float64, directly at their nodes, values and gradients; everything else keeps the fast
path, now with its amplification bounded (by 1 / `NEAR` for the tables).

Layout shared by both kernels: `nodes` (G, n) complex128 holds the node w^l of each output slot in G groups of n
(the mixed-radix grid: G = Pc columns t of R bins l = P u + t; 11-smooth: one group of the K rfft nodes); `sel`
(H, M, G) bool says which (mode, group) pairs are exact and `pair_list` turns it into rows (i, m, g), so that the
loops touch only those pairs: `columns` forms their reciprocals once (per call for the mixed-radix grid's R nodes
per pair, per chunk for the 11-smooth kernel's K), `add` adds the terms, `grads` their adjoint. `TorchTerms` is the
implementation in torch ops (the reference, and the path off CPU); `heads.s4.numba_loops.NumbaTerms` its compiled
CPU twin; `terms_for(device)` picks.
"""

from __future__ import annotations

import torch

# Mixed radix: a table entry with |1 - mu theta| or |1 - conj(mu) theta| below NEAR (|G| > 32) is exact, and below
# 2 NEAR for modes with |a| >= 1: a pair's float32 error reaches the kernel amplified by |G| and the gradient of
# log dt by |a| |G| (d a / d log dt = a). 7.2 exact pairs per channel of 3,168 entries (bench/history.md).
NEAR = 1 / 32
# 11-smooth L: a mode with |lam^L| above PERIODIC and |1 - lam^L| below GAP (coef = cp / (1 - lam^L) larger than cp,
# and its gradient a near cancellation) is exact; 0.8 % of the modes (bench/history.md).
PERIODIC, GAP = 0.6, 1.0


def near_bounds(lam: torch.Tensor) -> torch.Tensor:
    """(H, M) float64: the squared band of each mode, NEAR^2, or (2 NEAR)^2 where |a| >= 1 (a = 2 (lam - 1) / (lam + 1),
    the dt-scaled eigenvalue; lam (H, M) complex128)."""
    wide = 2 * (lam - 1).abs() >= (lam + 1).abs()
    return torch.where(wide, 4 * NEAR * NEAR, NEAR * NEAR).contiguous()


def periodic_modes(lam_log: torch.Tensor, L: int) -> torch.Tensor:
    """(H, M) bool: the modes of the 11-smooth kernel evaluated exactly, |lam^L| > PERIODIC and |1 - lam^L| < GAP."""
    z = torch.exp(L * lam_log)  # (H, M) lam^L
    return (z.abs() > PERIODIC) & ((1 - z).abs() < GAP)


def pair_list(sel: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The exact pairs of `sel` (H, M, G) bool as rows (i, m, g) (n_p, 3) int64 in (i, m, g) order, and the offsets
    of each channel's first row (H + 1,): the rows of channels lo..hi-1 are pairs[first[lo]:first[hi]]."""
    counts = sel.flatten(1).sum(1)  # (H,)
    pairs = torch.empty(int(counts.sum()), 3, dtype=torch.int64, device=sel.device)
    terms_for(sel.device).fill_pairs(sel, pairs)
    return pairs, [0, *counts.cumsum(0).tolist()]


def _local(pairs: torch.Tensor, lo: int) -> tuple[torch.Tensor, ...]:
    """The columns (i - lo, m, g) of `pairs`: indices into the arrays of a chunk that starts at channel lo."""
    i, m, g = pairs.unbind(1)
    return i - lo, m, g


class TorchTerms:
    """The exact terms in torch ops (see the module docstring for `nodes` and `pairs`)."""

    @staticmethod
    def near(mu: torch.Tensor, theta: torch.Tensor, bound2: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out (H, M, Pc) bool: min(|1 - mu theta|, |1 - conj(mu) theta|)^2 < bound2 (mu (H, M), theta (Pc,)
        complex128, bound2 (H, M) from `near_bounds`), as 1 + |mu|^2 - 2 Re(mu theta) - 2 |Im(mu) Im(theta)|."""
        x, y = mu.real[..., None], mu.imag[..., None]  # (H, M, 1)
        c, s = theta.real, theta.imag  # (Pc,)
        base = 1 + x * x + y * y - 2 * x * c  # (H, M, Pc)
        return torch.lt(base - 2 * (y * s).abs(), bound2[..., None], out=out)

    @staticmethod
    def fill_pairs(sel: torch.Tensor, out: torch.Tensor) -> None:
        """out (n_p, 3) int64 = the indices (i, m, g) of the True entries of `sel` (H, M, G), in that order."""
        torch.nonzero(sel, out=out)

    @staticmethod
    def columns(lam: torch.Tensor, nodes: torch.Tensor, pairs: torch.Tensor, lo: int,
                out: torch.Tensor) -> torch.Tensor:
        """out (n_p, 2, n) complex128 = [G1, G2] = [1 / (1 - lam w), 1 / (1 - conj(lam) w)] at the nodes w of
        each pair (lo + i, m, g) of `pairs` (n_p, 3) (lam (h, M) complex128, the channels from lo on), for `add`
        and `grads`."""
        i, m, g = _local(pairs, lo)
        lam_p, w = lam[i, m][:, None], nodes[g]  # (n_p, 1), (n_p, n)
        torch.reciprocal(1 - lam_p * w, out=out[:, 0])
        torch.reciprocal(1 - lam_p.conj() * w, out=out[:, 1])
        return out

    @staticmethod
    def add(cp: torch.Tensor, g12: torch.Tensor, pairs: torch.Tensor, lo: int, out: torch.Tensor, conj: bool,
            sign: float) -> None:
        """out (h, Q, G, n) += sign * D (conj(D) if `conj`), D the pairs' terms cp G1 + conj(cp) G2 for the pairs' Q
        coefficients cp (h, Q, M) complex128, g12 from `columns`."""
        if not len(pairs):
            return
        i, m, g = _local(pairs, lo)
        c = cp[i, :, m][..., None]  # (n_p, Q, 1)
        terms = c * g12[:, None, 0] + c.conj() * g12[:, None, 1]  # (n_p, Q, n)
        terms = (terms.conj() if conj else terms) * sign
        h, Q, G, n = out.shape
        rows = ((i[:, None] * Q + torch.arange(Q, device=out.device)) * G + g[:, None]).reshape(-1)  # (n_p Q,)
        dense = torch.zeros(h * Q * G, n, dtype=out.dtype, device=out.device)
        dense.index_add_(0, rows, terms.reshape(-1, n).to(out.dtype))
        out.add_(dense.view(h, Q, G, n))

    @staticmethod
    def grads(cp: torch.Tensor, lam: torch.Tensor, nodes: torch.Tensor, g12: torch.Tensor, pairs: torch.Tensor, lo: int,
              gF: torch.Tensor, gD: torch.Tensor, scale: torch.Tensor, g_cp: torch.Tensor,
              g_lam_log: torch.Tensor) -> None:
        """Adjoint of `add` with Q = 4, sign 1, no conj: with grad D_q = scale[:, q] g_q (g_0 = gF (h, G, n),
        g_1..3 = gD (3, h, G, n), the gradients with respect to the terms D_q, torch's convention
        grad z = dl/dRe z + i dl/dIm z),
            g_cp (h, 4, M) += sum_n conj(G1) grad D_q + G2 conj(grad D_q),
            g_lam_log (h, M) += conj(lam) sum_n sum_q conj(cp_q w G1^2) grad D_q + conj(cp_q) w G2^2 conj(grad D_q)
        (complex128 accumulators; scale (h, 4) float64)."""
        if not len(pairs):
            return
        i, m, g = _local(pairs, lo)
        G1, G2, w = g12[:, 0], g12[:, 1], nodes[g]  # (n_p, n)
        grad = torch.stack([gF[i, g], *(gq[i, g] for gq in gD)], 1).to(torch.complex128)  # (n_p, 4, n)
        grad = grad * scale[i][..., None]
        c = cp[i, :, m]  # (n_p, 4)
        d_cp = (G1.conj()[:, None] * grad + G2[:, None] * grad.conj()).sum(-1)  # (n_p, 4)
        d_lam = ((c.conj()[..., None] * (w * G1 * G1).conj()[:, None] * grad).sum((1, 2))
                 + (c.conj()[..., None] * (w * G2 * G2)[:, None] * grad.conj()).sum((1, 2)))  # (n_p,)
        q = torch.arange(4, device=g_cp.device).expand(len(i), 4)
        g_cp.index_put_((i[:, None].expand(-1, 4), q, m[:, None].expand(-1, 4)), d_cp, accumulate=True)
        g_lam_log.index_put_((i, m), lam[i, m].conj() * d_lam, accumulate=True)


def terms_for(device):
    """The implementation of the exact terms for `device`: compiled numba loops on CPU when numba imports."""
    from heads.s4 import numba_loops

    return numba_loops.NumbaTerms if numba_loops.used_on(device) else TorchTerms

"""Compiled CPU loops (numba) for the elementwise chains of the mixed-radix S4 kernel (`mixed_radix._MixedRadixKernel`).

The kernel's chunk bodies are near-peak GEMMs and length-R FFTs (torch) joined by chains of small complex
elementwise ops: power tables, the closed-form Cauchy tables, the Woodbury correction and their adjoints. In torch
each link of a chain is one pass over memory and one dispatch; here each chain is one call of a few loops over
interleaved (re, im) floats that LLVM vectorises (2.3x faster than the torch ops, bench/history.md). Numba cannot
mark arrays as non-aliasing, and a loop that reads one part of an array argument and writes another stays scalar,
so the outputs go in as separate arrays and the slow chains are split into loops with one store stream each. Every
function has the same signature and results as its torch twin in `mixed_radix._TorchLoops`, which stays the path on
other devices and the reference of the tests.

Layout contract: every tensor argument is C-contiguous; complex tensors are passed as their `view_as_real` float
arrays (no copy). Working precision follows the outputs (float32 for complex64, float64 for complex128); powers,
tables and sums are formed in float64. Numba compiles the loops on first use per dtype (a few seconds) and caches
the machine code next to this file (`__pycache__`), or keeps it in memory where that directory is not writable.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # the plan's module imports this one lazily (`mixed_radix._loops`)
    from heads.s4.mixed_radix import MixedRadixPlan

_NUMBA: list = []  # [numba module or None], resolved on first use
_JIT: dict = {}  # name -> compiled function
_JIT_LOCK = threading.Lock()


def available() -> bool:
    """True when numba imports (the compiled loops are used on CPU then)."""
    if not _NUMBA:
        try:
            import numba
        except ImportError:  # an optional speed-up: the torch loops give the same values
            numba = None
        _NUMBA.append(numba)
    return _NUMBA[0] is not None


def used_on(device) -> bool:
    """True when the `torch` kernel runs these loops on `device` (a CPU, with numba importable)."""
    return torch.device(device).type == "cpu" and available()


def describe(device="cpu") -> str:
    """Which elementwise chains the `torch` kernel runs on `device`: "numba <version>" or "torch" (for reports)."""
    return f"numba {_NUMBA[0].__version__}" if used_on(device) else "torch"


def _flat(x: torch.Tensor, *shape: int) -> np.ndarray:
    """A numpy float view of a C-contiguous tensor, complex as interleaved (re, im), reshaped to `shape` (no copy;
    about 1 us, called ~40 times per chunk)."""
    if not x.is_contiguous():
        raise ValueError(f"numba_loops needs contiguous tensors, got strides {x.stride()} for shape {tuple(x.shape)}")
    a = (x.detach() if x.requires_grad else x).numpy()
    if a.dtype.kind == "c":
        a = a.view(np.float32 if a.dtype == np.complex64 else np.float64)
    return a.reshape(shape)


def _jit(fn):
    """Compile `fn` lazily with numba (nogil: the kernel's 2-thread chunk pool runs loops concurrently), caching the
    machine code on disk where numba finds a writable place, else only in memory."""

    def call(*args):
        compiled = _JIT.get(fn.__name__)
        if compiled is None:
            with _JIT_LOCK:  # the chunk pool's threads reach a loop first together: one dispatcher, one compile
                compiled = _JIT.get(fn.__name__)
                if compiled is None:
                    options = dict(nogil=True, fastmath={"nsz", "arcp", "contract", "reassoc"},  # no nnan/ninf
                                   error_model="numpy", boundscheck=False)
                    try:
                        compiled = _NUMBA[0].njit(cache=True, **options)(fn)
                    except RuntimeError:  # "cannot cache function ...: no locator available" (read-only install)
                        compiled = _NUMBA[0].njit(**options)(fn)
                    _JIT[fn.__name__] = compiled
        return compiled(*args)

    return call


# ------------------------------------------------------------------------------------------------------------ loops
# Arrays below are float arrays; a complex row of n entries is a 1-D float row of 2n, entry j at [2j], [2j + 1].


@_jit
def _rho_loop(lam, cp, out):  # lam (h, 2M) f64, cp (h, Q, 2M), out (h, Q, R, 2M)
    h, Q, R, M2 = out.shape
    pw = np.empty(M2, dtype=np.float64)
    for i in range(h):
        pw[0::2] = 1.0
        pw[1::2] = 0.0
        lm = lam[i]
        for r in range(R):
            for q in range(Q):
                c, o = cp[i, q], out[i, q, r]
                for k in range(M2 // 2):
                    j = 2 * k
                    o[j] = c[j] * pw[j] - c[j + 1] * pw[j + 1]
                    o[j + 1] = c[j] * pw[j + 1] + c[j + 1] * pw[j]
            for k in range(M2 // 2):
                j = 2 * k
                re = pw[j] * lm[j] - pw[j + 1] * lm[j + 1]
                pw[j + 1] = pw[j] * lm[j + 1] + pw[j + 1] * lm[j]
                pw[j] = re


@_jit
def _tables_loop(mu, theta, sel, sd, inv):  # mu (h, M, 2) f64, theta (2Pc) f64, sel (h, M, Pc) bool,
    h, M = mu.shape[0], mu.shape[1]  # sd (h, M, 2, 2Pc), inv (h, M, 2Pc)
    P2 = theta.shape[0]
    for i in range(h):
        for m in range(M):
            x, y = mu[i, m, 0], mu[i, m, 1]
            n2 = x * x + y * y
            S, Dd, iv, near = sd[i, m, 0], sd[i, m, 1], inv[i, m], sel[i, m]
            for k in range(P2 // 2):  # 1 / den, den = 1 - 2 x theta + |mu|^2 theta^2 (one store stream per loop)
                j = 2 * k
                c, s = theta[j], theta[j + 1]
                dr = 1.0 - 2.0 * x * c + n2 * (c * c - s * s)
                di = -2.0 * x * s + n2 * 2.0 * c * s
                nrm = 1.0 / (dr * dr + di * di)
                iv[j] = dr * nrm
                iv[j + 1] = -di * nrm
            for k in range(P2 // 2):  # exact pairs (resonant.py): a zero entry, so S and Dd are zero too
                if near[k]:  # (a separate loop: a select inside the one above would keep it from vectorising)
                    iv[2 * k] = 0.0
                    iv[2 * k + 1] = 0.0
            for k in range(P2 // 2):  # S = (2 - 2 x theta) / den
                j = 2 * k
                ar, ai = 2.0 - 2.0 * x * theta[j], -2.0 * x * theta[j + 1]
                S[j] = ar * iv[j] - ai * iv[j + 1]
                S[j + 1] = ar * iv[j + 1] + ai * iv[j]
            for k in range(P2 // 2):  # Dd = -2 y theta / den
                j = 2 * k
                br, bi = -2.0 * y * theta[j], -2.0 * y * theta[j + 1]
                Dd[j] = br * iv[j] - bi * iv[j + 1]
                Dd[j + 1] = br * iv[j + 1] + bi * iv[j]


@_jit
def _woodbury_loop(D, s_nodes, dt, e1, e2, T):  # D (h, 3, 2n), s_nodes (2n), dt (h), e1 / e2 / T (h, 2n)
    h, n2 = e1.shape
    one = e1.dtype.type(1.0)
    for i in range(h):
        d = dt[i]
        D1, D2, D3, E1, E2, TT = D[i, 0], D[i, 1], D[i, 2], e1[i], e2[i], T[i]
        for k in range(n2 // 2):
            a = 2 * k
            b = a + 1
            sr, si = s_nodes[a] * d, s_nodes[b] * d
            zr = one + sr * D3[a] - si * D3[b]  # 1 + s D3
            zi = sr * D3[b] + si * D3[a]
            nrm = one / (zr * zr + zi * zi)
            wr, wi = zr * nrm, -zi * nrm  # Rw = 1 / (1 + s D3)
            E1[a], E1[b] = wr * D1[a] - wi * D1[b], wr * D1[b] + wi * D1[a]  # Rw D1
            tr, ti = wr * sr - wi * si, wr * si + wi * sr  # Rw s
            br, bi = tr * D2[a] - ti * D2[b], tr * D2[b] + ti * D2[a]  # Rw s D2
            E2[a], E2[b] = br, bi
            TT[a], TT[b] = D1[a] * br - D1[b] * bi, D1[a] * bi + D1[b] * br  # D1 Rw s D2


@_jit
def _grad_spectra_loop(e1, e2, gF, s_nodes, dt, g0, g1, g2, sums):  # e1 / e2 / gF / g0 / g1 / g2 (h, 2n), sums (h)
    h, n2 = e1.shape
    for i in range(h):
        d = dt[i]
        E1, E2, G, G0, G1, G2 = e1[i], e2[i], gF[i], g0[i], g1[i], g2[i]
        for k in range(n2 // 2):  # e2 gF
            a = 2 * k
            G0[a] = E2[a] * G[a] - E2[a + 1] * G[a + 1]
            G0[a + 1] = E2[a] * G[a + 1] + E2[a + 1] * G[a]
        acc = 0.0
        for k in range(n2 // 2):  # s e1 e2 gF, and sum Re(e1 e2 gF)
            a = 2 * k
            qr = E1[a] * G0[a] - E1[a + 1] * G0[a + 1]
            qi = E1[a] * G0[a + 1] + E1[a + 1] * G0[a]
            acc += qr
            sr, si = s_nodes[a] * d, s_nodes[a + 1] * d
            G2[a] = sr * qr - si * qi
            G2[a + 1] = sr * qi + si * qr
        sums[i] = acc
        for k in range(n2 // 2):  # s e1 gF
            a = 2 * k
            sr, si = s_nodes[a] * d, s_nodes[a + 1] * d
            tr, ti = sr * E1[a] - si * E1[a + 1], sr * E1[a + 1] + si * E1[a]
            G1[a] = tr * G[a] - ti * G[a + 1]
            G1[a + 1] = tr * G[a + 1] + ti * G[a]


@_jit
def _table_adjoint_loop(sd, inv, g_sd, th12, g_mu, r2):  # sd / g_sd (h, M, 2, 2Pc), inv (h, M, 2Pc), th12 (2, 2Pc)
    h, M, _, P2 = sd.shape
    th1, th2 = th12[0], th12[1]
    for i in range(h):
        for m in range(M):
            S, Dd, gS, gD, iv = sd[i, m, 0], sd[i, m, 1], g_sd[i, m, 0], g_sd[i, m, 1], inv[i, m]
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            for k in range(P2 // 2):
                a = 2 * k
                b = a + 1
                # psib = conj(S) gS + conj(Dd) gDd
                pr = S[a] * gS[a] + S[b] * gS[b] + Dd[a] * gD[a] + Dd[b] * gD[b]
                pi = S[a] * gS[b] - S[b] * gS[a] + Dd[a] * gD[b] - Dd[b] * gD[a]
                f1r, f1i = iv[a] * th1[a] - iv[b] * th1[b], iv[a] * th1[b] + iv[b] * th1[a]  # phi1 = theta / den
                f2r, f2i = iv[a] * th2[a] - iv[b] * th2[b], iv[a] * th2[b] + iv[b] * th2[a]  # phi2 = theta^2 / den
                a0 += f1r * (gS[a] - pr) + f1i * (gS[b] - pi)  # Re conj(phi1) (gS - psib)
                a1 += f1r * gD[a] + f1i * gD[b]  # Re conj(phi1) gDd
                a2 += f2r * pr + f2i * pi  # Re conj(phi2) psib
            g_mu[i, m, 0], g_mu[i, m, 1], r2[i, m] = a0, a1, a2


@_jit
def _grad_coeffs_loop(g_rho, lam, out):  # g_rho (h, Q, R, 2M), lam (h, 2M) f64, out (h, Q, 2, 2M)
    h, Q, R, M2 = g_rho.shape
    pw = np.empty((R, M2), dtype=np.float64)  # lam^r
    acc = np.empty(M2, dtype=np.float64)
    for i in range(h):
        lm = lam[i]
        pw[0, 0::2] = 1.0
        pw[0, 1::2] = 0.0
        for r in range(1, R):
            for k in range(M2 // 2):
                j = 2 * k
                pw[r, j] = pw[r - 1, j] * lm[j] - pw[r - 1, j + 1] * lm[j + 1]
                pw[r, j + 1] = pw[r - 1, j] * lm[j + 1] + pw[r - 1, j + 1] * lm[j]
        for q in range(Q):
            for w in range(2):  # weight 1, then r
                acc[:] = 0.0
                for r in range(R):
                    g, p = g_rho[i, q, r], pw[r]
                    f = 1.0 if w == 0 else float(r)
                    for k in range(M2 // 2):  # conj(lam^r) g
                        j = 2 * k
                        acc[j] += f * (p[j] * g[j] + p[j + 1] * g[j + 1])
                        acc[j + 1] += f * (p[j] * g[j + 1] - p[j + 1] * g[j])
                out[i, q, w] = acc


@_jit
def _near_loop(mu, theta, bound2, sel):  # mu (h, M, 2) f64, theta (2Pc) f64, bound2 (h, M) f64, sel (h, M, Pc) bool
    h, M, Pc = sel.shape
    for i in range(h):
        for m in range(M):
            x, y = mu[i, m, 0], mu[i, m, 1]
            n2, b2 = x * x + y * y, bound2[i, m]
            if n2 < 1.0 and (1.0 - np.sqrt(n2)) ** 2 >= 1.0001 * b2:  # |1 - mu theta| >= 1 - |mu|: none near
                sel[i, m, :] = False
                continue
            base = 1.0 + n2
            for k in range(Pc):  # min(|1 - mu theta|, |1 - conj(mu) theta|)^2 < bound^2
                sel[i, m, k] = base - 2.0 * x * theta[2 * k] - 2.0 * abs(y * theta[2 * k + 1]) < b2


@_jit
def _pairs_loop(sel, out):  # sel (H, M, G) bool, out (n_p, 3) int64
    p = 0
    for i in range(sel.shape[0]):
        for m in range(sel.shape[1]):
            for g in range(sel.shape[2]):
                if sel[i, m, g]:
                    out[p, 0], out[p, 1], out[p, 2] = i, m, g
                    p += 1


@_jit
def _columns_loop(lam, nodes, pairs, lo, out):  # lam (h, 2M) f64, nodes (G, 2n) f64, pairs (n_p, 3) i64, lo int,
    n2 = nodes.shape[1]  # out (n_p, 2, 2n)
    for p in range(pairs.shape[0]):
        i, m, g = pairs[p, 0] - lo, pairs[p, 1], pairs[p, 2]  # i within the chunk
        nd = nodes[g]
        for c in range(2):  # G1 = 1 / (1 - lam w), G2 = 1 / (1 - conj(lam) w): one store stream per loop
            lr, li, o = lam[i, 2 * m], (1.0 if c == 0 else -1.0) * lam[i, 2 * m + 1], out[p, c]
            for k in range(n2 // 2):
                wr, wi = nd[2 * k], nd[2 * k + 1]
                zr, zi = 1.0 - (lr * wr - li * wi), -(lr * wi + li * wr)
                d = 1.0 / (zr * zr + zi * zi)
                o[2 * k] = zr * d
                o[2 * k + 1] = -zi * d


@_jit
def _exact_add_loop(cp, g12, pairs, lo, out, conj, sign):  # cp (h, Q, 2M) f64, g12 (n_p, 2, 2n) f64, pairs (n_p, 3),
    Q, n2 = out.shape[1], out.shape[3]  # out (h, Q, G, 2n)
    cs = -sign if conj else sign
    for p in range(pairs.shape[0]):
        i, m, g = pairs[p, 0] - lo, pairs[p, 1], pairs[p, 2]  # i within the chunk
        g1, g2 = g12[p, 0], g12[p, 1]
        for q in range(Q):  # cp G1 + conj(cp) G2, one output row (one store stream) per loop
            o = out[i, q, g]
            cr, ci = sign * cp[i, q, 2 * m], sign * cp[i, q, 2 * m + 1]
            for k in range(n2 // 2):
                o[2 * k] += cr * (g1[2 * k] + g2[2 * k]) - ci * (g1[2 * k + 1] - g2[2 * k + 1])
            cr, ci = cs * cp[i, q, 2 * m], cs * cp[i, q, 2 * m + 1]
            for k in range(n2 // 2):
                o[2 * k + 1] += cr * (g1[2 * k + 1] + g2[2 * k + 1]) + ci * (g1[2 * k] - g2[2 * k])


@_jit
def _exact_grads_loop(cp, lam, nodes, g12, pairs, lo, gF, gD, scale, g_cp, g_lam):  # cp (h, 4, 2M) f64, lam (h, 2M),
    n2 = nodes.shape[1]  # nodes (G, 2n), g12 (n_p, 2, 2n), pairs (n_p, 3), gF (h, G, 2n), gD (3, h, G, 2n),
    pa, pb = np.empty(n2, dtype=np.float64), np.empty(n2, dtype=np.float64)  # scale (h, 4), g_cp (h, 4, 2M),
    for p in range(pairs.shape[0]):  # g_lam (h, 2M) f64; pa, pb = w G1^2, w G2^2
        i, m, g = pairs[p, 0] - lo, pairs[p, 1], pairs[p, 2]  # i within the chunk
        nd, a, b = nodes[g], g12[p, 0], g12[p, 1]
        for k in range(n2 // 2):
            wr, wi = nd[2 * k], nd[2 * k + 1]
            xr, xi = a[2 * k] * a[2 * k] - a[2 * k + 1] * a[2 * k + 1], 2.0 * a[2 * k] * a[2 * k + 1]
            pa[2 * k], pa[2 * k + 1] = xr * wr - xi * wi, xr * wi + xi * wr
            xr, xi = b[2 * k] * b[2 * k] - b[2 * k + 1] * b[2 * k + 1], 2.0 * b[2 * k] * b[2 * k + 1]
            pb[2 * k], pb[2 * k + 1] = xr * wr - xi * wi, xr * wi + xi * wr
        lamr, lami = 0.0, 0.0
        for q in range(4):
            gq = gF[i, g] if q == 0 else gD[q - 1, i, g]  # grad D_q / scale
            s0 = s1 = s2 = s3 = s4 = s5 = 0.0
            for k in range(n2 // 2):
                xr, xi = gq[2 * k], gq[2 * k + 1]
                s0 += (a[2 * k] + b[2 * k]) * xr + (a[2 * k + 1] + b[2 * k + 1]) * xi  # conj(G1) x + G2 conj(x)
                s1 += (a[2 * k] - b[2 * k]) * xi - (a[2 * k + 1] - b[2 * k + 1]) * xr
                s2 += pa[2 * k] * xr + pa[2 * k + 1] * xi  # conj(w G1^2) x
                s3 += pa[2 * k] * xi - pa[2 * k + 1] * xr
                s4 += pb[2 * k] * xr + pb[2 * k + 1] * xi  # w G2^2 conj(x)
                s5 += pb[2 * k + 1] * xr - pb[2 * k] * xi
            f = scale[i, q]
            cr, ci = cp[i, q, 2 * m], cp[i, q, 2 * m + 1]
            g_cp[i, q, 2 * m] += f * s0
            g_cp[i, q, 2 * m + 1] += f * s1
            # grad lam += conj(cp) [conj(w G1^2) x + w G2^2 conj(x)]
            lamr += f * (cr * (s2 + s4) + ci * (s3 + s5))
            lami += f * (cr * (s3 + s5) - ci * (s2 + s4))
        lr, li = lam[i, 2 * m], lam[i, 2 * m + 1]
        g_lam[i, 2 * m] += lr * lamr + li * lami  # grad log lam = conj(lam) grad lam
        g_lam[i, 2 * m + 1] += lr * lami - li * lamr


# ------------------------------------------------------------------------------------------------------ torch API
class NumbaLoops:
    """The compiled twins of `mixed_radix._TorchLoops` (same signatures, same results up to rounding)."""

    @staticmethod
    def rho(lam: torch.Tensor, cp: torch.Tensor, plan: MixedRadixPlan, out: torch.Tensor) -> torch.Tensor:
        """out (h, Q, R, M) = cp (h, Q, M) * lam^r (lam (h, M) complex128), r < R."""
        h, Q, R, M = out.shape
        _rho_loop(_flat(lam, h, 2 * M), _flat(cp.to(out.dtype), h, Q, 2 * M), _flat(out, h, Q, R, 2 * M))
        return out

    @staticmethod
    def tables(mu: torch.Tensor, feats: torch.Tensor, plan: MixedRadixPlan, cplx: torch.dtype, conj: bool, ws,
               sel: torch.Tensor):
        """sd (h, M, 2, Pc) = [S; Dd] and inv = 1 / den (h, M, Pc) of `mixed_radix._tables` (conj: at conj theta),
        zero where `sel` (h, M, Pc) marks an exact pair."""
        h, M = mu.shape
        Pc = plan.Pc
        sd, inv = ws.get("sd", (h, M, 2, Pc), cplx), ws.get("inv", (h, M, Pc), cplx)
        theta = (plan.theta_conj if conj else plan.theta)  # (Pc,) complex128
        _tables_loop(_flat(mu, h, M, 2), _flat(theta, 2 * Pc), sel.numpy(), _flat(sd, h, M, 2, 2 * Pc),
                     _flat(inv, h, M, 2 * Pc))
        return sd, inv

    @staticmethod
    def woodbury(D: torch.Tensor, s_nodes: torch.Tensor, dt: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor,
                 ws) -> torch.Tensor:
        """From D (h, 3, Pc, R) = [D1, D2, D3]: e1 = Rw D1, e2 = Rw s D2 (Rw = 1 / (1 + s D3), s = s_nodes dt),
        written into e1 / e2 (h, Pc, R); returns T = D1 e2 (h, Pc, R)."""
        h, _, Pc, R = D.shape
        n2 = 2 * Pc * R
        T = ws.get("T", (h, Pc, R), D.dtype)
        _woodbury_loop(_flat(D, h, 3, n2), _flat(s_nodes, n2), _flat(dt, h), _flat(e1, h, n2), _flat(e2, h, n2),
                       _flat(T, h, n2))
        return T

    @staticmethod
    def grad_spectra(e1: torch.Tensor, e2: torch.Tensor, gF: torch.Tensor, s_nodes: torch.Tensor,
                     dt: torch.Tensor, gD: torch.Tensor, ws) -> torch.Tensor:
        """gD (3, h, Pc, R) = [e2 gF, s e1 gF, s e1 e2 gF]; returns sum Re(e1 e2 gF) per channel (h,) float64.
        (The three outputs go in as three arrays: LLVM does not vectorise a loop that reads one part of an array
        argument and writes another.)"""
        h, Pc, R = gF.shape
        n2 = 2 * Pc * R
        sums = torch.empty(h, dtype=torch.float64)
        _grad_spectra_loop(_flat(e1, h, n2), _flat(e2, h, n2), _flat(gF, h, n2), _flat(s_nodes, n2), _flat(dt, h),
                           *(_flat(gD[q], h, n2) for q in range(3)), sums.numpy())
        return sums

    @staticmethod
    def table_adjoint(sd: torch.Tensor, inv: torch.Tensor, g_sd: torch.Tensor, plan: MixedRadixPlan, g_mu: torch.Tensor,
                      r2: torch.Tensor) -> None:
        """The tables' adjoint sums (see `mixed_radix._MixedRadixKernel`) into g_mu (h, M, 2) and r2 (h, M) real."""
        h, M, _, Pc = sd.shape
        th12 = plan.th12.to(sd.dtype)  # (2, Pc)
        _table_adjoint_loop(_flat(sd, h, M, 2, 2 * Pc), _flat(inv, h, M, 2 * Pc), _flat(g_sd, h, M, 2, 2 * Pc),
                            _flat(th12, 2, 2 * Pc), _flat(g_mu, h, M, 2), _flat(r2, h, M))

    @staticmethod
    def grad_coeffs(g_rho: torch.Tensor, lam: torch.Tensor, out: torch.Tensor) -> None:
        """out (h, Q, 2, M) = sum_r conj(lam^r) [1, r] g_rho (h, Q, R, M) (lam (h, M) complex128)."""
        h, Q, R, M = g_rho.shape
        acc = _flat(out, h, Q, 2, 2 * M)
        _grad_coeffs_loop(_flat(g_rho, h, Q, R, 2 * M), _flat(lam, h, 2 * M), acc)


class NumbaTerms:
    """The compiled twins of `resonant.TorchTerms` (same signatures, same results up to rounding)."""

    @staticmethod
    def near(mu: torch.Tensor, theta: torch.Tensor, bound2: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out (H, M, Pc) bool: the exact pairs of the mixed-radix tables (`resonant.TorchTerms.near`)."""
        H, M, Pc = out.shape
        _near_loop(_flat(mu, H, M, 2), _flat(theta, 2 * Pc), _flat(bound2, H, M), out.numpy())
        return out

    @staticmethod
    def fill_pairs(sel: torch.Tensor, out: torch.Tensor) -> None:
        """out (n_p, 3) int64 = the indices (i, m, g) of the True entries of `sel` (H, M, G) (torch's nonzero scans
        the whole mask more slowly)."""
        if len(out):
            _pairs_loop(sel.numpy(), out.numpy())

    @staticmethod
    def columns(lam: torch.Tensor, nodes: torch.Tensor, pairs: torch.Tensor, lo: int,
                out: torch.Tensor) -> torch.Tensor:
        """out (n_p, 2, n) complex128 = [G1, G2] at the nodes of each pair (lo + i, m, g) of `pairs` (n_p, 3)."""
        h, M = lam.shape
        G, n = nodes.shape
        if len(pairs):
            _columns_loop(_flat(lam, h, 2 * M), _flat(nodes, G, 2 * n), pairs.numpy(), lo,
                          _flat(out, len(pairs), 2, 2 * n))
        return out

    @staticmethod
    def add(cp: torch.Tensor, g12: torch.Tensor, pairs: torch.Tensor, lo: int, out: torch.Tensor, conj: bool,
            sign: float) -> None:
        """out (h, Q, G, n) += sign * the pairs' terms (conjugated if `conj`). A strided `out` (the torch chains'
        Woodbury returns a view) goes through a contiguous copy."""
        if not len(pairs):
            return
        h, Q, G, n = out.shape
        dense = out if out.is_contiguous() else out.contiguous()
        _exact_add_loop(_flat(cp, h, Q, 2 * cp.shape[-1]), _flat(g12, len(pairs), 2, 2 * n), pairs.numpy(), lo,
                        _flat(dense, h, Q, G, 2 * n), conj, float(sign))
        if dense is not out:
            out.copy_(dense)

    @staticmethod
    def grads(cp: torch.Tensor, lam: torch.Tensor, nodes: torch.Tensor, g12: torch.Tensor, pairs: torch.Tensor, lo: int,
              gF: torch.Tensor, gD: torch.Tensor, scale: torch.Tensor, g_cp: torch.Tensor,
              g_lam_log: torch.Tensor) -> None:
        """g_cp (h, 4, M) and g_lam_log (h, M) complex128 += the pairs' gradients."""
        if not len(pairs):
            return
        h, M = lam.shape
        G, n = nodes.shape
        _exact_grads_loop(_flat(cp, h, 4, 2 * M), _flat(lam, h, 2 * M), _flat(nodes, G, 2 * n),
                          _flat(g12, len(pairs), 2, 2 * n), pairs.numpy(), lo, _flat(gF, h, G, 2 * n),
                          _flat(gD, 3, h, G, 2 * n), _flat(scale, h, 4), _flat(g_cp, h, 4, 2 * M),
                          _flat(g_lam_log, h, 2 * M))

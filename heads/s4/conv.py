"""S4's per-channel part after the kernel: FFT sizing (`fft_length`), the causal FFT convolution (`causal_conv`) and
the fused, channel-chunked core GELU(K * u + D u) -> channel dropout -> optional AvgPool1d(2) (`fused_core`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from heads.ops import avg_pool2
from heads.s4.cpu import Scratch, run_chunks


def fft_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFT sizes with small prime factors are several times faster (2 * 11,820 has the
    factor 197). Any n >= 2L - 1 gives the same linear (causal) convolution as the paper's n = 2L."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


class _CausalConv(torch.autograd.Function):
    """y = irfft(rfft(u, n) * rfft(k, n))[..., :L] with a hand-written backward.

    Autograd's own backward of rfft/irfft goes through complex-to-complex transforms and zero-filled buffers; the
    adjoint of a causal convolution is a correlation, two transforms of length n: grad_u = irfft(G conj(K))[:L] and
    grad_k = irfft(sum_B G conj(U))[:L] (n >= 2L - 1, so the wrapped part of the correlation lands on zero padding).
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, k: torch.Tensor, n: int) -> torch.Tensor:
        L = u.shape[-1]
        u_f = torch.fft.rfft(u, n=n)  # (B, H, n/2+1)
        k_f = torch.fft.rfft(k, n=n)  # (H, n/2+1)
        ctx.save_for_backward(u_f, k_f)
        ctx.n, ctx.L = n, L
        return torch.fft.irfft(u_f * k_f, n=n)[..., :L]  # (B, H, L)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        u_f, k_f = ctx.saved_tensors
        n, L = ctx.n, ctx.L
        g_f = torch.fft.rfft(grad, n=n)  # (B, H, n/2+1)
        grad_u = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.fft.irfft(g_f * k_f.conj(), n=n)[..., :L]  # (B, H, L)
        if ctx.needs_input_grad[1]:
            grad_k = torch.fft.irfft((g_f * u_f.conj()).sum(0), n=n)[..., :L]  # (H, L)
        return grad_u, grad_k, None


def causal_conv(u: torch.Tensor, k: torch.Tensor, n: int) -> torch.Tensor:
    """Causal convolution of u (B, H, L) with per-channel kernels k (H, L) through FFTs of length n >= 2L - 1."""
    if n < 2 * u.shape[-1] - 1:
        raise ValueError(f"Expected an FFT length n >= 2L - 1 = {2 * u.shape[-1] - 1}, got {n}")
    return _CausalConv.apply(u, k, n)


def _unpool_pairs(g: torch.Tensor, L: int) -> torch.Tensor:
    """Adjoint of `avg_pool2` over the last axis: (..., L // 2) -> (..., L), each pooled gradient split over its
    pair, 0 at an odd last step."""
    out = g.new_empty(*g.shape[:-1], L)  # (..., L)
    half = g.shape[-1]
    torch.mul(g, 0.5, out=out[..., 0 : 2 * half : 2])
    out[..., 1 : 2 * half : 2] = out[..., 0 : 2 * half : 2]
    if L % 2:
        out[..., -1] = 0
    return out


def _rfft_padded(ws: Scratch, name: str, x: torch.Tensor, n: int) -> torch.Tensor:
    """rfft(x, n) of a chunk (..., h, L) through the thread's named scratch buffer `name` (zero-padded to n in place:
    torch's own padding allocates and zero-fills a fresh (..., h, n) tensor per call).  # (..., h, n/2+1)"""
    L = x.shape[-1]
    pad = ws.get(name, (*x.shape[:-1], n), x.dtype)  # (..., h, n)
    pad[..., :L].copy_(x)
    pad[..., L:].zero_()
    return torch.fft.rfft(pad)


class _FusedCore(torch.autograd.Function):
    """z = scale * pool(GELU(causal_conv(u, k) + D u)), u = gamma * x + beta, channel-chunked, hand-written backward.

    Everything between the S4 input and its position-wise output Linear is independent per channel, so it runs over
    channel chunks on the `heads.s4.cpu` thread pool: each chunk's FFT input buffers (a few MB, reused per thread
    through the kernel's `Scratch`) stay in cache and no (B, H, n) spectrum is ever allocated or kept (large fresh
    allocations page-fault on every step).

    The per-channel affine (gamma, beta) of the LayerNorm before S4 is folded in (None = identity): with x the
    normalised input, c = k * x and S = cumsum(k) (= k * 1),
        y = k * u + D u = gamma (c + D x) + beta (S + D),
    so dL/dgamma = sum gy (c + D x) and dL/dbeta = sum gy (S + D) need no gradient w.r.t. u, and
    dL/dk = gamma corr(gy, x) + beta revcumsum(gy). When x needs no gradient (the first block: x normalises the
    cached features) the backward takes 3 FFTs per channel, else 5 (dL/dx = gamma (corr(gy, k) + D gy)).
    Saved: x (contiguous (B, H, L)), c (B, H, L), k, D, gamma, beta; y is rebuilt elementwise in backward and the
    spectra of x and k are recomputed per chunk (instead of keeping (B, H, n/2+1) complex tensors).
    x (B, H, L) may be a transposed view of a (B, L, H) tensor: it is made contiguous once (whole-tensor transposes
    are cheap, chunks of a transposed view read one element per page); z (B, H, Lo) is returned in the (B, Lo, H)
    memory layout the output Linear reads, dL/dx in x's layout. `scale` (B, H) is the channel-dropout multiplier or
    None; pool=True applies AvgPool1d(2) over L (Lo = L // 2), which commutes with the per-channel scale and the
    position-wise Linear.
    """

    @staticmethod
    def forward(ctx, x, k, D, gamma, beta, scale, n: int, pool: bool, chunk: int):
        ctx.lh_layout = x.stride(1) == 1 and x.shape[1] > 1  # x is a (B, L, H) tensor seen as (B, H, L)
        x = _contiguous(x)  # (B, H, L)
        z, c = _core_forward(x, k, D, gamma, beta, scale, n, pool, chunk, keep=True)
        ctx.save_for_backward(x, c, k, D, gamma, beta, scale)
        ctx.n, ctx.pool, ctx.chunk = n, pool, chunk
        return z

    @staticmethod
    def backward(ctx, gz):
        x, c, k, D, gamma, beta, scale = ctx.saved_tensors
        n, pool, chunk = ctx.n, ctx.pool, ctx.chunk
        B, H, L = x.shape
        gz = _contiguous(gz)  # (B, H, Lo): usually the transposed gradient of the output Linear's input
        need_x, need_k, need_d, need_g, need_b, need_s = ctx.needs_input_grad[:6]
        gx = None
        if need_x:  # in the caller's layout: a (B, L, H) gradient goes to LayerNorm's backward without a copy
            gx = x.new_empty(B, L, H).transpose(1, 2) if ctx.lh_layout else torch.empty_like(x)  # (B, H, L)
        gk = torch.empty_like(k) if need_k else None  # (H, L)
        gD = torch.empty_like(D) if need_d else None  # (H,)
        gg = torch.empty_like(gamma) if need_g else None  # (H,)
        gb = torch.empty_like(beta) if need_b else None  # (H,)
        gs = torch.empty_like(scale) if need_s else None  # (B, H)
        ws = Scratch(x.device)

        def one(lo: int, hi: int) -> None:
            xc, cc, kc, Dc = x[:, lo:hi], c[:, lo:hi], k[lo:hi], D[lo:hi]  # (B, h, L) (B, h, L) (h, L) (h,)
            g_, b_ = _part(gamma, lo, hi), _part(beta, lo, hi)  # (h,) or None
            S = None if b_ is None else torch.cumsum(kc, -1)  # (h, L) k * 1
            yc = _core_pre(xc, cc, kc, Dc, g_, b_, S)  # (B, h, L)
            gc = gz[:, lo:hi]  # (B, h, Lo)
            if need_s:
                zc = F.gelu(yc)
                gs[:, lo:hi] = (gc * (avg_pool2(zc) if pool else zc)).sum(-1)
            if scale is not None:
                gc = gc * scale[:, lo:hi, None]
            if pool:
                gc = _unpool_pairs(gc, L)  # (B, h, L)
            gy = torch.ops.aten.gelu_backward(gc, yc)  # (B, h, L)
            gsum = gy[0] if B == 1 else gy.sum(0)  # (h, L)
            if need_d:  # u = gamma x + beta
                gdx = torch.linalg.vecdot(gy, xc).sum(0)  # (h,)
                gD[lo:hi] = gdx if g_ is None else gdx * g_ + (0 if b_ is None else b_ * gsum.sum(-1))
            if need_g:  # c + D x
                gg[lo:hi] = torch.linalg.vecdot(gy, cc).sum(0) + Dc * torch.linalg.vecdot(gy, xc).sum(0)
            if need_b:  # S + D
                gb[lo:hi] = torch.linalg.vecdot(gsum, S) + Dc * gsum.sum(-1)
            if not (need_k or need_x):
                return
            G = _rfft_padded(ws, "x", gy, n)  # (B, h, F)
            if need_k:
                XG = _rfft_padded(ws, "x", xc, n).conj_physical_().mul_(G)  # (B, h, F)
                gkc = torch.fft.irfft(XG[0] if B == 1 else XG.sum(0), n=n)[..., :L]  # (h, L) corr(gy, x)
                if g_ is not None:
                    gkc = gkc.mul_(g_[:, None])
                if b_ is not None:  # S = cumsum(k): dL/dk_j += beta sum_{t >= j} gy_t = beta (total - cumsum_j + gy_j)
                    tail = torch.cumsum(gsum, -1).neg_().add_(gsum).add_(gsum.sum(-1, keepdim=True))  # (h, L)
                    gkc = gkc.addcmul_(tail, b_[:, None])
                gk[lo:hi] = gkc
            if need_x:
                G.mul_(_rfft_padded(ws, "k", kc, n).conj_physical_())
                gxc = torch.fft.irfft(G, n=n)[..., :L].addcmul_(gy, Dc[:, None])  # (B, h, L) w.r.t. u
                gx[:, lo:hi] = gxc if g_ is None else gxc.mul_(g_[:, None])

        run_chunks(one, H, chunk, gz.device)
        return gx, gk, gD, gg, gb, gs, None, None, None


def _core_forward(x, k, D, gamma, beta, scale, n: int, pool: bool, chunk: int, keep: bool):
    """The fused core's forward over channel chunks: z (B, H, Lo) in the (B, Lo, H) memory layout and, when `keep`,
    c = k * x (B, H, L) for the backward (else each chunk's c is a view of its inverse FFT: inference keeps nothing).
    x (B, H, L) contiguous."""
    B, H, L = x.shape
    Lo = L // 2 if pool else L
    z = x.new_empty(B, Lo, H).transpose(1, 2)  # (B, H, Lo) in (B, Lo, H) memory
    c = x.new_empty(B, H, L) if keep else None  # (B, H, L) k * x, kept for backward
    ws = Scratch(x.device)  # per-thread buffers, reused chunk after chunk

    def one(lo: int, hi: int) -> None:
        xc = x[:, lo:hi]  # (B, h, L)
        spec = _rfft_padded(ws, "x", xc, n).mul_(_rfft_padded(ws, "k", k[lo:hi], n))  # (B, h, n/2+1)
        cc = torch.fft.irfft(spec, n=n)[..., :L]  # (B, h, L)
        if keep:
            cc = c[:, lo:hi].copy_(cc)
        zc = F.gelu(_core_pre(xc, cc, k[lo:hi], D[lo:hi], _part(gamma, lo, hi), _part(beta, lo, hi)))
        if pool:
            zc = avg_pool2(zc)  # (B, h, Lo)
        if scale is not None:
            zc = zc.mul_(scale[:, lo:hi, None])
        z[:, lo:hi] = zc

    run_chunks(one, H, chunk, x.device)
    return z, c


def _contiguous(x: torch.Tensor) -> torch.Tensor:
    """x (B, H, L) -> contiguous. A (B, L, H) tensor seen as (B, H, L) is copied one (L, H) -> (H, L) matrix at a
    time: torch's 2-D transpose copy is ~6x faster than its generic 3-D strided copy (bench/history.md)."""
    if x.is_contiguous() or x.dim() != 3 or x.stride(1) != 1:
        return x.contiguous()
    out = x.new_empty(x.shape)  # (B, H, L)
    for b in range(x.shape[0]):
        out[b].copy_(x[b])
    return out


def _part(t: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor | None:
    return None if t is None else t[lo:hi]


def _core_pre(x, c, k, D, gamma, beta, S=None) -> torch.Tensor:
    """The pre-GELU y = gamma (c + D x) + beta (S + D) of a chunk (S = cumsum(k), computed when not given);
    x, c (B, h, L), k (h, L), D (h,), gamma/beta (h,) or None.  # (B, h, L)"""
    y = torch.addcmul(c, x, D[:, None])  # (B, h, L)
    if gamma is not None:
        y = y.mul_(gamma[:, None])
    if beta is not None:
        S = torch.cumsum(k, -1) if S is None else S
        y = y.add_(torch.add(S, D[:, None]).mul_(beta[:, None]))
    return y


def fused_core(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor, scale: torch.Tensor | None = None,
               pool: bool = False, n: int | None = None, chunk: int | None = None,
               affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """S4's per-channel part: scale * pool(GELU(causal_conv(u', k) + D u')) with u' = gamma * u + beta when
    `affine` = (gamma (H,), beta (H,)) is given (a LayerNorm's affine folded in), else u' = u.
    u (B, H, L), k (H, L), D (H,), scale (B, H) or None -> (B, H, L or L // 2). Chunked on CPU (`_FusedCore`);
    the unfused reference elsewhere."""
    B, H, L = u.shape
    n = n or fft_length(2 * L)
    gamma, beta = affine if affine is not None else (None, None)
    if u.device.type != "cpu":
        x = u if affine is None else u * gamma[:, None] + beta[:, None]  # (B, H, L)
        y = F.gelu(causal_conv(x, k, n) + x * D[:, None])  # (B, H, L)
        y = avg_pool2(y) if pool else y
        return y if scale is None else y * scale[..., None]
    if chunk is None:  # ~1-2 MB of spectra per chunk: stays in cache (8-32 channels at the paper size all alike)
        chunk = max(1, min(H, (1 << 18) // (B * (n // 2 + 1))))
    inputs = (u, k, D, gamma, beta, scale)
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in inputs):
        # inference (evaluation): the same forward without an autograd node, and no c (B, H, L) kept for it
        return _core_forward(_contiguous(u), k, D, gamma, beta, scale, n, pool, chunk, keep=False)[0]
    return _FusedCore.apply(u, k, D, gamma, beta, scale, n, pool, chunk)

"""The straight-line S4 math, the one to read first: every fast path in `heads.s4` is tested against it.

Axis letters: H channels, N state size (stored as M = N/2 conjugate-pair modes), L kernel length, K = L//2 + 1 rfft
nodes, Q = 4 (B|P) x (C~|Q) pairs.

S4 (Gu et al., ICLR 2022, Sec. 3 and Algorithm 1) per channel: A = diag(w) - P Q* (HiPPO-LegS in normal-plus-low-rank
form, `hippo_legs_nplr`), bilinear discretisation with step dt, and the length-L convolution kernel evaluated through
its spectrum at the K rfft nodes w_l = exp(-2 pi i l / L) (`rfft_nodes`): four Cauchy sums (`cauchy_naive`), a
Woodbury rank-1 correction and an inverse rfft (`kernel_from_spectrum`). We evaluate the sums in a bilinear-friendly
normalisation that stays finite at w_l = -1 (the last node of an even L):

    D_q(w) = sum_m  v_qm / (2(1-w) - (1+w) a_m)  +  conj(v_qm) / (2(1-w) - (1+w) conj(a_m))

where a = dt * A_diag (already dt-scaled) and v = B * conj(C) per pair. With z = 2(1-w)/(1+w) this is
(1/(1+w)) * [sum v/(z-a) + conj(v)/(z-conj(a))], i.e. the paper's Cauchy sum divided by (1+w); the factor cancels
against the bilinear correction 2/(1+w), so `kernel_from_spectrum` never divides by (1+w).
"""

from __future__ import annotations

import math

import torch


def hippo_legs_nplr(N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HiPPO-LegS as normal + rank 1, diagonalised: returns w (M,), P (M,), B (M,) complex128, M = N/2.

    A_nk = -sqrt(2n+1) sqrt(2k+1) (n > k), -(n+1) (n = k), 0 (n < k); B_n = sqrt(2n+1); p_n = sqrt(n + 1/2).
    A + p p^T = -I/2 + S with S skew-symmetric, so its eigenvectors V are unitary (taken from the Hermitian i*S for
    orthonormality); in that basis A = diag(w) - (V* p)(V* p)*. One mode of each conjugate pair is kept.
    """
    if N % 2:
        raise ValueError(f"Expected an even state size d_state (stored as N/2 conjugate pairs), got {N}")
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)  # (N,)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(n + 1)  # (N, N)
    p = torch.sqrt(n + 0.5)  # (N,)
    S = A + p[:, None] * p[None, :] + 0.5 * torch.eye(N, dtype=torch.float64)  # (N, N) skew-symmetric
    sigma, V = torch.linalg.eigh(1j * S.to(torch.complex128))  # S = V diag(-i sigma) V*
    keep = sigma < 0  # w = -1/2 - i sigma: keep Im w > 0, one of each conjugate pair
    w = -0.5 - 1j * sigma[keep].to(torch.complex128)  # (M,)
    V = V[:, keep]  # (N, M)
    Vh = V.conj().T  # (M, N)
    return w, Vh @ p.to(torch.complex128), Vh @ r.to(torch.complex128)



def rfft_nodes(L: int, dtype: torch.dtype = torch.complex64, device=None) -> torch.Tensor:
    """The K = L//2 + 1 rfft nodes exp(-2 pi i l / L), computed in float64 then cast.  # (K,)"""
    angle = -2.0 * math.pi * torch.arange(L // 2 + 1, dtype=torch.float64, device=device) / L  # (K,)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)  # (K,)



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

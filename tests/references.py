"""The slow, obviously correct references the fast paths are tested against (one place, read them first):

  direct_causal_conv   the causal convolution one output step at a time
  recurrence_kernel    the S4 kernel by unrolling the discrete recurrence of a dense N x N system
  core_reference       S4's per-channel part (affine, convolution, D u, GELU, pool, dropout scale) written out
  original_state_dict  a random state dict in the key layout of the paper's ViS4mer module
  reference_kernel     the paper's kernel from such a state dict, in numpy complex128
  reference_forward    the paper's ViS4mer.forward in numpy float64 (eval mode)
and two helpers of the comparisons: `perturbed_nplr` (NPLR inputs of a layer moved off its init) and `rel_error`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from heads.s4 import S4


def direct_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{j <= t} k_j u_{t - j}, one output step at a time: u (B, H, L), k (H, L) -> (B, H, L)."""
    L = u.shape[-1]
    return torch.stack([(u[..., : t + 1] * k.flip(-1)[..., L - 1 - t:]).sum(-1) for t in range(L)], -1)  # (B, H, L)


def full_modes(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.conj()], dim=-1)  # (..., M) -> (..., N): modes then their conjugates


def recurrence_kernel(layer, L: int) -> torch.Tensor:
    """K_l = C A_bar^l B_bar from a dense N x N complex system, built here without the layer's kernel code.

    A = diag(w) - P Q*, bilinear A_bar, B_bar; the learned C~ is undone by C = C~ (I - A_bar^L)^-1.  # (H, L)
    """
    dt = torch.exp(layer.log_dt.detach().double())  # (H,)
    w = torch.view_as_complex(layer.w.detach().double())  # (M,)
    BP = torch.view_as_complex(layer.B.detach().double())  # (H, 2, M)
    CQ = torch.view_as_complex(layer.C.detach().double())  # (H, 2, M)
    rows = []
    for h in range(dt.shape[0]):
        A = torch.diag(full_modes(w)) - torch.outer(full_modes(BP[h, 1]), full_modes(CQ[h, 1]).conj())  # (N, N)
        eye = torch.eye(A.shape[0], dtype=A.dtype)
        back_inv = torch.linalg.inv(eye - dt[h] / 2 * A)  # (N, N)
        A_bar = back_inv @ (eye + dt[h] / 2 * A)  # (N, N)
        x = dt[h] * back_inv @ full_modes(BP[h, 0])  # (N,) B_bar
        c = full_modes(CQ[h, 0]).conj() @ torch.linalg.inv(eye - torch.linalg.matrix_power(A_bar, L))  # (N,)
        ks = []
        for _ in range(L):
            ks.append(c @ x)
            x = A_bar @ x
        rows.append(torch.stack(ks))
    K = torch.stack(rows)  # (H, L) complex, real up to rounding
    assert K.imag.abs().max() < 1e-9 * K.real.abs().max()
    return K.real


def core_reference(u, k, D, scale, pool, affine=None):
    """The unfused S4 core, written out: [affine] -> direct causal convolution + D u -> GELU -> [AvgPool1d(2)] ->
    scale."""
    if affine is not None:
        u = u * affine[0][:, None] + affine[1][:, None]
    z = torch.nn.functional.gelu(direct_causal_conv(u, k) + u * D[:, None])
    if pool:
        z = torch.nn.functional.avg_pool1d(z, 2)  # drops an odd last step
    return z if scale is None else z * scale[..., None]


def original_state_dict(d_input=6, d_model=8, n_layers=2, d_state=4, n_out=3, seed=0) -> dict:
    """A random state dict in the key layout of the paper's ViS4mer module (docs/design.md)."""
    g = torch.Generator().manual_seed(seed)
    sd, H, M = {}, d_model, d_state // 2
    sd["encoder.weight"] = torch.randn(d_model, d_input, generator=g) / math.sqrt(d_input)
    sd["encoder.bias"] = torch.randn(d_model, generator=g) * 0.1
    for i in range(n_layers):
        p = f"s4_layers.{i}."
        sd[p + "D"] = torch.randn(H, generator=g)
        sd[p + "kernel.krylov.log_dt"] = torch.rand(H, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
        w = torch.stack([-0.5 * torch.ones(M), torch.rand(M, generator=g) * 3], -1)  # (M, 2) stable modes
        sd[p + "kernel.krylov.w"] = w
        sd[p + "kernel.krylov.B"] = torch.randn(H, 2, M, 2, generator=g) * 0.5
        sd[p + "kernel.krylov.C"] = torch.randn(H, 2, M, 2, generator=g) * 0.5
        sd[p + "kernel.krylov.nodes"] = torch.randn(5, 2, generator=g)  # derived; must be ignored
        sd[p + "kernel.krylov.z"] = torch.randn(5, 2, generator=g)
        sd[p + "output_linear.weight"] = torch.randn(H, H, generator=g) / math.sqrt(H)
        sd[p + "output_linear.bias"] = torch.randn(H, 1, generator=g) * 0.1
        sd[f"norms.{i}.weight"] = 1 + 0.1 * torch.randn(H, generator=g)
        sd[f"norms.{i}.bias"] = 0.1 * torch.randn(H, generator=g)
        sd[f"linears.{i}.weight"] = torch.randn(H // 2, H, generator=g) / math.sqrt(H)
        sd[f"linears.{i}.bias"] = 0.1 * torch.randn(H // 2, generator=g)
        H //= 2
    sd["decoder.weight"] = torch.randn(n_out, H, generator=g) / math.sqrt(H)
    sd["decoder.bias"] = 0.1 * torch.randn(n_out, generator=g)
    return sd


def reference_kernel(sd: dict, prefix: str, L: int) -> np.ndarray:
    """The paper's kernel, slowly, in complex128: four Cauchy sums, Woodbury, bilinear factor, irfft. (H, L)"""
    c = lambda t: t[..., 0].double().numpy() + 1j * t[..., 1].double().numpy()  # noqa: E731
    dt = np.exp(sd[prefix + "log_dt"].double().numpy())  # (H,)
    w = c(sd[prefix + "w"])  # (M,)
    BP, CQ = c(sd[prefix + "B"]), c(sd[prefix + "C"])  # (H, 2, M)
    omega = np.exp(-2j * np.pi * np.arange(L // 2 + 1) / L)  # (L/2+1,)
    z = 2 * (1 - omega) / (1 + omega)
    a = dt[:, None] * w[None, :]  # (H, M) w scaled by dt
    r = np.zeros((2, 2, len(dt), len(z)), dtype=complex)
    for i in range(2):  # C~ | Q
        for j in range(2):  # B | P
            v = BP[:, j, :] * CQ[:, i, :].conj()  # (H, M)
            for m in range(a.shape[1]):
                r[i, j] += v[:, m, None] / (z - a[:, m, None]) + v[:, m, None].conj() / (z - a[:, m, None].conj())
            r[i, j] *= dt[:, None]
    k_f = r[0, 0] - r[0, 1] * r[1, 0] / (1 + r[1, 1])
    k_f = k_f * 2 / (1 + omega)
    return np.fft.irfft(k_f, n=L)  # (H, L)


def reference_forward(sd: dict, x: np.ndarray, n_layers: int) -> np.ndarray:
    """ViS4mer.forward of the paper code in eval mode (numpy float64): x (B, L, D) -> (B, n_out). Like the paper's
    forward, the encoder Linear is applied only when d_model != d_input (the module owns it either way)."""
    f = lambda k: sd[k].double().numpy()  # noqa: E731
    gelu = lambda v: 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))  # noqa: E731
    d_model, d_input = sd["encoder.weight"].shape
    h = x @ f("encoder.weight").T + f("encoder.bias") if d_model != d_input else x  # (B, L, H)
    for i in range(n_layers):
        p = f"s4_layers.{i}."
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        z = (h - mu) / np.sqrt(var + 1e-5) * f(f"norms.{i}.weight") + f(f"norms.{i}.bias")  # (B, L, H)
        u = z.transpose(0, 2, 1)  # (B, H, L)
        L = u.shape[-1]
        k = reference_kernel(sd, p + "kernel.krylov.", L)  # (H, L)
        y = np.fft.irfft(np.fft.rfft(u, 2 * L) * np.fft.rfft(k, 2 * L), 2 * L)[..., :L]  # (B, H, L)
        y = gelu(y + u * f(p + "D")[:, None])
        y = np.einsum("vu,bul->bvl", f(p + "output_linear.weight"), y) + f(p + "output_linear.bias")  # (B, H, L)
        h = h + y.transpose(0, 2, 1)  # (B, L, H)
        h = 0.5 * (h[:, 0::2][:, : L // 2] + h[:, 1::2][:, : L // 2])  # AvgPool1d(2)
        h = gelu(h @ f(f"linears.{i}.weight").T + f(f"linears.{i}.bias"))  # (B, L/2, H/2)
    return h.mean(1) @ f("decoder.weight").T + f("decoder.bias")


def perturbed_nplr(H: int, N: int, L: int, dtype=torch.float64, seed: int = 0, perturb: float = 0.2):
    """(v, a, dt) of an S4 layer in `dtype`, moved off its init so that P != Q and the pairs differ."""
    torch.manual_seed(seed)
    layer = S4(H, d_state=N, l_max=L, backend="naive").to(dtype)
    with torch.no_grad():
        layer.B.add_(perturb * torch.randn_like(layer.B))
        layer.C.add_(perturb * torch.randn_like(layer.C))
    return tuple(t.detach().clone().requires_grad_() for t in layer._nplr())


def rel_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """Relative error |x - y| / |y| (Frobenius norms)."""
    return ((x - y).norm() / y.norm()).item()

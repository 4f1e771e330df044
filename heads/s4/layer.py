"""The S4 layer of ViS4mer: an NPLR state-space convolution (Gu et al., S4, ICLR 2022; ViS4mer, ECCV 2022, Sec. 3).

Axis letters: B batch, H channels (d_model), L sequence, N state size (stored as M = N/2 conjugate-pair modes).

Math (docs/design.md, "The S4 decoder"), per channel h:
  A = diag(w) - P Q*  (HiPPO-LegS in its normal-plus-low-rank form, w shared by channels, rank 1, P = Q at init),
  bilinear discretisation with step dt = exp(log_dt), log_dt ~ U[log 0.001, log 0.1];
  C is learned as C~ = C (I - A_bar^L) (S4 Algorithm 1), so the length-L kernel's spectrum is
  C~ (I - A_bar w)^-1 B_bar at the rfft nodes: four Cauchy sums + a Woodbury rank-1 correction (`heads.s4.kernels`).
  Layer: y = irfft(rfft(u, n) * rfft(K, n))[:L] + D u -> GELU -> channel dropout -> Linear(H, H), with n the
  smallest 5-smooth size >= 2L (the same causal convolution as the paper's n = 2L, faster FFTs). On CPU the part
  before the Linear runs channel-chunked with a hand-written backward (`fused_core`); `core(u, pool=True)` serves the
  multi-scale block, whose AvgPool1d(2) commutes with the Linear and so runs before it (half the GEMM work).

Parameters mirror the paper code's layout so its checkpoints map one to one:
  log_dt (H,), w (M, 2) = A's diagonal as (re, im), B (H, 2, M, 2) = [B, P], C (H, 2, M, 2) = [C~, Q], D (H,),
  output_linear = nn.Linear(H, H). log_dt, w, B (hence P) carry `_optim = {"lr": 1e-3, "weight_decay": 0.0,
  "name": "s4-ssm"}`; C (hence Q) trains with the default group, as in the paper code.

The kernel is computed at `l_max` and truncated to L; `l_max=None` computes it at each input's length. An input longer
than `l_max` raises a ValueError (the paper code instead doubles l_max in place, a silent state change that a saved
checkpoint does not record); `double_length()` offers that operation explicitly: C~ <- C~ (I + A_bar^l_max).
The paper's ViS4mer halves l_max with each block (its models.py: `l_max = int(l_max/2)` after each pool), and so
do our stacks; C~ of a paper checkpoint is only meaningful at the l_max it was trained with.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from heads.config import HEAD
from heads.ops import channel_dropout_scale
from heads.s4.conv import fft_length, fused_core
from heads.s4.kernels import resolve_backend, ssm_kernel
from heads.s4.reference import hippo_legs_nplr

SSM_OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "name": "s4-ssm"}  # "name": the group's, in the LR logs


def _tag(param: nn.Parameter, optim: dict) -> nn.Parameter:
    param._optim = dict(optim)
    return param


class S4(nn.Module):
    """S4 layer: forward (B, H, L) -> (B, H, L); `kernel(L)` -> (H, L)."""

    def __init__(self, d_model: int, d_state: int = HEAD.d_state, l_max: int | None = None, dropout: float = 0.0,
                 backend: str = HEAD.backend, dt_min: float = 0.001, dt_max: float = 0.1):
        super().__init__()
        if d_model < 1:
            raise ValueError(f"Expected d_model >= 1, got {d_model}")
        if l_max is not None and l_max < 1:
            raise ValueError(f"Expected l_max >= 1 or None, got {l_max}")
        resolve_backend(backend)  # validate the name now, not at the first forward
        self.d_model, self.d_state, self.l_max, self.backend = d_model, d_state, l_max, backend
        H = d_model

        w, p, b = hippo_legs_nplr(d_state)  # (M,) each
        M = w.shape[0]
        log_dt = torch.rand(H, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        C = torch.randn(H, M, dtype=torch.complex64)  # random complex normal, learned as C~
        BP = torch.stack([b, p]).to(torch.complex64)[None].expand(H, 2, M)  # (H, 2, M)
        CQ = torch.stack([C, p.to(torch.complex64)[None].expand(H, M)], dim=1)  # (H, 2, M)

        self.log_dt = _tag(nn.Parameter(log_dt.float()), SSM_OPTIM)  # (H,)
        self.w = _tag(nn.Parameter(torch.view_as_real(w.to(torch.complex64)).clone()), SSM_OPTIM)  # (M, 2)
        self.B = _tag(nn.Parameter(torch.view_as_real(BP).clone()), SSM_OPTIM)  # (H, 2, M, 2)
        self.C = nn.Parameter(torch.view_as_real(CQ).clone())  # (H, 2, M, 2)
        self.D = nn.Parameter(torch.randn(H))  # (H,)
        self.dropout = float(dropout)
        # The same tags by name on the module: Parameter.__deepcopy__ drops `_optim`, a module attribute survives.
        self._optim_tags = {"log_dt": SSM_OPTIM, "w": SSM_OPTIM, "B": SSM_OPTIM}
        self.output_linear = nn.Linear(H, H)
        self._cache: tuple | None = None

    # ------------------------------------------------------------------------------------------------ kernel
    def _nplr(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """v (4, H, M) per pair [(C~,B), (C~,P), (Q,B), (Q,P)], a = dt*w (H, M), dt (H,)."""
        dt = torch.exp(self.log_dt)  # (H,)
        w = torch.view_as_complex(self.w)  # (M,)
        BP = torch.view_as_complex(self.B)  # (H, 2, M)
        CQ = torch.view_as_complex(self.C)  # (H, 2, M)
        v = CQ.conj()[:, :, None, :] * BP[:, None, :, :]  # (H, 2, 2, M)
        v = v.reshape(v.shape[0], 4, -1).transpose(0, 1)  # (4, H, M)
        a = dt[:, None] * w[None, :]  # (H, M)
        return v, a, dt

    def _kernel_length(self, L: int) -> int:
        if L < 1:
            raise ValueError(f"Expected a sequence length L >= 1, got {L}")
        if self.l_max is None:
            return L
        if L > self.l_max:
            raise ValueError(f"S4 got a sequence of length {L} > l_max={self.l_max}; build the layer with "
                             f"l_max >= {L} (or l_max=None to compute the kernel at each input's length)")
        return self.l_max

    def kernel(self, L: int) -> torch.Tensor:
        """The SSM convolution kernel, computed at l_max (or L when l_max is None) and truncated to L.  # (H, L)"""
        Lk = self._kernel_length(L)
        key = None
        if not self.training and not torch.is_grad_enabled():  # eval cache, invalidated by any in-place update
            key = (Lk, self.backend, tuple((p.data_ptr(), p._version) for p in (self.log_dt, self.w, self.B, self.C)))
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1][:, :L]
        v, a, dt = self._nplr()
        k = ssm_kernel(v, a, dt, Lk, self.backend)  # (H, Lk)
        if key is not None:
            self._cache = (key, k)
        return k[:, :L]  # (H, L)

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    # ----------------------------------------------------------------------------------------------- forward
    def core(self, u: torch.Tensor, pool: bool = False,
             affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Everything before the output Linear: dropout(GELU(K * u + D u)), optionally AvgPool1d(2)-ed over L.
        `affine` = (gamma, beta) (H,) each replaces u by gamma * u + beta inside the fused computation (the affine of
        the LayerNorm in front; its gradients then need no dL/du).
        u (B, H, L) -> (B, H, L) or (B, H, L // 2), in the (B, L', H) memory layout on CPU."""
        if u.dim() != 3 or u.shape[1] != self.d_model:
            raise ValueError(f"Expected input (B, H={self.d_model}, L), got {tuple(u.shape)}")
        L = u.shape[-1]
        k = self.kernel(L)  # (H, L)
        x = u if u.dtype in (torch.float32, torch.float64) else u.float()  # (B, H, L) no half-precision FFTs
        scale = channel_dropout_scale(x, self.dropout, self.training, channel_dim=1)  # (B, H) or None
        # the paper uses n = 2L; any n >= 2L - 1 is the same causal convolution
        return fused_core(x, k.to(x.dtype), self.D.to(x.dtype), scale, pool, fft_length(2 * L), affine=affine)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, H, L) -> y (B, H, L): `core`, then the position-wise output Linear."""
        return self.output_linear(self.core(u).transpose(1, 2)).transpose(1, 2)  # (B, H, L)

    # ---------------------------------------------------------------------------------------------- doubling
    def discrete_system(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense bilinear A_bar (H, N, N) and B_bar (H, N) in complex128 (modes, then their conjugates)."""
        dt = torch.exp(self.log_dt.detach().double())  # (H,)
        w = torch.view_as_complex(self.w.detach().double())  # (M,)
        BP = torch.view_as_complex(self.B.detach().double())  # (H, 2, M)
        Q = torch.view_as_complex(self.C.detach().double())[:, 1]  # (H, M)
        full = lambda x: torch.cat([x, x.conj()], dim=-1)  # noqa: E731  (..., M) -> (..., N)
        H, N = dt.shape[0], 2 * w.shape[0]
        A = torch.diag_embed(full(w).expand(H, N)) - full(BP[:, 1])[:, :, None] * full(Q).conj()[:, None, :]
        eye = torch.eye(N, dtype=torch.complex128)
        back = eye - dt[:, None, None] / 2 * A  # (H, N, N)
        A_bar = torch.linalg.solve(back, eye + dt[:, None, None] / 2 * A)  # (H, N, N)
        B_bar = dt[:, None] * torch.linalg.solve(back, full(BP[:, 0])[..., None])[..., 0]  # (H, N)
        return A_bar, B_bar

    @torch.no_grad()
    def double_length(self) -> None:
        """l_max <- 2 l_max keeping the same underlying SSM: C~ <- C~ (I + A_bar^l_max) (S4 paper, App. C.3)."""
        if self.l_max is None:
            raise ValueError("double_length() needs a fixed l_max; with l_max=None the kernel follows the input")
        A_bar, _ = self.discrete_system()
        A_L = torch.linalg.matrix_power(A_bar, self.l_max)  # (H, N, N)
        C = torch.view_as_complex(self.C.detach().double())[:, 0]  # (H, M)
        C_full = torch.cat([C, C.conj()], dim=-1)  # (H, N)
        C_new = C_full + (A_L.conj().transpose(-1, -2) @ C_full[..., None])[..., 0]  # (H, N): row c~ (I + A^L)
        self.C[:, 0].copy_(torch.view_as_real(C_new[:, : C.shape[-1]].to(torch.complex64)))
        self.l_max *= 2
        self._cache = None

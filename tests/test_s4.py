"""S4 layer: kernel equals the unrolled recurrence, causality, L > l_max, eval cache, optimizer tags."""

from __future__ import annotations

import copy

import pytest
import torch
from references import direct_causal_conv, full_modes, recurrence_kernel

from heads.s4 import S4
from heads.s4.conv import fft_length
from heads.s4.reference import hippo_legs_nplr
from heads.training.optim import param_groups


def _perturbed(H: int, N: int, l_max, backend: str, seed: int = 0) -> S4:
    """A float64 layer moved off its init (P != Q, B, dt varied) so the test covers the general NPLR case."""
    torch.manual_seed(seed)
    layer = S4(H, d_state=N, l_max=l_max, backend=backend).double()
    with torch.no_grad():
        layer.B.add_(0.2 * torch.randn_like(layer.B))
        layer.C.add_(0.2 * torch.randn_like(layer.C))
        layer.w.add_(0.1 * torch.randn_like(layer.w))
    return layer


@pytest.mark.parametrize("backend", ["naive", "torch"])
@pytest.mark.parametrize("L", [37, 40])  # odd and even lengths (the w = -1 node)
def test_kernel_equals_unrolled_recurrence(backend, L):
    layer = _perturbed(H=3, N=8, l_max=L, backend=backend)
    K = layer.kernel(L).detach()
    K_ref = recurrence_kernel(layer, L)
    assert K.dtype == torch.float64 and K.shape == (3, L)
    assert (K - K_ref).norm() / K_ref.norm() <= 1e-6


def test_hippo_nplr_reconstructs_legs():
    """(diag(w) - p p*, b) over the kept modes + conjugates is unitarily equivalent to HiPPO-LegS (A, B):
    equal transfer functions B^T (zI - A)^-1 B, p^T (zI - A)^-1 B at a few points z."""
    N = 16
    w, p, b = hippo_legs_nplr(N)
    assert w.shape == (N // 2,) and torch.allclose(w.real, torch.full_like(w.real, -0.5)) and torch.all(w.imag > 0)
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    A = (-torch.tril(r[:, None] * r[None, :], -1) - torch.diag(n + 1)).to(torch.complex128)  # (N, N)
    B, P = r.to(torch.complex128), torch.sqrt(n + 0.5).to(torch.complex128)  # (N,)
    A_modes = torch.diag(full_modes(w)) - torch.outer(full_modes(p), full_modes(p).conj())  # (N, N)
    eye = torch.eye(N, dtype=torch.complex128)
    for z in (1 + 2j, -0.3 + 5j, 3.0 + 0j):
        ref = torch.linalg.solve(z * eye - A, B)  # (N,)
        got = torch.linalg.solve(z * eye - A_modes, full_modes(b))  # (N,)
        assert torch.allclose(B @ ref, full_modes(b).conj() @ got, rtol=1e-9)
        assert torch.allclose(P @ ref, full_modes(p).conj() @ got, rtol=1e-9)


def test_layer_is_causal_and_shaped():
    torch.manual_seed(0)
    layer = S4(8, d_state=16, l_max=50, backend="torch")
    u = torch.randn(2, 8, 50)
    y = layer(u)
    assert y.shape == u.shape
    t = 23
    u2 = u.clone()
    u2[..., t + 1:] += torch.randn_like(u2[..., t + 1:])
    y2 = layer(u2)
    assert torch.allclose(y[..., : t + 1], y2[..., : t + 1], atol=1e-5)
    assert not torch.allclose(y[..., t + 1:], y2[..., t + 1:], atol=1e-3)


def test_layer_output_is_the_direct_causal_convolution():
    """y = Linear(GELU(sum_{j<=t} K_j u_{t-j} + D u_t)): the FFT length choice must not change the convolution."""
    torch.manual_seed(0)
    layer = S4(3, d_state=8, l_max=45, backend="naive").double().eval()
    u = torch.randn(2, 3, 45, dtype=torch.float64)
    K = layer.kernel(45).detach()  # (H, L)
    conv = direct_causal_conv(u, K)  # (B, H, L)
    pre = conv + layer.D.detach()[:, None] * u
    ref = layer.output_linear(torch.nn.functional.gelu(pre).transpose(1, 2)).transpose(1, 2)
    with torch.no_grad():
        assert torch.allclose(layer(u), ref, atol=1e-10)
    assert fft_length(2 * 11820) == 24000 and fft_length(90) == 90 and fft_length(97) == 100
    assert all(fft_length(n) >= n for n in range(1, 300))


def test_shorter_input_uses_truncated_l_max_kernel():
    layer = _perturbed(H=2, N=8, l_max=40, backend="naive")
    assert torch.allclose(layer.kernel(25), layer.kernel(40)[:, :25])
    assert torch.allclose(layer.kernel(25), recurrence_kernel(layer, 40)[:, :25], rtol=0, atol=1e-9)


def test_longer_than_l_max_raises_and_double_length_keeps_the_system():
    layer = _perturbed(H=2, N=8, l_max=16, backend="naive")
    with pytest.raises(ValueError, match="l_max"):
        layer(torch.randn(1, 2, 17, dtype=torch.float64))
    k16 = layer.kernel(16).detach()
    layer.double_length()  # C~ <- C~ (I + A_bar^16): same SSM, twice the length
    assert layer.l_max == 32
    k32 = layer.kernel(32).detach()
    assert (k32[:, :16] - k16).norm() / k16.norm() <= 1e-6
    assert (k32 - recurrence_kernel(layer, 32)).norm() / k32.norm() <= 1e-6
    free = S4(2, d_state=8, l_max=None, backend="naive")
    assert free.kernel(70).shape == (2, 70)  # l_max=None: the kernel follows the input length


def test_eval_cache_follows_parameter_updates():
    layer = S4(4, d_state=8, l_max=32, backend="torch").eval()
    with torch.no_grad():
        k1 = layer.kernel(32)
        assert layer._cache is not None and torch.equal(layer.kernel(32), k1)
        layer.C[:, 0].mul_(2.0)  # K is linear in C~; the in-place update must invalidate the cached kernel
        k2 = layer.kernel(32)
    assert torch.allclose(k2, 2 * k1, rtol=1e-4, atol=1e-6)


def test_gradients_reach_every_parameter():
    layer = S4(4, d_state=8, l_max=32, dropout=0.2, backend="torch")
    layer(torch.randn(2, 4, 32)).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_param_groups_hold_the_tagged_tensors():
    model = torch.nn.Sequential(S4(4, d_state=8, l_max=16), torch.nn.Linear(4, 3))
    groups = param_groups(model, lr=1e-3, weight_decay=0.01)
    s4 = model[0]
    by_wd = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    assert by_wd[0.0] == {id(s4.log_dt), id(s4.w), id(s4.B)}  # log_dt, A, B and P (stacked in B)
    assert all(g["lr"] == 1e-3 for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert id(s4.C) in by_wd[0.01] and id(model[1].weight) in by_wd[0.01]
    torch.optim.AdamW(groups)  # accepted as is
    clone = copy.deepcopy(model)  # tags survive copies (Lightning, EMA, ...)
    clone_groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in param_groups(clone)}
    assert clone_groups[0.0] == {id(clone[0].log_dt), id(clone[0].w), id(clone[0].B)}


def test_param_groups_are_named_for_the_lr_logs():
    """Lightning's LearningRateMonitor logs lr-AdamW/<name> (pg1, pg2 without one): the groups say what they hold."""
    model = torch.nn.Sequential(S4(4, d_state=8, l_max=16), torch.nn.Linear(4, 3))
    names = {g["name"]: {id(p) for p in g["params"]} for g in param_groups(model)}
    assert names["s4-ssm"] == {id(model[0].log_dt), id(model[0].w), id(model[0].B)}
    assert set(names) == {"main", "s4-ssm"}
    linear = torch.nn.Linear(4, 3)
    linear.bias._optim = {"weight_decay": 0.0}  # a tag without a name: its settings name it
    linear.weight._optim = {"weight_decay": 0.0, "lr": 0.01, "name": "main"}  # a name already taken
    named = {g["name"]: g["params"] for g in param_groups(torch.nn.Sequential(linear, torch.nn.Linear(3, 2)))}
    assert set(named) == {"main", "lr-0.001-wd-0", "main-2"}
    assert named["lr-0.001-wd-0"] == [linear.bias] and named["main-2"] == [linear.weight]
    assert "name" not in param_groups(torch.nn.Linear(4, 3))[0]  # one group: Lightning logs plain lr-AdamW


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="backend"):
        S4(4, backend="fft")
    with pytest.raises(ValueError, match="even"):
        S4(4, d_state=7)
    with pytest.raises(ValueError, match=r"\(B, H=4, L\)"):
        S4(4, l_max=8)(torch.randn(2, 8))


def test_retain_freed_memory_reuses_pages():
    """A training process reuses freed big blocks instead of faulting fresh pages in every step."""
    import platform
    import resource

    from heads.s4.cpu import retain_freed_memory

    if platform.libc_ver()[0] != "glibc":
        assert retain_freed_memory() is False
        return
    assert retain_freed_memory() and retain_freed_memory()  # idempotent
    faults = []
    for _ in range(5):  # like training steps: the same 64 MB buffer (far above glibc's default mmap threshold)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.empty(16 << 20)
        x.fill_(1.0)
        del x
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # fresh 4 KB pages would be 16,384 faults every time; a host's proactive reclaim (DAMON's kdamond) may still take
    # back a free block between two steps, so one reuse among the repeats is what the test asks of the allocator
    assert min(faults[1:]) < 2000, faults

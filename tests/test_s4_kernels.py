"""S4 kernel backends through their public API: every backend equals `naive` (tests/references.py's role for the
kernel) in value and gradient (float64 gradcheck, float32 at the paper's N and a long L, the float32 `torch` kernel as
precise as the float32 `naive` one against float64), chunking changes nothing, and `resolve_backend` picks and
validates names."""

from __future__ import annotations

import math

import pytest
import torch
from references import perturbed_nplr, rel_error

from bench.kernel_precision import parameter_grads
from heads.s4 import S4
from heads.s4.kernels import AUTO_CPU, BACKENDS, CAUCHY, keops_available, resolve_backend, torch_kernel
from heads.s4.reference import cauchy_naive_at, rfft_nodes

needs_keops = pytest.mark.skipif(not keops_available(), reason="pykeops cannot compile a kernel here")
FAST = ["torch", pytest.param("keops", marks=[pytest.mark.keops, needs_keops])]


def test_naive_is_the_papers_cauchy_sum_over_one_plus_w():
    """D(w) = (1/(1+w)) sum v/(z-a) + conj(v)/(z-conj a) with z = 2(1-w)/(1+w), away from w = -1."""
    v, a, _ = (t.detach() for t in perturbed_nplr(3, 8, 16))
    nodes = rfft_nodes(16, torch.complex128)[:-1]  # drop w = -1 (z = infinity)
    z = 2 * (1 - nodes) / (1 + nodes)  # (K,)
    paper = (v[..., None] / (z - a[..., None]) + v.conj()[..., None] / (z - a.conj()[..., None])).sum(-2)
    assert torch.allclose(cauchy_naive_at(v, a, nodes), paper / (1 + nodes), rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("L", [37, 40, 78, 94])  # prime, smooth, 6 * 13 and 2 * 47 (mixed radix, R > 1)
def test_backend_spectrum_and_kernel_equal_naive(backend, L):
    v, a, dt = perturbed_nplr(4, 8, L)
    assert rel_error(CAUCHY[backend](v, a, L), CAUCHY["naive"](v, a, L)) <= 1e-10
    g = torch.randn(4, L, dtype=torch.float64)
    ref = BACKENDS["naive"](v, a, dt, L)
    got = BACKENDS[backend](v, a, dt, L)
    assert rel_error(got, ref) <= 1e-10
    grads_ref = torch.autograd.grad((ref * g).sum(), (v, a, dt))
    grads = torch.autograd.grad((got * g).sum(), (v, a, dt))
    for x, y in zip(grads, grads_ref):
        assert rel_error(x, y) <= 1e-10


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("L", [24, 26])  # 11-smooth (time domain + rfft) and 2 * 13 (mixed radix)
def test_backend_gradcheck_float64(backend, L):
    v, a, dt = perturbed_nplr(3, 8, L)
    if backend == "torch":  # chunk 2 < H = 3: exercises the chunk loop and the ragged last chunk
        fn = lambda v, a, dt: torch_kernel(v, a, dt, L, chunk=2)  # noqa: E731
    else:
        fn = lambda v, a, dt: BACKENDS[backend](v, a, dt, L)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (v, a, dt), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend", FAST)
def test_float32_matches_naive_at_paper_N_and_long_L(backend):
    """Paper size per channel (N = 64, L = 11,820), 8 channels spanning the dt range: rel. error <= 1e-4."""
    H, L = 8, 11820
    torch.manual_seed(1)
    layer = S4(H, d_state=64, l_max=L)
    with torch.no_grad():  # spread dt over [0.001, 0.1] deterministically
        layer.log_dt.copy_(torch.linspace(torch.log(torch.tensor(0.001)), torch.log(torch.tensor(0.1)), H))
    v, a, dt = (t.detach() for t in layer._nplr())
    g = torch.randn(H, L, dtype=torch.float64)

    def run(name, real):
        cplx = torch.complex64 if real == torch.float32 else torch.complex128
        args = [v.to(cplx).clone().requires_grad_(), a.to(cplx).clone().requires_grad_(),
                dt.to(real).clone().requires_grad_()]
        k = BACKENDS[name](*args, L)
        (k.double() * g).sum().backward()
        return [k.detach().double()] + [t.grad.to(torch.complex128 if t.is_complex() else torch.float64)
                                        for t in args]

    ref = run("naive", torch.float64)
    got = run(backend, torch.float32)
    assert got[0].shape == (H, L)
    for x, y in zip(got, ref):
        assert rel_error(x, y) <= 1e-4


@pytest.mark.parametrize("H,L", [(8, 11820), (16, 2955), (16, 2048)])  # the paper's L; LVU's third block; 11-smooth
def test_torch_float32_is_as_precise_as_naive_float32(H, L):
    """Against the float64 kernel (`naive`), the fast float32 kernel and every parameter gradient are within
    3x max(the naive float32 error, 1e-5) (relative, in norm). dt spans the init range [0.001, 0.1], so the modes
    next to the unit circle, where the geometric-series forms lose float32 precision (`heads.s4.resonant`), are
    among them. The full-size figures: `python -m bench.kernel_precision`."""
    torch.manual_seed(0)
    layer = S4(H, d_state=64, l_max=L)
    with torch.no_grad():
        layer.log_dt.copy_(torch.linspace(math.log(0.001), math.log(0.1), H))
    ref = parameter_grads(layer, L, "naive", torch.float64)
    naive = parameter_grads(layer, L, "naive", torch.float32)
    fast = parameter_grads(layer, L, "torch", torch.float32)
    for name in ref:
        bound = 3 * max(rel_error(naive[name], ref[name]), 1e-5)
        assert rel_error(fast[name], ref[name]) <= bound, (name, rel_error(fast[name], ref[name]), bound)


@pytest.mark.parametrize("L", [33, 39])  # both `torch` paths
def test_torch_kernel_chunking_does_not_change_values(L):
    v, a, dt = (t.detach() for t in perturbed_nplr(5, 8, L))
    ref = torch_kernel(v, a, dt, L, chunk=5)
    for chunk in (1, 2, 3):
        assert torch.allclose(torch_kernel(v, a, dt, L, chunk=chunk), ref, rtol=0, atol=1e-13)


def test_resolve_backend():
    assert resolve_backend("auto", "cpu") == AUTO_CPU
    assert resolve_backend("naive") == "naive"
    with pytest.raises(ValueError, match="naive"):
        resolve_backend("cuda-ext")

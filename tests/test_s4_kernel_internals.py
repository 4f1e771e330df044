"""Internals of the `torch` kernel, tested piece by piece (the one test file that imports private names): the
length split, the (Pc, R) grid inverse rfft and its adjoint, the closed-form Cauchy tables, the elementwise chains
and the exact terms (`heads.s4.resonant`) in torch ops against their compiled numba twins."""

from __future__ import annotations

import pytest
import torch
from references import perturbed_nplr, rel_error

from heads.s4 import mixed_radix, numba_loops, resonant, smooth
from heads.s4.cpu import Scratch
from heads.s4.kernels import BACKENDS, torch_kernel
from heads.s4.mixed_radix import (
    _grid_irfft,
    _grid_irfft_adjoint,
    _plan,
    _table_inputs,
    _tables,
    _TorchLoops,
    split_length,
)


def test_split_isolates_the_large_prime_factors():
    """`torch` uses pocketfft for 11-smooth L and the mixed-radix closed form (L = P * R) otherwise."""
    assert split_length(11820) == (197, 60)
    assert split_length(2048) == (1, 2048)
    assert split_length(37) == (37, 1)
    assert split_length(78) == (13, 6)
    assert split_length(2 * 13 * 17 * 11) == (13 * 17, 22)


@pytest.mark.parametrize("L", [37, 78, 94, 2 * 13 * 17 * 11, 11820])  # R = 1, 6, 2, 22, 60
def test_grid_irfft_is_the_inverse_rfft(L):
    """The length-L inverse DFT from the (Pc, R) grid (length-R FFTs + a length-P real GEMM) equals irfft."""
    torch.manual_seed(L)
    plan = _plan(L, torch.complex128, "cpu")
    P, R, Pc = plan.P, plan.R, plan.Pc
    x = torch.randn(3, L, dtype=torch.float64)
    X = torch.fft.fft(x)  # (3, L)
    t, u = torch.arange(Pc)[:, None], torch.arange(R)
    grid = X[:, P * u + t]  # (3, Pc, R) = X(P u + t)
    assert torch.allclose(_grid_irfft(grid.conj(), plan).reshape(3, L), x, rtol=0, atol=1e-12)
    assert torch.allclose(torch.fft.irfft(X[:, : L // 2 + 1], n=L), x, rtol=0, atol=1e-12)
    scale = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    out = torch.empty(3, P, R, dtype=torch.float64)
    assert _grid_irfft(grid.conj(), plan, scale, out=out) is out
    assert torch.allclose(out.reshape(3, L), scale[:, None] * x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("L", [78, 11820])
def test_grid_irfft_adjoint_is_the_adjoint(L):
    """<g, irfft(F)> = Re <grad F, F> for any complex grid F (the backward's gradient, not only Hermitian F)."""
    torch.manual_seed(1)
    plan = _plan(L, torch.complex128, "cpu")
    P, R, Pc = plan.P, plan.R, plan.Pc
    F = torch.randn(2, Pc, R, dtype=torch.complex128)
    g = torch.randn(2, P, R, dtype=torch.float64)
    gy = torch.empty(2, R, Pc, dtype=torch.complex128)
    gF = _grid_irfft_adjoint(g, plan, gy_out=gy)
    lhs = (g * _grid_irfft(F.conj(), plan)).sum()
    rhs = (gF.conj() * F).sum().real
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    # autograd through the same torch ops agrees (grad of x wrt F, torch's conjugate-Wirtinger convention)
    Fr = F.clone().requires_grad_()
    (g * _grid_irfft(Fr.conj(), plan)).sum().backward()
    assert torch.allclose(Fr.grad, gF, rtol=0, atol=1e-10)
    # gy_out: gY(r, t) = sum_j (c_t / L) exp(-2 pi i t j / P) g[j, r], before the twiddle and length-R FFTs
    j, t = torch.arange(P, dtype=torch.float64)[:, None], torch.arange(Pc, dtype=torch.float64)
    c = torch.where(t == 0, 1.0, 2.0).to(torch.float64) / L
    dft = c * torch.exp(-2j * torch.pi * j * t / P)  # (P, Pc)
    assert torch.allclose(gy, g.transpose(1, 2).to(dft.dtype) @ dft, rtol=0, atol=1e-12)


def test_tables_match_their_definition():
    """S = G + G~, Dd = i (G - G~) with G = 1 / (1 - mu theta), G~ = 1 / (1 - conj(mu) theta); conj tables; lam^r."""
    L = 94
    plan = _plan(L, torch.complex128, "cpu")
    P, R, Pc = plan.P, plan.R, plan.Pc
    _, a, _ = (t.detach() for t in perturbed_nplr(2, 8, L))
    lam_log = torch.log((2 + a) / (2 - a))  # (H, M)
    mu, sd, inv, p = _tables(_table_inputs(lam_log, plan, torch.complex128), plan, torch.complex128)
    theta = torch.exp(-2j * torch.pi * torch.arange(Pc, dtype=torch.float64) / P)  # (Pc,)
    G = 1 / (1 - mu[..., None] * theta)
    Gt = 1 / (1 - mu.conj()[..., None] * theta)
    assert torch.allclose(mu, torch.exp(lam_log) ** R, rtol=1e-12, atol=0)
    assert torch.allclose(sd[:, :, 0], G + Gt, rtol=1e-10, atol=0)
    assert torch.allclose(sd[:, :, 1], 1j * (G - Gt), rtol=1e-10, atol=1e-12)
    assert torch.allclose(inv, G * Gt, rtol=1e-10, atol=0)
    assert torch.allclose(p, torch.exp(lam_log)[:, None] ** torch.arange(R)[:, None], rtol=1e-12, atol=0)
    sd_conj = _tables(_table_inputs(lam_log, plan, torch.complex128), plan, torch.complex128, conj=True)[1]
    assert torch.allclose(sd_conj, sd.conj(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("terms", ["compiled", "torch"])
@pytest.mark.parametrize("L,exact", [(94, None), (94, "all"), (40, None), (40, "all")])
def test_torch_loops_path_equals_naive(monkeypatch, terms, L, exact):
    """The `torch` kernels with the torch elementwise chains (their path off CPU) and either implementation of the
    exact terms (`heads.s4.resonant`), with the default exact pairs and with every pair exact: value and gradient."""
    monkeypatch.setattr(mixed_radix, "_loops", lambda device: _TorchLoops)
    if terms == "torch":
        monkeypatch.setattr(mixed_radix, "terms_for", lambda device: resonant.TorchTerms)
        monkeypatch.setattr(smooth, "terms_for", lambda device: resonant.TorchTerms)
    if exact == "all":
        monkeypatch.setattr(resonant, "NEAR", 10.0)  # every table entry
        monkeypatch.setattr(resonant, "PERIODIC", 0.0)  # every mode
        monkeypatch.setattr(resonant, "GAP", 1e300)
    v, a, dt = perturbed_nplr(3, 8, L)
    g = torch.randn(3, L, dtype=torch.float64)
    ref, got = BACKENDS["naive"](v, a, dt, L), torch_kernel(v, a, dt, L, chunk=2)
    assert rel_error(got, ref) <= 1e-10
    for x, y in zip(torch.autograd.grad((got * g).sum(), (v, a, dt)), torch.autograd.grad((ref * g).sum(), (v, a, dt))):
        assert rel_error(x, y) <= 1e-10


@pytest.mark.skipif(not numba_loops.available(), reason="numba is not installed")
@pytest.mark.parametrize("real", [torch.float64, torch.float32])
def test_compiled_loops_equal_torch_loops(real, monkeypatch):
    """Each numba loop of `numba_loops` gives its torch twin's results (the fast path against the plain one)."""
    monkeypatch.setattr(resonant, "NEAR", 0.25)  # a wider band: these few modes then have exact pairs
    cplx = torch.complex128 if real == torch.float64 else torch.complex64
    tol = 1e-12 if real == torch.float64 else 2e-6
    L, h, M = 390, 3, 8  # P = 13, R = 30, Pc = 7
    plan = _plan(L, cplx, "cpu")
    R, Pc = plan.R, plan.Pc
    torch.manual_seed(0)
    _, a, _ = (t.detach() for t in perturbed_nplr(h, 2 * M, L))
    lam_log = torch.log((2 + a) / (2 - a))  # (h, M)
    lam = torch.exp(lam_log)
    mu, feats, _ = _table_inputs(lam_log, plan, cplx, powers=False)
    rnd = lambda *shape: torch.randn(*shape, dtype=cplx)  # noqa: E731
    cp, D, gF, e1, e2 = rnd(h, 4, M), rnd(h, 3, Pc, R), rnd(h, Pc, R), rnd(h, Pc, R), rnd(h, Pc, R)
    g_sd, g_rho, dt = rnd(h, M, 2, Pc), rnd(h, 4, R, M), torch.rand(h, dtype=real)
    cp64, scale = cp.to(torch.complex128), torch.randn(h, 4, dtype=torch.float64)
    bound2 = resonant.near_bounds(lam)
    sel = torch.empty(h, M, Pc, dtype=torch.bool)
    resonant.TorchTerms.near(mu, plan.theta, bound2, sel)
    sel[0, 0, 1] = True  # at least one exact pair whatever the modes
    pairs, first = resonant.pair_list(sel)
    assert first[-1] == len(pairs) == int(sel.sum()) and sel[tuple(pairs.t())].all()
    out = {}
    for name, ops, terms in (("torch", _TorchLoops, resonant.TorchTerms),
                             ("numba", numba_loops.NumbaLoops, numba_loops.NumbaTerms)):
        ws, o = Scratch("cpu"), {}
        o["rho"] = ops.rho(lam, cp, plan, torch.empty(h, 4, R, M, dtype=cplx)).clone()
        o["near"] = torch.empty(h, M, Pc, dtype=torch.bool)
        o["near"] = terms.near(mu, plan.theta, bound2, o["near"]).to(torch.float64)
        o["pairs"] = torch.empty(len(pairs), 3, dtype=torch.int64)
        terms.fill_pairs(sel, o["pairs"])
        o["pairs"] = o["pairs"].to(torch.float64)
        for conj in (False, True):
            o[f"sd{conj}"], o[f"inv{conj}"] = (x.clone() for x in ops.tables(mu, feats, plan, cplx, conj, ws, sel))
        o["g12"] = terms.columns(lam, plan.nodes, pairs, 0, torch.empty(len(pairs), 2, R, dtype=torch.complex128))
        for conj in (False, True):
            o[f"add{conj}"] = D.clone()
            terms.add(cp64[:, 1:].contiguous(), o["g12"], pairs, 0, o[f"add{conj}"], conj, -0.5)
        o["g_cp"], o["g_lam"] = torch.zeros(h, 4, M, dtype=torch.complex128), torch.zeros(h, M, dtype=torch.complex128)
        terms.grads(cp64, lam, plan.nodes, o["g12"], pairs, 0, gF, torch.stack([e1, e2, D[:, 0]]), scale, o["g_cp"],
                    o["g_lam"])
        w1, w2 = torch.empty_like(e1), torch.empty_like(e2)
        o["T"] = ops.woodbury(D.clone(), plan.snodes_conj, dt, w1, w2, ws).clone()
        o["e1"], o["e2"] = w1, w2
        o["gD"] = torch.empty(3, h, Pc, R, dtype=cplx)
        o["sums"] = ops.grad_spectra(e1, e2, gF, plan.snodes_conj, dt, o["gD"], ws).to(torch.float64)
        o["g_mu"], o["r2"] = torch.empty(h, M, 2, dtype=real), torch.empty(h, M, dtype=real)
        ops.table_adjoint(o["sdFalse"], o["invFalse"], g_sd.clone(), plan, o["g_mu"], o["r2"])
        o["Gq"] = torch.empty(h, 4, 2, M, dtype=cplx)
        ops.grad_coeffs(g_rho, lam, o["Gq"])
        out[name] = o
    assert out["torch"]["near"].sum() > 0  # the band catches some pairs here
    assert out["torch"]["sdFalse"][sel[:, :, None].expand(-1, -1, 2, -1)].abs().max() == 0  # and zeroes their row
    for key, ref in out["torch"].items():
        assert rel_error(out["numba"][key], ref) <= tol, key
    with pytest.raises(ValueError, match="contiguous"):
        numba_loops.NumbaLoops.grad_coeffs(g_rho.transpose(2, 3).contiguous().transpose(2, 3), lam, out["numba"]["Gq"])

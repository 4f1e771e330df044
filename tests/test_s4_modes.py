"""The S4 layer under the autograd modes Lightning uses: validation and test run inside torch.inference_mode."""

import torch
from references import core_reference, direct_causal_conv

from heads.s4 import S4


def test_inference_mode_matches_no_grad_with_threaded_chunks():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the torch backend splits channel chunks over threads when it has more than one
    try:
        layer = S4(64, l_max=None, backend="torch").eval()
        x = torch.randn(2, 64, 300)  # (B, H, L)
        with torch.no_grad():
            expected = layer(x)
        layer._cache = None  # recompute the kernel inside inference_mode rather than reuse the eval cache
        with torch.inference_mode():
            got = layer(x.clone())
    finally:
        torch.set_num_threads(threads)
    assert got.shape == (2, 64, 300)
    torch.testing.assert_close(got, expected)


def test_training_backward_with_threaded_chunks_after_inference():
    """Training after an inference-mode pass (Lightning's sanity check) still gets gradients."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        layer = S4(64, l_max=None, backend="torch")
        x = torch.randn(2, 64, 300)  # (B, H, L)
        with torch.inference_mode():
            layer.eval()(x)
        layer.train()
        layer(x).square().mean().backward()
    finally:
        torch.set_num_threads(threads)
    assert all(p.grad is not None for p in layer.parameters() if p.requires_grad)


def test_causal_conv_matches_direct_convolution_in_value_and_gradient():
    from heads.s4.conv import causal_conv, fft_length

    torch.manual_seed(0)
    B, H, L = 2, 3, 17
    u = torch.randn(B, H, L, dtype=torch.float64, requires_grad=True)
    k = torch.randn(H, L, dtype=torch.float64, requires_grad=True)
    n = fft_length(2 * L)
    torch.testing.assert_close(causal_conv(u, k, n), direct_causal_conv(u, k))
    assert torch.autograd.gradcheck(lambda a, b: causal_conv(a, b, n), (u, k))
    assert torch.autograd.gradcheck(lambda a, b: causal_conv(a, b, 2 * L - 1), (u, k))  # the shortest valid length


def test_fused_core_matches_the_unfused_layer_in_value_and_gradient():
    """The channel-chunked CPU core (threads, reused per-thread buffers, pooling, dropout scale, transposed input)
    equals the obvious composition, and its hand-written backward passes gradcheck."""
    from heads.s4.conv import fused_core

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for B, H, L, pool, with_scale in [(2, 5, 17, True, True), (1, 4, 16, False, False), (3, 3, 9, True, False)]:
            x = torch.randn(B, L, H, dtype=torch.float64)
            u = x.transpose(1, 2).requires_grad_()  # (B, H, L) view of a (B, L, H) tensor, as the blocks pass it
            k = torch.randn(H, L, dtype=torch.float64, requires_grad=True)
            D = torch.randn(H, dtype=torch.float64, requires_grad=True)
            scale = torch.rand(B, H, dtype=torch.float64) * 2 if with_scale else None
            got = fused_core(u, k, D, scale, pool, chunk=2)  # H = 3..5 channels: 2-3 chunks, some uneven
            torch.testing.assert_close(got, core_reference(u, k, D, scale, pool))
            assert got.shape == (B, H, L // 2 if pool else L)
            core = lambda a, b, c, s=scale, p=pool: fused_core(a, b, c, s, p, chunk=2)  # noqa: E731
            assert torch.autograd.gradcheck(core, (u, k, D))
    finally:
        torch.set_num_threads(threads)


def test_fused_core_with_a_folded_layernorm_affine():
    """u' = gamma u + beta inside the core: values and gradients (gamma, beta, k, D, and u when it needs one) equal
    the unfused composition; with u not requiring a gradient (the first block) the short backward is taken."""
    from heads.s4.conv import fused_core

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for B, H, L, pool, u_grad in [(2, 5, 17, True, False), (1, 4, 16, True, True), (2, 3, 9, False, True)]:
            u = torch.randn(B, L, H, dtype=torch.float64).transpose(1, 2).requires_grad_(u_grad)  # (B, H, L)
            k = torch.randn(H, L, dtype=torch.float64, requires_grad=True)
            D, gamma, beta = (torch.randn(H, dtype=torch.float64, requires_grad=True) for _ in range(3))
            scale = torch.rand(B, H, dtype=torch.float64) * 2
            got = fused_core(u, k, D, scale, pool, chunk=2, affine=(gamma, beta))
            torch.testing.assert_close(got, core_reference(u, k, D, scale, pool, (gamma, beta)))
            core = lambda a, b, c, g, e, s=scale, p=pool: fused_core(a, b, c, s, p, chunk=2, affine=(g, e))  # noqa
            assert torch.autograd.gradcheck(core, (u, k, D, gamma, beta))
    finally:
        torch.set_num_threads(threads)


def test_inference_core_keeps_nothing_and_equals_the_training_forward():
    """Under inference_mode the fused core runs without an autograd node (nothing saved for a backward) and gives
    bit for bit the training path's output."""
    from heads.s4.conv import fused_core

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        xl = torch.randn(2, 300, 24)  # (B, L, H): the block's layout, seen as (B, H, L) below
        k, D = 0.05 * torch.randn(24, 300), torch.randn(24)
        gamma, beta = 1 + 0.1 * torch.randn(24), 0.1 * torch.randn(24)
        kg = k.clone().requires_grad_()
        trained = fused_core(xl.transpose(1, 2), kg, D, None, True, 600, chunk=5, affine=(gamma, beta))
        assert trained.grad_fn is not None
        with torch.inference_mode():
            inferred = fused_core(xl.transpose(1, 2), k, D, None, True, 600, chunk=5, affine=(gamma, beta))
    finally:
        torch.set_num_threads(threads)
    assert inferred.grad_fn is None and inferred.shape == (2, 24, 150)
    assert torch.equal(inferred, trained.detach())


def test_evaluation_computes_each_kernel_once(monkeypatch):
    """The LVU protocol scores ~60 windows a video: evaluation computes each S4 kernel once, not once per batch,
    and again after the weights change."""
    import heads.s4.layer as layer_module
    from heads import build_head

    calls = []
    real = layer_module.ssm_kernel
    monkeypatch.setattr(layer_module, "ssm_kernel", lambda *a, **kw: calls.append(a[3]) or real(*a, **kw))
    torch.manual_seed(0)
    head = build_head("s4-multiscale", 16, 3, 8 * 5, d_model=16, n_layers=2, dropout=0.2)
    head.eval()
    with torch.inference_mode():
        for _ in range(3):  # three batches of windows
            head(torch.randn(4, 8, 5, 16))
    assert calls == [40, 20]  # one per layer (l_max 40, then 20)
    head.train()
    head(torch.randn(1, 8, 5, 16)).sum().backward()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.01)
    head.eval()
    with torch.inference_mode():
        head(torch.randn(4, 8, 5, 16))
        head(torch.randn(4, 8, 5, 16))
    assert calls == [40, 20, 40, 20, 40, 20]  # the training step's, then the new evaluation's

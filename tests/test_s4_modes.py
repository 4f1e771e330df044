"""The S4 layer under the autograd modes Lightning uses: validation and test run inside torch.inference_mode."""

import torch

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
    from heads.s4 import causal_conv, fft_length

    torch.manual_seed(0)
    B, H, L = 2, 3, 17
    u = torch.randn(B, H, L, dtype=torch.float64, requires_grad=True)
    k = torch.randn(H, L, dtype=torch.float64, requires_grad=True)
    n = fft_length(2 * L)
    direct = torch.stack([(u[..., : t + 1] * k.flip(-1)[..., L - 1 - t:]).sum(-1) for t in range(L)], -1)  # (B, H, L)
    torch.testing.assert_close(causal_conv(u, k, n), direct)
    assert torch.autograd.gradcheck(lambda a, b: causal_conv(a, b, n), (u, k))
    assert torch.autograd.gradcheck(lambda a, b: causal_conv(a, b, 2 * L - 1), (u, k))  # the shortest valid length

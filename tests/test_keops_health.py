"""KeOps can never break a run: the health probe behind backend="auto", and the one-line error of backend="keops".

No GPU here, so the CUDA policy ("keops" first, "torch" when the probe fails) is put on the CPU (`AUTO_POLICY`) and a
keops failure is forced by replacing its compiled routine with one that raises, as a missing libnvrtc does.
"""

from __future__ import annotations

import pytest
import torch

from heads.s4 import S4, keops_health
from heads.s4 import kernels as kernels_module
from heads.s4.kernels import resolve_backend


@pytest.fixture(autouse=True)
def fresh_probe():
    keops_health.forget()
    yield
    keops_health.forget()


@pytest.fixture
def cuda_policy_on_cpu(monkeypatch):
    monkeypatch.setitem(kernels_module.AUTO_POLICY, "cpu", ("keops", "torch"))


def _break_keops(monkeypatch, message="[KeOps] Error : nvrtc compilation failed: libnvrtc.so.12: cannot open"):
    def broken(dtype):
        raise RuntimeError(message)

    monkeypatch.setattr(kernels_module, "_keops_routine", broken)


def test_auto_falls_back_to_torch_with_one_line(monkeypatch, capsys, cuda_policy_on_cpu):
    _break_keops(monkeypatch)
    torch.manual_seed(0)
    layer = S4(8, d_state=8, l_max=64, backend="auto").eval()
    x = torch.randn(2, 8, 64)
    with torch.inference_mode():  # the probe needs autograd: it must work from an evaluation loop too
        y = layer(x)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch kernel" in err[0] and "nvrtc" in err[0], err
    reference = S4(8, d_state=8, l_max=64, backend="torch").eval()
    reference.load_state_dict(layer.state_dict())
    with torch.inference_mode():
        assert torch.allclose(y, reference(x), rtol=1e-5, atol=1e-6)
    assert resolve_backend("auto", "cpu") == "torch"  # cached: no second probe, no second line
    assert capsys.readouterr().err == ""


def test_explicit_keops_fails_with_what_is_missing(monkeypatch, cuda_policy_on_cpu):
    _break_keops(monkeypatch, "g++: error trying to exec 'cc1plus': execvp: No such file or directory")
    with pytest.raises(keops_health.KeopsUnavailable) as info:
        resolve_backend("keops", "cpu")
    message = str(info.value)
    assert "\n" not in message and "C++ compiler" in message and "backend='torch'" in message


def test_probe_rejects_a_build_that_computes_wrong_values(monkeypatch, cuda_policy_on_cpu):
    good = kernels_module.cauchy_keops_at

    def off_by_a_bit(v, a, nodes):  # what a miscompiled formula gives: plausible, wrong
        from heads.s4.reference import cauchy_naive_at

        return cauchy_naive_at(v, a, nodes) * 1.01

    monkeypatch.setattr(kernels_module, "cauchy_keops_at", off_by_a_bit)
    health = keops_health.probe("cpu")
    assert not health.ok and "disagrees" in health.cause and "kernel" in health.cause
    assert resolve_backend("auto", "cpu") == "torch"
    monkeypatch.setattr(kernels_module, "cauchy_keops_at", good)


def test_probe_without_pykeops_and_without_cuda(monkeypatch):
    real = keops_health.importlib.util.find_spec
    monkeypatch.setattr(keops_health.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pykeops" else real(name, *a))
    health = keops_health.probe("cpu")
    assert not health.ok and "pip install pykeops" in health.cause
    with pytest.raises(keops_health.KeopsUnavailable, match="pip install pykeops"):
        S4(4, backend="keops")  # checked when the layer is built, before any device is known
    monkeypatch.undo()
    keops_health.forget()
    if not torch.cuda.is_available():
        cuda = keops_health.probe("cuda:0")
        assert not cuda.ok and "no CUDA device" in cuda.cause
        assert resolve_backend("auto", "cuda") == "torch"


@pytest.mark.keops
def test_probe_passes_and_auto_takes_keops_when_healthy(cuda_policy_on_cpu):
    if not keops_health.probe("cpu").ok:
        pytest.skip(f"pykeops cannot run here: {keops_health.probe('cpu').cause}")
    health = keops_health.probe("cpu")
    assert health.max_rel_error is not None and health.max_rel_error < 1e-4
    assert resolve_backend("auto", "cpu") == "keops"

"""`make doctor`: one screen, each fact checked here against the thing it reports (no network, no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from doctor.__main__ import collect, encoder, main, render
from heads.s4 import keops_health
from heads.s4 import kernels as kernels_module


@pytest.fixture(autouse=True)
def fresh_probe():
    keops_health.forget()
    yield
    keops_health.forget()


def test_doctor_screen_reports_a_broken_keops_and_the_fallback(monkeypatch, tmp_path, capsys):
    def broken(dtype):
        raise RuntimeError("nvrtc: error: failed to open libnvrtc-builtins.so.12")

    monkeypatch.setattr(kernels_module, "_keops_routine", broken)
    monkeypatch.setitem(kernels_module.AUTO_POLICY, "cpu", ("keops", "torch"))  # the CUDA policy, on this CPU
    facts = collect(cache_dir=tmp_path / "not-yet" / "cache", encoder_name="vit-tiny-random",
                    say=lambda *a, **k: None)
    screen = "\n".join(render(facts))
    assert facts["keops"]["cpu"]["ok"] is False and "nvrtc" in facts["keops"]["cpu"]["cause"]
    assert facts["auto"]["cpu"] == "torch"
    assert "pykeops cpu  unavailable:" in screen and "cpu -> torch" in screen
    assert f"torch {torch.__version__}" in screen
    assert ("cuda -> (no device)" in screen) == (not torch.cuda.is_available())
    assert facts["disk"]["free_bytes"] > 0 and "(not created yet)" in screen
    assert "vit-tiny-random: available offline" in screen
    assert len(screen.splitlines()) <= 15  # one screen
    assert main(["--cache-dir", str(tmp_path), "--encoder", "vit-tiny-random", "--json", str(tmp_path / "d.json")]) == 0
    assert (tmp_path / "d.json").stat().st_size > 0


def test_encoder_offline_check(tmp_path, monkeypatch):
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)
    ViTModel(config).save_pretrained(tmp_path / "vit")
    assert encoder(str(tmp_path / "vit"))["offline"] is True
    (tmp_path / "empty").mkdir()
    assert encoder(str(tmp_path / "empty"))["offline"] is False
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache: a hub id is not there
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    facts = encoder("google/vit-large-patch16-224-in21k")
    assert facts["offline"] is False
    assert "NOT available offline" in "\n".join(render({"encoder": facts}))


def test_every_default_encoder_is_checked(tmp_path, monkeypatch):
    """Without ENCODER the doctor checks each data set's default (LVU's frame encoder and Breakfast/COIN's video
    encoder), saying which data sets use it."""
    from huggingface_hub import constants

    from doctor.__main__ import default_encoders
    from extract import DEFAULT_ENCODERS

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache
    found = default_encoders()
    assert [e["encoder"] for e in found] == list(DEFAULT_ENCODERS.values()) and len(set(DEFAULT_ENCODERS.values())) == 2
    screen = render({"encoder": found})
    assert len(screen) == 2 and all("NOT available offline" in line for line in screen)
    assert f"{DEFAULT_ENCODERS['clips']} (default of breakfast, coin): NOT" in screen[1]
    assert "lvu" in screen[0] and "breakfast" not in screen[0]

"""`make bench QUICK=1` runs inside the test suite, so the benchmarks cannot rot (issue: bench figures, latest.json).

The quick run exercises every benchmark path at tiny sizes; here we check that it finishes and that the JSON has the
keys the README and the plots rely on. Timings themselves are never asserted (they live in bench/, not in tests).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_bench_writes_every_section(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "VERBOSE"}, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # loaded shared machines: minutes
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[KeOps] Warning" not in proc.stdout + proc.stderr  # the libraries speak only with VERBOSE=1
    results = json.loads((tmp_path / "quick.json").read_text())
    assert results["device"]
    for section in ("store", "kernel", "heads", "step", "extract", "predict"):
        assert "error" not in results[section], results[section]
    assert results["store"]["read_ratio"] > 0
    assert {"naive", "torch"} <= set(results["kernel"])
    for backend in ("naive", "torch"):
        assert results["kernel"][backend]["s"] > 0
        assert isinstance(results["kernel"][backend]["extra_mb"], (int, float))  # an RSS delta: may dip below 0
    heads = results["heads"]
    assert {"lvu_step_s", "lvu_peak_gb", "scaling_step_s"} <= set(heads)
    assert any(name.startswith("s4-multiscale") for name in heads["lvu_step_s"])
    section = proc.stdout.split("== bench heads (quick)\n", 1)[1].split("\n== bench heads: ", 1)[0]
    lines = section.splitlines()  # one progress line per measured configuration, before the table
    assert len(lines) == len(heads["detail"]) and len(lines) > 1, section
    for line, r in zip(lines, heads["detail"]):
        assert line.startswith(("  lvu ", "  scaling ")) and f"{r['variant']} L={r['L']}: " in line, line
        assert f"{r['step_s']:.3g} s/step" in line, line
    assert {"encoder_fps", "end_to_end_fps", "bytes_per_value"} <= set(results["extract"])
    assert results["predict"]["peak_rss_ratio"] > 0 and set(results["predict"]["runs"]) == {"0.5min", "1.5min"}
    step = results["step"]  # the ratios the README quotes: efficiency, evaluation window / step, data wait share
    assert step["efficiency"]["step_gflop"] > 0 and 0 < step["efficiency"]["efficiency"]
    assert set(step["efficiency"]["parts_s"]) == {"kernel", "core", "gemms", "rest"}
    assert step["evaluation"]["windows_per_s"] > 0 and step["evaluation"]["window_over_step"] > 0
    assert 0 <= step["data"]["wait_share"] < 1 and step["data"]["workers"] == 2
    assert (tmp_path / "quick-kernel.png").stat().st_size > 0
    import torch

    if not torch.cuda.is_available():  # recorded, not silently absent
        assert "no CUDA device" in results["gpu"]["skipped"]


@pytest.mark.slow
def test_gpu_section_runs_on_the_cpu_at_tiny_sizes():
    """No GPU is lent to most runs of this suite: the GPU section's own code (the LVU comparison with its
    materialized-batch search and ratios, the float64 gradcheck of keops against torch) runs here on the CPU."""
    from bench import gpu

    out = gpu.run(quick=True, device="cpu", parts=("gradcheck", "lvu"), say=lambda *a, **k: None)
    for L in ("L=32", "L=78"):
        assert out["gradcheck"][L]["torch"]["gradcheck"] is True, out["gradcheck"]
        if "gradcheck" in out["gradcheck"][L]["keops"]:  # pykeops runs here
            assert out["gradcheck"][L]["keops"]["gradcheck"] is True
            assert out["gradcheck"][L]["keops_vs_torch_max_rel"] < 1e-8
    lvu = out["lvu"]
    assert set(lvu["step_s"]) == {"s4-multiscale (keops)", "s4-multiscale (torch kernel)",
                                  "transformer-multiscale (sdpa)", "transformer-multiscale (materialized)"}
    assert isinstance(lvu["step_s"]["s4-multiscale (torch kernel)"], float)
    assert lvu["materialized_fits_at_batch"] == gpu.BATCH  # tiny sizes fit
    assert lvu["materialized_vs_s4_same_batch"]["step_ratio"] > 0
    assert all(r["batch"] == gpu.BATCH for r in lvu["detail"])


def test_feature_precision_scores_both_roundings():
    """bench/feature_precision.py: the float16 logits are the head's on the rounded tokens, compared with its
    logits on the float32 tokens (the paper's input), and the rounding figure is float16's."""
    import torch

    from bench.feature_precision import logit_effect
    from heads import build_head

    torch.manual_seed(0)
    head = build_head("s4-multiscale", 12, 3, 8 * 3, d_model=16, n_layers=2, d_state=8, dropout=0.0)
    tokens = [torch.randn(8, 3, 12) * 30 for _ in range(4)]  # (T, P, D) float32
    out = logit_effect(head, tokens)
    with torch.no_grad():
        full = head(torch.stack(tokens))
        half = head(torch.stack(tokens).half())
    torch.testing.assert_close(torch.tensor(out["logits_float32"]), full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(out["logits_float16"]), half, rtol=1e-5, atol=1e-6)
    assert out["logit_abs_diff_max"] == pytest.approx(float((full - half).abs().max()), rel=1e-4, abs=1e-7)
    assert 0 < out["logit_abs_diff_max"] < 0.05 and 0 < out["feature_rel_rounding_max_normal"] <= 2.0**-11
    assert out["videos"] == 4 and out["predictions_changed"] == int((full.argmax(-1) != half.argmax(-1)).sum())

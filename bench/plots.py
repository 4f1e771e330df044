"""Pictures of the benchmark figures (PNG, matplotlib's Agg backend; no display needed).

`plot_all(results, out)` draws what the results hold and returns the paths it wrote:
  scaling.png  step time and peak memory (process RSS) against L for each head, log-log
  kernel.png   time and extra memory of each Cauchy-kernel backend
Pictures of a `--quick` run (make bench QUICK=1) carry a caption saying their sizes are tiny and not representative.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _numeric(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


QUICK_NOTE = "QUICK=1: tiny sizes that run every code path in seconds; these numbers are not representative"


def _seconds(value: float) -> str:
    """A duration readable at every size: '1.27 s', '0.41 s', '3.2 ms', '45 µs'."""
    if value >= 0.1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def _finish(fig, path: Path, note: str | None) -> Path:
    """tight layout, the caption (a quick run's warning) under the axes, save, close."""
    if note:
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        fig.text(0.5, 0.015, note, ha="center", va="bottom", fontsize=9, color="tab:red")
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scaling(heads: dict, path: Path, note: str | None = None) -> Path | None:
    """Step time (and peak GB when present) against L, one line per head, log-log axes."""
    if not heads.get("scaling_peak_gb") and isinstance(heads.get("detail"), list):
        peaks: dict = {}  # every measured (variant, L) -> peak RSS, the LVU-only materialized point included
        for entry in heads["detail"]:
            if isinstance(entry, dict) and _numeric(entry.get("peak_gb")) is not None and entry.get("L"):
                peaks.setdefault(entry["variant"], {})[str(entry["L"])] = entry["peak_gb"]
        heads = {**heads, "scaling_peak_gb": peaks}
    panels = [("scaling_step_s", "training step (s)")]
    if heads.get("scaling_peak_gb"):
        panels.append(("scaling_peak_gb", "peak memory (GB)"))
    if not heads.get("scaling_step_s"):
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for head, series in sorted(heads[key].items()):
            points = sorted((int(L), _numeric(v)) for L, v in series.items())
            points = [(L, v) for L, v in points if v is not None]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) > 1 else "s", label=head)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L = T·P")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("S4 vs self-attention: cost against sequence length")
    return _finish(fig, path, note)


def plot_kernel(kernel: dict, path: Path, note: str | None = None) -> Path | None:
    """Bar charts of the Cauchy-kernel backends: forward+backward seconds and peak extra MB."""
    rows = [(name, _numeric(v.get("s")), _numeric(v.get("extra_mb")))
            for name, v in sorted(kernel.items()) if isinstance(v, dict)]
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return None
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [r[0] for r in rows]
    ax_t.bar(names, [r[1] for r in rows], color="tab:blue")
    ax_t.set_ylabel("kernel forward + backward (s, log)")
    ax_t.set_yscale("log")
    for name, seconds, _ in rows:
        ax_t.annotate(_seconds(seconds), (names.index(name), seconds), ha="center", va="bottom", fontsize=8)
    ax_m.bar(names, [r[2] or 0.0 for r in rows], color="tab:orange")
    ax_m.set_ylabel("peak extra memory (MB)")
    for ax in (ax_t, ax_m):
        ax.tick_params(axis="x", rotation=20)
        ax.grid(True, axis="y", alpha=0.3)
    size = (kernel.get("detail") or {}).get("size") or {}
    where = ", ".join(f"{k}={v:,}" for k, v in size.items())
    device = (kernel.get("detail") or {}).get("device", "")
    fig.suptitle(f"S4 kernel backends ({where}{', ' + device if device else ''})" if where else "S4 kernel backends")
    return _finish(fig, path, note)


def plot_all(results: dict, out: Path, prefix: str = "") -> list[Path]:
    out = Path(out)
    written = []
    note = QUICK_NOTE if results.get("quick") else None
    heads = results.get("heads")
    if isinstance(heads, dict) and "error" not in heads:
        written.append(plot_scaling(heads, out / f"{prefix}scaling.png", note))
    kernel = results.get("kernel")
    if isinstance(kernel, dict) and "error" not in kernel:
        written.append(plot_kernel(kernel, out / f"{prefix}kernel.png", note))
    return [p for p in written if p is not None]

"""`make report RUN=runs/<dataset>/<head>/version_N`: pictures of one training run.

Reads what a run directory holds (Lightning's `metrics.csv`, our `predictions.csv` and `results.json`) and writes
  curves.png     every logged metric against the epoch, counted from 1 like `make train`'s lines (train and val side
                 by side per quantity, one colour per split in every panel, identical curves drawn once)
  confusion.png  the test confusion matrix (row-normalised) for classification, or prediction-vs-label scatter for
                 regression
next to them, in the run directory. No training, no cache access: the run directory is all it needs.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

from data.errors import UserError


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_metrics(path: Path) -> dict[str, list[tuple[float, float]]]:
    """metrics.csv -> {metric: [(epoch, value), ...]}, epochs counted from 1 as `make train` prints them.

    Step-level rows are averaged per epoch; rows after the last training epoch (the re-validation and test of the
    best checkpoint that runs before this version logged there) are not an epoch and are left out."""
    sums: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    step_epoch = sorted((_float(r.get("step", "")), _float(r.get("epoch", ""))) for r in rows
                        if _float(r.get("step", "")) is not None and _float(r.get("epoch", "")) is not None)
    trained = [_float(r.get("epoch", "")) for r in rows
               if any(k.startswith("train/") and _float(v) is not None for k, v in r.items() if k)]
    last = max((e for e in trained if e is not None), default=None)
    for row in rows:
        epoch = _float(row.get("epoch", ""))
        step = _float(row.get("step", ""))
        if epoch is None and step is not None:  # e.g. Lightning's learning-rate rows: epoch of that step
            epoch = next((e for s, e in step_epoch if s >= step), None)
        if epoch is None or (last is not None and epoch > last):
            continue
        for key, text in row.items():
            value = _float(text)
            if key in ("epoch", "step") or value is None:
                continue
            sums[key][epoch + 1].append(value)
    metrics = {key: sorted((e, sum(v) / len(v)) for e, v in per_epoch.items()) for key, per_epoch in sums.items()}
    if "train/loss_epoch" in metrics:  # the per-step losses averaged per epoch would draw the same curve again
        metrics.pop("train/loss_step", None)
    return metrics


# One colour per split in every panel, and for the learning rates their own.
SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
LR_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def _curves_in_panel(metrics: dict, keys: list[str]) -> list[tuple[str, list[tuple[float, float]], str]]:
    """(label, points, colour) per curve; curves with the same points are drawn once, labelled with all names."""
    curves: list[tuple[list[str], list[tuple[float, float]]]] = []
    for key in keys:
        same = next((c for c in curves if c[1] == metrics[key]), None)
        if same is not None:
            same[0].append(key)
        else:
            curves.append(([key], metrics[key]))
    out = []
    for i, (names, points) in enumerate(curves):
        split = names[0].split("/", 1)[0]
        colour = SPLIT_COLOURS.get(split, LR_COLOURS[i % len(LR_COLOURS)])
        label = names[0] + "".join(f" = {n.rsplit('/', 1)[-1]}" for n in names[1:])
        out.append((label, points, colour))
    return out


def curves_figure(metrics: dict[str, list[tuple[float, float]]], title: str):
    """The matplotlib Figure of curves.png: one panel per quantity, whole epochs on every x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # group "train/loss", "val/loss" ... by the quantity after the split prefix
    groups: dict[str, list[str]] = defaultdict(list)
    for key in sorted(metrics):
        quantity = key.split("/", 1)[-1].replace("_epoch", "").replace("_step", "")
        if key.startswith("lr"):
            quantity = "learning rate"
        groups[quantity].append(key)
    n = max(1, len(groups))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax, (quantity, keys) in zip(axes.flat, sorted(groups.items())):
        for label, points, colour in _curves_in_panel(metrics, keys):
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label, color=colour)
        ax.set_title(quantity)
        ax.set_xlabel("epoch")
        # epochs are whole; with the default min_n_ticks=2 a single epoch gets fractional ticks instead
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(metrics: dict[str, list[tuple[float, float]]], out: Path, title: str) -> Path:
    """Write `out`/curves.png (see curves_figure); returns its path."""
    import matplotlib.pyplot as plt

    fig = curves_figure(metrics, title)
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_predictions(path: Path, class_names: list[str] | None = None) -> tuple[list[float], list[float]]:
    """Labels and predictions of predictions.csv as numbers: class names become their index in `class_names`
    (runs before names were written hold the indices themselves)."""
    index = {name: i for i, name in enumerate(class_names or [])}

    def number(text: str) -> float:
        return float(index[text]) if text in index else float(text)

    labels, preds = [], []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            labels.append(number(row["label"]))
            preds.append(number(row["pred"]))
    return labels, preds


def plot_predictions(labels: list[float], preds: list[float], task_type: str, class_names: list[str] | None,
                     out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if task_type == "regression":
        fig, ax = plt.subplots(figsize=(4.8, 4.5))
        ax.scatter(labels, preds, s=10, alpha=0.6)
        lo, hi = min(labels + preds), max(labels + preds)
        ax.plot([lo, hi], [lo, hi], color="gray", lw=1)
        ax.set_xlabel("label")
        ax.set_ylabel("prediction")
        mse = float(np.mean((np.asarray(labels) - np.asarray(preds)) ** 2))
        ax.set_title(f"{title}\ntest MSE {mse:.3f}", fontsize=9)
        path = out / "scatter.png"
    else:
        k = max(int(max(labels + preds)) + 1, len(class_names or []))
        matrix = np.zeros((k, k))
        for y, p in zip(labels, preds):
            matrix[int(y), int(p)] += 1
        totals = matrix.sum(axis=1, keepdims=True)
        normalised = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
        size = min(12, 3 + 0.35 * k)
        fig, ax = plt.subplots(figsize=(size + 1, size))
        image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(image, ax=ax, fraction=0.046)
        names = class_names if class_names and len(class_names) == k else [f"class {i}" for i in range(k)]
        if k <= 30:  # class names on both axes, long ones shortened
            short = [n if len(n) <= 40 else f"{n[:37]}..." for n in names]
            ax.set_xticks(range(k), short, fontsize=7, rotation=90)
            ax.set_yticks(range(k), short, fontsize=7)
            for i in range(k):
                for j in range(k):
                    if matrix[i, j]:
                        ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                                color="white" if normalised[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        accuracy = float(np.trace(matrix) / max(1.0, matrix.sum()))
        ax.set_title(f"{title}\ntest accuracy {accuracy:.3f} ({int(matrix.sum())} videos)", fontsize=9)
        path = out / "confusion.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def run_title(results: dict, run: Path) -> str:
    """'lvu/director · s4-multiscale · version_3' (the task is part of what was trained)."""
    what = "/".join(str(results[k]) for k in ("dataset", "task") if results.get(k))
    return " · ".join(part for part in (what, results.get("head"), run.name) if part)


def report(run: Path) -> list[Path]:
    """Draw the pictures of one run directory; returns the files written."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist; pass RUN=runs/<dataset>/<head>/version_N")
    metrics_files = sorted(run.rglob("metrics.csv"))
    predictions = run / "predictions.csv"
    if not metrics_files and not predictions.exists():
        raise UserError(f"{run} holds neither metrics.csv nor predictions.csv; is it a run made by `make train`?")
    results = {}
    if (run / "results.json").exists():
        results = json.loads((run / "results.json").read_text())
    title = run_title(results, run)
    written = []
    if metrics_files:
        metrics = read_metrics(metrics_files[-1])
        if metrics:
            written.append(plot_curves(metrics, run, title))
    if predictions.exists():
        labels, preds = read_predictions(predictions, results.get("class_names"))
        if labels:
            task_type = results.get("task_type", "classification")
            written.append(plot_predictions(labels, preds, task_type, results.get("class_names"), run, title))
    return written

"""What predict shows and saves for each video: one printed line, `<name>.json`, `<name>.png`, `predictions.csv`.

    <video>: <label> 0.83, <label> 0.10, ...              (regression: <video>: <value>)
    <OUT>/<name>.json  {"video", "checkpoint", "head", "task_type", "duration_s", "top": [{"label", "probability"}],
                        "windows": [{"start_s", "end_s", "probabilities": {label: p}}]}   (regression: "value")
    <OUT>/<name>.png   window protocols: the top classes' probabilities along the time line; subset: top-k bars
    <OUT>/predictions.csv  one row per video: video, label, probability, then label_2, probability_2, ... (top-k);
                           rows of videos predicted into the same OUT before are kept (a video's row is replaced)
`<name>` is the video's path relative to the folder given (a single file: its stem), without the extension.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from data.datasets.base import default_class_names
from predict.classify import VideoScores


def top_k(scores: np.ndarray, class_names: list[str], k: int) -> list[tuple[str, float]]:
    """The k best (label, probability) pairs, best first (ties: class order)."""
    order = np.argsort(-scores, kind="stable")[: max(1, k)]
    return [(class_names[i], float(scores[i])) for i in order]


def class_names(config: dict) -> list[str] | None:
    """The checkpoint's class names (`class <i>` for a checkpoint that has none); regression: None."""
    if config["task_type"] == "regression":
        return None
    return list(config.get("class_names") or default_class_names(int(config["n_outputs"])))


def summary(video: str, result: VideoScores, config: dict, k: int) -> str:
    """The printed line of one video."""
    names = class_names(config)
    if names is None:
        return f"{video}: {result.scores[0]:.4g}"
    return f"{video}: " + ", ".join(f"{label} {p:.2f}" for label, p in top_k(result.scores, names, k))


def record(video: str, checkpoint: str, config: dict, result: VideoScores, k: int) -> dict:
    """The JSON document of one video."""
    names = class_names(config)
    out = {"video": video, "checkpoint": checkpoint, "head": config.get("head"), "task_type": config["task_type"],
           "duration_s": round(result.duration_s, 3)}
    if config["task_type"] == "regression":
        out["value"] = float(result.scores[0])
        out["windows"] = [{"start_s": round(a, 3), "end_s": round(b, 3), "value": float(s[0])}
                          for a, b, s in result.windows]
        return out
    out["top"] = [{"label": label, "probability": round(p, 6)} for label, p in top_k(result.scores, names, k)]
    out["windows"] = [{"start_s": round(a, 3), "end_s": round(b, 3),
                       "probabilities": {n: round(float(p), 6) for n, p in zip(names, s)}}
                      for a, b, s in result.windows]
    return out


def csv_row(document: dict, k: int) -> dict[str, str]:
    row = {"video": document["video"]}
    if "value" in document:
        row["value"] = f"{document['value']:.6g}"
        return row
    for rank, entry in enumerate(document["top"][:k], start=1):
        suffix = "" if rank == 1 else f"_{rank}"
        row[f"label{suffix}"] = entry["label"]
        row[f"probability{suffix}"] = f"{entry['probability']:.4f}"
    return row


def update_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    """Write `rows` into predictions.csv, keeping the rows of other videos already there."""
    old: list[dict[str, str]] = []
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            old = list(csv.DictReader(handle))
    new_videos = {row["video"] for row in rows}
    merged = [row for row in old if row.get("video") not in new_videos] + rows
    header: list[str] = []
    for row in merged:
        header += [key for key in row if key not in header]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerows(merged)
    os.replace(tmp, path)
    return path


def plot(path: Path, document: dict, window_protocol: bool, k: int) -> Path:
    """The picture of one video: probabilities along the time line (windows) or the top-k bars (one clip)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = Path(document["video"]).name
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    windows = document["windows"]
    if "value" in document:
        if window_protocol:
            centres = [(w["start_s"] + w["end_s"]) / 2 for w in windows]
            ax.plot(centres, [w["value"] for w in windows], lw=1.2)
            ax.set_xlabel("time in the video (s), centre of each window")
            ax.set_ylabel("prediction")
        else:
            ax.barh([0], [document["value"]])
            ax.set_yticks([0], ["prediction"])
        ax.set_title(f"{title}: {document['value']:.4g}", fontsize=9)
    elif window_protocol:
        centres = [(w["start_s"] + w["end_s"]) / 2 for w in windows]
        for entry in document["top"][: min(k, 5)]:
            label = entry["label"]
            ax.plot(centres, [w["probabilities"][label] for w in windows], lw=1.2,
                    label=f"{label} (mean {entry['probability']:.2f})")
        ax.set_ylim(0, 1)
        ax.set_xlabel("time in the video (s), centre of each window")
        ax.set_ylabel("probability")
        ax.legend(fontsize=7, loc="upper right")
        ax.set_title(f"{title}: {document['top'][0]['label']}", fontsize=9)
    else:
        top = document["top"][::-1]
        ax.barh(range(len(top)), [e["probability"] for e in top])
        ax.set_yticks(range(len(top)), [e["label"] if len(e["label"]) <= 40 else e["label"][:37] + "..."
                                        for e in top], fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("probability")
        ax.set_title(f"{title}: {document['top'][0]['label']}", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

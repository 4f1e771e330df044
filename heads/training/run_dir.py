"""The run directory of `python -m heads train|eval`:

    <runs-dir>/<dataset>[-<task>]/<head>/version_N/
        checkpoints/{best,last}.ckpt, metrics.csv (Lightning's CSV logger), config.json (the resolved config),
        results.json (val and test metrics of the best checkpoint, cache tag, code version), predictions.csv

Versions (`next_version`, `find_last`), metrics.csv kept across a resume, predictions.csv, the summary line and the
JSON-safe form of what is written (`data.outputs.plain`).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from data.errors import UserError
from data.outputs import write_json


def next_version(parent: Path) -> int:
    versions = [int(m.group(1)) for p in parent.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(versions, default=-1) + 1


def find_last(runs_dir: Path, head: str | None, dataset: str | None) -> Path:
    """`--resume last`: the most recently written last.ckpt under runs_dir (of that head / dataset when given)."""
    found = [p for p in runs_dir.glob("*/*/version_*/checkpoints/last.ckpt")
             if (head is None or p.parents[2].name == head)
             and (dataset is None or p.parents[3].name.split("-")[0] == dataset)]
    if not found:
        raise UserError(f"--resume last: no checkpoints/last.ckpt under {runs_dir}"
                        f"{' for ' + head if head else ''}{' on ' + dataset if dataset else ''}; "
                        f"pass the checkpoint path instead (RESUME=runs/.../checkpoints/last.ckpt)")
    return max(found, key=lambda p: p.stat().st_mtime)


def read_metrics_rows(path: Path, before_step: int | None) -> list[dict]:
    """Rows of an existing metrics.csv logged up to `before_step` (Lightning's CSV logger truncates the file when a
    resumed run starts logging into the same directory; these rows are put back afterwards)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if before_step is None:
        return rows
    return [r for r in rows if not r.get("step") or float(r["step"]) < before_step]


def merge_metrics(path: Path, old_rows: list[dict]) -> None:
    """Prepend `old_rows` to metrics.csv (union of the headers)."""
    new_rows = []
    if path.is_file():
        with path.open(newline="") as handle:
            new_rows = list(csv.DictReader(handle))
    keys = sorted({k for row in old_rows + new_rows for k in row if k})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k} for row in old_rows + new_rows)


def write_predictions(path: Path, out: dict, video_ids: list[str], class_names: list[str] | None) -> None:
    """video_id,label,pred[,p_<class>...] — one row per test video, classes by name (probabilities = mean softmax
    over its clips); regression: the label and the prediction."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        scores = out.get("scores")
        names = None
        header = ["video_id", "label", "pred"]
        if scores:
            names = class_names if class_names and len(class_names) == len(scores[0]) else \
                [f"class {i}" for i in range(len(scores[0]))]
            header += [f"p_{n}" for n in names]
        writer.writerow(header)
        for row, v in enumerate(out["video_index"]):
            label, pred = out["labels"][row], out["preds"][row]
            line = [video_ids[v], *((names[int(label)], names[int(pred)]) if names else (label, pred))]
            if scores:
                line += [f"{p:.6f}" for p in scores[row]]
            writer.writerow(line)


def split_changes(recorded: dict | None, current: dict[str, list[str]]) -> list[str]:
    """One line per split whose video ids differ from those a checkpoint recorded ([] when all agree, or when the
    checkpoint predates recording them)."""
    lines = []
    for split, ids in (current.items() if recorded else ()):
        before, now = set(recorded.get(split) or ()), set(ids)
        if before == now:
            continue
        added, gone = sorted(now - before), sorted(before - now)
        lines.append(f"the {split} split is not the checkpoint's: {len(added)} of its {len(now)} videos were not in "
                     f"it at training time, {len(gone)} of the {len(before)} then are not in it now "
                     f"(e.g. {(added or gone)[0]!r})")
    return lines


def summary_line(results: dict) -> str:
    m = results["metric"]
    return (f"{results['head']} on {results['dataset']}{'/' + results['task'] if results.get('task') else ''}: "
            f"test {m} {results['test'][m]:.4f} (val {m} {results['val'][m]:.4f}; best checkpoint of "
            f"{results.get('epochs_run', '?')} epochs) -> {results['run_dir']}")


def run_directory(runs_dir: Path, name: str, head: str, resume: str | None, resume_ckpt: dict | None):
    """(run_dir, old metrics rows): `runs_dir/name/head/version_N` with the next free N, or, when resuming from a
    checkpoint inside a run directory, that run (and its metrics.csv rows up to the checkpoint's step, which
    Lightning's CSV logger would truncate). Only global rank 0 writes there; Lightning broadcasts rank 0's checkpoint
    directory to the other ranks."""
    resume_path = Path(resume) if resume else None
    if resume_path is not None and resume_path.parent.name == "checkpoints" and \
            resume_path.parent.parent.name.startswith("version_"):
        run_dir = resume_path.parent.parent
        return run_dir, read_metrics_rows(run_dir / "metrics.csv", before_step=resume_ckpt.get("global_step"))
    parent = runs_dir / name / head
    return parent / f"version_{next_version(parent)}", []


def write_run(run_dir: Path, config: dict, results: dict, old_metrics: list[dict], test_outputs: dict,
              test_ids: list[str], class_names: list[str] | None) -> None:
    """What a finished run leaves: metrics.csv with the rows of before a resume merged back, config.json,
    results.json (both written atomically) and predictions.csv."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if old_metrics:
        merge_metrics(run_dir / "metrics.csv", old_metrics)
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "results.json", results)
    write_predictions(run_dir / "predictions.csv", test_outputs, test_ids, class_names)

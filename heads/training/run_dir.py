"""The run directory of `python -m heads train|eval`:

    <runs-dir>/<dataset>[-<task>]/<head>/version_N/
        checkpoints/{best,last}.ckpt, metrics.csv (Lightning's CSV logger), config.json (the resolved config),
        results.json (val and test metrics of the best checkpoint, cache tag, code version), predictions.csv

Versions (`next_version`, `find_last`, `newest_best`), metrics.csv kept across resumes (`metrics_logger`),
predictions.csv, the summary line and the JSON-safe form of what is written (`data.outputs.plain`).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from data.errors import UserError
from data.outputs import write_json


def run_name(dataset: str, task: str | None) -> str:
    """The folder of a data set's runs: `<dataset>` or `<dataset>-<task>` (e.g. lvu-director)."""
    return f"{dataset}-{task}" if task else dataset


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


def newest_best(runs_dir: Path) -> Path:
    """The most recently written `runs_dir`/**/checkpoints/best.ckpt (`make eval` and `make predict` without CKPT).
    UserError when there is none."""
    runs_dir = Path(runs_dir)
    found = list(runs_dir.glob("**/checkpoints/best.ckpt")) if runs_dir.is_dir() else []
    if not found:
        raise UserError(f"no checkpoints/best.ckpt under {runs_dir}/: train a head first (`make train`) or pass "
                        "CKPT=runs/<dataset>/<head>/version_N/checkpoints/best.ckpt")
    return max(found, key=lambda p: p.stat().st_mtime)


def metrics_logger(run_dir: Path, resume_step: int | None = None):
    """Lightning's CSV logger writing `run_dir`/metrics.csv, a row as it is logged (Lightning saves after every log).

    A run resumed from a checkpoint taken at global step `resume_step` continues the same file: the rows logged
    before that step stay, the ones after it (the unfinished epoch the checkpoint does not hold, a final
    re-validation) go, so that an interrupted resume never loses the history before it. Lightning's own writer
    would delete the whole file when the directory is not empty (and warn that it will)."""
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.loggers.csv_logs import ExperimentWriter
    from pytorch_lightning.loggers.logger import rank_zero_experiment

    class ContinuingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:  # Lightning: warn and delete metrics.csv
            path = Path(self.metrics_file_path)
            if resume_step is None or not path.is_file():
                path.unlink(missing_ok=True)
                return
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                keys, rows = list(reader.fieldnames or []), list(reader)
            rows = [r for r in rows if r.get("step") and float(r["step"]) < resume_step]
            tmp = path.with_suffix(".csv.tmp")
            with tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)
            tmp.replace(path)
            self.metrics_keys = keys  # save() appends under this header (and rewrites it when keys are added)

    class ContinuingCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment  # other DDP ranks get a dummy writer, as with Lightning's own
        def experiment(self):
            if self._experiment is None:
                self._experiment = ContinuingWriter(log_dir=self.log_dir)
            return self._experiment

    run_dir = Path(run_dir)
    return ContinuingCSVLogger(save_dir=str(run_dir.parent.parent), name=run_dir.parent.name, version=run_dir.name)


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
        lines.append(f"the {split} split is not the checkpoint's: {len(added)} added and {len(gone)} gone since "
                     f"training ({len(before)} then, {len(now)} now; e.g. {(added or gone)[0]!r} "
                     f"{'added' if added else 'gone'})")
    return lines


def read_results(run_dir: str | Path | None) -> dict | None:
    """A run's results.json, or None when the run has not finished (or no run is named)."""
    path = Path(run_dir) / "results.json" if run_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def summary_line(results: dict) -> str:
    """The last line `make train` and `make eval` print: the test metric, which checkpoint, where it is saved."""
    m = results["metric"]
    epoch, of = results.get("best_epoch"), results.get("epochs_run")
    role = results.get("checkpoint_role", "best")  # eval of last.ckpt (or another file) says so
    role = f"{role} checkpoint" if role in ("best", "last") else f"checkpoint {role}"
    which = (f"{role}: epoch {epoch} of {of}" if epoch and of else f"{role} of epoch {epoch}" if epoch
             else f"{of} epochs" if of else "last state")
    return (f"{results['head']} on {results['dataset']}{'/' + results['task'] if results.get('task') else ''}: "
            f"test {m} {results['test'][m]:.4f} (val {m} {results['val'][m]:.4f}; {which}) -> "
            f"{results.get('saved_to') or results['run_dir']}")


def run_directory(runs_dir: Path, name: str, head: str, resume: str | None, chosen: str | None = None) -> Path:
    """`runs_dir/name/head/version_N` with the next free N; when resuming from a checkpoint inside a run directory,
    that run; else `chosen` when the caller reserved one (an ablation names its runs before they start). Only global
    rank 0 writes there; Lightning broadcasts rank 0's checkpoint directory to the other ranks."""
    resume_path = Path(resume) if resume else None
    if resume_path is not None and resume_path.parent.name == "checkpoints" and \
            resume_path.parent.parent.name.startswith("version_"):
        return resume_path.parent.parent
    if chosen:
        return Path(chosen)
    parent = runs_dir / name / head
    return parent / f"version_{next_version(parent)}"


def write_run(run_dir: Path, config: dict, results: dict, test_outputs: dict, test_ids: list[str],
              class_names: list[str] | None) -> None:
    """What a finished run leaves besides its checkpoints and metrics.csv: config.json, results.json (both written
    atomically) and predictions.csv."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "results.json", results)
    write_predictions(run_dir / "predictions.csv", test_outputs, test_ids, class_names)

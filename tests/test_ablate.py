"""`python -m heads ablate` (`make ablate`) on tiny caches: the summary's numbers are the runs' results.json, a rerun
trains nothing, an interrupted run resumes in its own directory, a failed run is reported while the others go on,
and TASK=all on a tiny LVU layout writes the paper-layout table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_ARGS
from test_train import one_line_error

from data.store import ShardWriter, make_tag
from heads.__main__ import main
from heads.training.module import HeadModule
from heads.training.tables import REPORTED

REPO = Path(__file__).resolve().parent.parent


def ablate_cli(root, cache, runs, *extra) -> list[str]:
    return ["ablate", "--dataset", "synthetic", "--data-root", str(root), "--cache-dir", str(cache), "--runs-dir",
            str(runs), *TINY_TRAIN_ARGS, "--epochs", "1", *extra]


def versions(runs: Path) -> list[str]:
    return sorted(p.relative_to(runs).as_posix() for p in runs.glob("*/*/version_*"))


def test_summary_is_the_runs_results_and_a_rerun_trains_nothing(tiny_cache, tmp_path, capsys):
    root, cache = tiny_cache
    runs = tmp_path / "runs"
    argv = ablate_cli(root, cache, runs, "--heads", "s4-multiscale,mean-pool", "--seeds", "0,1")
    assert main(argv) == 0
    out = runs / "ablate" / "synthetic" / "default"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "acc" and list(summary["heads"]) == ["s4-multiscale", "mean-pool"]
    assert summary["cache"]["tag"] == "vit-tiny-random_seg12" and summary["floor"]["chance"] == pytest.approx(1 / 3)
    markdown = (out / "summary.md").read_text()
    for head, row in summary["heads"].items():
        assert row["seeds"] == [0, 1] and row["n"] == 2 and not row["failed"] and len(row["runs"]) == 2
        results = [json.loads((Path(r) / "results.json").read_text()) for r in row["runs"]]
        configs = [json.loads((Path(r) / "config.json").read_text()) for r in row["runs"]]
        assert [c["seed"] for c in configs] == [0, 1] and {c["head"] for c in configs} == {head}
        assert {r["cache_tag"] for r in results} == {"vit-tiny-random_seg12"}
        values = [r["test"]["acc"] for r in results]
        assert row["values"] == values and row["val_values"] == [r["val"]["acc"] for r in results]
        assert row["mean"] == pytest.approx(np.mean(values))
        assert row["std"] == pytest.approx(np.std(values, ddof=1))
        assert row["params"] == results[0]["params"]
        assert row["train_s"] == pytest.approx(np.mean([r["train_s"] for r in results]), abs=0.05)
        assert f"| {head} | {row['mean']:.3f} ± {row['std']:.3f} | 2 |" in markdown
    test_ids = json.loads((Path(row["runs"][0]) / "results.json").read_text())["splits"]["test"]
    labels = [int(v[-3:]) % 3 for v in test_ids]  # conftest's tiny cache: label = index % classes
    train_labels = [i % 3 for i in range(18)]  # conftest's tiny cache: label = index % classes
    majority = max(set(train_labels), key=train_labels.count)
    assert summary["floor"]["majority"] == pytest.approx(np.mean(np.array(labels) == majority))
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ledger = json.loads((out / "runs.json").read_text())["runs"]
    assert sorted((e["head"], e["seed"], e["status"]) for e in ledger) == [
        ("mean-pool", 0, "done"), ("mean-pool", 1, "done"), ("s4-multiscale", 0, "done"), ("s4-multiscale", 1, "done")]

    # the same command again: every pair is found finished, nothing is trained, the summary is unchanged
    before = versions(runs)
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("results.json")}
    capsys.readouterr()
    assert main(argv) == 0
    assert versions(runs) == before
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("results.json")} == stamps
    assert capsys.readouterr().out.count("finished before") == 4
    assert json.loads((out / "summary.json").read_text())["heads"] == summary["heads"]

    # a run inside the ablation is the ordinary run: `train` alone with that seed gives the same numbers
    alone = ["train", *ablate_cli(root, cache, tmp_path / "alone")[1:], "--head", "s4-multiscale", "--seed", "1"]
    assert main(alone) == 0
    single = json.loads(next((tmp_path / "alone").rglob("results.json")).read_text())
    inside = json.loads((Path(summary["heads"]["s4-multiscale"]["runs"][1]) / "results.json").read_text())
    for split in ("val", "test"):
        assert single[split] == pytest.approx(inside[split], rel=1e-6)

    # another configuration is another run; the first one's entries stay in the ledger
    assert main(ablate_cli(root, cache, runs, "--heads", "mean-pool", "--seeds", "0", "--lr", "3e-3")) == 0
    assert len(versions(runs)) == len(before) + 1
    assert len(json.loads((out / "runs.json").read_text())["runs"]) == 5


def test_interrupted_run_resumes_and_a_failed_run_is_reported(tiny_cache, tmp_path, capsys, monkeypatch):
    """s4 heads fail on an unknown Cauchy backend (mean-pool has no S4 layer); mean-pool seed 1 is interrupted by a
    Ctrl-C at its second epoch: the ablation stops there, and the rerun resumes it from its last.ckpt in place."""
    monkeypatch.delenv("DEBUG", raising=False)
    root, cache = tiny_cache
    runs = tmp_path / "runs"
    argv = ablate_cli(root, cache, runs, "--heads", "s4-singlescale,mean-pool", "--seeds", "0,1", "--epochs", "3",
                      "--backend", "bogus")
    original = HeadModule.on_train_epoch_start

    def ctrl_c_at_epoch_1_of_seed_1(self):
        if self.current_epoch == 1 and self.hparams.config["seed"] == 1:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(HeadModule, "on_train_epoch_start", ctrl_c_at_epoch_1_of_seed_1)
    try:
        assert main(argv) == 130  # Lightning's graceful stop on Ctrl-C, the exit status a shell reports for it
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores further Ctrl-C after one
    monkeypatch.undo()
    out = runs / "ablate" / "synthetic" / "default"
    ledger = {(e["head"], e["seed"]): e for e in json.loads((out / "runs.json").read_text())["runs"]}
    interrupted = Path(ledger["mean-pool", 1]["run_dir"])
    assert ledger["mean-pool", 1]["status"] == "running" and not (interrupted / "results.json").exists()
    assert torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert ledger["s4-singlescale", 0]["status"] == "failed" and "bogus" in ledger["s4-singlescale", 0]["error"]
    assert "ValueError" in (Path(ledger["s4-singlescale", 0]["run_dir"]) / "error.txt").read_text()
    capsys.readouterr()

    assert main(argv) == 1  # the failed runs are retried (and fail again); the interrupted one is resumed
    printed = capsys.readouterr()
    assert "resuming the interrupted run" in printed.out and "failed: UserError: cannot build" in printed.err
    assert [v for v in versions(runs) if "mean-pool" in v] == ["synthetic/mean-pool/version_0",
                                                               "synthetic/mean-pool/version_1"]
    summary = json.loads((out / "summary.json").read_text())
    pool = summary["heads"]["mean-pool"]
    assert pool["runs"][1] == str(interrupted) and pool["n"] == 2
    finished = [json.loads((Path(r) / "results.json").read_text()) for r in pool["runs"]]
    assert pool["values"] == [r["test"]["acc"] for r in finished]
    assert finished[1]["global_step"] == finished[0]["global_step"]  # all three epochs, the first one not repeated
    s4 = summary["heads"]["s4-singlescale"]
    assert s4["n"] == 0 and [f["seed"] for f in s4["failed"]] == [0, 1] and s4["mean"] is None
    markdown = (out / "summary.md").read_text()
    assert "| s4-singlescale | — | 0 | failed, failed |" in markdown and "Failed runs" in markdown
    assert "bogus" in markdown


# ---------------------------------------------------------------------------------------------- TASK=all
LVU_TASKS = {"relationship": 4, "way_speaking": 5, "scene": 6, "director": 10, "genre": 4, "writer": 10, "year": 9,
             "like_ratio": None, "view_count": None}


def make_tiny_lvu(base: Path, per_split=(8, 3, 4), P=3, D=8) -> tuple[Path, Path]:
    """lvu_1.0/<task>/{train,val,test}.csv for the nine tasks over one set of ids, and one cache of them."""
    rng = np.random.default_rng(0)
    root = base / "lvu"
    ids = {split: [f"yt{split}{i:02d}" for i in range(n)] for split, n in zip(("train", "val", "test"), per_split)}
    for task, classes in LVU_TASKS.items():
        folder = root / "lvu_1.0" / task
        folder.mkdir(parents=True)
        for split, videos in ids.items():
            if task == "like_ratio":
                lines = ["like_count dislike_count youtube_id imdb_id"]
                lines += [f"{rng.integers(50, 100)} {rng.integers(1, 20)} {v} tt{i}" for i, v in enumerate(videos)]
            elif task == "view_count":
                lines = ["view_count youtube_id imdb_id"]
                lines += [f"{rng.integers(10_000, 1_000_000)} {v} tt{i}" for i, v in enumerate(videos)]
            else:
                lines = ["class_id class_name youtube_id imdb_id"]
                lines += [f"{i % classes} name_{i % classes} {v} tt{i}" for i, v in enumerate(videos)]
            (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    attrs = dict(encoder="vit-tiny-random", encoder_hash="hash", image_size=32, patch_size=16, hidden_size=D,
                 grid=[1, 2], fps=1.0, frames_per_segment=1)
    with ShardWriter(base / "cache" / "lvu" / make_tag("vit-tiny-random", fps=1.0), attrs, max_videos=32) as writer:
        for video_id in (v for videos in ids.values() for v in videos):
            T = int(rng.integers(5, 9))
            writer.add(video_id, rng.normal(size=(T, P, D)).astype(np.float16), np.arange(T, dtype=np.float64),
                       float(T), f"{video_id}.mp4")
    return root, base / "cache"


def test_task_all_on_a_tiny_lvu_layout(tmp_path, capsys):
    root, cache = make_tiny_lvu(tmp_path)
    runs = tmp_path / "runs"
    common = ["--dataset", "lvu", "--task", "all", "--data-root", str(root), "--cache-dir", str(cache), "--runs-dir",
              str(runs), *TINY_TRAIN_ARGS, "--clip", "window:4", "--epochs", "1"]
    assert main(["train", "--head", "mean-pool", *common]) == 0  # make train TASK=all: one head, one seed
    assert sorted(p.parent.name for p in runs.glob("lvu-*/mean-pool")) == sorted(f"lvu-{t}" for t in LVU_TASKS)
    out = runs / "ablate" / "lvu-all" / "default"
    table = json.loads((out / "summary.json").read_text())
    assert table["tasks"] == list(LVU_TASKS)
    markdown = (out / "summary.md").read_text().splitlines()
    assert markdown[2] == "| | " + " | ".join(LVU_TASKS) + " |"
    ours = next(line for line in markdown if line.startswith("| mean-pool (ours, n=1) |"))
    paper = next(line for line in markdown if line.startswith("| ViS4mer (paper's reported) |"))
    cells = [c.strip(" |") for c in ours.split(" | ")[1:]]
    paper_cells = [c.strip(" |") for c in paper.split(" | ")[1:]]
    assert paper_cells == ["57.14", "40.79", "67.44", "62.61", "54.71", "48.80", "44.75", "0.26", "3.63"]
    assert paper_cells == [f"{v:.2f}" for v in REPORTED["lvu"]["ViS4mer (paper's reported)"].values()]
    for task, cell in zip(LVU_TASKS, cells):
        results = json.loads(next(runs.glob(f"lvu-{task}/mean-pool/version_0/results.json")).read_text())
        metric = "mse" if LVU_TASKS[task] is None else "acc"
        assert results["metric"] == metric and results["task"] == task
        value = results["test"][metric]
        assert table["heads"]["mean-pool"][task]["values"] == [value]
        assert cell == (f"{100 * value:.2f}" if metric == "acc" else f"{value:.4f}")
    per_task = json.loads((runs / "ablate" / "lvu-like_ratio" / "default" / "summary.json").read_text())
    assert per_task["metric"] == "mse" and "train_mean_mse" in per_task["floor"]
    assert (out / "summary.png").stat().st_size > 0

    # make ablate TASK=all HEADS=mean-pool SEEDS=0 with the same options is the same ablation: nothing to train
    before = versions(runs)
    capsys.readouterr()
    assert main(["ablate", "--heads", "mean-pool", "--seeds", "0", *common]) == 0
    assert versions(runs) == before and capsys.readouterr().out.count("finished before") == 9


def test_bad_ablation_input_is_one_line(tiny_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DEBUG", raising=False)
    root, cache = tiny_cache
    runs = tmp_path / "runs"
    assert "valid heads: s4-multiscale" in one_line_error(capsys, ablate_cli(root, cache, runs, "--heads", "lstm"))
    assert "comma-separated integers" in one_line_error(capsys, ablate_cli(root, cache, runs, "--seeds", "0,x"))
    assert "has no tasks" in one_line_error(capsys, ablate_cli(root, cache, runs, "--task", "all"))
    assert "one folder name" in one_line_error(capsys, ablate_cli(root, cache, runs, "--name", "a/b"))
    assert not runs.exists()


def make(*args: str) -> subprocess.CompletedProcess:
    """`make` in the repository as a person types it (not as a sub-make of `make test`), never reinstalling."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed-stamp", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)


def test_make_passes_ablation_variables():
    dry = make("-n", "ablate", "HEADS=s4-multiscale,mean-pool", "SEEDS=0,1", "NAME=x", "D_MODEL=16", "N_LAYERS=2",
               "D_STATE=8", "DROPOUT=0", "CLIP=subset:4", "EVAL_STRIDE=2", "EPOCHS=1")
    command = next(line for line in dry.stdout.splitlines() if "-m heads ablate" in line)
    for flag in ("--heads 's4-multiscale,mean-pool'", "--seeds '0,1'", "--name 'x'", "--d-model '16'",
                 "--n-layers '2'", "--d-state '8'", "--dropout '0'", "--clip 'subset:4'", "--eval-stride '2'",
                 "--epochs '1'"):
        assert flag in command, command
    train = next(line for line in make("-n", "train", "D_MODEL=16", "EVAL_STRIDE=2").stdout.splitlines()
                 if "-m heads train" in line)
    assert "--d-model '16'" in train and "--eval-stride '2'" in train
    wrong = make("ablate", "HEAD=mean-pool")
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: make ablate takes lists HEADS=")


def test_every_task_picture_has_readable_head_names():
    """TASK=all's summary.png wrote the head names at 6 pt: at least 8 pt, none overlapping another name or another
    panel, all inside the picture, for every head of the ablation on the nine LVU tasks."""
    import matplotlib.pyplot as plt

    from heads import HEADS
    from heads.training.tables import all_tasks_figure

    reported = REPORTED["lvu"]
    tasks = list(next(iter(reported.values())))
    metrics = {t: "mse" if t in ("like_ratio", "view_count") else "acc" for t in tasks}
    table = {"tasks": tasks, "metrics": metrics, "reported": reported,
             "heads": {h: {t: {"mean": 0.5, "std": 0.1, "n": 2, "values": [0.4, 0.6]} for t in tasks} for h in HEADS}}
    fig = all_tasks_figure(table)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        inside = fig.bbox
        panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
        assert len(panels) == len(tasks)
        for ax in panels:
            labels = [t for t in ax.get_xticklabels() if t.get_text()]
            assert [t.get_text() for t in labels] == list(HEADS)
            boxes = [t.get_window_extent(renderer) for t in labels]
            assert min(t.get_fontsize() for t in labels) >= 8
            assert all(inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 for b in boxes)
            # slanted names are parallel: neighbours clear each other when the ticks' distance across the slant
            # exceeds a line of text (their upright bounding boxes overlap either way)
            ticks = ax.transData.transform([(x, 0) for x in ax.get_xticks()])[:, 0]
            across = min(np.diff(ticks)) * np.sin(np.radians(labels[0].get_rotation()))
            assert across >= 1.2 * labels[0].get_fontsize() * fig.dpi / 72, across
            others = [o.get_window_extent(renderer) for o in panels if o is not ax]
            assert not any(b.overlaps(o) for b in boxes for o in others)
    finally:
        plt.close(fig)

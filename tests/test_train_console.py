"""What a person sees of `python -m heads train|eval` (each run as its own process, as `make train` runs it): the
opening line, one line per epoch without a terminal, no line from the libraries unless VERBOSE=1, SIGTERM stopping
the way Ctrl-C does (the resume hint, a non-zero exit, no traceback), and a resume that continues the run's own
epochs with its history on disk."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

OURS = ("train ", "resume ", "eval ", "epoch ", "note: ", "training stopped ")  # how each of our lines starts


def env(**extra) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("VERBOSE", "DEBUG")}
    return {**base, "PYTHONPATH": str(REPO), **extra}


def val_epochs(run: Path) -> list[str]:
    with (run / "metrics.csv").open(newline="") as handle:
        return [row["epoch"] for row in csv.DictReader(handle) if row.get("val/acc")]


def test_sigterm_stops_like_ctrl_c_and_resume_continues_quietly(tmp_path, make_tiny_cache, train_cli):
    root, cache = make_tiny_cache(tmp_path)
    runs = tmp_path / "runs"
    run = runs / "synthetic" / "s4-multiscale" / "version_0"
    argv = train_cli(root, cache, runs, "--epochs", "3", "--workers", "2")
    proc = subprocess.Popen([sys.executable, "-m", "heads", *argv], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("epoch 1/3"):
            os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler does: every process of the job, workers included
            break
    out, rest = proc.communicate(timeout=600)
    lines = ("".join(seen) + rest).splitlines()
    assert proc.returncode == 128 + signal.SIGTERM and out == "", lines
    assert not any("Traceback" in line for line in lines) and len(lines) == 3, lines
    assert lines[0].startswith("train s4-multiscale on synthetic, cache vit-tiny-random_seg12: videos train 18, "
                               "val 6, test 9; 3 epochs, batch 4, cpu, "), lines[0]
    assert lines[0].endswith(f"parameters -> {run}")
    assert re.fullmatch(r"epoch 1/3: train loss [\d.]+, val loss [\d.]+, val acc [\d.]+ \(best\), lr 1\.0e-03, "
                        r"[\d.]+ s", lines[1]), lines[1]
    assert lines[2].startswith("training stopped during epoch 2 (SIGTERM)")
    assert f"RESUME={run / 'checkpoints' / 'last.ckpt'}" in lines[2]
    assert val_epochs(run) == ["0"]  # on disk as it happened

    # RESUME without EPOCHS: the run's own 3 epochs, its history kept, nothing on stderr but our lines
    proc = subprocess.run([sys.executable, "-m", "heads", *train_cli(root, cache, runs, "--resume", "last")], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert all(line.startswith(OURS) for line in lines), proc.stderr  # no Lightning banner, tip, warning
    assert lines[0].startswith("resume s4-multiscale on synthetic, cache vit-tiny-random_seg12: ") and \
        "; epoch 2 of 3, batch 4, cpu, " in lines[0]
    assert [line.split(":")[0] for line in lines[1:]] == ["epoch 2/3", "epoch 3/3"]
    assert re.search(r"best checkpoint: epoch [123] of 3\) -> ", proc.stdout)
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 3
    assert json.loads((run / "config.json").read_text())["epochs"] == 3
    assert val_epochs(run) == ["0", "1", "2"]  # each epoch once; the final re-validation is not an epoch

    # VERBOSE=1 lets the libraries speak
    proc = subprocess.run([sys.executable, "-m", "heads", "eval", "--ckpt", str(run / "checkpoints" / "best.ckpt"),
                           "--workers", "0"], cwd=REPO, env=env(VERBOSE="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "GPU available" in proc.stderr and proc.stderr.splitlines()[0].startswith("eval ")
    assert proc.stdout.strip().endswith(f"-> {run / 'checkpoints' / 'best.eval.json'}")


def test_one_epoch_run_and_its_eval_print_only_our_lines(tmp_path, make_tiny_cache, train_cli):
    """Without a terminal and without VERBOSE: train prints its opening line and one epoch line, eval its opening
    line; no line of Lightning's (banners, tips, warnings, "Restoring states ..."). stdout: the one-line result."""
    root, cache = make_tiny_cache(tmp_path)
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "heads", *train_cli(root, cache, runs, "--epochs", "1")], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("train ") and lines[1].startswith("epoch 1/1: "), proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and "best checkpoint: epoch 1 of 1" in proc.stdout
    best = runs / "synthetic" / "s4-multiscale" / "version_0" / "checkpoints" / "best.ckpt"
    proc = subprocess.run([sys.executable, "-m", "heads", "eval", "--ckpt", str(best), "--workers", "0"], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(f"eval {best} (s4-multiscale, epoch 1)")
    assert "best checkpoint: epoch 1 of 1" in proc.stdout  # the same words as train's summary


def test_a_loader_left_open_does_not_keep_the_process_from_exiting():
    """Workers ignore SIGTERM (they leave it to the main process), which is what multiprocessing sends the daemon
    children still alive at exit: a loader iterator nobody closed (as Lightning's fit loop can leave one in a process
    that trains several runs, `heads ablate`) kept the process waiting forever. It exits, and quietly."""
    script = ("from torch.utils.data import DataLoader\n"
              "from data.console import sigterm_to_main\n"
              "loader = DataLoader(list(range(8)), batch_size=2, num_workers=2, worker_init_fn=sigterm_to_main())\n"
              "left_open = iter(loader)\n"
              "print(next(left_open).tolist())\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout == "[0, 1]\n" and proc.stderr == "", proc.stderr


def test_progress_bar_counts_epochs_like_our_lines_and_fits_80_columns(tmp_path, make_tiny_cache, train_cli):
    """With a terminal (--progress) the bar read "Epoch 0/0" while our lines say "epoch 1/1", showed `v_num` and
    wrapped in an 80-column terminal. The bar's frames (tqdm redraws after a carriage return) are checked as drawn
    without a terminal, where EpochBar caps them at 80 columns."""
    from tqdm.utils import disp_len

    root, cache = make_tiny_cache(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "heads", *train_cli(root, cache, tmp_path / "runs", "--epochs", "1",
                                                                      "--progress")],
                          cwd=REPO, env=env(), capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    frames = [f for f in re.split(r"[\r\n]", proc.stdout.decode()) if "|" in f]  # a tqdm bar has a '|'
    train = [f for f in frames if f.startswith("epoch ")]
    assert train and all(f.startswith("epoch 1/1: ") for f in train), train
    assert "val acc=" in train[-1] and "loss=" in train[-1], train[-1]
    assert not any("v_num" in f or "Epoch" in f for f in frames), frames
    assert max(disp_len(f) for f in frames) <= 80, max(frames, key=disp_len)  # disp_len: ANSI codes take no width

"""Training on a tiny cache written with `ShardWriter`: every head's fast_dev_run, clip protocols and per-video
aggregation, `python -m heads train|eval` run directories (CSV and TensorBoard logs), resume from last.ckpt (same
result as an uninterrupted run), NaN loss, the one-line errors of bad configuration, and (slow) a 2-process DDP run on
CPU."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from data.datasets.splits import unit_hash
from data.errors import run_cli
from heads import HEADS, build_head
from heads.__main__ import main
from heads.training.datamodule import FeatureDataModule, uniform_indices, window_indices, window_starts
from heads.training.module import HeadModule, TrainingDiverged

REPO = Path(__file__).resolve().parent.parent
def datamodule(root, cache, **kw) -> FeatureDataModule:
    from data import get_dataset

    ds = get_dataset("synthetic", root=root)
    tag = next((cache / "synthetic").iterdir())
    return FeatureDataModule(tag, ds, batch_size=4, workers=0, **{"clip": ("subset", 4), **kw})


# ------------------------------------------------------------------------------------------------- protocols
def test_clip_indices():
    assert window_starts(10, 4, 1) == list(range(7))
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # the last window ends at the last segment
    assert window_starts(3, 4) == [0]
    assert window_indices(3, 0, 5).tolist() == [0, 1, 2, 2, 2]  # short video: the last segment repeats
    assert uniform_indices(8, 4).tolist() == [1, 3, 5, 7]
    assert uniform_indices(2, 4).tolist() == [0, 0, 1, 1]


def test_datamodule_protocols(tiny_cache):
    root, cache = tiny_cache
    dm = datamodule(root, cache)
    assert dm.feature_shape == (5, 8) and dm.seq_len == 20
    tokens, labels, videos = next(iter(dm.train_dataloader()))
    assert tokens.shape == (4, 4, 5, 8) and tokens.dtype == torch.float16 and labels.dtype == torch.long
    # a training subset is sorted, distinct, and reads exactly those segments
    item = dm.train_dataloader().dataset
    rng_tokens, _, v = item[0]
    full = dm.store.read(item.video_ids[v])
    matches = [int(np.flatnonzero((full == row.numpy()).all(axis=(1, 2)))[0]) for row in rng_tokens]
    assert matches == sorted(set(matches))
    windows = datamodule(root, cache, clip=("window", 5), eval_stride=2)
    evalset = windows.val_dataloader().dataset
    lengths = [windows.store.num_segments(v) for v in windows.video_ids("val")]
    assert len(evalset) == sum(len(window_starts(n, 5, 2)) for n in lengths)
    assert all(t.shape == (5, 5, 8) for t, _, _ in (evalset[0], evalset[len(evalset) - 1]))
    # videos shorter than the clip (6-14 segments against a 12-segment window) are counted per split, with a note
    long = datamodule(root, cache, clip=("window", 12))
    for split in ("train", "val", "test"):
        short = sum(long.store.num_segments(v) < 12 for v in long.video_ids(split))
        assert long.short[split] == short
        assert (f"{split}: {short} of {len(long.video_ids(split))} videos shorter than the 12-segment window: their "
                f"last segment repeats" in long.notes) == (short > 0)
    assert sum(long.short.values()) > 0


class ConstantPerWindow(torch.nn.Module):
    """A fake head whose logits are the first token feature of the first segment: known per-window scores."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(3))

    def forward(self, x):  # (B, T, P, D) -> (B, 3)
        return x[:, 0, 0, :3].float() + self.bias


def test_multi_window_aggregation_is_mean_softmax(tiny_cache):
    root, cache = tiny_cache
    dm = datamodule(root, cache, clip=("window", 3), eval_stride=2)
    model = HeadModule(ConstantPerWindow(), {"head": "fake"}, n_outputs=3)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    trainer.validate(model, datamodule=dm, verbose=False)
    out = model.eval_outputs["val"]
    for row, v in enumerate(out["video_index"]):
        vid = dm.video_ids("val")[v]
        full = torch.from_numpy(dm.store.read(vid).astype(np.float32))
        n = full.shape[0]
        probs = torch.stack([full[s, 0, :3].softmax(-1) for s in window_starts(n, 3, 2)]).mean(0)
        np.testing.assert_allclose(out["scores"][row], probs.numpy(), rtol=1e-3, atol=1e-3)
    acc = np.mean(np.array(out["preds"]) == np.array(out["labels"]))
    assert out["metric"] == pytest.approx(acc)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_fast_dev_run_every_head(tiny_cache, name):
    root, cache = tiny_cache
    dm = datamodule(root, cache)
    head = build_head(name, 8, 3, dm.seq_len, d_model=16, n_layers=2, d_state=8)
    model = HeadModule(head, {"head": name}, n_outputs=3)
    trainer = pl.Trainer(accelerator="cpu", fast_dev_run=True, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert trainer.global_step == 1 and 0.0 <= model.eval_outputs["test"]["metric"] <= 1.0


class Regression:
    """A duck-typed regression dataset (like LVU's like/view tasks) over the tiny cache's ids."""

    name, splits, task_type, num_classes, clip = "reg", ("train", "test"), "regression", None, ("window", 4)

    def __init__(self, ids):
        from data import Record

        self._records = {"train": [Record(v, float(i % 5) / 2) for i, v in enumerate(ids[:12])],
                         "test": [Record(v, 1.0) for v in ids[12:18]]}

    def records(self, split):
        return self._records[split]


def test_regression_windows_fast_dev_run(tiny_cache):
    root, cache = tiny_cache
    tag = next((cache / "synthetic").iterdir())
    from data.store import FeatureStore

    store = FeatureStore(tag)
    dm = FeatureDataModule(store, Regression(store.ids()), batch_size=4, workers=0)
    # no val split: the train videos whose stable hash falls in the top 10 % are held out
    held = [v for v in store.ids()[:12] if unit_hash(v, 0) >= 0.9] or dm.video_ids("val")
    assert dm.video_ids("val") == held and len(dm.video_ids("train")) == 12 - len(held)
    model = HeadModule(build_head("s4-multiscale", 8, 1, dm.seq_len, **{"d_model": 16, "n_layers": 2}), {},
                       task_type="regression", n_outputs=1)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    out = model.eval_outputs["test"]
    assert model.monitor == "val/mse" and out["scores"] is None and len(out["preds"]) == 6
    assert out["metric"] == pytest.approx(np.mean((np.array(out["preds"]) - 1.0) ** 2), rel=1e-5)


def test_held_out_validation_never_moves_when_videos_are_added(tiny_cache):
    """Issue #20: adding videos to a data set without a val split must not move the held-out ones."""
    root, cache = tiny_cache
    from data.store import FeatureStore

    store = FeatureStore(next((cache / "synthetic").iterdir()))
    ids = store.ids()

    class NoVal(Regression):
        def __init__(self, n):
            from data import Record

            self._records = {"train": [Record(v, i % 3) for i, v in enumerate(ids[:n])],
                             "test": [Record(v, 0) for v in ids[-3:]]}

    NoVal.task_type, NoVal.num_classes = "classification", 3
    before = FeatureDataModule(store, NoVal(20), batch_size=4, workers=0, clip=("subset", 4))
    after = FeatureDataModule(store, NoVal(30), batch_size=4, workers=0, clip=("subset", 4))
    assert before.video_ids("val") and set(before.video_ids("val")) <= set(after.video_ids("val"))
    assert set(before.video_ids("train")) <= set(after.video_ids("train"))
    assert set(after.video_ids("val")) == {v for v in ids[:30] if unit_hash(v, 0) >= 0.9}


# ------------------------------------------------------------------------------------------- the command line
def test_train_writes_run_directory_and_eval_matches(tiny_cache, tmp_path, capsys, train_cli):
    root, cache = tiny_cache
    runs = tmp_path / "runs"
    assert main(train_cli(root, cache, runs, "--epochs", "2", "--lr", "1e-2", "--workers", "2")) == 0
    run = runs / "synthetic" / "s4-multiscale" / "version_0"
    for name in ("results.json", "config.json", "metrics.csv", "predictions.csv", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["cache_tag"] == "vit-tiny-random_seg12" and results["code_version"]
    assert set(results["val"]) == {"acc", "loss"} and 0 <= results["test"]["acc"] <= 1
    with (run / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 and {"video_id", "label", "pred", "p_s0>s1"} <= set(rows[0])
    assert np.mean([r["label"] == r["pred"] for r in rows]) == pytest.approx(results["test"]["acc"])
    with (run / "metrics.csv").open() as handle:  # the learning rates under their groups' names, not pg1, pg2
        assert {"lr-AdamW/main", "lr-AdamW/s4-ssm"} <= set(next(csv.reader(handle)))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("s4-multiscale on synthetic: test acc") and str(run) in last
    # make eval CKPT=…: same test metric from the best checkpoint
    assert main(["eval", "--ckpt", str(run / "checkpoints" / "best.ckpt")]) == 0
    evaluated = json.loads((run / "checkpoints" / "best.eval.json").read_text())
    assert evaluated["test"]["acc"] == pytest.approx(results["test"]["acc"])
    assert main(train_cli(root, cache, runs, "--epochs", "1", "--limit-batches", "1")) == 0
    assert (runs / "synthetic" / "s4-multiscale" / "version_1" / "results.json").is_file()


def test_eval_warns_when_the_split_is_not_the_checkpoints(tmp_path, capsys, train_cli, make_tiny_cache):
    root, cache = make_tiny_cache(tmp_path)
    runs = tmp_path / "runs"
    assert main(train_cli(root, cache, runs, "--epochs", "1", "--limit-batches", "1")) == 0
    run = runs / "synthetic" / "s4-multiscale" / "version_0"
    recorded = json.loads((run / "results.json").read_text())["splits"]
    assert len(recorded["val"]) == 6 and len(recorded["test"]) == 9
    capsys.readouterr()
    labels = root / "labels.csv"
    labels.write_text(labels.read_text().replace("val000,val,", "val000,train,"))  # one val video moves to train
    assert main(["eval", "--ckpt", str(run / "checkpoints" / "best.ckpt")]) == 0
    err = capsys.readouterr().err
    assert "warning: the val split is not the checkpoint's: 0 added and 1 gone since training (6 then, 5 now; " \
           "e.g. 'val000' gone)" in err
    # a grown train list is a note, not a warning: eval measures val and test only
    assert "note: the train split is not the checkpoint's" in err and "test split" not in err
    assert "warning: the train split" not in err
    evaluated = json.loads((run / "checkpoints" / "best.eval.json").read_text())
    assert len(evaluated["split_changes"]) == 2 and "val000" in evaluated["splits"]["train"]

    text = labels.read_text().replace("val000,train,", "val000,val,")  # val as trained
    labels.write_text("".join(line for line in text.splitlines(True) if not line.startswith("train000,")))
    capsys.readouterr()
    # no CKPT: the newest best.ckpt under --runs-dir; last.ckpt is called what it is, not "best"
    assert main(["eval", "--runs-dir", str(runs)]) == 0
    err = capsys.readouterr().err
    assert f"the newest best checkpoint under {runs}/, {run / 'checkpoints' / 'best.ckpt'}" in err
    assert "warning" not in err and "note: the train split is not the checkpoint's: 0 added and 1 gone" in err
    assert main(["eval", "--ckpt", str(run / "checkpoints" / "last.ckpt")]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "; last checkpoint: epoch 1 of 1)" in last_line and "best" not in last_line


def test_tensorboard_logs_beside_the_csv(tiny_cache, tmp_path, train_cli):
    """Lightning's TensorBoard logger writes the same val/acc curve as metrics.csv into <run>/tb/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, cache = tiny_cache
    runs = tmp_path / "runs"
    assert main(train_cli(root, cache, runs, "--head", "mean-pool", "--epochs", "2")) == 0
    run = runs / "synthetic" / "mean-pool" / "version_0"
    assert list((run / "tb").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run / "tb")).Reload()
    tb = [e.value for e in events.Scalars("val/acc")]
    with (run / "metrics.csv").open() as handle:
        logged = [float(r["val/acc"]) for r in csv.DictReader(handle) if r.get("val/acc")]
    assert len(tb) == len(logged) >= 2 and tb == pytest.approx(logged)


def test_resume_equals_uninterrupted_run(tiny_cache, tmp_path, train_cli):
    """4 epochs in one go == 2 epochs + resume from last.ckpt to 4 (optimizer, scheduler, data order restored)."""
    root, cache = tiny_cache
    common = ["--dropout", "0", "--lr", "5e-3", "--plateau-patience", "0", "--limit-batches", "2"]
    main(train_cli(root, cache, tmp_path / "a", "--epochs", "4", *common))
    main(train_cli(root, cache, tmp_path / "b", "--epochs", "2", *common))
    run_b = tmp_path / "b" / "synthetic" / "s4-multiscale" / "version_0"
    first = torch.load(run_b / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 1 and first["plateau_scheduler"] and first["optimizer_states"][0]["state"]
    main(train_cli(root, cache, tmp_path / "b", "--epochs", "4", "--resume", "last", *common))  # = run_b's last.ckpt
    a = torch.load(tmp_path / "a" / "synthetic" / "s4-multiscale" / "version_0" / "checkpoints" / "last.ckpt",
                   weights_only=True)
    b = torch.load(run_b / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2 * first["global_step"]
    assert a["plateau_scheduler"] == b["plateau_scheduler"] and a["plateau_scheduler"]["num_bad_epochs"] == 0
    assert a["optimizer_states"][0]["param_groups"][0]["lr"] < 5e-3  # the plateau did reduce the LR
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "b" / "synthetic" / "s4-multiscale" / "version_1").exists()  # resumed in place
    assert val_epochs(run_b) == ["0", "1", "2", "3"]


def val_epochs(run: Path) -> list[str]:
    """The epoch of every validation row of metrics.csv, in file order."""
    with (run / "metrics.csv").open(newline="") as handle:
        return [row["epoch"] for row in csv.DictReader(handle) if row.get("val/acc")]


def test_interrupted_resumes_keep_history_and_the_runs_epochs(tiny_cache, tmp_path, capsys, monkeypatch, train_cli):
    """Ctrl-C -> resume -> Ctrl-C -> resume (without EPOCHS): the run's own 5 epochs, every epoch's row on disk
    after each interruption, once; a head size that differs from the checkpoint's is refused."""
    root, cache = tiny_cache
    stop = {"epoch": 1}

    def ctrl_c(self):  # what Ctrl-C does at the start of an epoch
        if self.current_epoch == stop["epoch"]:
            raise KeyboardInterrupt

    monkeypatch.setattr(HeadModule, "on_train_epoch_start", ctrl_c, raising=False)
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after an interrupt; restored below
    runs = tmp_path / "runs"
    run = runs / "synthetic" / "s4-multiscale" / "version_0"
    common = ["--limit-batches", "2", "--lr", "5e-3"]
    try:
        assert main(train_cli(root, cache, runs, "--epochs", "5", *common)) == 130  # 128 + SIGINT, as shells report it
        assert "training stopped during epoch 2 (Ctrl-C)" in capsys.readouterr().err
        assert val_epochs(run) == ["0"]
        stop["epoch"] = 3
        assert main(train_cli(root, cache, runs, "--resume", "last", *common)) == 130
        assert val_epochs(run) == ["0", "1", "2"]  # the first run's epoch is still there
        monkeypatch.delenv("DEBUG", raising=False)
        err = one_line_error(capsys, train_cli(root, cache, runs, "--resume", "last", "--d-model", "32", *common))
        assert "--d-model 32 differs from the resumed checkpoint's 16" in err
        stop["epoch"] = None
        assert main(train_cli(root, cache, runs, "--resume", "last", *common)) == 0
    finally:
        signal.signal(signal.SIGINT, sigint)
    assert "; epoch 4 of 5, batch 4, " in capsys.readouterr().err.splitlines()[0]
    assert val_epochs(run) == ["0", "1", "2", "3", "4"]
    assert json.loads((run / "config.json").read_text())["epochs"] == 5
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 5
    assert one_line_error(capsys, train_cli(root, cache, runs, "--resume", "last")).endswith(
        "has already trained 5 of its 5 epochs; give EPOCHS= (--epochs) above 5 to train it further")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_loss_stops_with_the_step(tmp_path, capsys, monkeypatch, train_cli, make_tiny_cache):
    monkeypatch.delenv("DEBUG", raising=False)
    root, cache = make_tiny_cache(tmp_path, nan=True)
    argv = train_cli(root, cache, tmp_path / "runs", "--epochs", "1")
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 0 .*lower the learning rate"):
        main(argv)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # not bad input: exit 1, one line, no traceback
        run_cli(main, argv)
    lines = capsys.readouterr().err.strip().splitlines()  # the opening line, what is kept, one error line
    assert exc.value.code == 1 and len(lines) == 3 and lines[0].startswith("train s4-multiscale on synthetic")
    assert lines[1].startswith("training stopped in its first epoch; nothing was saved yet")
    assert lines[2].startswith("error: training loss became nan")
    # nothing to resume is left behind: no empty version_N for RESUME=last to pass over
    assert not list((tmp_path / "runs").rglob("*"))  # nor the empty <dataset>/<head>/ folders above it


def one_line_error(capsys, argv) -> str:
    capsys.readouterr()  # what earlier runs printed
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_bad_configuration_is_one_line(tiny_cache, tmp_path, capsys, monkeypatch, train_cli):
    monkeypatch.delenv("DEBUG", raising=False)
    root, cache = tiny_cache
    runs = tmp_path / "runs"
    assert "valid heads: s4-multiscale" in one_line_error(capsys, train_cli(root, cache, runs, "--head", "lstm"))
    assert "has no tasks" in one_line_error(capsys, train_cli(root, cache, runs, "--task", "genre"))
    assert "unknown dataset" in one_line_error(capsys, train_cli(root, cache, runs, "--dataset", "kinetics"))
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    err = one_line_error(capsys, train_cli(root, empty, runs))
    assert "no cached features for synthetic" in err and "make extract DATASET=synthetic" in err
    no_dataset = [a for a in train_cli(root, empty, runs) if a not in ("--dataset", "synthetic")]
    assert "no cached features for synthetic" in one_line_error(capsys, no_dataset)  # empty cache: synthetic
    # DATASET not given: an error about the data set says which one was chosen, and why
    undatasetted = [a for a in train_cli(tmp_path / "nowhere", cache, runs) if a not in ("--dataset", "synthetic")]
    err = one_line_error(capsys, undatasetted)
    assert "DATASET was not given, so synthetic: the data set most recently extracted into" in err
    assert "DATASET was not given" not in one_line_error(capsys, train_cli(tmp_path / "nowhere", cache, runs))
    assert "does not exist" in one_line_error(capsys, ["eval", "--ckpt", str(tmp_path / "nope.ckpt")])


def test_cache_missing_videos(tmp_path, capsys, monkeypatch, train_cli, make_tiny_cache):
    """Listed videos without media are skipped and counted (LVU and COIN always miss some), and so are recorded
    extraction failures; videos on disk but not extracted stop the run (`make extract` fills them) unless
    ALLOW_MISSING=1; REQUIRE_ALL=1 stops on any."""
    monkeypatch.delenv("DEBUG", raising=False)
    from data.store import append_failure

    root, cache = make_tiny_cache(tmp_path, skip=("train000", "train004", "train007", "test001"))
    (root / "videos").mkdir()
    for vid in ("train000", "train004"):  # downloaded, never extracted
        (root / "videos" / f"{vid}.mp4").write_bytes(b"\0")
    runs = tmp_path / "runs"
    err = one_line_error(capsys, train_cli(root, cache, runs, "--epochs", "1"))
    assert "lacks 2 of the 18 videos the train split needs, whose media are on disk" in err
    assert "make extract DATASET=synthetic" in err and "ALLOW_MISSING=1" in err
    err = one_line_error(capsys, train_cli(root, cache, runs, "--epochs", "1", "--require-all"))
    assert "lacks 3 of the 18 videos the train split lists (1 without media on disk, 2 on disk but not extracted " \
           "yet; e.g. train000" in err and "REQUIRE_ALL=1" in err
    append_failure(next((cache / "synthetic").iterdir()), "train000", "train000.mp4", "moov atom not found")
    assert main(train_cli(root, cache, runs, "--epochs", "1", "--limit-batches", "1", "--allow-missing")) == 0
    opening = capsys.readouterr().err.splitlines()[0]
    assert "videos train 15 (3 skipped: 1 without media on disk, 1 failed extraction, 1 not extracted yet), " \
           "val 6, test 8 (1 skipped: 1 without media on disk); 1 epoch," in opening
    results = json.loads(next(runs.rglob("results.json")).read_text())
    assert results["n_videos"] == {"train": 15, "val": 6, "test": 8}
    assert results["skipped_videos"] == {"train": {"no_media": 1, "failed": 1, "not_extracted": 1},
                                         "test": {"no_media": 1, "failed": 0, "not_extracted": 0}}


def test_cache_from_another_encoder_is_refused(tmp_path, capsys, monkeypatch, train_cli, make_tiny_cache):
    monkeypatch.delenv("DEBUG", raising=False)
    root, cache = make_tiny_cache(tmp_path)
    make_tiny_cache(tmp_path, encoder="vit-other", D=12)
    runs = tmp_path / "runs"
    main(train_cli(root, cache, runs, "--epochs", "1", "--tag", "vit-tiny-random_seg12"))
    ckpt = runs / "synthetic" / "s4-multiscale" / "version_0" / "checkpoints" / "last.ckpt"
    err = one_line_error(capsys, train_cli(root, cache, runs, "--epochs", "2", "--resume", str(ckpt), "--tag",
                                     "vit-other_seg12"))
    assert "does not match the checkpoint" in err and "'vit-other' instead of 'vit-tiny-random'" in err
    err = one_line_error(capsys, ["eval", "--ckpt", str(ckpt), "--tag", "vit-other_seg12"])
    assert "hidden_size 12 instead of 8" in err


def test_checkpoints_load_weights_only(tmp_path, capsys, monkeypatch):
    """A checkpoint that needs arbitrary unpickling is refused with a message, never executed."""
    monkeypatch.delenv("DEBUG", raising=False)
    bad = tmp_path / "bad.ckpt"
    torch.save({"hyper_parameters": {"config": Path("x")}, "state_dict": {}}, bad)
    assert "weights_only=True" in one_line_error(capsys, ["eval", "--ckpt", str(bad)])


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tiny_cache, tmp_path, train_cli):
    root, cache = tiny_cache
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = train_cli(root, cache, runs, "--epochs", "1", "--devices", "2", "--accelerator", "cpu")
    proc = subprocess.run([sys.executable, "-m", "heads", *argv],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(runs.rglob("results.json"))
    assert [p.parent.name for p in written] == ["version_0"]
    results = json.loads(written[0].read_text())
    assert results["global_step"] == 3  # 18 train videos / 2 ranks = 9 each, batch 4: 3 steps per epoch
    assert proc.stdout.strip().splitlines()[-1].startswith("s4-multiscale on synthetic: test acc")
    assert proc.stdout.count("test acc") == 1


def test_default_clip_never_takes_more_segments_than_the_cache_has(tiny_cache, tmp_path, capsys, train_cli):
    """synthetic's default clip is subset:32; a cache of 12 segments per video trains on subset:12 with a note,
    instead of repeating segments in every clip (found by a new user: SEGMENTS=16 on a folder, default subset:64)."""
    root, cache = tiny_cache
    runs = tmp_path / "runs"
    argv = [a for a in train_cli(root, cache, runs, "--head", "mean-pool", "--epochs", "1", "--limit-batches", "1")
            if a not in ("--clip", "subset:4")]
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "note: CLIP not given: the cache has 12 segments per video, fewer than synthetic's default subset:32; " \
           "clips are subset:12" in err
    run = next(runs.rglob("version_0"))
    assert json.loads((run / "config.json").read_text())["clip"] == ["subset", 12]
    short = json.loads((run / "results.json").read_text())["short_videos"]  # the tiny cache's shorter videos only
    assert main([*argv, "--clip", "subset:32"]) == 0  # asked for: kept, and its repeats counted
    assert "note: CLIP not given" not in capsys.readouterr().err
    asked = next(runs.rglob("version_1"))
    assert json.loads((asked / "config.json").read_text())["clip"] == ["subset", 32]
    everyone = json.loads((asked / "results.json").read_text())["short_videos"]
    assert everyone == {"train": 18, "val": 6, "test": 9} and all(short[k] < everyone[k] for k in everyone)

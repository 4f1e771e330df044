"""`make report`: pictures from a run directory (metrics.csv, predictions.csv, results.json)."""

import json
from pathlib import Path

import pytest

from data.errors import UserError
from heads.training.report import read_metrics, report


def write_run(run, task_type="classification"):
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text(
        "epoch,lr-AdamW/pg1,step,train/loss_step,val/acc,val/loss\n"
        ",0.001,0,,,\n"
        "0,,4,1.5,,\n"
        "0,,9,1.0,0.5,0.9\n"
        ",0.0005,10,,,\n"
        "1,,19,0.5,0.75,0.6\n"
    )
    labels, preds = ([0, 1, 2, 2], [0, 1, 1, 2]) if task_type == "classification" else ([0.5, -1.0], [0.4, -0.7])
    rows = "".join(f"v{i},{y},{p}\n" for i, (y, p) in enumerate(zip(labels, preds)))
    (run / "predictions.csv").write_text("video_id,label,pred\n" + rows)
    (run / "results.json").write_text(json.dumps({"dataset": "synthetic", "head": "mean-pool", "task_type": task_type,
                                                  "class_names": ["a", "b", "c"]}))


def test_metrics_are_averaged_per_epoch_and_lr_rows_get_their_epoch(tmp_path):
    write_run(tmp_path / "run")
    metrics = read_metrics(tmp_path / "run" / "metrics.csv")
    assert metrics["train/loss_step"] == [(1.0, 1.25), (2.0, 0.5)]  # epochs counted from 1, as train prints them
    assert metrics["val/acc"] == [(1.0, 0.5), (2.0, 0.75)]
    assert metrics["lr-AdamW/pg1"] == [(1.0, 0.001), (2.0, 0.0005)]


def test_final_revalidation_is_not_an_epoch(tmp_path):
    """Runs made before the final re-validation stopped being logged hold it as one more 'epoch' row."""
    run = tmp_path / "run"
    write_run(run)
    with (run / "metrics.csv").open("a") as handle:
        handle.write("2,,20,,0.75,0.6\n")  # val of the best checkpoint, at epoch = the number of epochs
    assert read_metrics(run / "metrics.csv")["val/acc"] == [(1.0, 0.5), (2.0, 0.75)]


def test_identical_curves_are_drawn_once_and_colours_follow_the_split():
    from heads.training.report import SPLIT_COLOURS, _curves_in_panel

    lr = [(1.0, 1e-3), (2.0, 5e-4)]
    metrics = {"lr-AdamW/main": lr, "lr-AdamW/s4-ssm": list(lr), "train/loss_epoch": [(1.0, 1.0)],
               "val/loss": [(1.0, 2.0)]}
    curves = _curves_in_panel(metrics, ["lr-AdamW/main", "lr-AdamW/s4-ssm"])
    assert [label for label, _, _ in curves] == ["lr-AdamW/main = s4-ssm"]
    colours = {label: colour for label, _, colour in _curves_in_panel(metrics, ["train/loss_epoch", "val/loss"])}
    assert colours == {"train/loss_epoch": SPLIT_COLOURS["train"], "val/loss": SPLIT_COLOURS["val"]}


def test_title_names_the_task():
    from heads.training.report import run_title

    assert run_title({"dataset": "lvu", "task": "director", "head": "s4-multiscale"}, Path("runs/x/version_3")) == \
        "lvu/director · s4-multiscale · version_3"


@pytest.mark.parametrize("task_type, picture", [("classification", "confusion.png"), ("regression", "scatter.png")])
def test_report_draws_curves_and_predictions(tmp_path, task_type, picture):
    run = tmp_path / "run"
    write_run(run, task_type)
    written = report(run)
    assert {p.name for p in written} == {"curves.png", picture}
    assert all(p.stat().st_size > 1000 for p in written)


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="make train"):
        report(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        report(tmp_path / "missing")


def test_predictions_by_class_name_become_indices(tmp_path):
    from heads.training.report import read_predictions

    path = tmp_path / "predictions.csv"
    path.write_text("video_id,label,pred,p_cat,p_dog\nv0,dog,cat,0.6,0.4\nv1,dog,dog,0.1,0.9\n")
    assert read_predictions(path, ["cat", "dog"]) == ([1.0, 1.0], [0.0, 1.0])
    path.write_text("video_id,label,pred\nv0,1,0\n")  # a run written before names: indices
    assert read_predictions(path, ["cat", "dog"]) == ([1.0], [0.0])


@pytest.mark.parametrize("epochs", [1, 2, 3, 50])
def test_epoch_ticks_are_whole_epochs(epochs):
    """A 1-epoch run drew ticks 0.945, 0.960, ... 1.050 (MaxNLocator(integer=True) gives up with one point)."""
    import matplotlib.pyplot as plt

    from heads.training.report import curves_figure

    history = [(float(e), 1.0 / e) for e in range(1, epochs + 1)]
    fig = curves_figure({"train/loss_epoch": history, "val/loss": history, "val/acc": history}, "run")
    fig.canvas.draw()
    try:
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            shown = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert shown and all(float(t).is_integer() for t in shown), shown
            if epochs <= 3:
                assert shown == list(range(1, epochs + 1))
    finally:
        plt.close(fig)

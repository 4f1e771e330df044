"""`make report`: pictures from a run directory (metrics.csv, predictions.csv, results.json)."""

import json

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
    assert metrics["train/loss_step"] == [(0.0, 1.25), (1.0, 0.5)]
    assert metrics["val/acc"] == [(0.0, 0.5), (1.0, 0.75)]
    assert metrics["lr-AdamW/pg1"] == [(0.0, 0.001), (1.0, 0.0005)]


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

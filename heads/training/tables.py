"""The tables of an ablation (`heads.training.ablate`): summary.json, summary.md and summary.png.

One task: per head the test metric of every finished seed (read from each run's results.json), their mean and sample
standard deviation (n − 1; none for a single seed), the parameter count and the mean training time per run, the
failed seeds with their error; the floor a head has to beat: chance (1 / classes) and the majority class of train
scored on the test videos, or for regression the MSE of predicting the train mean. Every task of a data set
(`--task all`): one row per head and one column per task, in the paper's layout for LVU (accuracy in % for the seven
classification tasks, MSE for like_ratio and view_count) with the paper's reported row beside ours.
"""

from __future__ import annotations

import math
from pathlib import Path

from data.outputs import write_json

# ViS4mer's LVU results as the paper reports them (Islam & Bertasius, ECCV 2022): accuracy in % for the seven
# classification tasks, MSE for the two regression ones. Its numbers, on its features and GPU, never ours.
REPORTED = {
    "lvu": {"ViS4mer (paper's reported)": {
        "relationship": 57.14, "way_speaking": 40.79, "scene": 67.44, "director": 62.61, "genre": 54.71,
        "writer": 48.80, "year": 44.75, "like_ratio": 0.26, "view_count": 3.63}},
}
STD_NOTE = "std: sample standard deviation over seeds (n - 1)"


# ------------------------------------------------------------------------------------------------- one task
def summarise(entries: dict, heads: list[str], seeds: list[int], ds, config: dict, name: str) -> dict:
    """summary.json of one task from the ledger entries {(head, seed): entry} of this ablation."""
    from heads.training.run_dir import read_results

    metric = "mse" if ds.task_type == "regression" else "acc"
    per_head, test_ids = {}, None
    for head in heads:
        row = {"values": [], "val_values": [], "seeds": [], "runs": [], "train_s": None, "params": None,
               "failed": [], "pending": []}
        times = []
        for seed in seeds:
            entry = entries.get((head, seed))
            results = read_results(entry.get("run_dir")) if entry else None
            if results is not None:
                row["values"].append(float(results["test"][metric]))
                row["val_values"].append(float(results["val"][metric]))
                row["seeds"].append(seed)
                row["runs"].append(entry["run_dir"])
                row["params"] = int(results["params"])
                times.append(float(results["train_s"]))
                test_ids = test_ids or set(results.get("splits", {}).get("test") or ())
            elif entry is not None and entry["status"] == "failed":
                row["failed"].append({"seed": seed, "error": entry.get("error"), "run_dir": entry.get("run_dir")})
            else:
                row["pending"].append(seed)
        n = len(row["values"])
        row["n"] = n
        row["mean"] = sum(row["values"]) / n if n else None
        row["std"] = (math.sqrt(sum((v - row["mean"]) ** 2 for v in row["values"]) / (n - 1)) if n > 1 else None)
        row["train_s"] = round(sum(times) / len(times), 1) if times else None
        per_head[head] = row
    # the floor on exactly the test videos the runs were scored on (results.json records them), else all listed
    test_labels = [r.label for r in ds.records("test") if not test_ids or r.video_id in test_ids]
    shown = {k: v for k, v in config.items() if k not in ("dataset", "task", "tag", "cache")}
    return {"name": name, "dataset": config["dataset"], "task": config["task"], "metric": metric,
            "better": "lower" if metric == "mse" else "higher", "cache": config["cache"], "config": shown,
            "seeds": list(seeds), "heads": per_head, "floor": floor(ds, test_labels or []), "std": STD_NOTE}


def floor(ds, test_labels: list) -> dict:
    """What a head must beat: chance and the majority class (classification), the train-mean MSE (regression)."""
    train = [float(r.label) for r in ds.records("train")]
    if ds.task_type == "regression":
        if not train or not test_labels:
            return {}
        mean = sum(train) / len(train)
        return {"train_mean_mse": sum((y - mean) ** 2 for y in test_labels) / len(test_labels)}
    out = {"chance": 1.0 / int(ds.num_classes)}
    if train and test_labels:
        majority = max(set(train), key=train.count)
        out["majority"] = sum(y == majority for y in test_labels) / len(test_labels)
    return out


def fmt(value: float | None, metric: str, percent: bool = False) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.2f}" if percent else (f"{value:.3f}" if metric == "acc" else f"{value:.4f}")


def mean_std(row: dict, metric: str, percent: bool = False) -> str:
    if not row["n"]:
        return "—"
    text = fmt(row["mean"], metric, percent)
    return text + (f" ± {fmt(row['std'], metric, percent)}" if row["std"] is not None else "")


def markdown(summary: dict) -> str:
    """summary.md: one row per head (mean ± std, n, per-seed values, parameters, train time), then the floor."""
    metric = summary["metric"]
    what = "test accuracy" if metric == "acc" else "test MSE"
    where = summary["dataset"] + (f"-{summary['task']}" if summary.get("task") else "")
    options = ", ".join(f"{k} {v}" for k, v in summary["config"].items())
    lines = [f"# Ablation `{summary['name']}` on {where}", "",
             f"{what} ({summary['better']} is better) of the best-on-validation checkpoint; cache "
             f"`{summary['cache']['tag']}` ({summary['cache']['videos']} videos); seeds "
             f"{', '.join(map(str, summary['seeds']))}; {options}", "",
             f"| head | {what} (mean ± std) | n | per seed | parameters | train time per run |",
             "|---|---|---|---|---|---|"]
    failures = []
    for head, row in summary["heads"].items():
        per_seed = {s: fmt(v, metric) for s, v in zip(row["seeds"], row["values"])}
        per_seed.update({f["seed"]: "failed" for f in row["failed"]})
        cells = ", ".join(per_seed.get(s, "pending") for s in summary["seeds"])
        lines.append(f"| {head} | {mean_std(row, metric)} | {row['n']} | {cells} | "
                     f"{'—' if row['params'] is None else format(row['params'], ',')} | "
                     f"{'—' if row['train_s'] is None else format(row['train_s'], '.0f') + ' s'} |")
        failures += [f"- {head} seed {f['seed']}: {f['error']} ({f['run_dir']})" for f in row["failed"]]
    fl = summary["floor"]
    lines.append("")
    if "chance" in fl:
        lines.append(f"chance (1 / classes) {fl['chance']:.3f}" +
                     (f"; majority class of train, on test {fl['majority']:.3f}" if "majority" in fl else ""))
    if "train_mean_mse" in fl:
        lines.append(f"predicting the train mean: test MSE {fl['train_mean_mse']:.4f}")
    lines.append(summary["std"])
    if failures:
        lines += ["", "Failed runs (traceback in each run's error.txt; rerun the same command to retry them):",
                  *failures]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    """Bars: mean per head with ± std error bars, the seeds' values as dots, the floor as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(summary["heads"])
    rows = [summary["heads"][h] for h in heads]
    fig, ax = plt.subplots(figsize=(1.6 * len(heads) + 2.5, 3.8))
    x = range(len(heads))
    ax.bar(x, [r["mean"] or 0.0 for r in rows], yerr=[r["std"] or 0.0 for r in rows], capsize=5,
           color="tab:blue", alpha=0.7)
    for i, row in enumerate(rows):
        ax.plot([i] * row["n"], row["values"], "o", color="black", ms=3)
        if not row["n"]:
            ax.text(i, 0, "failed" if row["failed"] else "pending", ha="center", va="bottom", fontsize=8)
    fl = summary["floor"]
    for key, label, color in (("chance", "chance", "tab:red"), ("majority", "majority class", "tab:orange"),
                              ("train_mean_mse", "train mean", "tab:red")):
        if key in fl:
            ax.axhline(fl[key], color=color, ls="--", lw=1, label=f"{label} ({fl[key]:.3f})")
    ax.set_xticks(list(x), heads, rotation=15, fontsize=8)
    ax.set_ylabel("test accuracy" if summary["metric"] == "acc" else "test MSE (lower is better)")
    where = summary["dataset"] + (f"-{summary['task']}" if summary.get("task") else "")
    ax.set_title(f"{where}: mean ± std over seeds {', '.join(map(str, summary['seeds']))}", fontsize=9)
    if fl:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(out: Path, summary: dict, picture: bool = True) -> None:
    """summary.json and summary.md (and summary.png unless picture=False: a second or so of matplotlib)."""
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(markdown(summary))
    if picture:
        plot(summary, out / "summary.png")


# ---------------------------------------------------------------------------------------------- every task
def all_tasks(dataset: str, summaries: dict, name: str) -> dict:
    """One row per head, one column per task (mean, std, n, values); LVU adds the paper's reported row."""
    tasks = list(summaries)
    heads = list(dict.fromkeys(h for s in summaries.values() for h in s["heads"]))
    table = {h: {t: {k: summaries[t]["heads"][h][k] for k in ("mean", "std", "n", "values")}
                 for t in tasks if h in summaries[t]["heads"]} for h in heads}
    return {"name": name, "dataset": dataset, "tasks": tasks, "metrics": {t: summaries[t]["metric"] for t in tasks},
            "heads": table, "reported": REPORTED.get(dataset, {}), "std": STD_NOTE,
            "floor": {t: summaries[t]["floor"] for t in tasks}}


def all_tasks_markdown(table: dict) -> str:
    tasks, metrics = table["tasks"], table["metrics"]
    lines = [f"# Ablation `{table['name']}` on every {table['dataset']} task", "",
             "| | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for head, cells in table["heads"].items():
        n = {c["n"] for c in cells.values()}
        label = f"{head} (ours, n={n.pop() if len(n) == 1 else 'see cells'})"
        row = []
        for t in tasks:
            c = cells.get(t)
            text = mean_std(c, metrics[t], percent=metrics[t] == "acc") if c else "—"
            row.append(text + (f" (n={c['n']})" if c and len(n) > 1 else ""))
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    for label, values in table["reported"].items():
        lines.append(f"| {label} | " + " | ".join(f"{values[t]:.2f}" if t in values else "—" for t in tasks) + " |")
    lines += ["", "classification tasks: test accuracy in % (higher is better); regression tasks: test MSE (lower is "
              "better); best-on-validation checkpoint; " + table["std"]]
    if table["reported"]:
        lines.append("the reported row is the paper's own (its features, its GPU runs), not reproduced here")
    return "\n".join(lines) + "\n"


def all_tasks_figure(table: dict):
    """The matplotlib Figure of an every-task summary.png: one panel per task, a bar per head (mean ± std), the
    paper's reported value as a dashed line. Head names are 9 pt, slanted, each panel as wide as its heads need."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, heads = table["tasks"], list(table["heads"])
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    longest = max((len(h) for h in heads), default=0)
    width = max(3.6, 0.75 * len(heads) + 1.2)  # inches per panel: ~0.75 per slanted 9 pt name
    height = 2.6 + 0.06 * longest  # the slanted names hang below the panel
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        scale = 100.0 if table["metrics"][task] == "acc" else 1.0
        cells = [table["heads"][h].get(task) or {"mean": None, "std": None} for h in heads]
        ax.bar(range(len(heads)), [scale * (c["mean"] or 0.0) for c in cells],
               yerr=[scale * (c["std"] or 0.0) for c in cells], capsize=3, color="tab:blue", alpha=0.7)
        for label, values in table["reported"].items():
            if task in values:
                ax.axhline(values[task], color="tab:green", ls="--", lw=1, label=label)
        ax.set_title(f"{task} ({'acc %' if scale == 100.0 else 'MSE'})", fontsize=10)
        ax.set_xticks(range(len(heads)), heads, rotation=30, ha="right", rotation_mode="anchor", fontsize=9)
        ax.tick_params(axis="y", labelsize=9)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    if table["reported"]:
        axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_all_tasks(table: dict, path: Path) -> None:
    """Write the every-task summary.png (see all_tasks_figure)."""
    import matplotlib.pyplot as plt

    fig = all_tasks_figure(table)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all_tasks(out: Path, dataset: str, summaries: dict, name: str) -> None:
    table = all_tasks(dataset, summaries, name)
    write_json(out / "summary.json", table)
    (out / "summary.md").write_text(all_tasks_markdown(table))
    plot_all_tasks(table, out / "summary.png")

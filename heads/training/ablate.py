"""`python -m heads ablate` (`make ablate`): every head × seed trained on one cache, summarised as mean ± std.

LVU's tasks have a few hundred training videos (some about a hundred) and accuracies that swing by several points
between seeds, so one run per setting is not a result. An ablation resolves the data set and its cache tag once, then
calls the ordinary training run (`heads.training.run.train`) for each (head, seed): each run is a normal run directory
`<runs-dir>/<dataset>[-<task>]/<head>/version_N/` (checkpoints, metrics.csv, tb/, results.json). Its own folder

    <runs-dir>/ablate/<dataset>[-<task>]/<name>/
        runs.json     the ledger: per (head, seed, configuration) its run directory, status and error
        summary.json  per head {"values", "mean", "std", "seeds", "train_s", "params", "runs", "failed", …}
        summary.md    the mean ± std table;  summary.png  bars with error bars and the floor (tables.py)

is rewritten after every run. Rerunning the same command skips the pairs that finished with the same configuration
(the options given plus the resolved data set, task and cache), resumes an interrupted one from its last.ckpt in its
own run directory, and retries a failed one in a new run directory. A failed run is reported in the table and the
others go on; the exit status is then 1. `--task all` runs each task of the data set in turn (LVU: nine) on the one
cache and adds `<dataset>-all/<name>/` with the table in the paper's layout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from data.errors import UserError, debug_enabled
from data.outputs import plain, write_json
from heads import HEADS
from heads.config import ABLATION

PER_RUN = ("head", "seed", "resume", "run_dir", "head_given")
# options that change where or how visibly a run happens, not its result
NOT_CONFIGURATION = ("command", "heads", "seeds", "name", "runs_dir", "cache_dir", "data_root", "workers",
                     "progress", "log_every", *PER_RUN)


# -------------------------------------------------------------------------------------------------- parsing
def parse_heads(text: str | None) -> list[str]:
    names = [h.strip() for h in (text or ABLATION.heads).split(",") if h.strip()]
    unknown = [h for h in names if h not in HEADS]
    if unknown or not names:
        raise UserError(f"unknown head(s) {', '.join(unknown) or repr(text)} in HEADS=; valid heads: "
                        f"{', '.join(HEADS)} (comma-separated, e.g. HEADS=s4-multiscale,mean-pool)")
    return list(dict.fromkeys(names))


def parse_seeds(text: str | None) -> list[int]:
    parts = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not parts or not all(p.lstrip("-").isdigit() for p in parts):
        raise UserError(f"SEEDS= must be comma-separated integers such as 0,1,2, got {text!r}")
    return list(dict.fromkeys(int(p) for p in parts))


def check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise UserError(f"NAME= must be one folder name (no '/'), got {name!r}")
    return name


# ------------------------------------------------------------------------------------------- configuration
def configuration(args: argparse.Namespace, dataset: str, task: str | None, cache: dict) -> dict:
    """What decides a run's result besides its head and seed: the options set (None and False left out, so an option
    added later with such a default does not invalidate finished runs), the data set, task and cache."""
    config = {k: v for k, v in sorted(vars(args).items())
              if k not in NOT_CONFIGURATION and v is not None and v is not False}
    config.update(dataset=dataset, task=task, tag=cache["tag"], cache=cache)
    return plain(config)


def describe_cache(tag_dir: Path) -> dict:
    """The identity of the cache the runs train on: tag, encoder hash, number of videos."""
    from data.store import FeatureStore

    store = FeatureStore(tag_dir)
    return {"tag": tag_dir.name, "encoder": plain(store.meta.get("encoder")),
            "encoder_hash": plain(store.meta.get("encoder_hash")), "videos": len(store)}


# --------------------------------------------------------------------------------------------------- ledger
class Ledger:
    """runs.json: one entry per (head, seed, configuration): {"head", "seed", "config", "status", "run_dir", …}.

    status is "running" from the moment a run starts (so an interrupted one is found again), then "done" or
    "failed" (with "error", and the traceback in <run_dir>/error.txt). Written atomically (data.outputs.write_json);
    only the process that writes files (rank 0 under DDP) saves it.
    """

    def __init__(self, path: Path, writes: bool = True):
        self.path, self.writes = Path(path), writes
        self.entries: list[dict] = []
        if self.path.is_file():
            try:
                self.entries = list(json.loads(self.path.read_text())["runs"])
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"{self.path} is not an ablation ledger ({exc}); move it away to start this "
                                f"ablation afresh (the runs themselves stay where they are)") from exc

    def find(self, head: str, seed: int, config: dict) -> dict | None:
        for entry in reversed(self.entries):
            if entry["head"] == head and entry["seed"] == seed and entry["config"] == config:
                return entry
        return None

    def put(self, entry: dict) -> None:
        self.entries = [e for e in self.entries if not (e["head"] == entry["head"] and e["seed"] == entry["seed"]
                                                        and e["config"] == entry["config"])] + [entry]
        if self.writes:
            write_json(self.path, {"runs": self.entries})


def reserve_run_dir(runs_dir: Path, group: str, head: str, writes: bool) -> Path:
    """The next free <runs-dir>/<group>/<head>/version_N (group: <dataset>[-<task>]), created now so the ledger can
    name it before the run starts."""
    from heads.training.run_dir import next_version

    parent = runs_dir / group / head
    while True:
        run_dir = parent / f"version_{next_version(parent)}"
        if not writes:
            return run_dir
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:  # another process took it
            continue


# ------------------------------------------------------------------------------------------------ the runs
def writes_files() -> bool:
    """False in the non-zero ranks of a DDP launch (they train along, rank 0 writes; Lightning reads the rank from
    the launcher's environment variables when it is imported)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def run_pair(base: argparse.Namespace, head: str, seed: int, config: dict, ledger: Ledger, group: str,
             label: str) -> dict:
    """Train (head, seed) unless it already finished with `config`; returns its ledger entry."""
    from heads.training.run import train
    from heads.training.run_dir import read_results, summary_line

    entry = ledger.find(head, seed, config)
    if entry and read_results(entry.get("run_dir")) is not None:
        if entry["status"] != "done":  # finished, but the ledger was not updated (killed in between)
            entry = {**entry, "status": "done"}
            ledger.put(entry)
        print(f"{label} finished before: {entry['run_dir']}", flush=True)
        return entry
    last = Path(entry["run_dir"]) / "checkpoints" / "last.ckpt" if entry and entry.get("run_dir") else None
    resume = entry is not None and entry["status"] == "running" and last is not None and last.is_file()
    if resume:
        run_dir = Path(entry["run_dir"])
        print(f"{label} resuming the interrupted run from {last}", flush=True)
    else:
        run_dir = reserve_run_dir(Path(base.runs_dir), group, head, ledger.writes)
        print(f"{label} -> {run_dir}", flush=True)
    args = argparse.Namespace(**{**vars(base), "head": head, "seed": seed, "head_given": True,
                                 "resume": str(last) if resume else None, "run_dir": None if resume else str(run_dir)})
    entry = {"head": head, "seed": seed, "config": config, "status": "running", "run_dir": str(run_dir),
             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    ledger.put(entry)
    try:
        results, is_global_zero = train(args)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C (Lightning turns it into SystemExit): stop the ablation
        print(f"{label} interrupted; rerun the same command: finished runs are skipped and this one resumes from "
              f"its last finished epoch", file=sys.stderr, flush=True)
        raise
    except Exception as exc:  # one failed run must not stop the others: record it and go on
        message = " ".join(str(exc).split()) or type(exc).__name__
        entry = {**entry, "status": "failed", "error": f"{type(exc).__name__}: {message}"}
        if ledger.writes:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
        ledger.put(entry)
        print(f"{label} failed: {entry['error']} (traceback in {run_dir / 'error.txt'})", file=sys.stderr,
              flush=True)
        if debug_enabled():
            traceback.print_exc()
        return entry
    entry = {**entry, "status": "done", "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    ledger.put(entry)
    if is_global_zero:
        print(summary_line(results), flush=True)
    return entry


def ablate(args: argparse.Namespace, heads: list[str], seeds: list[int]) -> int:
    """Run the ablation `args` describes (see the module docstring); 0 when every run finished, else 1."""
    from data import get_dataset
    from heads.training import tables
    from heads.training.run import default_dataset, defaulted_dataset, parse_clip, resolve_cache
    from heads.training.run_dir import run_name

    name = check_name(args.name)
    parse_clip(args.clip)  # a malformed --clip fails here, not once per run
    cache_dir, runs_dir = Path(args.cache_dir), Path(args.runs_dir)
    dataset = args.dataset or default_dataset(cache_dir)
    with defaulted_dataset(dataset, cache_dir, given=bool(args.dataset)):
        tag_dir = resolve_cache(cache_dir, dataset, args.tag, args.data_root)  # once: every run trains on this cache
        cache = describe_cache(tag_dir)
        every_task = args.task == "all"
        if every_task:
            tasks = list(type(get_dataset(dataset, root=args.data_root, task=None)).tasks)
            if not tasks:
                raise UserError(f"{dataset} has no tasks, so TASK=all means nothing; leave TASK empty")
        else:
            tasks = [args.task]
        # every task's adapter up front: a data root of another data set fails here, with the defaulted choice named
        adapters = {task: get_dataset(dataset, root=args.data_root, task=task) for task in tasks}
    writes = writes_files()
    base = argparse.Namespace(**{**vars(args), "dataset": dataset, "tag": tag_dir.name})
    total = len(tasks) * len(heads) * len(seeds)
    count, failed, summaries = 0, 0, {}
    started = time.time()
    for task, ds in adapters.items():
        task = getattr(ds, "task", None)
        group = run_name(dataset, task)
        out = runs_dir / "ablate" / group / name
        ledger = Ledger(out / "runs.json", writes=writes)
        config = configuration(base, dataset, task, cache)
        task_args = argparse.Namespace(**{**vars(base), "task": task})
        entries: dict[tuple[str, int], dict] = {}
        for seed in seeds:  # seed-major: after each seed, every head has a comparable value
            for head in heads:
                count += 1
                label = f"[{count}/{total}] {group}: {head} seed {seed}"
                entries[head, seed] = run_pair(task_args, head, seed, config, ledger, group, label)
                failed += entries[head, seed]["status"] == "failed"
                summaries[task] = tables.summarise(entries, heads, seeds, ds, config, name)
                if writes:  # after every run, so an interrupted ablation still has its table
                    tables.write_summary(out, summaries[task], picture=False)
        if writes:
            tables.write_summary(out, summaries[task])
            print(tables.markdown(summaries[task]), flush=True)
            print(f"saved {out}/summary.{{json,md,png}}", flush=True)
    if every_task and writes:
        out = runs_dir / "ablate" / run_name(dataset, "all") / name
        tables.write_all_tasks(out, dataset, summaries, name)
        print(tables.all_tasks_markdown(tables.all_tasks(dataset, summaries, name)), flush=True)
        print(f"saved {out}/summary.{{json,md,png}}", flush=True)
    print(f"ablation {name}: {total - failed} of {total} runs finished, {failed} failed "
          f"({time.time() - started:.0f} s)", flush=True)
    return 1 if failed else 0

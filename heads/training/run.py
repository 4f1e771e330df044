"""`python -m heads train|eval`: train a head on cached features with Lightning, or test a checkpoint.

train: resolve the dataset (default: the one most recently extracted into the cache dir, else synthetic) and its cache
tag (the most recent unless --tag), build the head from the cache's feature size, fit with best-on-val and last
checkpoints, then validate and test the best checkpoint. The run directory
    <runs-dir>/<dataset>[-<task>]/<head>/version_N/
holds checkpoints/{best,last}.ckpt, metrics.csv (Lightning's CSV logger), config.json (the resolved config),
results.json (val and test metrics of the best checkpoint, cache tag, code version) and predictions.csv (per-video
test predictions; for classification also the class probabilities). The last line printed is a one-line summary.
Multi-GPU / multi-node go through Lightning's DDP (`--devices`, `--nodes`); only global rank 0 writes files.
Checkpoints are always loaded with `weights_only=True`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from data.errors import UserError
from data.outputs import code_version, plain, write_json
from data.store import PROVENANCE_KEYS
from heads import HEADS, build_head
from heads.config import HEAD
from heads.training.run_dir import (
    find_last,
    run_directory,
    split_changes,
    write_run,
)

# What a checkpoint records of its cache: the provenance attrs that say what the tokens mean (encoder name and weights
# hash, sizes, pool, sampling), so that `make predict` can make features of a new video the same way.
CACHE_KEYS = tuple(k for k in PROVENANCE_KEYS if k not in ("schema", "dtype"))


# --------------------------------------------------------------------------------------------- small resolvers
def default_dataset(cache_dir: Path) -> str:
    """The dataset most recently extracted into cache_dir, else "synthetic"."""
    from data import DATASETS
    from data.store import find_caches

    newest, newest_time = "synthetic", -1.0
    for name in DATASETS:
        try:
            tags = find_caches(cache_dir, name)
        except (OSError, ValueError):
            continue
        if tags:
            mtime = Path(tags[0]).stat().st_mtime
            if mtime > newest_time:
                newest, newest_time = name, mtime
    return newest


def resolve_cache(cache_dir: Path, dataset: str, tag: str | None = None) -> Path:
    """The tag directory to train on: --tag, else the most recently modified one holding sealed shards."""
    from data.store import find_caches, partial_shards

    tags = [Path(t) for t in find_caches(cache_dir, dataset)]
    where = Path(cache_dir) / dataset
    if not tags:
        partial = [p for tag_dir in (where.iterdir() if where.is_dir() else ()) for p in partial_shards(tag_dir)]
        extra = (f" ({len(partial)} unfinished .partial shard(s) there: the extraction was interrupted; rerun it)"
                 if partial else "")
        raise UserError(f"no cached features for {dataset} under {where}{extra}; run "
                        f"`make extract DATASET={dataset}` first (or pass CACHE_DIR=/--cache-dir where they are)")
    if tag:
        match = [t for t in tags if t.name == tag]
        if not match:
            raise UserError(f"no cache tag {tag!r} for {dataset} under {where}; available: "
                            f"{', '.join(t.name for t in tags)}")
        return match[0]
    return tags[0]


def check_cache_matches(expected: dict, store_meta: dict, store_dir: Path, what: str) -> None:
    """Refuse a cache made by another encoder or with another feature size than `what` (a checkpoint) expects."""
    diffs = []
    from data.store import FEATURE_KEYS

    for key in (*FEATURE_KEYS, "tokens"):
        want, have = expected.get(key), store_meta.get(key)
        if want is not None and have is not None and plain(want) != plain(have):
            diffs.append(f"{key} {have!r} instead of {want!r}")
    if diffs:
        raise UserError(
            f"the cache {store_dir} does not match {what}: it has {', '.join(diffs)}; point --tag/--cache-dir "
            f"(TAG=/CACHE_DIR=) at features extracted with encoder {expected.get('encoder')!r}, or train a new head "
            f"on this cache (without --resume)")


class ResumeHint:
    """Lightning callback: when training stops on an exception (Ctrl-C, NaN, a crash) say how to resume."""

    def __new__(cls, run_dir: Path):
        from pytorch_lightning.callbacks import Callback

        class _Hint(Callback):
            def on_exception(self, trainer, pl_module, exception) -> None:
                last = run_dir / "checkpoints" / "last.ckpt"
                if trainer.is_global_zero and last.exists():
                    print(f"training stopped at epoch {trainer.current_epoch}, step {trainer.global_step}; resume "
                          f"from the last finished epoch with RESUME={last} (make train) or --resume {last}",
                          file=sys.stderr, flush=True)

        return _Hint()


def load_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True (no pickled code runs); a clear error when the file is not usable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the path of a .ckpt under runs/.../checkpoints/")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot load checkpoint {path} with weights_only=True ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); is it a checkpoint written by "
                        f"`make train`?") from exc
    if "hyper_parameters" not in ckpt or "config" not in ckpt["hyper_parameters"]:
        raise UserError(f"{path} is not a checkpoint written by `python -m heads train` (no config inside)")
    return ckpt


def restore_head(ckpt: dict) -> torch.nn.Module:
    """The trained head of a checkpoint read by `load_checkpoint`, built from its config with its weights, in eval
    mode: (B, T, P, D) -> (B, n_outputs)."""
    config = ckpt["hyper_parameters"]["config"]
    head = build_head(config["head"], config["cache"]["hidden_size"], config["n_outputs"], config["seq_len"],
                      **config["head_cfg"])
    state = {k[len("head."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("head.")}
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"the checkpoint's weights do not fit its own {config['head']} config "
                        f"({str(exc).splitlines()[0]}); is it a checkpoint written by `make train`?") from exc
    return head.eval()


def cache_info(store, tag_dir: Path, dm) -> dict:
    """What a checkpoint records of its cache: the provenance keys that say what the tokens mean (CACHE_KEYS), the
    tag and folder, tokens per segment P and feature size D."""
    meta = dict(store.meta)
    P, D = dm.feature_shape
    info = {k: plain(meta[k]) for k in CACHE_KEYS if k in meta}
    info.update({"tag": tag_dir.name, "dir": str(tag_dir), "tokens": P, "hidden_size": D})
    return info


# -------------------------------------------------------------------------------------------------- the config
def head_cfg_from_args(args) -> dict:
    cfg = {"d_model": args.d_model, "n_layers": args.n_layers, "d_state": args.d_state, "dropout": args.dropout}
    if args.n_heads is not None:
        cfg["n_heads"] = args.n_heads
    if args.attention is not None:
        cfg["attention"] = args.attention
    if args.backend is not None:
        cfg["backend"] = args.backend
    return {k: (getattr(HEAD, k) if v is None else v) for k, v in cfg.items()}


def parse_clip(text: str | None):
    if not text:
        return None
    kind, _, size = text.partition(":")
    if kind not in ("window", "subset") or not size.isdigit():
        raise UserError(f"--clip must look like window:60 or subset:64, got {text!r}")
    return (kind, int(size))


def _trainer_kwargs(args) -> dict:
    devices = args.devices if args.devices is not None else "auto"
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    nodes = int(args.nodes or 1)
    n_dev = devices if isinstance(devices, int) else 1
    kwargs = dict(accelerator=args.accelerator or "auto", devices=devices, num_nodes=nodes,
                  use_distributed_sampler=False, reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0,
                  enable_model_summary=False)
    if n_dev * nodes > 1:
        from pytorch_lightning.strategies import DDPStrategy

        kwargs["strategy"] = DDPStrategy(find_unused_parameters=False)
    if args.precision:
        kwargs["precision"] = args.precision
    return kwargs


# ------------------------------------------------------------------------------------------------------- train
def train(args) -> tuple[dict, bool]:
    """`python -m heads train`: resolve (resume, data set, cache) -> build (head, module, trainer) -> fit, then
    validate and test the best checkpoint -> write the run directory. Returns (results, is global rank 0)."""
    import pytorch_lightning as pl

    from heads.training.module import HeadModule

    if args.head not in HEADS:
        raise UserError(f"unknown HEAD {args.head!r}; valid heads: {', '.join(HEADS)}")
    resume_ckpt = _resume(args)
    cache_dir = Path(args.cache_dir)
    dataset_name = args.dataset or default_dataset(cache_dir)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    ds, tag_dir, store, dm = open_data(
        dataset_name, args.data_root, args.task, cache_dir, args.tag, batch_size=args.batch, workers=args.workers,
        clip=parse_clip(args.clip), eval_stride=args.eval_stride, seed=args.seed, val_fraction=args.val_fraction,
        allow_missing=args.allow_missing,
        cache_hint=f"make extract DATASET={dataset_name}"
                   f"{' CACHE_DIR=' + str(cache_dir) if str(cache_dir) != 'cache' else ''}")
    cache = cache_info(store, tag_dir, dm)
    if resume_ckpt is not None:
        check_cache_matches(resume_ckpt["hyper_parameters"]["config"]["cache"], cache, tag_dir,
                            f"the checkpoint {args.resume}")
        for line in split_changes(resume_ckpt["hyper_parameters"]["config"].get("splits"), dm.split_ids()):
            print(f"warning: {line}; the resumed run trains and validates on the splits of today",
                  file=sys.stderr, flush=True)
    task = getattr(ds, "task", None)
    n_outputs = 1 if ds.task_type == "regression" else int(ds.num_classes)
    head_cfg = (head_cfg_from_args(args) if resume_ckpt is None  # the checkpoint's architecture wins
                else resume_ckpt["hyper_parameters"]["config"]["head_cfg"])
    try:
        head = build_head(args.head, cache["hidden_size"], n_outputs, dm.seq_len, **head_cfg)
    except ValueError as exc:  # the head's own checks of the configuration the command line asked for
        raise UserError(f"cannot build {args.head} with {head_cfg}: {exc}") from exc
    params = sum(p.numel() for p in head.parameters())
    run_dir, old_metrics = run_directory(Path(args.runs_dir), f"{dataset_name}-{task}" if task else dataset_name,
                                         args.head, args.resume, resume_ckpt)
    config = plain({
        "head": args.head, "head_cfg": head_cfg, "dataset": dataset_name, "task": task, "data_root": args.data_root,
        "task_type": ds.task_type, "n_outputs": n_outputs, "class_names": getattr(ds, "class_names", None),
        "cache": cache, "cache_dir": str(cache_dir), "clip": list(dm.clip), "eval_stride": dm.eval_stride,
        "seq_len": dm.seq_len, "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
        "weight_decay": args.weight_decay, "seed": args.seed, "val_fraction": args.val_fraction,
        "plateau_factor": args.plateau_factor, "plateau_patience": args.plateau_patience,
        "devices": args.devices, "nodes": args.nodes, "accelerator": args.accelerator, "params": params,
        "run_dir": str(run_dir), "code_version": code_version(), "notes": dm.notes, "splits": dm.split_ids(),
    })
    model = HeadModule(head, config, task_type=ds.task_type, n_outputs=n_outputs, lr=args.lr,
                       weight_decay=args.weight_decay, plateau_factor=args.plateau_factor,
                       plateau_patience=args.plateau_patience)
    trainer, checkpoint = _fit_trainer(args, model, run_dir)

    started = time.time()
    trainer.fit(model, datamodule=dm, ckpt_path=args.resume or None, weights_only=True)
    train_s = time.time() - started
    ckpt_dir = Path(checkpoint.dirpath) if checkpoint.dirpath else run_dir / "checkpoints"
    best = checkpoint.best_model_path if not args.fast_dev_run else ""
    ckpt = best if best and Path(best).exists() else None
    trainer.validate(model, datamodule=dm, ckpt_path=ckpt, weights_only=True, verbose=False)
    trainer.test(model, datamodule=dm, ckpt_path=ckpt, weights_only=True, verbose=False)

    results = plain({
        "dataset": dataset_name, "task": task, "head": args.head, "task_type": ds.task_type,
        "metric": model.metric_name, "class_names": getattr(ds, "class_names", None),
        **_split_metrics(model),
        "best_checkpoint": ckpt, "last_checkpoint": str(ckpt_dir / "last.ckpt") if not args.fast_dev_run else None,
        "epochs_run": trainer.current_epoch, "global_step": trainer.global_step, "train_s": round(train_s, 2),
        "params": params, "cache_tag": cache["tag"], "cache": cache, "code_version": config["code_version"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_dir": str(run_dir), "notes": dm.notes,
        "n_videos": {s: len(dm.video_ids(s)) for s in ("train", "val", "test")}, "splits": dm.split_ids(),
    })
    if trainer.is_global_zero:
        write_run(run_dir, config, results, old_metrics, model.eval_outputs["test"], dm.video_ids("test"),
                  getattr(ds, "class_names", None))
    return results, trainer.is_global_zero


def _resume(args) -> dict | None:
    """`--resume CKPT|last`: load the checkpoint (weights_only) and take its head, data set, task, root and cache tag
    where the command line gives none (`args` is updated); None without --resume."""
    if args.resume == "last":
        args.resume = str(find_last(Path(args.runs_dir), args.head if args.head_given else None, args.dataset))
    if not args.resume:
        return None
    resume_ckpt = load_checkpoint(args.resume)
    prev = resume_ckpt["hyper_parameters"]["config"]
    if prev["head"] != args.head and args.head_given:
        raise UserError(f"--resume {args.resume} is a {prev['head']} checkpoint, not {args.head}; "
                        f"drop HEAD= or pick a {args.head} checkpoint")
    args.head = prev["head"]
    args.dataset = args.dataset or prev["dataset"]
    args.task = args.task or prev.get("task")
    args.data_root = args.data_root or prev.get("data_root")
    args.tag = args.tag or prev["cache"]["tag"]
    return resume_ckpt


def open_data(dataset_name: str, data_root, task, cache_dir: Path, tag: str | None, **datamodule_kwargs):
    """The data set's adapter, its cache folder, the store and the data module: (ds, tag_dir, store, dm)."""
    from data import get_dataset
    from data.store import FeatureStore
    from heads.training.datamodule import FeatureDataModule

    ds = get_dataset(dataset_name, root=data_root, task=task, seed=datamodule_kwargs.get("seed", 0))
    tag_dir = resolve_cache(cache_dir, dataset_name, tag)
    store = FeatureStore(tag_dir)
    if len(store) == 0:
        raise UserError(f"the cache {tag_dir} holds no videos; run `make extract DATASET={dataset_name}`")
    return ds, tag_dir, store, FeatureDataModule(store, ds, **datamodule_kwargs)


def _fit_trainer(args, model, run_dir: Path):
    """The Lightning Trainer of a training run and its best-on-val checkpoint callback: best.ckpt on the monitored
    metric and last.ckpt after every epoch (Lightning's own save_last only saves when the best one does), the CSV
    logger (and TensorBoard's when installed) into the run directory, the resume hint on an exception."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    checkpoint = ModelCheckpoint(filename="best", monitor=model.monitor, mode=model.monitor_mode, save_top_k=1,
                                 enable_version_counter=False, auto_insert_metric_name=False)
    last_checkpoint = ModelCheckpoint(filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                                      enable_version_counter=False, auto_insert_metric_name=False)
    loggers = [CSVLogger(save_dir=str(run_dir.parent.parent), name=run_dir.parent.name,
                         version=run_dir.name)]
    try:
        import tensorboard  # noqa: F401
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tb", version=""))
    except ImportError:
        pass
    trainer = pl.Trainer(max_epochs=args.epochs, max_steps=args.max_steps if args.max_steps else -1,
                         logger=loggers,
                         callbacks=[checkpoint, last_checkpoint, LearningRateMonitor(logging_interval="epoch"),
                                    ResumeHint(run_dir)],
                         default_root_dir=str(run_dir), log_every_n_steps=args.log_every,
                         enable_progress_bar=args.progress, fast_dev_run=args.fast_dev_run,
                         limit_train_batches=args.limit_batches, limit_val_batches=args.limit_batches,
                         limit_test_batches=args.limit_batches, **_trainer_kwargs(args))
    return trainer, checkpoint


def _split_metrics(model) -> dict:
    """{"val": {metric, "loss"}, "test": {metric, "loss"}} of the module's last evaluation."""
    m = model.metric_name
    return {split: {m: model.eval_outputs[split]["metric"], "loss": model.eval_outputs[split]["loss"]}
            for split in ("val", "test")}


# -------------------------------------------------------------------------------------------------------- eval
def evaluate(args) -> dict:
    """`python -m heads eval`: rebuild the head of a checkpoint, validate and test it on its cache (or --tag /
    --cache-dir), write <checkpoint>.eval.json. Returns the results."""
    import pytorch_lightning as pl

    from heads.training.module import HeadModule

    if not args.ckpt:
        raise UserError("no checkpoint given: make eval CKPT=runs/<dataset>/<head>/version_N/checkpoints/best.ckpt")
    ckpt = load_checkpoint(args.ckpt)
    hp = ckpt["hyper_parameters"]
    config = hp["config"]
    ds, tag_dir, store, dm = open_data(
        config["dataset"], args.data_root or config.get("data_root"), config.get("task"),
        Path(args.cache_dir or config["cache_dir"]), args.tag or config["cache"]["tag"],
        batch_size=args.batch or config["batch"], workers=args.workers, clip=tuple(config["clip"]),
        eval_stride=config["eval_stride"], seed=config["seed"], val_fraction=config["val_fraction"],
        allow_missing=args.allow_missing)
    check_cache_matches(config["cache"], cache_info(store, tag_dir, dm), tag_dir, f"the checkpoint {args.ckpt}")
    changes = split_changes(config.get("splits"), dm.split_ids())
    for line in changes:  # e.g. videos added to DATA_ROOT since training (issue: a validation split that moves)
        print(f"warning: {line}; its metrics are not comparable with the run's", file=sys.stderr, flush=True)
    model = HeadModule(restore_head(ckpt), config, task_type=config["task_type"], n_outputs=config["n_outputs"],
                       lr=hp["lr"], weight_decay=hp["weight_decay"])
    trainer = pl.Trainer(accelerator=args.accelerator or "auto", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(model, datamodule=dm, verbose=False)
    trainer.test(model, datamodule=dm, verbose=False)
    results = plain({
        "dataset": config["dataset"], "task": config.get("task"), "head": config["head"],
        "metric": model.metric_name, "task_type": config["task_type"], "checkpoint": str(args.ckpt),
        "cache_tag": tag_dir.name, **_split_metrics(model),
        "epochs_run": ckpt.get("epoch"), "run_dir": str(Path(args.ckpt).resolve().parent.parent),
        "code_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "splits": dm.split_ids(), "split_changes": changes,
    })
    try:
        write_json(Path(args.ckpt).with_suffix(".eval.json"), results)
    except OSError:
        pass
    return results


# Lightning's hints that do not apply here: few loader workers is our choice on small machines, and the val/test
# metrics are already reduced over the DDP ranks by the module
QUIET_WARNINGS = (".*does not have many workers.*", ".*sync_dist=True.*")

"""`python -m heads train|eval`: train a head on cached features with Lightning, or test a checkpoint.

train: resolve the dataset (default: the one most recently extracted into the cache dir, else synthetic) and its cache
tag (the most recent unless --tag), build the head from the cache's feature size, fit with best-on-val and last
checkpoints, then validate and test the best checkpoint. The run directory
    <runs-dir>/<dataset>[-<task>]/<head>/version_N/
holds checkpoints/{best,last}.ckpt, metrics.csv (Lightning's CSV logger), tb/ (its TensorBoard logger), config.json
(the resolved config), results.json (val and test metrics of the best checkpoint, cache tag, code version) and
predictions.csv (per-video test predictions; for classification also the class probabilities). The last line printed
is a one-line summary.
Multi-GPU / multi-node go through Lightning's DDP (`--devices`, `--nodes`); only global rank 0 writes files.
Checkpoints are always loaded with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import torch

from data.console import say
from data.errors import UserError
from data.outputs import code_version, plain, write_json
from data.store import PROVENANCE_KEYS
from heads import HEADS, build_head
from heads.config import HEAD, TRAIN
from heads.training.run_dir import (
    find_last,
    newest_best,
    run_directory,
    run_name,
    split_changes,
    write_run,
)

# What a checkpoint records of its cache: the provenance attrs that say what the tokens mean (encoder name and weights
# hash, sizes, pool, sampling), so that `make predict` can make features of a new video the same way.
CACHE_KEYS = tuple(k for k in PROVENANCE_KEYS if k not in ("schema", "dtype"))


# --------------------------------------------------------------------------------------------- small resolvers
def default_dataset(cache_dir: Path) -> str:
    """The dataset most recently extracted into cache_dir, else "synthetic"."""
    return _newest_dataset(cache_dir)


@contextlib.contextmanager
def defaulted_dataset(name: str, cache_dir: Path, given: bool):
    """A UserError raised inside names the choice the user did not make when DATASET was not given (the data set
    then is the one most recently extracted, perhaps not the one the other arguments are about)."""
    try:
        yield
    except UserError as exc:
        if given:
            raise
        raise UserError(f"{exc} (DATASET was not given, so {name}: the data set most recently extracted into "
                        f"{cache_dir}; DATASET= chooses another)") from exc


def _newest_dataset(cache_dir: Path) -> str:
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


def resolve_cache(cache_dir: Path, dataset: str, tag: str | None = None, data_root=None) -> Path:
    """The tag directory to train on: --tag, else the most recently modified one holding sealed shards. UserError
    when there is none (with the `make extract` command that makes one; `data_root` goes into it)."""
    from data.store import find_caches, partial_shards

    tags = [Path(t) for t in find_caches(cache_dir, dataset)]
    where = Path(cache_dir) / dataset
    if not tags:
        partial = [p for tag_dir in (where.iterdir() if where.is_dir() else ()) for p in partial_shards(tag_dir)]
        extra = (f" ({len(partial)} unfinished .partial shard(s) there: the extraction was interrupted; rerun it)"
                 if partial else "")
        raise UserError(f"no cached features for {dataset} under {where}{extra}; run "
                        f"`{extract_command(dataset, data_root, cache_dir)}` first (or pass CACHE_DIR=/--cache-dir "
                        "where they are)")
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
def head_cfg_from_args(args, fill: bool = True) -> dict:
    """The head's config from the command line; unset sizes take heads.config.HEAD (`fill`) or stay None."""
    cfg = {"d_model": args.d_model, "n_layers": args.n_layers, "d_state": args.d_state, "dropout": args.dropout}
    if args.n_heads is not None:
        cfg["n_heads"] = args.n_heads
    if args.attention is not None:
        cfg["attention"] = args.attention
    if args.backend is not None:
        cfg["backend"] = args.backend
    return {k: (getattr(HEAD, k) if v is None and fill else v) for k, v in cfg.items()}


# The options of a run that a resumed run takes from its checkpoint unless given again (heads.config.TRAIN's fields
# but workers, which is the machine's, not the run's)
RUN_OPTIONS = ("epochs", "batch", "lr", "weight_decay", "plateau_factor", "plateau_patience", "seed", "eval_stride",
               "val_fraction")


def resolve_run_options(args, prev: dict | None) -> None:
    """Fill the options left unset (None): a resumed run continues as it was configured (its checkpoint's config,
    `prev`), a new one takes heads.config.TRAIN. A head size given with --resume must agree with the checkpoint's
    architecture (UserError otherwise)."""
    for key in RUN_OPTIONS:
        if getattr(args, key) is None:
            setattr(args, key, prev.get(key, getattr(TRAIN, key)) if prev else getattr(TRAIN, key))
    if prev is None:
        return
    if args.clip is None and prev.get("clip"):
        args.clip = f"{prev['clip'][0]}:{prev['clip'][1]}"
    for key, value in head_cfg_from_args(args, fill=False).items():
        if value is not None and plain(value) != plain(prev["head_cfg"].get(key)):
            raise UserError(f"--{key.replace('_', '-')} {value} differs from the resumed checkpoint's "
                            f"{prev['head_cfg'].get(key)} ({key.upper()}=); drop it to continue that run, or start a "
                            f"new run without RESUME=")


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

    from heads.training.console import split_counts
    from heads.training.module import HeadModule

    if args.head not in HEADS:
        raise UserError(f"unknown HEAD {args.head!r}; valid heads: {', '.join(HEADS)}")
    resume_ckpt = _resume(args)
    cache_dir = Path(args.cache_dir)
    dataset_name = args.dataset or default_dataset(cache_dir)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    with defaulted_dataset(dataset_name, cache_dir, given=bool(args.dataset)):
        ds, tag_dir, store, dm = open_data(
            dataset_name, args.data_root, args.task, cache_dir, args.tag, batch_size=args.batch, workers=args.workers,
            clip=parse_clip(args.clip), eval_stride=args.eval_stride, seed=args.seed, val_fraction=args.val_fraction,
            allow_missing=args.allow_missing, require_all=args.require_all)
    cache = cache_info(store, tag_dir, dm)
    if resume_ckpt is not None:
        check_cache_matches(resume_ckpt["hyper_parameters"]["config"]["cache"], cache, tag_dir,
                            f"the checkpoint {args.resume}")
        for line in split_changes(resume_ckpt["hyper_parameters"]["config"].get("splits"), dm.split_ids()):
            say(f"warning: {line}; the resumed run trains and validates on the splits of today")
    task = getattr(ds, "task", None)
    n_outputs = 1 if ds.task_type == "regression" else int(ds.num_classes)
    head_cfg = (head_cfg_from_args(args) if resume_ckpt is None  # the checkpoint's architecture wins
                else resume_ckpt["hyper_parameters"]["config"]["head_cfg"])
    try:
        head = build_head(args.head, cache["hidden_size"], n_outputs, dm.seq_len, **head_cfg)
    except ValueError as exc:  # the head's own checks of the configuration the command line asked for
        raise UserError(f"cannot build {args.head} with {head_cfg}: {exc}") from exc
    params = sum(p.numel() for p in head.parameters())
    run_dir = run_directory(Path(args.runs_dir), run_name(dataset_name, task), args.head, args.resume, args.run_dir)
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
    done_epochs = resume_ckpt["epoch"] + 1 if resume_ckpt is not None else 0  # Lightning's "epoch" is 0-based
    epochs = (f"epoch {done_epochs + 1} of {args.epochs}" if resume_ckpt is not None else
              f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}")
    opening = (f"{'resume' if resume_ckpt is not None else 'train'} {args.head} on "
               f"{dataset_name}{'/' + task if task else ''}, cache {tag_dir.name}: videos {split_counts(dm)}; "
               f"{epochs}, batch {args.batch}, {{device}}, {params:,} parameters -> {run_dir}")
    short = [f"note: {note}" for note in dm.notes
             if "segments repeat" in note or "last segment repeats" in note or note.startswith("CLIP not given")]
    trainer, checkpoint = _fit_trainer(args, model, run_dir, resume_ckpt.get("global_step") if resume_ckpt else None,
                                       opening, short)

    started = time.time()
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=args.resume or None, weights_only=True)
    except BaseException:
        # stopped before its first checkpoint (Ctrl-C, SIGTERM, a crash in epoch 1): the folder holds nothing to
        # resume; left behind, it would be an empty version_N that RESUME=last passes over for an older run
        if resume_ckpt is None and trainer.is_global_zero and not list(run_dir.glob("checkpoints/*.ckpt")):
            shutil.rmtree(run_dir, ignore_errors=True)
            for parent in (run_dir.parent, run_dir.parent.parent):  # <head>/ and <dataset>/ when nothing else is there
                try:
                    parent.rmdir()
                except OSError:
                    break
        raise
    train_s = time.time() - started
    ckpt_dir = Path(checkpoint.dirpath) if checkpoint.dirpath else run_dir / "checkpoints"
    best = checkpoint.best_model_path if not args.fast_dev_run else ""
    ckpt = best if best and Path(best).exists() else None
    best_epoch = torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] + 1 if ckpt else None
    # The best checkpoint's val and test metrics go to results.json; metrics.csv keeps the training history only
    # (logged there they would look like one more epoch).
    trainer.loggers = []
    trainer.validate(model, datamodule=dm, ckpt_path=ckpt, weights_only=True, verbose=False)
    trainer.test(model, datamodule=dm, ckpt_path=ckpt, weights_only=True, verbose=False)

    results = plain({
        "dataset": dataset_name, "task": task, "head": args.head, "task_type": ds.task_type,
        "metric": model.metric_name, "class_names": getattr(ds, "class_names", None),
        **_split_metrics(model),
        "best_checkpoint": ckpt, "best_epoch": best_epoch,
        "last_checkpoint": str(ckpt_dir / "last.ckpt") if not args.fast_dev_run else None,
        "epochs_run": trainer.current_epoch, "global_step": trainer.global_step, "train_s": round(train_s, 2),
        "params": params, "cache_tag": cache["tag"], "cache": cache, "code_version": config["code_version"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_dir": str(run_dir), "notes": dm.notes,
        "n_videos": {s: len(dm.video_ids(s)) for s in ("train", "val", "test")}, "splits": dm.split_ids(),
        "skipped_videos": dm.skipped, "short_videos": dm.short,
    })
    if trainer.is_global_zero:
        write_run(run_dir, config, results, model.eval_outputs["test"], dm.video_ids("test"),
                  getattr(ds, "class_names", None))
    return results, trainer.is_global_zero


def _resume(args) -> dict | None:
    """`--resume CKPT|last`: load the checkpoint (weights_only) and take its head, data set, task, root, cache tag,
    clip and run options (epochs, batch, lr, ...) where the command line gives none (`args` is updated; without
    --resume the unset options take heads.config.TRAIN); None without --resume."""
    if args.resume == "last":
        args.resume = str(find_last(Path(args.runs_dir), args.head if args.head_given else None, args.dataset))
    if not args.resume:
        resolve_run_options(args, None)
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
    resolve_run_options(args, prev)
    done = resume_ckpt["epoch"] + 1  # Lightning's "epoch" is 0-based
    if done >= args.epochs:
        raise UserError(f"{args.resume} has already trained {done} of its {args.epochs} epochs; give EPOCHS= "
                        f"(--epochs) above {done} to train it further")
    return resume_ckpt


def open_data(dataset_name: str, data_root, task, cache_dir: Path, tag: str | None, **datamodule_kwargs):
    """The data set's adapter, its cache folder, the store and the data module: (ds, tag_dir, store, dm)."""
    from data import get_dataset
    from data.store import FeatureStore
    from heads.training.datamodule import FeatureDataModule

    ds = get_dataset(dataset_name, root=data_root, task=task, seed=datamodule_kwargs.get("seed", 0))
    tag_dir = resolve_cache(cache_dir, dataset_name, tag, data_root)
    store = FeatureStore(tag_dir)
    hint = extract_command(dataset_name, data_root, cache_dir, store.meta)
    if len(store) == 0:
        raise UserError(f"the cache {tag_dir} holds no videos; run `{hint}`")
    return ds, tag_dir, store, FeatureDataModule(store, ds, cache_hint=hint, **datamodule_kwargs)


def extract_command(dataset: str, data_root, cache_dir, meta: dict | None = None) -> str:
    """The `make extract` command that fills the cache of `meta` (a store's provenance: encoder, sampling, pool) for
    `dataset` under `cache_dir` from `data_root`: what a hint must say so that running it adds to *this* cache, not
    a new one under another tag (the dataset's default encoder or sampling)."""
    import shlex

    meta = meta or {}
    words = [f"DATASET={dataset}"]
    if data_root:
        words.append(f"DATA_ROOT={shlex.quote(str(data_root))}")
    if meta.get("encoder"):
        words.append(f"ENCODER={shlex.quote(str(meta['encoder']))}")
    if meta.get("durations"):
        words.append("SAMPLING=paper")
    elif meta.get("fps") is not None:
        words.append(f"FPS={float(meta['fps']):g}")
    elif meta.get("segments") is not None:
        words.append(f"SEGMENTS={int(meta['segments'])}")
    if meta.get("frame_interval") is not None:  # a video encoder: FRAME_STRIDE counts source frames at 30 fps
        words.append(f"FRAME_STRIDE={round(float(meta['frame_interval']) * 30)}")
    elif int(meta.get("frames_per_segment") or 1) != 1:
        words.append(f"FRAMES_PER_SEGMENT={int(meta['frames_per_segment'])}")
    if meta.get("pool") not in (None, "none", 1, "1"):
        words.append(f"POOL={meta['pool']}")
    if str(cache_dir) != "cache":
        words.append(f"CACHE_DIR={shlex.quote(str(cache_dir))}")
    return "make extract " + " ".join(words)


def _fit_trainer(args, model, run_dir: Path, resume_step: int | None, opening: str, notes: list[str]):
    """The Lightning Trainer of a training run and its best-on-val checkpoint callback: best.ckpt on the monitored
    metric and last.ckpt after every epoch (Lightning's own save_last only saves when the best one does), the CSV
    logger continuing metrics.csv from `resume_step` and TensorBoard's (tb/) in the run directory, the
    opening line (`opening`, "{device}" filled in) and `notes` when fit starts, one line per epoch without a progress
    bar, the resume hint on an exception."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    from heads.training.console import EpochBar, EpochLines, ResumeHint
    from heads.training.run_dir import metrics_logger

    checkpoint = ModelCheckpoint(filename="best", monitor=model.monitor, mode=model.monitor_mode, save_top_k=1,
                                 enable_version_counter=False, auto_insert_metric_name=False)
    last_checkpoint = ModelCheckpoint(filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                                      enable_version_counter=False, auto_insert_metric_name=False)
    # metrics.csv beside the checkpoints, and TensorBoard event files in tb/ (`tensorboard --logdir runs`)
    loggers = [metrics_logger(run_dir, resume_step),
               TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False)]
    trainer = pl.Trainer(max_epochs=args.epochs, max_steps=args.max_steps if args.max_steps else -1,
                         logger=loggers,
                         callbacks=[checkpoint, last_checkpoint, LearningRateMonitor(logging_interval="epoch"),
                                    EpochLines(opening, notes, checkpoint, per_epoch=not args.progress),
                                    ResumeHint(run_dir), *([EpochBar()] if args.progress else [])],
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

    from heads.training.console import split_counts
    from heads.training.module import HeadModule

    if not args.ckpt:
        args.ckpt = str(newest_best(Path(args.runs_dir)))
        say(f"CKPT not given: the newest best checkpoint under {args.runs_dir}/, {args.ckpt}")
    ckpt = load_checkpoint(args.ckpt)
    hp = ckpt["hyper_parameters"]
    config = hp["config"]
    ds, tag_dir, store, dm = open_data(
        config["dataset"], args.data_root or config.get("data_root"), config.get("task"),
        Path(args.cache_dir or config["cache_dir"]), args.tag or config["cache"]["tag"],
        batch_size=args.batch or config["batch"], workers=args.workers, clip=tuple(config["clip"]),
        eval_stride=config["eval_stride"], seed=config["seed"], val_fraction=config["val_fraction"],
        allow_missing=args.allow_missing, require_all=args.require_all)
    check_cache_matches(config["cache"], cache_info(store, tag_dir, dm), tag_dir, f"the checkpoint {args.ckpt}")
    run_dir = Path(args.ckpt).parent.parent  # as given: relative paths stay relative, like train's
    best_epoch = ckpt["epoch"] + 1  # Lightning's "epoch" is 0-based
    epochs_run = None
    try:  # the run's own count, as train printed it
        epochs_run = json.loads((run_dir / "results.json").read_text()).get("epochs_run")
    except (OSError, ValueError):
        pass
    say(f"eval {args.ckpt} ({config['head']}, epoch {best_epoch}) on {config['dataset']}"
        f"{'/' + config['task'] if config.get('task') else ''}, cache {tag_dir.name}: videos "
        f"{split_counts(dm, ('val', 'test'))}")
    ids = dm.split_ids()
    # e.g. videos added to DATA_ROOT since training (issue #20: a validation split that moves). Eval reads only val and
    # test: when they are the checkpoint's, a changed train list changes nothing measured here
    changes = []
    for split, split_ids in ids.items():
        for line in split_changes(config.get("splits"), {split: split_ids}):
            say(f"note: {line}; val and test are what eval measures" if split == "train" else
                f"warning: {line}; its metrics are not comparable with the run's")
            changes.append(line)
    model = HeadModule(restore_head(ckpt), config, task_type=config["task_type"], n_outputs=config["n_outputs"],
                       lr=hp["lr"], weight_decay=hp["weight_decay"])
    trainer = pl.Trainer(accelerator=args.accelerator or "auto", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(model, datamodule=dm, verbose=False)
    trainer.test(model, datamodule=dm, verbose=False)
    results = plain({
        "dataset": config["dataset"], "task": config.get("task"), "head": config["head"],
        "metric": model.metric_name, "task_type": config["task_type"], "checkpoint": str(args.ckpt),
        "checkpoint_role": Path(args.ckpt).stem,
        "cache_tag": tag_dir.name, **_split_metrics(model),
        "best_epoch": best_epoch, "epochs_run": epochs_run, "run_dir": str(run_dir),
        "code_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "splits": ids, "split_changes": changes,
        "skipped_videos": dm.skipped, "short_videos": dm.short, "notes": dm.notes,
    })
    out = Path(args.ckpt).with_suffix(".eval.json")
    try:
        write_json(out, results)
        results["saved_to"] = str(out)
    except OSError as exc:
        say(f"note: could not write {out} ({exc.strerror}); the results are only printed")
    return results


# Lightning's hints that do not apply here: few loader workers is our choice on small machines, and the val/test
# metrics are already reduced over the DDP ranks by the module
QUIET_WARNINGS = (".*does not have many workers.*", ".*sync_dist=True.*")

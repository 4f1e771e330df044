"""`python -m extract` / `make extract`: stage 1 for one data set, resumable, into cache/<dataset>/<tag>/.

Lists the videos of every split (LVU: of all nine tasks unless --task), skips every id already sealed in the cache,
decodes the rest in DataLoader workers, encodes them with the frozen encoder and writes sealed HDF5 shards. Videos
that cannot be used go to failures.jsonl and the run goes on; the exit status is 1 when any video failed, 2 for bad
input (one `error: ...` line, see data/errors.py), 0 otherwise. Cheap checks (dataset, task, data root, sampling) run
before torch, transformers or Lightning are imported, so a typo fails in a second.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import signal
import sys
import time
from pathlib import Path

from data.console import Terminated, interrupt_status, quiet_libraries, stop_on_sigterm
from data.errors import UserError, run_cli
from data.outputs import write_json
from extract import DEFAULT_CLIP_ENCODER, DEFAULT_ENCODER, DEFAULT_ENCODERS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m extract", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic", help="breakfast | coin | folder | lvu | synthetic [synthetic]")
    p.add_argument("--task", default=None, help="LVU task (only its videos) or dataset task [all videos]")
    p.add_argument("--data-root", default=None, help="folder holding the raw data set [data/raw/<dataset>]")
    p.add_argument("--encoder", default=None,
                   help="HF hub id, folder saved with save_pretrained, or vit-tiny-random; families: README, "
                        f"Encoders [{DEFAULT_ENCODER}; breakfast, coin: {DEFAULT_CLIP_ENCODER}]")
    p.add_argument("--fps", type=float, default=None, help="frames per second [dataset default: LVU 1]")
    p.add_argument("--segments", type=int, default=None, help="uniform segments per video [dataset default]")
    p.add_argument("--frames-per-segment", type=int, default=None,
                   help="image encoders: frames averaged per segment in token space [1]; video encoders: the clip "
                        "length, which must be the checkpoint's num_frames [num_frames]")
    p.add_argument("--frame-stride", type=int, default=None,
                   help="video encoders: source frames (at 30 fps) between a clip's frames [the family's training "
                        "stride: timesformer 32, videomae 4, vivit 2]")
    p.add_argument("--sampling", choices=("default", "paper"), default="default",
                   help="paper: LVU only, the ViS4mer code's frames from lvu_1.0/lvu_durations.csv (d + 1 frames "
                        "over the whole file) instead of FPS [default]")
    p.add_argument("--pool", default=None, help="k: k x k average over the patch grid, special tokens kept [none]")
    p.add_argument("--batch", type=int, default=32, help="frames per encoder batch [32]")
    p.add_argument("--workers", type=int, default=2, help="DataLoader decoding workers per device [2]")
    p.add_argument("--threads", type=int, default=0, help="FFmpeg decoding threads per worker, 0 = auto [0]")
    p.add_argument("--cache-dir", default="cache", help="cache root [cache]")
    p.add_argument("--devices", default="1", help="devices per node (an integer, or auto) [1]")
    p.add_argument("--nodes", type=int, default=1, help="nodes [1]")
    p.add_argument("--accelerator", default="auto", help="auto | cpu | gpu [auto]")
    p.add_argument("--shard-videos", type=int, default=256, help="videos per shard before it is sealed [256]")
    p.add_argument("--shard-gb", type=float, default=1.0, help="shard size in GiB before it is sealed [1]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise UserError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(args: argparse.Namespace) -> None:
    _positive("BATCH", args.batch)
    _positive("WORKERS", args.workers, allow_zero=True)
    _positive("THREADS", args.threads, allow_zero=True)
    _positive("NODES", args.nodes)
    _positive("FPS", args.fps)
    _positive("SEGMENTS", args.segments)
    _positive("FRAMES_PER_SEGMENT", args.frames_per_segment)
    _positive("FRAME_STRIDE", args.frame_stride)
    _positive("--shard-videos", args.shard_videos)
    _positive("--shard-gb", args.shard_gb)
    if args.fps is not None and args.segments is not None:
        raise UserError(f"give FPS or SEGMENTS, not both (got FPS={args.fps:g}, SEGMENTS={args.segments})")
    if args.sampling == "paper":
        if args.dataset != "lvu":
            raise UserError(f"SAMPLING=paper is the paper's LVU frame sampling (its lvu_durations.csv); "
                            f"{args.dataset} has none: leave SAMPLING empty")
        if args.fps is not None or args.segments is not None or args.frames_per_segment not in (None, 1):
            raise UserError("SAMPLING=paper picks its own frames (one per listed second, plus the last): leave FPS, "
                            "SEGMENTS and FRAMES_PER_SEGMENT empty")
    if args.pool is not None:
        if str(args.pool).lower() in ("", "none", "0", "1"):
            args.pool = None
        else:
            try:
                args.pool = int(args.pool)
            except ValueError:
                raise UserError(f"POOL must be an integer k (k x k average over the patch grid), "
                                f"got {args.pool!r}") from None
            _positive("POOL", args.pool)
    if args.devices != "auto":
        try:
            args.devices = int(args.devices)
        except ValueError:
            raise UserError(f"DEVICES must be an integer or auto, got {args.devices!r}") from None
        _positive("DEVICES", args.devices)
    if args.data_root is not None and not Path(args.data_root).expanduser().is_dir():
        raise UserError(f"DATA_ROOT={args.data_root} does not exist; point DATA_ROOT at the folder holding the "
                        f"raw {args.dataset} data" + (" (make data DATASET=synthetic writes it)"
                                                      if args.dataset == "synthetic" else ""))


def clip_sampling(spec, args: argparse.Namespace) -> dict:
    """frames_per_segment (and frame_interval for a video encoder) from the encoder's family and the arguments."""
    family, k = spec.family, args.frames_per_segment
    if not family.video:
        if args.frame_stride is not None:
            raise UserError(f"FRAME_STRIDE applies to video encoders only; ENCODER={spec.name} is a {family.name} "
                            "image encoder (leave FRAME_STRIDE empty; FRAMES_PER_SEGMENT=k averages k frames)")
        return {"frames_per_segment": k or 1}
    if k is not None and k != spec.num_frames:
        raise UserError(f"ENCODER={spec.name} ({family.name}) encodes clips of its num_frames = {spec.num_frames} "
                        f"frames; leave FRAMES_PER_SEGMENT empty or set it to {spec.num_frames} (got {k})")
    return {"frames_per_segment": spec.num_frames, "frame_interval": family.frame_interval(args.frame_stride)}


def list_videos(ds, task: str | None) -> list[str]:
    """Every video id to extract: all splits (LVU without TASK: all nine tasks), each id once, in order."""
    if task is None:
        ids = list(ds.all_video_ids())
    else:
        ids = []
        for split in ds.splits:
            ids.extend(r.video_id for r in ds.records(split))
    return list(dict.fromkeys(ids))


def paper_durations(ds, ids: list[str]) -> dict[str, int]:
    """The listed durations (s) of `ids` for SAMPLING=paper; UserError when the file is absent, malformed or misses
    an id."""
    listed = ds.listed_durations()
    if listed is None:
        raise UserError(f"SAMPLING=paper needs {ds.durations_path} (lvu_durations.csv of the ViS4mer repository, "
                        "data/lvu_1.0/); put it there or leave SAMPLING empty for FPS=1")
    unlisted = [video_id for video_id in ids if video_id not in listed]
    if unlisted:
        raise UserError(f"{len(unlisted)} of {len(ids)} videos to extract have no row in {ds.durations_path} "
                        f"(e.g. {unlisted[0]}); add '<id>,<seconds>' rows for them or leave SAMPLING empty")
    return {video_id: listed[video_id] for video_id in ids}


def sealed_ids(directory: Path) -> tuple[set[str], dict]:
    """Ids already in sealed shards of ``directory`` and the cache's provenance ({} for a new cache)."""
    from data.store import FeatureStore, StoreError

    if not directory.is_dir() or not any(directory.glob("shard-*.h5")):
        return set(), {}
    try:
        store = FeatureStore(directory)
        return set(store.ids()), dict(store.meta)
    except StoreError as exc:
        raise UserError(f"{exc}") from exc


def clean_partials(directory: Path) -> None:
    """Delete the .partial shards of killed runs; say so, and name the ones another live run is writing."""
    from data.store import remove_dead_partials

    removed, kept = remove_dead_partials(directory) if directory.is_dir() else ([], [])
    if removed:
        log(f"removed {len(removed)} .partial shard(s) left by a killed run; their videos are redone")
    if kept:
        log(f"another extraction is writing into {directory} right now ({len(kept)} locked .partial shard(s): "
            f"{', '.join(p.name for p in kept[:3])}{', ...' if len(kept) > 3 else ''}); this run goes on beside it "
            "without touching its files. Videos both runs encode are stored twice and read once; to share the work "
            "instead, run one extraction with DEVICES= or NODES=")


def estimate_bytes(items, sampling, tokens: int, channels: int, sample: int = 8) -> tuple[int, str]:
    """Bytes the cache needs for ``items`` (videos x segments x tokens x channels x 2 bytes, float16), and how the
    segments were counted. FPS mode probes up to ``sample`` videos spread over the list for their durations."""
    per_segment = tokens * channels * 2
    if sampling.segments is not None:
        return len(items) * int(sampling.segments) * per_segment, f"{sampling.segments} segments"
    if sampling.durations is not None:  # SAMPLING=paper: d + 1 frames per video, d its listed seconds
        mean = sum(sampling.durations[i] + 1 for i, _ in items) / max(1, len(items))
        return int(len(items) * mean * per_segment), f"{mean:.0f} segments on average (lvu_durations.csv)"
    from extract.video import VideoError, probe

    picks = items[:: max(1, len(items) // sample)][:sample]
    segments = []
    for _, path in picks:
        try:
            segments.append(int(probe(path).duration * float(sampling.fps)))
        except (VideoError, OSError):
            continue
    mean = sum(segments) / len(segments) if segments else 0
    return int(len(items) * mean * per_segment), f"about {mean:.0f} segments (durations of {len(segments)} videos)"


def check_free_space(directory: Path, items, sampling, encoder) -> None:
    """Warn when the cache's disk has less room than the run will write."""
    import shutil

    from data.store.writer import format_bytes

    tokens = encoder.special_tokens + int(encoder.grid[0]) * int(encoder.grid[1])  # + the (pooled) grid: no forward
    need, how = estimate_bytes(items, sampling, tokens, encoder.hidden_size)
    where = directory if directory.is_dir() else next((p for p in directory.parents if p.is_dir()), Path("."))
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if need > free:
        log(f"warning: {len(items)} videos x {how} x {tokens} tokens x {encoder.hidden_size} "
            f"channels x 2 bytes = {format_bytes(need)}, but the disk holding {where} has {format_bytes(free)} free: "
            "the run will stop when the disk is full (sealed shards are kept); free space or set CACHE_DIR")


def is_launcher() -> bool:
    """True in the process a person started (not in a DDP child that Lightning launched)."""
    return all(os.environ.get(k) in (None, "", "0") for k in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def lightning_stops():
    """Lightning ends a run stopped by Ctrl-C or SIGTERM with sys.exit(1): turn it into the KeyboardInterrupt it
    was, for run_cli's one line and exit status (130 / 143, like every entry point)."""
    try:
        yield
    except SystemExit as exc:
        status = interrupt_status(exc)
        if status is None:
            raise
        raise (Terminated() if status == 128 + signal.SIGTERM else KeyboardInterrupt()) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    validate(args)
    stop_on_sigterm()  # SIGTERM stops like Ctrl-C: sealed shards are kept, a rerun resumes
    from data import get_dataset
    from data.store import make_tag

    ds = get_dataset(args.dataset, root=args.data_root, task=args.task)
    ids = list_videos(ds, args.task)
    if not ids:
        raise UserError(f"{args.dataset} lists no videos under {getattr(ds, 'root', args.data_root)}; "
                        "check DATA_ROOT and the annotation files")
    from extract.encoder import resolve_encoder
    from extract.video import Sampling

    args.encoder = args.encoder or DEFAULT_ENCODERS[ds.paper_features]
    spec = resolve_encoder(args.encoder)  # config only: the family decides the sampling and the tag
    if args.sampling == "paper":
        if spec.family.video:
            raise UserError(f"SAMPLING=paper takes single frames (the paper's LVU features); ENCODER={spec.name} is a "
                            f"{spec.family.name} video encoder, whose clips need FPS= or SEGMENTS=")
        sampling = Sampling(durations=paper_durations(ds, ids), durations_source=ds.durations_path.name,
                            **clip_sampling(spec, args))
    else:
        sampling_kw = ({"fps": args.fps} if args.fps is not None else {"segments": args.segments}
                       if args.segments is not None else dict(ds.default_sampling))
        sampling = Sampling(**sampling_kw, **clip_sampling(spec, args))
        if hasattr(ds, "durations_path") and ds.durations_path.is_file() and is_launcher():
            log(f"note: {ds.durations_path} is present: SAMPLING=paper would take the paper code's frames instead "
                "(d + 1 frames spread over the whole file, d its listed seconds); this run samples "
                + (f"{sampling.fps:g} frame/s of the stream" if sampling.fps else f"{sampling.segments} segments"))
    tag = make_tag(spec.tag_name, fps=sampling.fps, segments=sampling.segments,
                   frames_per_segment=sampling.frames_per_segment, pool=args.pool,
                   durations="lvu-durations" if sampling.durations is not None else None)
    directory = Path(args.cache_dir) / args.dataset / tag
    done, meta = sealed_ids(directory)
    pending_ids = [i for i in ids if i not in done]
    skipped = len(ids) - len(pending_ids)
    items, missing = [], []
    for video_id in pending_ids:
        path = ds.video_path(video_id)
        (items if path.exists() else missing).append((video_id, str(path)))
    launcher = is_launcher()
    if pending_ids and not items:
        example = missing[0][1]
        raise UserError(f"none of the {len(missing)} videos to extract is on disk (e.g. {example}); set DATA_ROOT to "
                        f"the folder holding the {args.dataset} videos" +
                        (" or run `make data DATASET=synthetic`" if args.dataset == "synthetic" else ""))
    if launcher:
        not_videos = len(getattr(ds, "skipped", []))
        left_out = "".join(f", {len(paths)} {why}" for why, paths in getattr(ds, "left_out", {}).items() if paths)
        log(f"extract {args.dataset} -> {directory}: {len(ids)} videos listed, {skipped} already sealed, "
            f"{len(items)} to do, {len(missing)} missing media"
            + (f", {not_videos} {getattr(ds, 'skipped_kind', 'files')} skipped" if not_videos else "") + left_out)
    start = time.perf_counter()
    stats = None
    rank = 0
    encoder_attrs = {}
    if items:
        import torch

        from extract.encoder import describe, load_encoder
        from extract.pipeline import run_predict

        quiet_libraries()  # after Lightning's import, which sets its loggers' levels (data/console.py)
        encoder = load_encoder(spec, pool=args.pool)
        encoder_attrs = encoder.attrs()
        if args.pool is None:
            encoder_attrs["pool"] = "none"
        if meta and meta.get("encoder_hash") not in (None, encoder.weights_hash):
            raise UserError(f"{directory} holds features of other weights (encoder_hash {meta['encoder_hash']}, "
                            f"this {args.encoder} is {encoder.weights_hash}); use another CACHE_DIR or delete "
                            "that folder to re-extract")
        if meta and "special_tokens" not in meta and encoder.special_tokens == 1:
            # A cache written before these attrs (same weights, one CLS): its new shards keep the old provenance,
            # so every shard agrees and readers take the missing special_tokens as 1.
            encoder_attrs = {k: v for k, v in encoder_attrs.items() if k not in ("family", "special_tokens")}
        if launcher:
            log(describe(encoder))
            clean_partials(directory)  # only .partial files whose writer is gone: their locks are free
            check_free_space(directory, items, sampling, encoder)
        attrs = {**encoder_attrs, **sampling.as_attrs()}
        with torch.no_grad(), lightning_stops():  # no_grad: a context, callers (tests, the demo) keep their mode
            stats, rank = run_predict(
                encoder, items, directory, attrs, sampling, batch=args.batch, workers=args.workers,
                devices=args.devices, nodes=args.nodes, accelerator=args.accelerator, max_videos=args.shard_videos,
                max_bytes=int(args.shard_gb * 2**30), threads=args.threads, progress=not args.no_progress,
            )
    elapsed = time.perf_counter() - start
    if rank != 0:
        return 1 if stats and stats.failed else 0
    extracted = stats.extracted if stats else 0
    failed = stats.failed if stats else []
    frames = stats.frames if stats else 0
    if directory.is_dir():
        write_manifest(directory, args, tag, sampling, encoder_attrs, ids, skipped, extracted, frames, failed,
                       missing, elapsed, repeated=stats.repeated if stats else 0)
    if not items:
        log(f"nothing to do: {skipped} of the {len(ids)} listed videos are already sealed in {directory}"
            + (f", {len(missing)} have no media on disk" if missing else ""))
    else:
        log(f"done in {elapsed:.1f} s: {extracted} extracted ({frames / max(elapsed, 1e-9):.1f} frames/s), "
            f"{skipped} skipped (already sealed), {len(failed)} failed, {len(missing)} missing media")
    if stats and stats.repeated:
        rule = f"SEGMENTS={sampling.segments}" if sampling.segments is not None else f"FPS={sampling.fps:g}"
        log(f"  {stats.repeated} video(s) have fewer frames than {rule} samples: some frames repeat "
            f"(manifest.json: repeated_frames)")
    for record in failed[:20]:
        log(f"  failed {record['video_id']}: {record['error']}")
    if len(failed) > 20:
        log(f"  ... and {len(failed) - 20} more in {directory / 'failures.jsonl'}")
    if missing:
        log(f"  missing media: {len(missing)} listed videos are not on disk (e.g. {missing[0][1]}); they are not "
            "in the cache -- download them and rerun to add them")
    if failed:
        log(f"  {len(failed)} video(s) failed (reasons in {directory / 'failures.jsonl'}); fix or drop them and rerun")
        return 1
    return 0


def write_manifest(directory: Path, args, tag: str, sampling, encoder_attrs: dict, ids, skipped: int, extracted: int,
                   frames: int, failed: list, missing: list, elapsed: float, repeated: int = 0) -> None:
    """manifest.json: what the cache holds and what the last run did (the sealed shards stay the truth)."""
    from data.store import FeatureStore, StoreError

    try:
        store = FeatureStore(directory)
        sealed, meta, shards = len(store), dict(store.meta), [p.name for p in store.shards]
    except StoreError:
        sealed, meta, shards = 0, encoder_attrs, []
    manifest = {
        "dataset": args.dataset,
        "task": args.task,
        "tag": tag,
        "provenance": meta,
        "videos_listed": len(ids),
        "videos_sealed": sealed,
        "shards": shards,
        "last_run": {
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "encoder": args.encoder,
            "sampling": sampling.as_attrs(),
            "extracted": extracted,
            "skipped": skipped,
            "failed": len(failed),
            "missing_media": len(missing),
            "repeated_frames": repeated,  # videos with fewer distinct frames than sampled (frames repeat)
            "elapsed_s": round(elapsed, 3),
            "frames_per_s": round(frames / max(elapsed, 1e-9), 2),
            "devices": args.devices,
            "nodes": args.nodes,
            "batch": args.batch,
            "workers": args.workers,
        },
        "failed": failed,
        "missing": [video_id for video_id, _ in missing],
    }
    write_json(directory / "manifest.json", manifest)


if __name__ == "__main__":
    run_cli(main)

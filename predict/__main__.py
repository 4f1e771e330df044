"""`python -m predict VIDEO [--ckpt C] [--out predictions] [--topk 5]` (what `make predict` calls).

VIDEO is a video file or a folder of them (searched recursively; other files are skipped and counted). CKPT defaults to
the newest `best.ckpt` under runs/. For each video: one printed line `<video>: <label> 0.83, <label> 0.10, ...` and
`<OUT>/<name>.json`, `<OUT>/<name>.png`, a row of `<OUT>/predictions.csv` (see predict/output.py).
Exit status: 0; 2 with one `error: ...` line for bad input (a missing file, a file that is not a video, a video too
short for one segment, a checkpoint that is not one of ours, an encoder that is not available offline); for a folder,
a bad video is reported on its own `error:` line, the others are still predicted, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.errors import UserError, run_cli
from data.outputs import write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m predict", description=__doc__.splitlines()[0])
    p.add_argument("video", nargs="?", help="a video file, or a folder of videos")
    p.add_argument("--ckpt", default=None, help="checkpoint [the newest best.ckpt under --runs-dir]")
    p.add_argument("--out", default="predictions", help="output folder [predictions]")
    p.add_argument("--topk", type=int, default=5, help="classes shown per video [5]")
    p.add_argument("--runs-dir", default="runs", help="where to look for the newest best.ckpt [runs]")
    p.add_argument("--cache-dir", default=None, help="cache root; new videos go to <it>/predict/<tag>/ "
                                                     "[the checkpoint's]")
    p.add_argument("--batch", type=int, default=32, help="frames per encoder batch [32]")
    p.add_argument("--device", default=None, help="cpu | cuda [cuda when available]")
    p.add_argument("--no-plot", action="store_true", help="no PNG per video")
    return p.parse_args(argv)


def list_videos(target: Path) -> tuple[list[Path], list[Path]]:
    """(videos, skipped files): the file itself, or every video file under the folder in sorted order."""
    from data.datasets.base import is_video_name

    if not target.exists():
        raise UserError(f"no file or folder at {target}; give VIDEO=<a video file or a folder of videos>")
    if target.is_file():
        return [target], []
    files = sorted(p for p in target.rglob("*") if p.is_file())
    videos = [p for p in files if is_video_name(p)]
    if not videos:
        raise UserError(f"no video files under {target} (looked for mp4, mkv, webm, avi, mov, ...)")
    chosen = set(videos)
    return videos, [p for p in files if p not in chosen]


def output_name(path: Path, target: Path) -> Path:
    """<name> of the outputs: the path under the folder given without its extension (a single file: its stem)."""
    return path.relative_to(target).with_suffix("") if target.is_dir() else Path(path.stem)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.video:
        raise UserError("no video given: make predict VIDEO=<a video file or a folder of videos> [CKPT=...]")
    if args.topk < 1 or args.batch < 1:
        raise UserError(f"TOPK and --batch must be >= 1, got {args.topk} and {args.batch}")
    target = Path(args.video)
    videos, skipped = list_videos(target)
    from heads.training.run_dir import newest_best

    ckpt_path = Path(args.ckpt) if args.ckpt else newest_best(Path(args.runs_dir))

    import torch

    from heads.training.run import load_checkpoint, restore_head
    from predict import output
    from predict.classify import score_video
    from predict.features import Features

    ckpt = load_checkpoint(ckpt_path)
    config = ckpt["hyper_parameters"]["config"]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    head = restore_head(ckpt).to(device).eval()
    features = Features(config["cache"], args.cache_dir or config.get("cache_dir") or "cache", batch=args.batch,
                        device=device)
    regression = config["task_type"] == "regression"
    clip = (str(config["clip"][0]), int(config["clip"][1]))
    out_dir = Path(args.out)
    if skipped:
        print(f"skipping {len(skipped)} files under {target} that are not videos (e.g. {skipped[0]})",
              file=sys.stderr)
    rows, failed = [], 0
    for path in videos:
        try:
            store, video_id = features.locate(path)
            result = score_video(head, store, video_id, clip, regression=regression, fps=features.sampling.fps,
                                 stride=int(config.get("eval_stride") or 1), block=int(config.get("batch") or 16))
        except UserError as exc:
            if len(videos) == 1:
                raise
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
            failed += 1
            continue
        name = output_name(path, target)
        document = output.record(str(path), str(ckpt_path), config, result, args.topk)
        write_json(out_dir / name.with_suffix(".json"), document)
        if not args.no_plot:
            output.plot(out_dir / name.with_suffix(".png"), document, clip[0] == "window", args.topk)
        rows.append(output.csv_row(document, args.topk))
        print(output.summary(str(path), result, config, args.topk), flush=True)
    if rows:
        output.update_csv(out_dir / "predictions.csv", rows)
    print(f"{len(rows)} of {len(videos)} video(s) predicted with {ckpt_path} ({features.encoded} encoded, the rest "
          f"from the cache) -> {out_dir}/" + (f"; {failed} failed (the error lines above)" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)

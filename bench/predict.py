"""`python -m bench.predict [--quick]`: peak memory of `python -m predict` on a short and a long video.

Prediction streams a video decode -> encode -> cache -> windows, so its peak memory must not grow with the video's
length. We train a tiny s4-multiscale head (window protocol, `FPS=1`, `--clip window:60`, the LVU one) on a cache of
random tokens with `vit-tiny-random`'s provenance, write two videos with PyAV (32 x 32 px, 2 frames/s; 5 and 60
minutes, `--quick`: 0.5 and 1.5 minutes) and run `python -m predict` on each in its own process, from an empty predict
cache, so each run decodes, encodes and caches its whole video. Printed and saved (bench/results/predict.json): peak
RSS of each run (`wait4`), their ratio (target <= 1.2), wall time, frames per second and the size of the tokens
cached for each video (with this tiny encoder an hour is only ~8 MiB of tokens, so the ratio alone cannot tell
streaming from holding the video's tokens; tests/test_store.py and tests/test_predict.py check the streaming itself).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from bench.common import measure_subprocess, save_json, scratch_dir
from data.errors import run_cli

FPS = 2  # frames per second of the written videos
SIZE = 32  # px


def write_long_video(path: Path, minutes: float, seed: int = 0) -> Path:
    """A `minutes`-long 32 x 32 video at 2 frames/s, written in chunks of frames (memory stays small)."""
    import av

    from data.synthetic import pick_codec, rgb_to_yuv420p

    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * FPS)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(pick_codec(), rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for first in range(0, total, 600):
            count = min(600, total - first)
            colours = rng.integers(0, 256, size=(count, 1, 1, 3), dtype=np.uint8)  # one colour per frame
            frames = np.broadcast_to(colours, (count, SIZE, SIZE, 3))  # (n, H, W, 3)
            for index, pixels in enumerate(rgb_to_yuv420p(np.ascontiguousarray(frames)), start=first):
                frame = av.VideoFrame.from_ndarray(pixels, format="yuv420p")
                frame.pts, frame.time_base = index, Fraction(1, FPS)
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def train_tiny_head(work: Path, head: str = "s4-multiscale") -> Path:
    """A real `python -m heads train` run on a cache of random tokens; returns its best.ckpt."""
    from data.store import ShardWriter, make_tag
    from extract.encoder import TINY_RANDOM, load_encoder
    from heads.__main__ import main as heads_main

    encoder = load_encoder(TINY_RANDOM)
    attrs = {**encoder.attrs(), "pool": "none", "fps": 1.0, "frames_per_segment": 1}
    root = work / "raw"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    tag_dir = work / "cache" / "folder" / make_tag(TINY_RANDOM, fps=1.0)
    with ShardWriter(tag_dir, attrs) as writer:
        for i in range(12):
            label, split = ("day", "night")[i % 2], ("train", "train", "val", "test")[i % 4]
            video_id = f"{label}/clip{i:02d}"
            rows.append(f"{video_id}.mp4,{label},{split}")
            tokens = rng.normal(size=(70, encoder.tokens_per_item, encoder.hidden_size)) + (i % 2)
            writer.add(video_id, tokens.astype(np.float16), np.arange(70.0), 70.0, f"{video_id}.mp4")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    heads_main(["train", "--dataset", "folder", "--data-root", str(root), "--cache-dir", str(work / "cache"),
                "--runs-dir", str(work / "runs"), "--head", head, "--d-model", "16", "--n-layers", "2",
                "--d-state", "8", "--epochs", "1", "--batch", "16", "--workers", "0", "--clip", "window:60"])
    return next((work / "runs").rglob("best.ckpt"))


def run(quick: bool = False) -> dict:
    work = scratch_dir("predict-")
    try:  # --quick keeps the code path alive in make test: short videos, the mean-pool head
        return measure(work, (0.5, 1.5) if quick else (5.0, 60.0), "mean-pool" if quick else "s4-multiscale")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, minutes: tuple[float, float], head: str) -> dict:
    ckpt = train_tiny_head(work, head)
    results: dict = {"minutes": list(minutes), "video_fps": FPS, "size_px": SIZE, "head": head, "runs": {}}
    for m in minutes:
        video = write_long_video(work / f"video-{m:g}min.mp4", m)
        measured = measure_subprocess(
            [sys.executable, "-m", "predict", str(video), "--ckpt", str(ckpt), "--out", str(work / "out"),
             "--cache-dir", str(work / f"predict-cache-{m:g}")], timeout=3600)
        if measured["returncode"] != 0:
            raise RuntimeError(f"predict on the {m:g}-minute video failed: {measured['stderr'][-2000:]}")
        frames = int(m * 60)  # 1 frame/s sampled
        tokens_mb = sum(p.stat().st_size for p in (work / f"predict-cache-{m:g}").rglob("*.h5")) / 2**20
        results["runs"][f"{m:g}min"] = {"peak_rss_mb": round(measured["peak_rss_mb"], 1),
                                         "wall_s": round(measured["wall_s"], 2),
                                         "frames_per_s": round(frames / measured["wall_s"], 1),
                                         "cached_tokens_mb": round(tokens_mb, 1)}
        print(f"predict on a {m:g}-minute video: peak RSS {measured['peak_rss_mb']:.0f} MiB, "
              f"{measured['wall_s']:.1f} s ({frames} frames encoded, {tokens_mb:.1f} MiB of tokens cached)",
              flush=True)
    short, long = (results["runs"][f"{m:g}min"]["peak_rss_mb"] for m in minutes)
    results["peak_rss_ratio"] = round(long / short, 3)
    print(f"peak RSS ratio {minutes[1]:g} min / {minutes[0]:g} min: {results['peak_rss_ratio']:.3f} "
          f"(target <= 1.2)", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.5- and 1.5-minute videos")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(quick=args.quick)
    path = save_json("predict-quick" if args.quick else "predict", result)
    print(f"saved {path} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    run_cli(main)

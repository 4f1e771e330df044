"""`python bench/extract.py [--quick]`: does decoding, resizing and writing hide behind the encoder? (issue 6, item 6)

For each encoder (``vit-tiny-random`` and a randomly initialised ViT-B/16-sized config: 224 px, 16 px patches, 768
channels, 12 layers), with the same batch size on the same machine, in one process:

(a) encoder alone: uint8 frames already in memory -> FrozenEncoder (normalisation + ViT) -> float16 tokens;
(b) end to end: video files -> DataLoader workers (PyAV decode, sample, FFmpeg resize) -> the same encoder ->
    sealed HDF5 shards (``extract.pipeline.run_predict``, i.e. what ``make extract`` runs).

It reports frames/s for both, their ratio (target >= 0.9) and the bytes on disk per stored token value (target <= 2).
The videos are Breakfast-like: 320 x 240 H.264 at 15 fps, sampled as uniform segments. Results go to
bench/results/extract.json; ``python -m bench`` calls ``run(quick)``. Timings are medians of repeated runs; the
machine is shared, so compare the ratio (both sides measured in the same run), not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from data.outputs import write_json  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "extract.json"


def vit_b16_random():
    """A ViT-B/16-sized encoder with random weights (no download): same compute as google/vit-base-patch16-224."""
    import torch
    from transformers import ViTConfig, ViTModel

    from extract.encoder import FrozenEncoder

    config = ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ViTModel(config, add_pooling_layer=False)
    return FrozenEncoder(model, "vit-b16-random")


def vit_l16_random():
    """A ViT-L/16-shaped encoder with random weights (no download): the paper's encoder's compute, 304 M parameters,
    197 tokens x 1024 channels per frame."""
    import torch
    from transformers import ViTConfig, ViTModel

    from extract.encoder import FrozenEncoder

    config = ViTConfig(image_size=224, patch_size=16, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ViTModel(config, add_pooling_layer=False)
    return FrozenEncoder(model, "vit-l16-random")


def write_videos(folder: Path, count: int, seconds: float, size=(320, 240), rate: int = 15) -> list[Path]:
    """Breakfast-like clips: moving colour gradients (so the codec has real work), H.264 yuv420p."""
    import av
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for v in range(count):
        path = folder / f"clip{v:03d}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"preset": "veryfast", "crf": "23"}
            for i in range(int(seconds * rate)):
                t = i / rate + v
                rgb = np.stack([128 + 100 * np.sin(xx / 23 + t), 128 + 100 * np.cos(yy / 19 - 1.3 * t),
                                128 + 100 * np.sin((xx + yy) / 41 + 0.7 * t)], -1).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        paths.append(path)
    return paths


def encoder_alone(encoder, batch: int, frames: int, repeat: int) -> float:
    """Frames/s of the encoder on random uint8 frames in host memory (median over `repeat` passes).

    On a GPU the host-to-device copy of the uint8 frames is included, as in the pipeline.
    """
    import torch

    h, w = encoder.image_size
    device = encoder.scale.device
    data = torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8)
    if device.type == "cuda":
        data = data.pin_memory()
    steps = max(1, frames // batch)
    encoder(data.to(device))  # warm-up
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            encoder(data.to(device, non_blocking=True))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return steps * batch / statistics.median(times)


def end_to_end(encoder, videos: list[Path], sampling, batch: int, workers: int, repeat: int) -> tuple[float, float]:
    """Frames/s from video files to sealed shards (median over `repeat` runs) and bytes per stored value."""
    import io
    from contextlib import redirect_stderr

    from extract.pipeline import run_predict

    attrs = {**encoder.attrs(), "pool": "none", **sampling.as_attrs()}
    items = [(p.stem, str(p)) for p in videos]
    rates, bytes_per_value = [], None
    for _ in range(repeat):
        out = Path(tempfile.mkdtemp(prefix="bench-extract-"))
        try:
            start = time.perf_counter()
            with redirect_stderr(io.StringIO()):
                stats, _ = run_predict(encoder, items, out, attrs, sampling, batch=batch, workers=workers,
                                       progress=False)
            elapsed = time.perf_counter() - start
            assert not stats.failed, stats.failed
            rates.append(stats.frames / elapsed)
            values = stats.frames * encoder.tokens_per_frame * encoder.hidden_size
            bytes_per_value = sum(p.stat().st_size for p in out.glob("shard-*.h5")) / values
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return statistics.median(rates), bytes_per_value


def run(quick: bool = False, batch: int = 32, workers: int = 2, save: bool = True, torch_threads: int | None = None,
        only: str | None = None, device: str | None = None) -> dict:
    """Encoder alone vs end to end per encoder setup; `device` defaults to CUDA when available. `vit-l16-random`
    (the GPU section's) runs only when asked for with `only`, on 16 clips x 64 segments, batch 64, 8 decode workers."""
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)

    from extract.encoder import load_encoder
    from extract.video import Sampling

    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-videos-"))
    try:
        if quick:
            setups = [("vit-tiny-random", lambda: load_encoder("vit-tiny-random"), 4, 4.0, 16, 1)]
        else:
            setups = [("vit-tiny-random", lambda: load_encoder("vit-tiny-random"), 12, 20.0, 64, 3),
                      ("vit-b16-random", vit_b16_random, 4, 20.0, 32, 3)]
            if only == "vit-l16-random":  # a GPU's worth of frames: 1,024 per run
                setups = [("vit-l16-random", vit_l16_random, 16, 20.0, 64, 3)]
                batch, workers = max(batch, 64), max(workers, min(8, os.cpu_count() or 1))
        results = {}
        setups = [s for s in setups if only is None or s[0] == only]
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        for name, build, count, seconds, segments, repeat in setups:
            encoder = build().to(device)
            videos = write_videos(tmp / f"{name}-videos", count, seconds)
            sampling = Sampling(segments=segments)
            frames = count * segments
            alone_runs, e2e_runs = [], []
            for _ in range(repeat):  # alternate (a) and (b) so a change of load on a shared machine hits both
                alone_runs.append(encoder_alone(encoder, batch, frames, 1))
                rate, bpv = end_to_end(encoder, videos, sampling, batch, workers, 1)
                e2e_runs.append(rate)
            alone, e2e = statistics.median(alone_runs), statistics.median(e2e_runs)
            results[name] = {
                "encoder_fps": round(alone, 2), "end_to_end_fps": round(e2e, 2), "ratio": round(e2e / alone, 3),
                "bytes_per_value": round(bpv, 4), "videos": count, "video": f"320x240 h264 15 fps, {seconds:g} s",
                "sampling": sampling.as_attrs(), "frames_per_run": frames, "repeat": repeat,
                "encoder_fps_runs": [round(x, 2) for x in alone_runs],
                "end_to_end_fps_runs": [round(x, 2) for x in e2e_runs],
            }
            print(f"{name:16s} encoder alone {alone:9.1f} frames/s | end to end {e2e:9.1f} frames/s | ratio "
                  f"{e2e / alone:5.2f} | {bpv:.3f} bytes/value", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    headline = next(n for n in ("vit-l16-random", "vit-b16-random", "vit-tiny-random") if n in results)
    summary = {
        "encoder_fps": results[headline]["encoder_fps"], "end_to_end_fps": results[headline]["end_to_end_fps"],
        "ratio": results[headline]["ratio"], "bytes_per_value": results[headline]["bytes_per_value"],
        "headline": headline, "batch": batch, "workers": workers, "torch_threads": torch.get_num_threads(),
        "device": device, "quick": quick, "encoders": results,
    }
    if device.startswith("cuda"):
        summary["autocast"] = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if save:
        path = write_json(RESULTS.with_name("extract-quick.json") if quick else RESULTS, summary)
        print(f"saved {path}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny encoder and 4 short videos: seconds")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads [torch default]")
    parser.add_argument("--only", choices=["vit-tiny-random", "vit-b16-random", "vit-l16-random"], default=None)
    args = parser.parse_args(argv)
    run(args.quick, args.batch, args.workers, torch_threads=args.torch_threads, only=args.only)
    return 0


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from data.errors import run_cli

    run_cli(main)

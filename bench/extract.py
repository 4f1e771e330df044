"""`python bench/extract.py [--quick] [--only NAME]`: does decoding, resizing and writing hide behind the encoder?

Per encoder family, a randomly initialised model of ViT-B size (no download; same compute as the public base
checkpoints): ViT-B/16 (``vit-b16-random``, also standing for DeiT and BEiT), the CLIP and SigLIP B/16 vision towers,
DINOv2-B/14 at 224 px, and the video transformers TimeSformer-B (8 frames), VideoMAE-B (16 frames, tubelets of 2)
and ViViT-B (32 frames, tubelets of 2), each with its family's usual processor plan (resize or shortest edge + centre
crop, filter, normalisation). With the same batch size on the same machine, in one process:

(a) encoder alone: uint8 frames already in memory -> FrozenEncoder (normalisation + model) -> float16 tokens;
(b) end to end: video files -> DataLoader workers (PyAV decode, sample, FFmpeg resize and crop) -> the same encoder
    -> sealed HDF5 shards (``extract.pipeline.run_predict``, i.e. what ``make extract`` runs).

It reports frames/s (image families) or clips/s (video families) for both, their ratio (target >= 0.9) and the bytes
on disk per stored token value (target <= 2). The videos are Breakfast-like: 320 x 240 H.264 at 15 fps, sampled as
uniform segments (a video family takes one clip per segment). Results go to bench/results/extract.json;
``python -m bench`` calls ``run(quick)``. On a 2-core CPU the non-headline families run few frames (24 frames, or
32 frames' worth of clips), three times each way, alternating; the machine is shared, so compare the ratio of the
medians (both sides measured in the same run), not absolute numbers across runs.
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

from data.errors import UserError  # noqa: E402
from data.outputs import write_json  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "extract.json"
BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _random(model_class: str, config_class: str, processor: tuple[str, dict] | None, name: str, size: dict,
            **config):
    """A FrozenEncoder around ``model_class(config_class(**size, **config))`` with seeded random weights."""
    import torch
    import transformers

    from extract.encoder import FrozenEncoder, input_plan

    image_size = config.get("image_size", 224)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**size, **config))
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    plan = getattr(transformers, processor[0])(**processor[1]) if processor else None
    preprocess, resize = input_plan(plan, image_size, name)
    return FrozenEncoder(model, name, preprocess, resize=resize)


def _sig(x: float) -> float:
    """Four significant digits (a video encoder on a CPU does a few hundredths of a clip a second)."""
    return float(f"{x:.4g}")


def vit_b16_random():
    """A ViT-B/16-sized encoder with random weights (no download): same compute as google/vit-base-patch16-224."""
    return _random("ViTModel", "ViTConfig", None, "vit-b16-random", BASE, image_size=224, patch_size=16)


def vit_l16_random():
    """A ViT-L/16-shaped encoder with random weights (no download): the paper's encoder's compute, 304 M parameters,
    197 tokens x 1024 channels per frame."""
    large = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}
    return _random("ViTModel", "ViTConfig", None, "vit-l16-random", large, image_size=224, patch_size=16)


CROP224 = {"height": 224, "width": 224}
# name -> (builder, kind); kind "image" counts frames, "video" clips.
FAMILY_SETUPS = {
    "vit-b16-random": (vit_b16_random, "image"),
    "clip-b16": (lambda: _random("CLIPVisionModel", "CLIPVisionConfig", ("CLIPImageProcessorPil", {}),
                                 "clip-b16-random", BASE, image_size=224, patch_size=16), "image"),
    "siglip-b16": (lambda: _random("SiglipVisionModel", "SiglipVisionConfig", ("SiglipImageProcessorPil", {}),
                                   "siglip-b16-random", BASE, image_size=224, patch_size=16), "image"),
    "dinov2-b14": (lambda: _random("Dinov2Model", "Dinov2Config",
                                   ("BitImageProcessorPil", {"size": {"shortest_edge": 256}, "crop_size": CROP224}),
                                   "dinov2-b14-random", BASE, image_size=518, patch_size=14), "image"),
    "timesformer-b": (lambda: _random("TimesformerModel", "TimesformerConfig", ("VideoMAEImageProcessorPil", {}),
                                      "timesformer-b-random", BASE, image_size=224, patch_size=16, num_frames=8),
                      "video"),
    "videomae-b": (lambda: _random("VideoMAEModel", "VideoMAEConfig", ("VideoMAEImageProcessorPil", {}),
                                   "videomae-b-random", BASE, image_size=224, patch_size=16, num_frames=16,
                                   tubelet_size=2), "video"),
    "vivit-b": (lambda: _random("VivitModel", "VivitConfig", ("VivitImageProcessor", {}), "vivit-b-random", BASE,
                                image_size=224, num_frames=32, tubelet_size=[2, 16, 16]), "video"),
    # quick mode: the video path at tiny size
    "timesformer-tiny": (lambda: _random("TimesformerModel", "TimesformerConfig",
                                         ("VideoMAEImageProcessorPil", {"size": {"shortest_edge": 32},
                                                                        "crop_size": {"height": 32, "width": 32}}),
                                         "timesformer-tiny-random", TINY, image_size=32, patch_size=8, num_frames=4),
                         "video"),
}


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
    f = encoder.frames_per_item
    batch = -(-batch // f) * f  # whole clips, as the pipeline rounds it
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
            values = stats.frames // encoder.frames_per_item * encoder.tokens_per_item * encoder.hidden_size
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
    tiny = (lambda: load_encoder("vit-tiny-random"), "image")
    # name -> (build, kind), videos, seconds each, segments per video, repeats (a) and (b) alternate
    if quick:
        setups = [("vit-tiny-random", tiny, 4, 4.0, 16, 1), ("timesformer-tiny", FAMILY_SETUPS["timesformer-tiny"],
                                                              1, 3.0, 2, 1)]
    else:
        setups = [("vit-tiny-random", tiny, 12, 20.0, 64, 3),
                  ("vit-b16-random", FAMILY_SETUPS["vit-b16-random"], 4, 20.0, 32, 3),
                  ("clip-b16", FAMILY_SETUPS["clip-b16"], 2, 12.0, 12, 3),
                  ("siglip-b16", FAMILY_SETUPS["siglip-b16"], 2, 12.0, 12, 3),
                  ("dinov2-b14", FAMILY_SETUPS["dinov2-b14"], 2, 12.0, 12, 3),
                  ("timesformer-b", FAMILY_SETUPS["timesformer-b"], 2, 12.0, 2, 3),
                  ("videomae-b", FAMILY_SETUPS["videomae-b"], 2, 12.0, 1, 3),
                  ("vivit-b", FAMILY_SETUPS["vivit-b"], 1, 12.0, 1, 3)]
        if only == "vit-l16-random":  # a GPU's worth of frames: 1,024 per run
            setups = [("vit-l16-random", (vit_l16_random, "image"), 16, 20.0, 64, 3)]
            batch, workers = max(batch, 64), max(workers, min(8, os.cpu_count() or 1))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        results = {}
        chosen = [s for s in setups if only is None or s[0] in only.split(",")]
        if not chosen:
            raise UserError(f"Expected --only among {', '.join(s[0] for s in setups)} "
                             f"({'quick' if quick else 'full'} run), got {only!r}")
        setups = chosen
        for name, (build, kind), count, seconds, segments, repeat in setups:
            encoder = build().to(device)
            f = encoder.frames_per_item
            videos = write_videos(tmp / f"{name}-videos", count, seconds)
            sampling = Sampling(segments=segments, frames_per_segment=f,
                                frame_interval=encoder.family.frame_interval())
            frames = count * segments * f
            alone_runs, e2e_runs = [], []
            for _ in range(repeat):  # alternate (a) and (b) so a change of load on a shared machine hits both
                alone_runs.append(encoder_alone(encoder, batch, frames, 1) / f)
                rate, bpv = end_to_end(encoder, videos, sampling, batch, workers, 1)
                e2e_runs.append(rate / f)
            alone, e2e = statistics.median(alone_runs), statistics.median(e2e_runs)
            unit = "frames/s" if kind == "image" else "clips/s"
            results[name] = {
                "family": encoder.family.name, "unit": unit, "encoder_rate": _sig(alone),
                "end_to_end_rate": _sig(e2e), "ratio": round(e2e / alone, 3), "bytes_per_value": round(bpv, 4),
                "frames_per_item": f, "tokens_per_item": encoder.tokens_per_item, "videos": count,
                "video": f"320x240 h264 15 fps, {seconds:g} s", "sampling": sampling.as_attrs(),
                "frames_per_run": frames, "repeat": repeat, "encoder_rate_runs": [_sig(x) for x in alone_runs],
                "end_to_end_rate_runs": [_sig(x) for x in e2e_runs], "load_avg_1min": round(os.getloadavg()[0], 2),
            }
            if kind == "image":  # the names earlier results used
                results[name].update(encoder_fps=round(alone, 2), end_to_end_fps=round(e2e, 2))
            print(f"{name:16s} encoder alone {alone:9.4g} {unit} | end to end {e2e:9.4g} {unit} | ratio "
                  f"{e2e / alone:5.2f} | {bpv:.3f} bytes/value | load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    headline = next((n for n in ("vit-l16-random", "vit-b16-random", "vit-tiny-random") if n in results),
                    next(iter(results)))
    head = results[headline]
    summary = {
        "encoder_fps": head["encoder_rate"] * head["frames_per_item"],
        "end_to_end_fps": head["end_to_end_rate"] * head["frames_per_item"],
        "ratio": head["ratio"], "bytes_per_value": head["bytes_per_value"], "headline": headline,
        "batch": batch, "workers": workers, "torch_threads": torch.get_num_threads(),
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
    parser.add_argument("--quick", action="store_true", help="tiny encoders and a few short videos: seconds")
    parser.add_argument("--batch", type=int, default=32, help="frames per encoder batch (whole clips) [32]")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads [torch default]")
    parser.add_argument("--only", default=None,
                        help="comma-separated encoders out of vit-tiny-random, vit-l16-random, "
                             f"{', '.join(FAMILY_SETUPS)} [all but timesformer-tiny and vit-l16-random] "
                             "(vit-b16-random stands for ViT, DeiT and BEiT)")
    args = parser.parse_args(argv)
    known = ("vit-tiny-random", "vit-l16-random", *FAMILY_SETUPS)
    unknown = set((args.only or "").split(",")) - {"", *known}
    if unknown:
        parser.error(f"unknown --only {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    run(args.quick, args.batch, args.workers, torch_threads=args.torch_threads, only=args.only)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from data.errors import run_cli

    run_cli(main)

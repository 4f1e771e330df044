"""The embedded synthetic long-range data set: procedural "activities" whose classes differ ONLY in step order.

Why: `make demo` and the tests need a data set that exists offline and shows what temporal reasoning buys. Each video
shows the steps of one activity, one after another, like a recipe. All classes use the SAME pool of steps with the same
expected durations; a class is an order of those steps. So the multiset of frames of a video has the same distribution
in every class: an order-blind model (mean pooling over time) stays at chance, while a model that knows where in the
video each step happens (e.g. per-quarter means, or an S4 over the segment sequence) separates the classes.

Design (defaults in `SyntheticConfig`):
- Step pool: up to 8 visually distinct steps, each a coloured background + a shape with its own motion (drift,
  orbit, bounce, pulse, rotating stripes...). Per video and step: jitter of hue, brightness, size, speed, phase and
  start position. Motion runs on the step's local clock, so a step looks the same wherever it falls in the video.
- Classes: orders of the `steps` steps. With `classes == steps` they are the rows of a cyclic Latin square
  (ABCD, BCDA, CDAB, DABC), with `classes == 2*steps` also their reversals: every step then occupies every position
  equally often, so not even a single position's marginal is biased. Any 2..2*steps classes are allowed.
- Timing: length ~ U[seconds]; step shares ~ Dirichlet(8, ..., 8) (exchangeable: same expected duration);
  distractor bursts (grey noise, 1-4 frames) replace ~8 % of the frames at uniform positions; pixel noise on top.
- Files: `<root>/videos/<id>.mp4` (H.264 via PyAV's bundled FFmpeg, constant quantiser and one thread so that the
  bytes are reproducible; MPEG-4 Part 2 where H.264 is missing), `<root>/labels.csv`
  (`video_id,split,label`, written last, so its presence means the set is complete) and `<root>/meta.json`
  (config, seed, class orders, step names). Deterministic from the seed: the same seed gives identical labels.csv
  bytes and identical decoded frames; each video has its own RNG stream, so generation parallelises.
Default size: 4 steps, 4 classes, 40/10/20 videos per class (train/val/test = 160/40/80), 20-30 s at 8 fps, 64x64:
about 280 videos x 200 frames.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from data.errors import UserError

SPLITS = ("train", "val", "test")
# (name, background hue, shape, motion): hues spaced around the colour wheel, shapes and motions all different
STEP_POOL = (
    ("red-disc-drift", 0.00, "disc", "drift"),
    ("green-square-orbit", 0.33, "square", "orbit"),
    ("blue-stripes-roll", 0.62, "stripes", "roll"),
    ("yellow-triangle-bounce", 0.15, "triangle", "bounce"),
    ("magenta-ring-pulse", 0.83, "ring", "pulse"),
    ("cyan-cross-drift", 0.50, "cross", "drift"),
    ("orange-diamond-orbit", 0.07, "diamond", "orbit"),
    ("violet-bar-bounce", 0.72, "bar", "bounce"),
)
DISTRACTOR = -1


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that shapes the set; stored in meta.json so a rerun with the same config can be skipped."""

    steps: int = 4
    classes: int = 4
    per_class: dict = field(default_factory=lambda: {"train": 40, "val": 10, "test": 20})
    seconds: tuple[float, float] = (20.0, 30.0)
    fps: int = 8
    size: int = 64
    distractor_fraction: float = 0.08
    noise: float = 6.0

    def __post_init__(self) -> None:
        if not 2 <= self.steps <= len(STEP_POOL):
            raise UserError(f"Expected 2 <= steps <= {len(STEP_POOL)}, got {self.steps}")
        if not 2 <= self.classes <= 2 * self.steps:
            raise UserError(f"Expected 2 <= classes <= 2*steps = {2 * self.steps}, got {self.classes}")
        if set(self.per_class) != set(SPLITS) or min(self.per_class.values()) < 1:
            raise UserError(f"Expected per_class with >= 1 video for each of {SPLITS}, got {self.per_class}")
        if self.size % 2 or self.size < 16:
            raise UserError(f"Expected an even frame size >= 16 px, got {self.size}")
        if not 0 < self.seconds[0] <= self.seconds[1] or self.fps < 1:
            raise UserError(f"Expected 0 < seconds[0] <= seconds[1] and fps >= 1, got {self.seconds}, {self.fps}")


def class_orders(steps: int, classes: int) -> list[tuple[int, ...]]:
    """Step order of each class: Latin-square rows (k, k+1, ...), then their reversals (k, k-1, ...)."""
    rows = [tuple((k + j) % steps for j in range(steps)) for k in range(steps)]
    rows += [tuple((k - j) % steps for j in range(steps)) for k in range(steps)]
    return rows[:classes]


def video_specs(config: SyntheticConfig) -> list[tuple[str, str, int]]:
    """(video_id, split, label) of every video, in file order: split by split, classes interleaved."""
    specs = []
    for split in SPLITS:
        for _ in range(config.per_class[split]):
            for label in range(config.classes):
                specs.append((f"syn{len(specs):05d}", split, label))
    return specs


def video_frames(config: SyntheticConfig, seed: int, index: int, label: int) -> np.ndarray:
    """Render one video: (T, S, S, 3) uint8. Pure numpy; deterministic in (config, seed, index, label)."""
    rng = np.random.default_rng([seed, index])
    order = class_orders(config.steps, config.classes)[label]
    n_frames = max(config.steps, int(round(rng.uniform(*config.seconds) * config.fps)))
    # step boundaries from exchangeable shares: every step has the same expected duration in every class
    shares = rng.dirichlet(np.full(config.steps, 8.0))  # (S,)
    bounds = np.round(np.cumsum(shares) * n_frames).astype(int)
    step_of = np.searchsorted(bounds, np.arange(n_frames), side="right")  # (T,) position in the order
    step_of = np.minimum(step_of, config.steps - 1)
    starts = np.concatenate([[0], bounds[:-1]])
    local_t = (np.arange(n_frames) - starts[step_of]) / config.fps  # (T,) seconds since the step began
    visual = np.asarray(order)[step_of]  # (T,) step id shown
    # distractor bursts at uniform positions, independent of the class
    n_bursts = rng.poisson(config.distractor_fraction * n_frames / 2.5)
    for _ in range(n_bursts):
        start, length = rng.integers(0, n_frames), rng.integers(1, 5)
        visual[start : start + length] = DISTRACTOR
    jitter = [_step_jitter(rng) for _ in range(config.steps)]  # per video and step, indexed by step id

    grid = (np.arange(config.size) + 0.5) / config.size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")  # (S, S)
    frames = np.empty((n_frames, config.size, config.size, 3), np.float32)
    for t in range(n_frames):
        if visual[t] == DISTRACTOR:
            frames[t] = rng.uniform(40, 215) + rng.normal(0, 30, (config.size, config.size, 1))
        else:
            frames[t] = _render_step(int(visual[t]), jitter[visual[t]], float(local_t[t]), yy, xx)
    frames += rng.normal(0, config.noise, frames.shape).astype(np.float32)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _step_jitter(rng: np.random.Generator) -> dict:
    return {
        "hue": rng.uniform(-0.03, 0.03),
        "value": rng.uniform(0.8, 1.0),
        "radius": rng.uniform(0.16, 0.22),
        "speed": rng.uniform(0.75, 1.25),
        "phase": rng.uniform(0, 2 * np.pi),
        "x0": rng.uniform(0.25, 0.75),
        "y0": rng.uniform(0.3, 0.7),
    }


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), np.float32) * 255.0


def _render_step(step: int, j: dict, t: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """One frame (S, S, 3) float of step `step` at local time t seconds, with this video's jitter j."""
    _, hue, shape, motion = STEP_POOL[step]
    background = _rgb(hue + j["hue"], 0.75, j["value"] * 0.85)
    foreground = _rgb(hue + j["hue"] + 0.5, 0.6, 1.0)
    w = j["speed"] * 2 * np.pi / 4.0  # about one motion cycle per 4 s
    cx, cy, r = j["x0"], j["y0"], j["radius"]
    if motion == "drift":
        cx = (j["x0"] + 0.15 * j["speed"] * t) % 1.0
    elif motion == "orbit":
        cx, cy = 0.5 + 0.22 * np.cos(w * t + j["phase"]), 0.5 + 0.22 * np.sin(w * t + j["phase"])
    elif motion == "bounce":
        cy = 0.25 + 0.5 * abs(np.sin(w * t / 2 + j["phase"]))
    elif motion == "pulse":
        r = j["radius"] * (1.0 + 0.45 * np.sin(w * t + j["phase"]))
    dx, dy = xx - cx, yy - cy  # (S, S)
    if shape == "disc":
        mask = dx**2 + dy**2 < r**2
    elif shape == "square":
        mask = np.maximum(abs(dx), abs(dy)) < r
    elif shape == "triangle":
        mask = (dy < r) & (abs(dx) < (dy + r) / 2)
    elif shape == "ring":
        d2 = dx**2 + dy**2
        mask = (d2 < r**2) & (d2 > (0.55 * r) ** 2)
    elif shape == "cross":
        mask = ((abs(dx) < r / 3) & (abs(dy) < r)) | ((abs(dy) < r / 3) & (abs(dx) < r))
    elif shape == "diamond":
        mask = abs(dx) + abs(dy) < r
    elif shape == "bar":
        mask = abs(dy) < r / 2
    else:  # stripes rolling across the whole frame
        angle = j["phase"]
        mask = np.sin(2 * np.pi * 4 * (xx * np.cos(angle) + yy * np.sin(angle)) - w * t) > 0
    return np.where(mask[..., None], foreground, background)  # (S, S, 3)


# ----------------------------------------------------------------------------- writing files (PyAV only here)
def pick_codec() -> str:
    """H.264 when this PyAV build can encode it, else MPEG-4 Part 2 (every FFmpeg build has it)."""
    import av

    for name in ("libx264", "h264"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises different types across versions
            continue
    return "mpeg4"


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, 3H/2, W) uint8 planar YUV 4:2:0 (BT.601, limited range), in numpy.

    Done in numpy so that the encoder's input does not depend on which SIMD path FFmpeg's swscale takes.
    """
    rgb = frames.astype(np.float32)  # (T, H, W, 3)
    t, h, w, _ = rgb.shape
    y = 16.0 + rgb @ np.array([65.481, 128.553, 24.966], np.float32) / 255.0  # (T, H, W)
    cb = 128.0 + rgb @ np.array([-37.797, -74.203, 112.0], np.float32) / 255.0  # (T, H, W)
    cr = 128.0 + rgb @ np.array([112.0, -93.786, -18.214], np.float32) / 255.0  # (T, H, W)
    half = lambda plane: plane.reshape(t, h // 2, 2, w // 2, 2).mean((2, 4)).reshape(t, h // 4, w)  # noqa: E731
    planes = np.concatenate([y, half(cb), half(cr)], axis=1)  # (T, 3H/2, W)
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8)


def write_video(path: Path, frames: np.ndarray, fps: int, codec: str) -> None:
    """Encode (T, H, W, 3) uint8 frames into an .mp4; single-threaded so the bytes do not depend on scheduling."""
    import av

    tmp = path.with_name(path.name + ".partial")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "mpeg4":
            stream.options = {"qscale": "3", "threads": "1"}
        else:
            # Reproducible x264: one thread, constant quantiser, no macroblock-tree/lookahead rate control. With
            # crf + mbtree, libx264 gave different bitstreams (and decoded frames) for the same input in ~1 of 3 runs,
            # even single-threaded (measured; asm=0 or disabling mbtree/lookahead removed it).
            stream.options = {"qp": "20", "preset": "veryfast", "bframes": "0", "g": str(2 * fps), "threads": "1",
                              "x264-params": "mbtree=0:rc-lookahead=0:sync-lookahead=0"}
        for index, pixels in enumerate(rgb_to_yuv420p(frames)):
            frame = av.VideoFrame.from_ndarray(pixels, format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, fps)  # explicit: no guessed timestamps
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def _make_one(job: tuple) -> None:
    config, seed, index, video_id, label, folder, codec = job
    frames = video_frames(config, seed, index, label)
    write_video(Path(folder) / f"{video_id}.mp4", frames, config.fps, codec)


def _meta(config: SyntheticConfig, seed: int, codec: str) -> dict:
    return {
        "seed": seed,
        "config": asdict(config),
        "codec": codec,
        "class_orders": [[STEP_POOL[s][0] for s in order] for order in class_orders(config.steps, config.classes)],
        "steps": [STEP_POOL[s][0] for s in range(config.steps)],
    }


def labels_csv(config: SyntheticConfig) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("video_id", "split", "label"))
    writer.writerows(video_specs(config))
    return out.getvalue().encode()


def generate(root: str | os.PathLike, seed: int = 0, workers: int | None = None, force: bool = False,
             progress: bool = False, **size) -> Path:
    """Write the set into `root` (videos/, labels.csv, meta.json) and return `root`.

    `size` overrides `SyntheticConfig` fields (e.g. `per_class={"train": 2, "val": 1, "test": 1}, seconds=(3, 4)`).
    Skips the work when `root` already holds a complete set made with the same seed and config (unless `force`).
    """
    config = SyntheticConfig(**{k: tuple(v) if k == "seconds" else v for k, v in size.items()})
    root = Path(root)
    codec = pick_codec()
    meta = _meta(config, seed, codec)
    specs = video_specs(config)
    folder = root / "videos"
    meta_path, labels_path = root / "meta.json", root / "labels.csv"
    if not force and labels_path.is_file() and meta_path.is_file():
        same = json.loads(meta_path.read_text()) == json.loads(json.dumps(meta))
        if same and all((folder / f"{vid}.mp4").is_file() for vid, _, _ in specs):
            return root
    folder.mkdir(parents=True, exist_ok=True)
    labels_path.unlink(missing_ok=True)  # absent while the set is incomplete
    jobs = [(config, seed, i, vid, label, str(folder), codec) for i, (vid, _, label) in enumerate(specs)]
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    done = 0
    if workers > 1:
        # spawn, not fork: the caller may hold torch/OpenMP threads, which a forked child can deadlock on
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_make_one, jobs, chunksize=4):
                done += 1
                _progress(progress, done, len(jobs))
    else:
        for job in jobs:
            _make_one(job)
            done += 1
            _progress(progress, done, len(jobs))
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    labels_path.write_bytes(labels_csv(config))
    return root


def _progress(enabled: bool, done: int, total: int) -> None:
    if enabled and (done == total or done % 20 == 0):
        print(f"  {done}/{total} videos", flush=True)

"""The token grids of a video to predict, made exactly as the head's training cache was made.

A checkpoint records its cache's provenance (`config["cache"]`: encoder name, family and weights hash, image and patch
size, special tokens, pool, `fps` or `segments`, `frames_per_segment`, a video encoder's `frame_interval`). For each
video `Features.locate(path)` returns a store holding it, trying in turn:

1. the predict cache `<cache dir>/predict/<tag>/`, keyed by the file's absolute path, size and modification time, so a
   second predict on the same file encodes nothing (and an edited file is encoded again);
2. the training cache, when it holds a video extracted from this very file (the `source` attr of its videos);
3. the encoder: the video is sampled with `extract.video.SampledVideo` (as `make extract` does: the checkpoint's
   sampling, a video encoder's clips, the resize and crop of the encoder's image processor), encoded by the
   checkpoint's encoder (`extract.encoder.load_encoder`, refused when its weights hash differs) one batch of whole
   segments at a time (`extract.encoder.segment_means`), and each batch's segments are appended to the predict cache
   (`ShardWriter.add_parts`): memory holds one batch of frames and tokens, whatever the video's length.
Bad input raises `data.errors.UserError` with what to do (a missing file, a file FFmpeg cannot read, a video too short
for one segment, an encoder that is not available offline or is not the one the head was trained on).
"""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from data.errors import UserError
from data.store import PROVENANCE_KEYS, FeatureStore, ShardWriter, StoreError, make_tag
from extract.encoder import EncoderSpec, FrozenEncoder, load_encoder, resolve_encoder, segment_means
from extract.resize import Resize
from extract.video import SampledVideo, Sampling, VideoError

# What the predict cache records of the training cache, besides its sampling: what the tokens mean.
SAMPLING_KEYS = ("fps", "segments", "durations", "frames_per_segment", "frame_interval")
ENCODER_KEYS = tuple(k for k in PROVENANCE_KEYS if k not in (*SAMPLING_KEYS, "schema", "dtype"))


def checkpoint_sampling(cache: dict) -> Sampling:
    """The sampling of the checkpoint's cache (`fps` or `segments`, `frames_per_segment`, `frame_interval`)."""
    if cache.get("durations") is not None:
        raise UserError(f"the checkpoint's cache {cache.get('tag')!r} was sampled the paper's LVU way (SAMPLING=paper: "
                        f"one frame per second listed in {cache['durations']}), which only videos listed there have; "
                        "for new videos, train on a cache extracted with FPS=1")
    if cache.get("fps") is None and cache.get("segments") is None:
        raise UserError(f"the checkpoint does not record how its cache {cache.get('tag')!r} sampled the videos "
                        "(it was trained before predict existed); train it again with `make train`")
    return Sampling(fps=cache.get("fps"), segments=cache.get("segments"),
                    frames_per_segment=int(cache.get("frames_per_segment") or 1),
                    frame_interval=cache.get("frame_interval"))


def predict_key(path: Path) -> str:
    """The predict cache's id of a file: absolute path, size in bytes and modification time in ns."""
    stat = path.stat()
    return f"{path.resolve()}#{stat.st_size}-{stat.st_mtime_ns}"


class Features:
    """Where the token grids of each video come from (see the module docstring); one per checkpoint."""

    def __init__(self, cache: dict, cache_dir: str | Path, batch: int = 32, device: str = "cpu",
                 progress: bool | None = None):
        self.cache = dict(cache)
        self.sampling = checkpoint_sampling(self.cache)
        tag = self.cache.get("tag") or make_tag(self.cache["encoder"], fps=self.sampling.fps,
                                                segments=self.sampling.segments,
                                                frames_per_segment=self.sampling.frames_per_segment,
                                                pool=self.cache.get("pool"))
        self.predict_dir = Path(cache_dir) / "predict" / tag
        self.train_dir = Path(self.cache["dir"]) if self.cache.get("dir") else None
        k = self.sampling.frames_per_segment
        self.batch = k * max(1, int(batch) // k)  # whole segments (a video encoder: whole clips) per encoder batch
        self.device = device
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.encoded = 0  # videos this object sent through the encoder
        self._predict_store: FeatureStore | None = None

    # ------------------------------------------------------------------ lookup
    def locate(self, path: Path) -> tuple[FeatureStore, str]:
        """(store, video id) holding the tokens of the video file at `path`; encodes it when no cache has it."""
        if not path.is_file():
            raise UserError(f"no video file at {path}; give VIDEO=<a video file or a folder of videos>")
        key = predict_key(path)
        store = self._predict()
        if store is not None and key in store:
            return store, key
        train = self._train_sources.get(str(path.resolve()))
        if train is not None:
            return train
        self._encode(path, key)
        self._predict_store = None  # re-index: the new shard is sealed
        store = self._predict()
        assert store is not None and key in store
        return store, key

    def _predict(self) -> FeatureStore | None:
        if self._predict_store is None and any(self.predict_dir.glob("shard-*.h5")):
            self._predict_store = self._open(self.predict_dir)
        return self._predict_store

    def _open(self, directory: Path) -> FeatureStore:
        try:
            store = FeatureStore(directory)
        except StoreError as exc:
            raise UserError(f"{exc}") from exc
        if store.meta.get("encoder_hash") != self.cache.get("encoder_hash"):
            raise UserError(f"{directory} holds features of other encoder weights ({store.meta.get('encoder_hash')}, "
                            f"the checkpoint's are {self.cache.get('encoder_hash')}); delete that folder")
        return store

    @cached_property
    def _train_sources(self) -> dict[str, tuple[FeatureStore, str]]:
        """Absolute source path -> (training store, video id), for the videos of the training cache."""
        if self.train_dir is None or not any(self.train_dir.glob("shard-*.h5")):
            return {}
        try:
            store = self._open(self.train_dir)
        except UserError:
            return {}  # another cache under that name now: encode instead
        found = {}
        for video_id in store.ids():
            source = store.video_attrs(video_id).get("source")
            if source:
                found.setdefault(str(Path(source).resolve()), (store, video_id))
        return found

    # ------------------------------------------------------------------ encoding
    @cached_property
    def spec(self) -> EncoderSpec:
        """The checkpoint's encoder resolved from its config (family, input plan), no weights loaded."""
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # predict prints its own lines only: no load reports or progress bars
        hf_logging.disable_progress_bar()
        return resolve_encoder(self.cache["encoder"])

    @cached_property
    def resize(self) -> Resize:
        """How a decoded frame becomes the encoder's input (its image processor's resize and crop)."""
        return self.spec.input_plan()[1]

    @cached_property
    def encoder(self) -> FrozenEncoder:
        """The checkpoint's encoder, loaded on first use; refused when its weights are not the ones trained on."""
        pool = self.cache.get("pool")
        pool = None if pool in (None, "none", 1) else int(pool)
        encoder = load_encoder(self.spec, pool=pool, device=self.device)
        if encoder.weights_hash != self.cache.get("encoder_hash"):
            raise UserError(
                f"the encoder {self.cache['encoder']!r} loaded here has weights {encoder.weights_hash}, but the head "
                f"was trained on features of weights {self.cache.get('encoder_hash')}; give predict the same model "
                "files as `make extract` had (or re-extract and train with these)")
        return encoder

    def _attrs(self) -> dict:
        """The predict cache's provenance: the training cache's own attrs (a cache older than an attr lacks it)."""
        return {**{k: self.cache.get(k) for k in ENCODER_KEYS}, **self.sampling.as_attrs()}

    def _encode(self, path: Path, key: str) -> None:
        try:
            video = SampledVideo(path, self.sampling, size=self.resize)
        except VideoError as exc:
            raise UserError(f"{path}: {exc}") from None
        _ = self.encoder  # loaded (or refused) before anything is written
        attrs: dict = {}  # per-video attrs as make extract records them, filled in by _parts
        parts = self._parts(video, attrs)
        try:
            with ShardWriter(self.predict_dir, self._attrs(), max_videos=1) as writer:
                writer.add_parts(key, video.num_segments, parts, video.info.duration, str(path), attrs)
        except VideoError as exc:
            raise UserError(f"{path}: {exc}") from None
        except StoreError as exc:
            raise UserError(f"{path}: {exc}") from exc
        self.encoded += 1

    def _parts(self, video: SampledVideo, attrs: dict):
        """(tokens (n, P, D) float16, timestamps (n,)) per batch of whole segments, in segment order; at the end
        `attrs` gets the video's own attrs (display matrix applied, stream used), as make extract records them."""
        from tqdm.auto import tqdm

        k = self.sampling.frames_per_segment
        bar = tqdm(total=len(video), unit="frame", desc=video.path.name[:30], disable=not self.progress,
                   ncols=80, leave=False)
        frames: list[np.ndarray] = []
        times: list[float] = []
        try:
            for _, time, rgb in video:
                frames.append(rgb)
                times.append(time)
                if len(frames) == self.batch:
                    yield self._encode_batch(frames, times, k)
                    bar.update(len(frames))
                    frames, times = [], []
            if frames:
                yield self._encode_batch(frames, times, k)
                bar.update(len(frames))
            attrs.update(video.attrs())
        finally:
            bar.close()

    def _encode_batch(self, frames: list[np.ndarray], times: list[float], k: int) -> tuple[np.ndarray, np.ndarray]:
        pixels = torch.from_numpy(np.stack(frames)).to(self.encoder.scale.device)  # (n*k, H, W, 3) uint8
        tokens = self.encoder(pixels).cpu().numpy()  # (n*k/F, P, D) float16: F = 1, or a clip of k frames
        times = np.asarray(times, dtype=np.float64)  # (n*k,)
        return segment_means(tokens, times, k, self.encoder.frames_per_item)  # (n, P, D), (n,)

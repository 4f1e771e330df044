"""Stage 1, the loop: pending videos -> DataLoader workers (decode + sample) -> encoder -> sealed HDF5 shards.

Shape of the work (ViS4mer runs the frozen ViT once per sampled frame, Sec. 4):

* ``PackedFrames`` (an IterableDataset) decodes videos in DataLoader workers and packs their sampled frames into
  batches of exactly ``batch`` frames across video boundaries, so the encoder always sees full batches. Each batch
  carries ``spans`` (which frames belong to which video), ``done`` (videos whose last frame has been sent, with their
  timestamps) and ``failed`` (videos that could not be decoded, with the reason). A bad video never raises.
* ``EncodeModule`` (a LightningModule) runs the frozen encoder in ``predict_step`` (a video encoder takes each run of
  ``frames_per_item`` frames as one clip; batches then hold whole clips); ``Trainer.predict`` gives device
  placement and DDP over devices and nodes for free. Rank r takes pending ids r, r + W, r + 2W, ... of the list
  broadcast by rank 0, and its DataLoader worker w takes every ``num_workers``-th of those.
* ``ShardSink`` (a BasePredictionWriter) reassembles each video's tokens, averages the ``frames_per_segment`` frames of
  an image encoder in token space (a video encoder gives one item per segment already) and appends the video to
  this rank's ``ShardWriter`` (``shard-r{rank}-*.h5``): no two ranks ever write the same file. Failures go to
  ``failures.jsonl``. A kill loses at most the open ``.partial`` shard of each rank.

Axis letters: N frames in a batch, T segments, k frames per segment, F frames per encoder item (1, or a clip),
P tokens per item, D channels.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.console import Terminated, quiet_libraries, sigterm_to_main
from data.store import ShardWriter, StoreError, append_failure
from data.store.writer import DiskFullError, disk_full_error, is_disk_full
from extract.encoder import FrozenEncoder, segment_means
from extract.resize import Resize
from extract.video import SampledVideo, Sampling, VideoError

LINE_EVERY_S = 30.0  # without a terminal: one progress line at most this often


@dataclass
class Stats:
    """What one rank did; summed over ranks at the end."""

    extracted: int = 0
    frames: int = 0
    failed: list[dict] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    repeated: int = 0  # videos with fewer distinct frames than sampled (a frame stands for several targets)

    def merge(self, other: Stats) -> Stats:
        return Stats(self.extracted + other.extracted, self.frames + other.frames, self.failed + other.failed,
                     self.shards + other.shards, self.repeated + other.repeated)


# ---------------------------------------------------------------------------------------------------------------
# decoding side (runs in DataLoader workers)


def pack_videos(items, sampling: Sampling, size: tuple[int, int] | Resize, batch: int, threads: int = 0):
    """Yield batches {"frames": uint8 (N, H, W, 3), "spans", "done", "failed"} with N == batch except the last.

    ``size`` is the frames' (H, W) or the encoder's ``Resize`` plan. Every video adds T * k frames, so when ``batch``
    is a multiple of k each batch holds whole segments (a failed video's frames leave the open batch whole too).
    """
    out_shape = size.output if isinstance(size, Resize) else tuple(size)
    frames: list[np.ndarray] = []
    spans: list[list] = []  # [video_id, first frame index, count], in frame order
    done: list[dict] = []
    failed: list[dict] = []

    def flush() -> dict:
        nonlocal frames, spans, done, failed
        stacked = np.stack(frames) if frames else np.zeros((0, *out_shape, 3), np.uint8)  # (N, H, W, 3)
        out = {"frames": torch.from_numpy(stacked), "spans": [tuple(s) for s in spans], "done": done,
               "failed": failed}
        frames, spans, done, failed = [], [], [], []
        return out

    for video_id, path in items:
        try:
            listed = sampling.durations.get(video_id) if sampling.durations is not None else None
            video = SampledVideo(path, sampling, size=size, threads=threads, listed=listed)
            for index, _, rgb in video:
                if not spans or spans[-1][0] != video_id:
                    spans.append([video_id, index, 0])
                frames.append(rgb)
                spans[-1][2] += 1
                if len(frames) == batch:
                    yield flush()
            done.append({"video_id": video_id, "path": str(path), "times": video.times.tolist(),
                         "segments": video.num_segments, "duration": float(video.info.duration),
                         "attrs": video.attrs()})
        except Exception as exc:  # noqa: BLE001 - one bad video must never stop the run
            error = str(exc) if isinstance(exc, VideoError) else f"unexpected {type(exc).__name__}: {exc}"
            if spans and spans[-1][0] == video_id:  # do not encode frames of a video that failed
                del frames[len(frames) - spans[-1][2]:]
                spans.pop()
            failed.append({"video_id": video_id, "path": str(path), "error": error})
    if frames or spans or done or failed:
        yield flush()


class PackedFrames(IterableDataset):
    """The sampled frames of ``items`` [(video_id, path)], packed in batches; each worker takes its own share."""

    def __init__(self, items, sampling: Sampling, size: tuple[int, int] | Resize, batch: int, threads: int = 0):
        self.items = list(items)
        self.size = size if isinstance(size, Resize) else tuple(size)
        self.sampling, self.batch, self.threads = sampling, int(batch), int(threads)

    def __iter__(self):
        info = get_worker_info()
        share = self.items if info is None else self.items[info.id :: info.num_workers]
        return pack_videos(share, self.sampling, self.size, self.batch, self.threads)


# ---------------------------------------------------------------------------------------------------------------
# encoding side (Lightning)


class EncodeModule(pl.LightningModule):
    """Wraps the frozen encoder; its predict dataloader is this rank's share of the pending videos."""

    def __init__(self, encoder: FrozenEncoder, items, sampling: Sampling, batch: int = 32, workers: int = 2,
                 threads: int = 0):
        super().__init__()
        self.encoder = encoder
        self.items = list(items)
        f = encoder.frames_per_item
        batch = -(-int(batch) // f) * f  # whole clips: rounded up to a multiple of the clip length
        self.sampling, self.batch, self.workers, self.threads = sampling, batch, int(workers), int(threads)
        self.share: list = []

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        items = self.trainer.strategy.broadcast(self.items, src=0)  # rank 0's list wins: every rank splits the same
        self.share = items[rank::world]
        dataset = PackedFrames(self.share, self.sampling, self.encoder.resize, self.batch, self.threads)
        return DataLoader(
            dataset, batch_size=None, num_workers=self.workers, pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if self.workers else None, persistent_workers=False, worker_init_fn=sigterm_to_main(),
        )

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        frames = batch["frames"]  # (N, H, W, 3) uint8
        if frames.shape[0]:
            tokens = self.encoder(frames).cpu().numpy()  # (N / F, P, D) float16
        else:
            tokens = np.zeros((0, 1, 1), np.float16)
        return {"tokens": tokens, "spans": batch["spans"], "done": batch["done"], "failed": batch["failed"]}


class VideoAssembler:
    """Collects each video's token chunks, then writes the whole video (T, P, D) to the ShardWriter.

    Spans count frames; the encoder gives one item per ``frames_per_item`` of them (1, or a clip of k frames).
    """

    def __init__(self, writer: ShardWriter, directory: Path, frames_per_segment: int = 1, on_video=None,
                 frames_per_item: int = 1):
        self.writer, self.directory, self.k = writer, Path(directory), int(frames_per_segment)
        self.f = int(frames_per_item)
        assert self.k % self.f == 0, (self.k, self.f)
        self.chunks: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.stats = Stats()
        self.on_video = on_video  # callback(frames) for progress

    def consume(self, tokens: np.ndarray, spans, done, failed) -> None:
        offset = 0
        for video_id, start, count in spans:
            assert start % self.f == 0 and count % self.f == 0, (start, count, self.f)  # whole clips only
            n = count // self.f
            self.chunks.setdefault(video_id, []).append((int(start), tokens[offset : offset + n]))  # (n, P, D)
            offset += n
        assert offset == tokens.shape[0], (offset, tokens.shape)
        for record in done:
            self._finish(record)
        for record in failed:
            self.chunks.pop(record["video_id"], None)
            self._fail(record["video_id"], record["path"], record["error"])

    def _fail(self, video_id: str, path: str, error: str) -> None:
        try:
            append_failure(self.directory, video_id, path, error)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.directory, f"writing failures.jsonl: {exc.strerror}") from None
            raise
        self.stats.failed.append({"video_id": video_id, "path": path, "error": error})
        if self.on_video:
            self.on_video(0)

    def _finish(self, record: dict) -> None:
        video_id, segments = record["video_id"], int(record["segments"])
        parts = sorted(self.chunks.pop(video_id, []), key=lambda part: part[0])
        expected = segments * self.k
        got = sum(len(p) for _, p in parts) * self.f
        if got != expected:
            self._fail(video_id, record["path"], f"internal: received {got} of {expected} frames")
            return
        tokens = np.concatenate([p for _, p in parts])  # (T*k/F, P, D) float16
        times = np.asarray(record["times"], dtype=np.float64)  # (T*k,)
        tokens, times = segment_means(tokens, times, self.k, self.f)  # (T, P, D), (T,)
        if not np.isfinite(tokens).all():
            self._fail(video_id, record["path"], "the encoder produced inf/NaN values (float16 overflow?)")
            return
        try:
            self.writer.add(video_id, tokens, times, record["duration"], record["path"], attrs=record.get("attrs"))
        except DiskFullError:
            raise  # the run cannot go on: one error line (sealed shards are kept)
        except StoreError as exc:  # the writer undoes a refused add; the shard's other videos still seal
            self._fail(video_id, record["path"], f"store: {exc}")
            return
        self.stats.extracted += 1
        self.stats.frames += expected
        if len(set(record["times"])) < len(record["times"]):  # the same displayed frame for several targets
            self.stats.repeated += 1
        if self.on_video:
            self.on_video(expected)


class ShardSink(BasePredictionWriter):
    """Writes every finished video of this rank into its own shards; gathers the run's stats over ranks."""

    def __init__(self, directory: Path, attrs: dict, frames_per_segment: int = 1, max_videos: int = 256,
                 max_bytes: int = 2**30, progress: bool = True, frames_per_item: int = 1):
        super().__init__(write_interval="batch")
        self.directory, self.attrs, self.k = Path(directory), dict(attrs), int(frames_per_segment)
        self.f = int(frames_per_item)
        self.max_videos, self.max_bytes, self.progress = int(max_videos), int(max_bytes), progress
        self.writer: ShardWriter | None = None
        self.assembler: VideoAssembler | None = None
        self.total = Stats()
        self._bar = None
        self._start = self._last_line = 0.0
        self._total, self._rank = 0, 0

    def on_predict_start(self, trainer, pl_module) -> None:
        self.writer = ShardWriter(self.directory, self.attrs, rank=trainer.global_rank, max_videos=self.max_videos,
                                  max_bytes=self.max_bytes)
        self._start = self._last_line = time.perf_counter()
        self._total = len(pl_module.share)  # this rank's videos (the dataloader, set up before this hook, split them)
        if self.progress and trainer.global_rank == 0 and sys.stderr.isatty():
            from tqdm.auto import tqdm

            where = f" rank 0/{trainer.world_size}" if trainer.world_size > 1 else ""
            # at most 80 columns: the bar shrinks to what the counts and rates leave
            self._bar = tqdm(total=self._total, unit="video", desc=f"extract{where}", smoothing=0.1,
                             ncols=min(80, shutil.get_terminal_size().columns),
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}"
                                        "{postfix}]")
        self.assembler = VideoAssembler(self.writer, self.directory, self.k, on_video=self._tick,
                                        frames_per_item=self.f)

    def _tick(self, frames: int) -> None:
        stats = self.assembler.stats
        now = time.perf_counter()
        rate = f"{stats.frames / max(now - self._start, 1e-9):.1f} frames/s"
        failed = f", {len(stats.failed)} failed" if stats.failed else ""
        if self._bar is not None:
            self._bar.set_postfix_str(rate + failed, refresh=False)
            self._bar.update(1)
        elif self.progress and self._rank == 0 and now - self._last_line >= LINE_EVERY_S:  # no terminal: a line
            self._last_line = now
            done = stats.extracted + len(stats.failed)
            print(f"extract: {done}/{self._total} videos, {rate}{failed}, {now - self._start:.0f} s", file=sys.stderr,
                  flush=True)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        self._rank = trainer.global_rank
        self.assembler.consume(prediction["tokens"], prediction["spans"], prediction["done"], prediction["failed"])
        if trainer.received_sigterm:  # Lightning noted a SIGTERM (its predict loop does not stop for it): stop here,
            raise Terminated("SIGTERM")  # between batches, as Ctrl-C does (on_exception seals the shard)

    def on_predict_end(self, trainer, pl_module) -> None:
        sealed = self.writer.close()
        if self._bar is not None:
            self._bar.close()
        stats = self.assembler.stats
        stats.shards = [p.name for p in sealed]
        if leftover := sorted(self.assembler.chunks):
            for video_id in leftover:  # cannot happen unless a worker died mid-video
                self.assembler._fail(video_id, "", "internal: the decoder stopped before the video was complete")
        gathered = [stats]
        if trainer.world_size > 1:
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, stats)
        total = Stats()
        for part in gathered:
            total = total.merge(part)
        self.total = total

    def on_exception(self, trainer, pl_module, exception) -> None:
        # Ctrl-C, SIGTERM or an error: seal what is complete (a half-written video stays in the .partial, redone).
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001
                pass
        if self._bar is not None:
            self._bar.close()
        if isinstance(exception, KeyboardInterrupt) and trainer.global_rank == 0 and self.assembler is not None:
            print(f"{self.assembler.stats.extracted} video(s) extracted by this run are sealed", file=sys.stderr,
                  flush=True)  # then run_cli's "interrupted: ..." line


# Lightning's hints that do not apply to an extraction run (one predict loop over an iterable of videos)
QUIET_WARNINGS = (".*does not have many workers.*", ".*predict_dataloader.*", ".*IterableDataset.*",
                  ".*LightningModule.*predict_step.*", ".*`srun`.*", ".*num_nodes.*", ".*LeafSpec.*",
                  ".*Couldn't infer the batch indices.*")


def run_predict(encoder: FrozenEncoder, items, directory: Path, attrs: dict, sampling: Sampling, *, batch: int = 32,
                workers: int = 2, devices=1, nodes: int = 1, accelerator: str = "auto", max_videos: int = 256,
                max_bytes: int = 2**30, threads: int = 0, progress: bool = True) -> tuple[Stats, int]:
    """Encode ``items`` into ``directory`` with Trainer.predict; returns (stats over all ranks, this global rank)."""
    quiet_libraries(*QUIET_WARNINGS)  # and Lightning's banners (VERBOSE=1 shows them)
    world = (devices if isinstance(devices, int) else 1) * int(nodes)
    sink = ShardSink(directory, attrs, sampling.frames_per_segment, max_videos, max_bytes, progress,
                     frames_per_item=encoder.frames_per_item)
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=nodes, strategy="ddp" if world > 1 else "auto",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[sink], inference_mode=True, use_distributed_sampler=False,
    )
    module = EncodeModule(encoder, items, sampling, batch=batch, workers=workers, threads=threads)
    trainer.predict(module, return_predictions=False)
    return sink.total, trainer.global_rank

"""What `make train` says while it runs: one opening line, one line per epoch without a terminal, the resume hint.

    train s4-multiscale on lvu/director, cache vit-large-patch16-224-in21k_fps1: videos train 640 (12 skipped: 12
        without media on disk), val 160, test 240; 20 epochs, batch 16, cuda:0, 1,520,138 parameters -> runs/…
    epoch 3/20: train loss 1.2034, val loss 1.1010, val acc 0.5813 (best), lr 1.0e-03, 41.2 s
    training stopped during epoch 4 (SIGTERM); the epochs before it are kept: continue with RESUME=runs/…/last.ckpt

The lines go to stderr (data.console.say); stdout keeps the one-line result. Only global rank 0 speaks. With a
terminal a progress bar (`EpochBar`, Lightning's TQDMProgressBar) shows the steps instead of the epoch lines:
    epoch 3/20:  40%|██████▍         | 4/10 [00:01<00:01, loss=1.421, val acc=0.250]
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from pytorch_lightning.callbacks import Callback, TQDMProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException

from data.console import say


def split_counts(dm, splits=("train", "val", "test")) -> str:
    """'train 640 (12 skipped: 12 without media on disk), val 160 (held out of train), test 240'."""
    parts = []
    for split in splits:
        text = f"{split} {len(dm.video_ids(split))}"
        skipped = dm.skipped.get(split)
        if skipped and sum(skipped.values()):
            why = ", ".join(f"{n} {label}" for key, label in (("no_media", "without media on disk"),
                                                            ("failed", "failed extraction"),
                                                            ("not_extracted", "not extracted yet"))
                            if (n := skipped.get(key)))
            text += f" ({sum(skipped.values())} skipped: {why})"
        if split == "val" and "val" not in tuple(dm.dataset.splits):
            text += " (held out of train)"
        parts.append(text)
    return ", ".join(parts)


def describe_device(trainer) -> str:
    """'cpu', 'cuda:0', or '4 x cuda on 2 nodes (DDP)'."""
    device = trainer.strategy.root_device
    if trainer.world_size > 1:
        nodes = f" on {trainer.num_nodes} nodes" if trainer.num_nodes > 1 else ""
        return f"{trainer.world_size} x {device.type}{nodes} (DDP)"
    return str(device)


def _number(value: float) -> str:
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.3e}"


class EpochLines(Callback):
    """The opening line (and `notes`) when fit starts, and, when `per_epoch`, one line per finished epoch.

    `opening` holds "{device}", which is only known once the Trainer has set up its strategy. `checkpoint` is the
    best-on-val ModelCheckpoint: an epoch is marked "(best)" when it beats the score that callback holds (restored
    on resume), with the callback's own comparison (strictly better).
    """

    def __init__(self, opening: str, notes: list[str], checkpoint, per_epoch: bool = True):
        self.opening, self.notes, self.checkpoint, self.per_epoch = opening, list(notes), checkpoint, per_epoch
        self._started = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            say(self.opening.replace("{device}", describe_device(trainer)))
            for note in self.notes:
                say(note)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def _is_best(self, value: float) -> bool:
        best = self.checkpoint.best_model_score
        if best is None or not math.isfinite(float(best)):
            return True
        return value > float(best) if self.checkpoint.mode == "max" else value < float(best)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning runs the epoch's validation before this hook and the checkpoint callbacks after it (they are
        # moved to the end of the list), so the val metrics are this epoch's and the best score the previous one.
        if not (self.per_epoch and trainer.is_global_zero) or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        monitor = self.checkpoint.monitor
        parts = []
        for key, label in (("train/loss_epoch", "train loss"), ("val/loss", "val loss"),
                           (monitor, monitor.replace("/", " "))):
            if key in metrics:
                value = float(metrics[key])
                parts.append(f"{label} {_number(value)}" + (" (best)" if key == monitor and self._is_best(value)
                                                            else ""))
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.1e}")
        parts.append(f"{time.perf_counter() - self._started:.1f} s")
        say(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {', '.join(parts)}")


def bar_metrics(items: dict) -> dict:
    """What the progress bar shows of Lightning's progress-bar metrics: no `v_num` (the logger's version), a quantity
    logged per step and per epoch once (its running step value), names in the epoch lines' words:
    {'v_num': 1, 'train/loss_step': 1.4, 'train/loss_epoch': 1.5, 'val/acc': 0.25} -> {'loss': 1.4, 'val acc': 0.25}.
    """
    out = {}
    for key, value in items.items():
        if key == "v_num" or (key.endswith("_epoch") and key.removesuffix("_epoch") + "_step" in items):
            continue
        name = key.removesuffix("_step").rsplit("/", 1)[-1] if key.endswith("_step") else key.removesuffix("_epoch")
        out[name.replace("/", " ")] = value
    return out


class EpochBar(TQDMProgressBar):
    """Lightning's tqdm progress bar in the words of the epoch lines: "epoch 3/20" counted from 1 (Lightning's says
    "Epoch 2"), the metrics of `bar_metrics`, and every bar at most `width` columns wide, narrower when the terminal
    is (tqdm cuts what does not fit; the training bar leaves out the it/s rate, its remaining time says as much)."""

    TRAIN_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"

    def __init__(self, width: int = 80, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.width = width

    def get_metrics(self, trainer, pl_module) -> dict:
        return bar_metrics(super().get_metrics(trainer, pl_module))

    def on_train_epoch_start(self, trainer, *_) -> None:
        # Lightning's own sets "Epoch N" after a reset that redraws: the description goes first, without a redraw.
        bar, total = self.train_progress_bar, self.total_train_batches
        bar.set_description(f"epoch {trainer.current_epoch + 1}" + (
            f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""), refresh=False)
        bar.total = total if math.isfinite(total) else None
        bar.initial = 0
        bar.reset()

    def _narrow(self, bar):
        """Cap tqdm's width at `width`: its dynamic_ncols measures the terminal before each redraw."""
        measure = bar.dynamic_ncols
        if measure:
            def capped(fp):
                cols, rows = measure(fp)
                return min(self.width, cols or self.width), rows

            bar.dynamic_ncols = capped
        bar.ncols = min(self.width, bar.ncols or self.width)
        return bar

    def init_sanity_tqdm(self):
        return self._narrow(super().init_sanity_tqdm())

    def init_train_tqdm(self):
        bar = self._narrow(super().init_train_tqdm())
        bar.bar_format = self.TRAIN_FORMAT
        return bar

    def init_validation_tqdm(self):
        return self._narrow(super().init_validation_tqdm())

    def init_test_tqdm(self):
        return self._narrow(super().init_test_tqdm())

    def init_predict_tqdm(self):
        return self._narrow(super().init_predict_tqdm())


class ResumeHint(Callback):
    """When training stops on an exception (Ctrl-C, SIGTERM, NaN, a crash), say what is kept and how to go on."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_exception(self, trainer, pl_module, exception) -> None:
        last = self.run_dir / "checkpoints" / "last.ckpt"
        if not trainer.is_global_zero:
            return
        why = (" (SIGTERM)" if isinstance(exception, SIGTERMException) else
               " (Ctrl-C)" if isinstance(exception, KeyboardInterrupt) else "")
        if trainer.state.fn != "fit":
            best = getattr(trainer.checkpoint_callback, "best_model_path", "") or "<best.ckpt>"
            say(f"stopped{why} while testing the best checkpoint; `make eval CKPT={best}` repeats it")
        elif last.exists():
            say(f"training stopped during epoch {trainer.current_epoch + 1}{why}; the epochs before it are kept: "
                f"continue with RESUME={last} (make train) or --resume (python -m heads train)")
        else:
            say(f"training stopped in its first epoch{why}; nothing was saved yet, so {self.run_dir} is removed: "
                "rerun the command to start again")

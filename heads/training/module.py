"""LightningModule wrapping an injected head: loss from the task type, clip-level training, video-level evaluation.

Training: cross-entropy (classification) or MSE (regression) on one clip per video; a NaN/inf loss stops the run
with the step that produced it. Evaluation: every clip's softmax (regression: prediction) is summed into its video's
row, reduced over all DDP ranks, and averaged; metrics (torchmetrics: accuracy / MSE) are computed on those per-video
aggregates. Optimizer: AdamW over `optim.param_groups` (SSM parameters: lr 1e-3, no weight decay); the LR is
reduced on plateau of the validation metric (docs/design.md, "Protocols"), stepped before the epoch's checkpoints are
written so that a run resumed from last.ckpt continues with exactly the scheduler state it would have had.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn
from torchmetrics.functional import mean_squared_error
from torchmetrics.functional.classification import multiclass_accuracy

from data.errors import RunFailed
from heads.config import TRAIN


class TrainingDiverged(RunFailed):
    """The loss became NaN or infinite; the message names the step and what to try."""


def _describe(loss: torch.Tensor) -> str:
    value = loss.item()
    return str(value) if not math.isfinite(value) else "non-finite on another DDP rank"


def make_adamw(groups: list[dict], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass per step over all parameters) where PyTorch supports it."""
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


class HeadModule(pl.LightningModule):
    """`head` maps (B, T, P, D) -> (B, n_outputs); `config` (plain types only) is saved with every checkpoint so
    that `python -m heads eval` can rebuild the head and find its cache."""

    def __init__(self, head: nn.Module, config: dict, task_type: str = "classification", n_outputs: int = 2,
                 lr: float = TRAIN.lr, weight_decay: float = TRAIN.weight_decay,
                 plateau_factor: float = TRAIN.plateau_factor, plateau_patience: int = TRAIN.plateau_patience):
        super().__init__()
        if task_type not in ("classification", "regression"):
            raise ValueError(f"Expected task_type 'classification' or 'regression', got {task_type!r}")
        self.save_hyperparameters(ignore=["head"])
        self.head = head
        self.regression = task_type == "regression"
        self.n_outputs = n_outputs
        if self.regression:
            self.train_metric = torchmetrics.MeanSquaredError()
        else:
            self.train_metric = torchmetrics.classification.MulticlassAccuracy(num_classes=n_outputs, average="micro")
        self.metric_name = "mse" if self.regression else "acc"
        self.monitor = f"val/{self.metric_name}"
        self.monitor_mode = "min" if self.regression else "max"
        self._sums: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None
        self.eval_outputs: dict[str, dict] = {}
        self.plateau = None
        self._plateau_state = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D) -> (B, n_outputs)."""
        return self.head(tokens)

    def setup(self, stage: str) -> None:
        from heads.s4.cpu import retain_freed_memory

        retain_freed_memory()  # the same big tensors every step: reuse their pages instead of faulting them in again

    def loss(self, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(out.squeeze(-1), labels)
        return F.cross_entropy(out, labels)

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        tokens, labels, _ = batch
        out = self(tokens)  # (B, n_outputs)
        loss = self.loss(out, labels)
        # every rank stops at the same step (a rank that raised alone would leave the others waiting)
        finite = self.trainer.strategy.reduce(torch.isfinite(loss.detach()).float(), reduce_op="min")
        if not finite:
            raise TrainingDiverged(
                f"training loss became {_describe(loss)} at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}); lower the learning rate (--lr / LR=), check the cached features for NaN, "
                f"and resume from the run's checkpoints/last.ckpt (RESUME=)")
        preds = out.detach().squeeze(-1) if self.regression else out.detach().argmax(-1)
        self.train_metric(preds, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log(f"train/{self.metric_name}", self.train_metric, on_step=False, on_epoch=True,
                 batch_size=len(labels))
        return loss

    # ---------------------------------------------------------------------------------------------- evaluation
    def _split_labels(self, split: str) -> torch.Tensor:
        labels = self.trainer.datamodule.labels(split)
        return torch.tensor(labels, dtype=torch.float32 if self.regression else torch.long, device=self.device)

    def _eval_start(self, split: str) -> None:
        n_videos = len(self.trainer.datamodule.labels(split))
        width = 1 if self.regression else self.n_outputs
        self._sums = torch.zeros(n_videos, width, device=self.device, dtype=torch.float64)  # (V, C)
        self._counts = torch.zeros(n_videos, device=self.device, dtype=torch.float64)  # (V,)

    def _eval_step(self, batch) -> None:
        tokens, _, videos = batch
        out = self(tokens).float()  # (B, n_outputs)
        scores = out if self.regression else out.softmax(dim=-1)  # (B, C)
        self._sums.index_add_(0, videos, scores.double())  # (V, C)
        self._counts.index_add_(0, videos, torch.ones_like(videos, dtype=torch.float64))

    def _eval_end(self, split: str) -> None:
        strategy = self.trainer.strategy  # sums over the DDP ranks (the identity on one device)
        sums, counts = strategy.reduce(self._sums, reduce_op="sum"), strategy.reduce(self._counts, reduce_op="sum")
        seen = counts > 0
        labels = self._split_labels(split)[seen]
        agg = (sums[seen] / counts[seen, None]).float()  # (V', C)
        if self.regression:
            preds = agg[:, 0]
            metric = mean_squared_error(preds, labels)
            loss = metric
        else:
            preds = agg.argmax(-1)
            metric = multiclass_accuracy(preds, labels, num_classes=self.n_outputs, average="micro")
            loss = F.nll_loss(agg.clamp_min(1e-12).log(), labels)
        # identical on every rank after the all_reduce; sync_dist only keeps Lightning's DDP check quiet
        self.log(f"{split}/{self.metric_name}", metric, prog_bar=True, sync_dist=True)
        self.log(f"{split}/loss", loss, sync_dist=True)
        self.eval_outputs[split] = {
            "video_index": torch.nonzero(seen).squeeze(-1).cpu().tolist(),
            "labels": labels.cpu().tolist(),
            "preds": preds.cpu().tolist(),
            "scores": None if self.regression else agg.cpu().tolist(),
            "metric": float(metric), "loss": float(loss),
        }
        self._sums = self._counts = None
        if split == "val":
            self._step_plateau(float(metric))

    def on_validation_epoch_start(self) -> None:
        self._eval_start("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start("test")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    test_step = validation_step  # the same per-clip accumulation; the split is set by the epoch hooks

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    # ---------------------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        from heads.training.optim import param_groups

        hp = self.hparams
        groups = param_groups(self.head, lr=hp.lr, weight_decay=hp.weight_decay)
        optimizer = make_adamw(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        # Stepped by this module at the end of validation (see _step_plateau), not by Lightning: Lightning steps
        # epoch schedulers after the epoch's checkpoints are written, so a resumed run would miss one step.
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=self.monitor_mode, factor=hp.plateau_factor, patience=hp.plateau_patience)
        if self._plateau_state is not None:
            self.plateau.load_state_dict(self._plateau_state)
            self._plateau_state = None
        return optimizer

    def _step_plateau(self, metric: float) -> None:
        trainer = self._trainer
        if self.plateau is None or trainer is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.plateau.step(metric)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.plateau is not None:
            checkpoint["plateau_scheduler"] = self.plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._plateau_state = checkpoint.get("plateau_scheduler")

"""The trainer: ``fit()`` reads like the algorithm and calls short hooks (nnU-Net style).

One class trains segmentation and classification. Hyper-parameters come from the ``TrainConfig`` only; a
variant overrides one hook. The run folder it writes is self-contained (see docs/ARCHITECTURE.md, "Run
folder").

Data path: the train/val splits are cached once as uint8 tensors at the input size (on the GPU when they fit);
each step indexes a batch out of the cache, converts it to float, augments it (kornia) and normalises it on
the training device, so no DataLoader or per-step image decoding is involved.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medlens.config import TrainConfig, save_config, validate_config
from medlens.errors import MedlensError
from medlens.folders import RunFolder
from medlens.inference.runtime import resolve_device
from medlens.jsonable import write_json
from medlens.spec import Task
from medlens.training import batches, distributed
from medlens.training.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from medlens.training.distributed import DistInfo
from medlens.training.optim import amp_dtype, precision_name
from medlens.training.prepare import RunData, cache_split, model_spec, prepare_run, resolve_config
from medlens.training.reports import ReportsMixin
from medlens.training.runfolder import make_run_dir, write_metrics_csv
from medlens.training.setup import SetupMixin
from medlens.training.validation import dice_iou

logger = logging.getLogger(__name__)

# curves.png is redrawn at most this often during training (matplotlib takes ~1 s), and always at the end
PLOT_EVERY_S = 30.0


class Trainer(SetupMixin, ReportsMixin):
    """Train the model a ``TrainConfig`` describes and write its run folder.

    Args:
        cfg: the configuration (copied; resolved values from the plan are filled in and saved as config.yaml).
        dist: this process's place in a torchrun job (single process by default).
        resume: continue ``<out_dir>/<run_name>`` from ``checkpoints/last.pt``.
    """

    def __init__(self, cfg: TrainConfig, dist: DistInfo | None = None, resume: bool = False) -> None:
        self.cfg = validate_config(copy.deepcopy(cfg))
        self.dist = dist or DistInfo()
        self.resume = resume
        self.device = resolve_device(self.cfg.device, self.dist.local_rank if self.dist.enabled else None)
        self.task = self.cfg.data.task
        self.score_key = "val_dice" if self.task == Task.SEGMENTATION else "val_balanced_accuracy"
        self.epoch = 0  # completed epochs
        self.best_score, self.best_epoch, self.bad_epochs = -math.inf, 0, 0
        self.history: list[dict[str, float]] = []
        self.stop_reason: str | None = None
        self.frozen = False
        self.last_plot = -math.inf

    # ---------------------------------------------------------------------------------------- the algorithm
    def fit(self) -> Path:
        """Train until ``epochs``, early stopping or the time budget; returns the run folder."""
        self.on_train_start()
        while self.epoch < self.planned_epochs and self.stop_reason is None:
            self.on_epoch_start()
            train_stats = self.train_epoch()
            val_stats = self.validate() if self.validation_due() else {}
            self.on_epoch_end(train_stats, val_stats)
        self.on_train_end()
        return self.folder.path

    # ------------------------------------------------------------------------------------------------- hooks
    def on_train_start(self) -> None:
        """Run folder and data, then network, optimizer, schedule, loss, augmentation; resume state if
        asked."""
        seed_everything(self.cfg.seed)  # the same initial weights on every rank
        self.setup_data()
        self.build_sampler()
        self.build_model()
        self.build_optimizer()
        self.build_loss()
        self.build_augmenter()
        if self.resume:
            self.load_state(load_checkpoint(self.folder.last))
        if self.dist.rank:  # every rank draws its own augmentations
            seed_everything(self.cfg.seed + 1000 * self.epoch + self.dist.rank)
        self.set_frozen(self.epoch < self.cfg.freeze_epochs)
        self.planned_epochs = self.cfg.epochs
        self.start_time = time.monotonic()
        size = "x".join(map(str, self.plan.input_size))
        procs = f", {self.dist.world_size} processes" if self.dist.enabled else ""
        logger.info("training %s on %s%s: %d train / %d val images at %s, batch %d x %d steps, %s",
                    self.task, self.device, procs, len(self.train_data.ids), len(self.val_data.ids), size,
                    self.batch_size, self.steps_per_epoch, self.cfg.amp)  # fmt: skip

    def setup_data(self) -> None:
        """Run folder, plan and split (rank 0, shared with all ranks), resolved config.yaml + model_spec.json,
        and the train/val caches."""
        self.folder: RunFolder = self.on_main(lambda: make_run_dir(self.cfg, self.resume))
        self.data: RunData = self.on_main(lambda: prepare_run(self.cfg, self.folder, self.resume))
        self.plan = self.data.plan
        self.cfg = resolve_config(self.cfg, self.plan, self.folder.path)
        self.amp_dtype = amp_dtype(self.cfg.amp, self.device)
        self.cfg.amp = precision_name(self.amp_dtype)  # config.yaml records the precision actually used
        self.spec = model_spec(self.cfg, self.plan)
        if self.dist.is_main:
            save_config(self.cfg, self.folder.config)
            write_json(self.folder.spec, self.spec.to_dict())
        self.train_data = cache_split(self.data, "train", self.cfg, self.device)
        self.val_data = cache_split(self.data, "val", self.cfg, self.device)

    def on_epoch_start(self) -> None:
        """Two-stage fine-tuning: the backbone thaws after ``freeze_epochs``."""
        self.epoch_start = time.monotonic()
        if self.frozen != (self.epoch < self.cfg.freeze_epochs):
            self.set_frozen(not self.frozen)

    def train_epoch(self) -> dict[str, float]:
        """One epoch of ``steps_per_epoch`` optimizer steps; returns ``train_loss`` (and ``train_dice``)."""
        self.model.train()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        bar = tqdm(
            self.sampler.epoch(self.epoch),
            desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
            leave=False,
            dynamic_ncols=True,
            disable=None if self.dist.is_main else True,
        )
        steps = 0
        for steps, idx in enumerate(bar, start=1):
            loss, dice = self.train_step(idx)
            totals += torch.stack([loss.double(), dice.double()])
            if steps % 10 == 1 or steps == self.steps_per_epoch:
                loss_avg, dice_avg = (totals / steps).tolist()
                bar.set_postfix(
                    loss=f"{loss_avg:.4f}", **({"dice": f"{dice_avg:.3f}"} if self.is_seg else {})
                )
            if self.time_is_up():
                self.stop_reason = f"time budget of {self.cfg.max_time_minutes} min reached"
                break
        bar.close()
        loss_sum, dice_sum, count = distributed.all_reduce_sum(
            [*totals.tolist(), steps], self.dist, self.device
        )
        stats = {"train_loss": loss_sum / max(count, 1)}
        if self.is_seg:
            stats["train_dice"] = dice_sum / max(count, 1)
        return stats

    def train_step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss, backward, clip, step (optimizer + LR schedule). Returns detached (loss, batch
        Dice)."""
        x, y = self.get_batch(self.train_data, idx, augment=True)
        target = y
        if not self.is_seg and (self.cfg.mixup > 0 or self.cfg.cutmix > 0):
            x, target = batches.mix_batch(x, y, self.plan.num_classes, self.cfg.mixup, self.cfg.cutmix)
        with self.autocast():
            logits = self.model(x)
        loss = self.loss_fn(logits.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        with torch.no_grad():
            dice = (
                dice_iou(logits.detach(), y, self.plan.mode, label_sets=self.label_sets)[0].mean()
                if self.is_seg
                else torch.zeros(())
            )
        return loss.detach(), dice.to(self.device)

    def on_epoch_end(self, train_stats: dict[str, float], val_stats: dict[str, float]) -> None:
        """Record the epoch, keep the best, save checkpoints, write metrics.csv + curves.png, decide to
        stop."""
        self.epoch += 1
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        row = {
            "epoch": self.epoch,
            "lr": lr,
            **train_stats,
            **val_stats,
            "time_s": round(time.monotonic() - self.epoch_start, 2),
        }
        self.history.append(row)
        improved = bool(val_stats) and val_stats[self.score_key] > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = val_stats[self.score_key], self.epoch, 0
        elif val_stats:
            self.bad_epochs += 1
        self.save_checkpoint(best=improved)
        if self.dist.is_main:
            self.write_metrics(plot=time.monotonic() - self.last_plot >= PLOT_EVERY_S)
        self.log_epoch(row)
        patience = self.cfg.early_stopping_patience
        if patience and self.bad_epochs >= patience and self.stop_reason is None:
            self.stop_reason = f"early stopping: no better {self.score_key} for {patience} validations"
        self.fit_schedule_to_budget()

    def fit_schedule_to_budget(self) -> None:
        """With ``max_time_minutes``, shorten the planned epochs, and the LR schedule with them, to what the
        budget still holds (judged by the slowest of the last two epochs), so that a time-limited run ends its
        decay instead of being cut off at a high learning rate."""
        budget = self.cfg.max_time_minutes
        if budget is None or self.stop_reason is not None or self.epoch >= self.planned_epochs:
            return
        per_epoch = max(float(r["time_s"]) for r in self.history[-2:])
        left = 60.0 * budget - (time.monotonic() - self.start_time)
        fits = self.epoch + int(max(left, 0.0) // max(per_epoch, 1e-3))
        planned = distributed.broadcast_object(min(self.planned_epochs, fits), self.dist)
        if planned >= self.planned_epochs:
            return
        if planned <= self.epoch:
            self.stop_reason = f"time budget of {budget} min holds no further epoch"
            return
        logger.info("time budget of %s min: %d epochs planned instead of %d (about %.0f s each); LR schedule "
                    "shortened to match", budget, planned, self.planned_epochs, per_epoch)  # fmt: skip
        self.planned_epochs = planned
        self.scheduler.set_total_steps(planned * self.steps_per_epoch)

    def on_train_end(self) -> None:
        """Best checkpoint -> final validation metrics (+ calibration for classification), model_spec.json."""
        if self.stop_reason:
            logger.info("stopped after epoch %d: %s", self.epoch, self.stop_reason)
        if self.dist.enabled:
            if not distributed.parameters_in_sync(self.net, self.dist):
                raise MedlensError("distributed training: model weights differ across ranks")
            logger.info("weights identical on all %d ranks", self.dist.world_size)
        if self.dist.is_main:
            self.write_metrics(plot=True)
            self.final_report()
        distributed.barrier(self.dist)
        logger.info("run folder: %s (best %s %.4f at epoch %d)", self.folder.path, self.score_key,
                    self.best_score, self.best_epoch)  # fmt: skip

    # ----------------------------------------------------------------------------------------------- helpers
    @property
    def is_seg(self) -> bool:
        return self.task == Task.SEGMENTATION

    @property
    def label_sets(self) -> list[tuple[int, ...]]:
        """Merged-class codes of partially labelled sources (data.partial_roots), else []."""
        return self.data.index.label_sets

    def on_main(self, fn: Any) -> Any:
        """Run ``fn`` on rank 0 and hand its result (or its error, as a MedlensError) to every rank."""
        if not self.dist.enabled:
            return fn()
        result: Any = None
        if self.dist.is_main:
            try:
                result = ("ok", fn())
            except Exception as e:
                distributed.broadcast_object(("error", str(e)), self.dist)
                raise
        result = distributed.broadcast_object(result, self.dist)
        if result[0] == "error":
            raise MedlensError(f"rank 0 failed: {result[1]}")
        return result[1]

    def time_is_up(self) -> bool:
        budget = self.cfg.max_time_minutes
        late = budget is not None and time.monotonic() - self.start_time > 60.0 * budget
        return distributed.any_rank(late, self.dist, self.device) if budget is not None else False

    def validation_due(self) -> bool:
        e = self.epoch + 1
        return e % self.cfg.val_every == 0 or e >= self.planned_epochs or self.stop_reason is not None

    # ---------------------------------------------------------------------------------------- state and files
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": distributed.unwrap_model(self.net).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "rng": rng_state(),
            "model_spec": self.spec.to_dict(),
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore a last.pt (``--resume``); the schedule is stretched if ``epochs`` grew."""
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scheduler.set_total_steps(self.cfg.epochs * self.steps_per_epoch)
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.best_score = int(ckpt["epoch"]), float(ckpt["best_score"])
        self.best_epoch, self.bad_epochs = int(ckpt["best_epoch"]), int(ckpt["bad_epochs"])
        self.history = [dict(r) for r in ckpt["history"]][: self.epoch]
        if self.dist.is_main:
            set_rng_state(ckpt["rng"])
        logger.info("resumed %s after epoch %d (best %s %.4f at epoch %d)", self.folder.path, self.epoch,
                    self.score_key, self.best_score, self.best_epoch)  # fmt: skip

    def save_checkpoint(self, best: bool) -> None:
        """``checkpoints/last.pt`` (full state) every epoch and ``best.pt`` (weights + spec) on improvement;
        rank 0 only, atomic writes."""
        if not self.dist.is_main:
            return
        state = self.state_dict()
        save_checkpoint(state, self.folder.last)
        if best:  # the deployable weights; resuming always starts from last.pt, so no optimizer state here
            keep = ("model", "epoch", "best_score", "best_epoch", "model_spec")
            save_checkpoint({k: state[k] for k in keep}, self.folder.best)

    def write_metrics(self, plot: bool) -> None:
        """metrics.csv and, when ``plot``, curves.png."""
        from medlens.evaluation.plots import plot_training_curves

        write_metrics_csv(self.history, self.folder.metrics_csv)
        if plot:
            plot_training_curves(self.folder.metrics_csv, self.folder.curves)
            self.last_plot = time.monotonic()

    def log_epoch(self, row: dict[str, float]) -> None:
        shown = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train_", "val_")))
        logger.info("epoch %d/%d: %s (best %.4f @ %d) lr %.2e %.1f s", row["epoch"], self.cfg.epochs, shown,
                    self.best_score, self.best_epoch, row["lr"], row["time_s"])  # fmt: skip


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train ``cfg`` (one process, or every rank of a torchrun job) and return the run folder."""
    info = distributed.init_distributed(cfg.device)
    try:
        run_dir = Trainer(cfg, info, resume=resume).fit()
    except BaseException:
        distributed.cleanup(info, wait=False)
        raise
    distributed.cleanup(info)
    return run_dir


__all__ = ["Trainer", "train"]

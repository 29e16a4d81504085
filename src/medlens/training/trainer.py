"""The trainer: ``fit()`` reads like the algorithm and calls short hooks (nnU-Net style), over parts that keep
their own state (PyTorch Lightning's split):

- :class:`~medlens.training.datamodule.DataModule`: the cached splits, the sampler and batch preparation;
- :class:`~medlens.training.learner.Learner`: network, optimizer, schedule, loss, precision, freezing, step;
- :class:`~medlens.training.selection.Validator`: validation each epoch and the best epoch so far;
- :class:`~medlens.training.reports.Reports`: metrics.csv, curves.png and the final val / test reports.

The trainer itself keeps the loop's state (epoch, history, why it stopped, the time budget) and the
checkpoints. One class trains segmentation and classification; hyper-parameters come from the
``TrainConfig`` only. The run folder it writes is self-contained (docs/ARCHITECTURE.md, "Run folder").
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medlens.config import TrainConfig, save_config, validate_config
from medlens.errors import MedlensError
from medlens.folders import RunFolder
from medlens.inference.runtime import resolve_device
from medlens.jsonable import write_json
from medlens.spec import ModelSpec
from medlens.training import batches, distributed
from medlens.training.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from medlens.training.datamodule import DataModule
from medlens.training.distributed import DistInfo
from medlens.training.learner import Learner
from medlens.training.optim import amp_dtype, precision_name
from medlens.training.prepare import model_spec, prepare_run, resolve_config
from medlens.training.reports import Reports
from medlens.training.runfolder import make_run_dir
from medlens.training.selection import Validator
from medlens.training.validation import dice_iou

logger = logging.getLogger(__name__)


@dataclass
class TimeBudget:
    """``max_time_minutes`` of a run (None: no limit), counted from :meth:`restart`; ``val_every``: the
    epochs between validations (an epoch's time includes its validation)."""

    minutes: float | None
    start: float = field(default_factory=time.monotonic)
    val_every: int = 1

    def restart(self) -> None:
        self.start = time.monotonic()

    def is_up(self) -> bool:
        return self.minutes is not None and time.monotonic() - self.start > 60.0 * self.minutes

    def epochs_that_fit(self, epoch: int, planned: int, epoch_times: list[float]) -> int:
        """The epochs a run that has done ``epoch`` of ``planned`` can still complete, judged by
        :meth:`epoch_seconds`."""
        if self.minutes is None:
            return planned
        left = 60.0 * self.minutes - (time.monotonic() - self.start)
        return min(planned, epoch + int(max(left, 0.0) // max(self.epoch_seconds(epoch_times), 1e-3)))

    def epoch_seconds(self, epoch_times: list[float]) -> float:
        """What an epoch takes, for the plan (``epoch_times`` in seconds, validation included), judged by
        validation cycles (``val_every`` epochs, one validation each): the median of the last three cycles'
        mean epoch; the fastest cycle while fewer are in; the fastest epoch while fewer than three epochs, or
        no whole cycle, are in. By cycles, since with ``val_every`` of 2 or more some epochs validate and some
        do not (a median of three epochs may pick one that does not); the median and the fastest, since one
        epoch slowed by a passing load (an evaluation beside the training) must not halve the run: the plan
        is never lengthened again (two epochs of 488 and 1095 s once cut a run of 24 to 8)."""
        n = self.val_every
        ends = range(len(epoch_times), n - 1, -n)[:3]  # the last three whole cycles, newest first
        cycles = [float(np.mean(epoch_times[end - n : end])) for end in ends]
        if len(epoch_times) < 3 or not cycles:
            return float(min(epoch_times))
        return float(np.median(cycles)) if len(cycles) == 3 else min(cycles)


class Trainer:
    """Train the model a ``TrainConfig`` describes and write its run folder.

    Args:
        cfg: the configuration (copied; resolved values from the plan are filled in and saved as config.yaml).
        dist: this process's place in a torchrun job (single process by default).
        resume: continue ``<out_dir>/<run_name>`` from ``checkpoints/last.pt``.
    """

    # the run folder, the model spec and the parts, built by on_train_start from the run's data
    folder: RunFolder
    spec: ModelSpec
    data: DataModule
    learner: Learner
    validator: Validator
    reports: Reports

    def __init__(self, cfg: TrainConfig, dist: DistInfo | None = None, resume: bool = False) -> None:
        self.cfg = validate_config(copy.deepcopy(cfg))
        self.dist = dist or DistInfo()
        self.resume = resume
        self.device = resolve_device(self.cfg.device, self.dist.local_rank if self.dist.enabled else None)
        self.epoch = 0  # completed epochs
        self.planned_epochs = self.cfg.epochs  # fewer when the time budget cannot hold them all
        self.history: list[dict[str, float]] = []  # one row per epoch (metrics.csv)
        self.stop_reason: str | None = None
        self.budget = TimeBudget(self.cfg.max_time_minutes, val_every=self.cfg.val_every)
        self.epoch_start = time.monotonic()

    # ---------------------------------------------------------------------------------------- the algorithm
    def fit(self) -> Path:
        """Train until ``epochs``, early stopping or the time budget; returns the run folder."""
        self.on_train_start()
        while self.epoch < self.planned_epochs and self.stop_reason is None:
            self.on_epoch_start()
            train_stats = self.train_epoch()
            val_stats = self.validator.validate() if self.validation_due() else {}
            self.on_epoch_end(train_stats, val_stats)
        self.on_train_end()
        return self.folder.path

    # ------------------------------------------------------------------------------------------------- hooks
    def on_train_start(self) -> None:
        """Run folder and data, then the parts (network, optimizer, schedule, loss); resume state if asked."""
        seed_everything(self.cfg.seed)  # the same initial weights on every rank
        self.setup_data()
        self.learner = Learner(self.cfg, self.spec, self.data.plan, self.data.steps_per_epoch,
                               self.data.label_sets, self.dist, self.device, self.resume)  # fmt: skip
        self.validator = Validator(self.data, self.learner)
        self.reports = Reports(self.folder, self.cfg, self.data, self.learner, self.validator)
        if self.resume:
            self.load_state(load_checkpoint(self.folder.last))
        if self.dist.rank:  # every rank draws its own augmentations
            seed_everything(self.cfg.seed + 1000 * self.epoch + self.dist.rank)
        self.learner.set_frozen(self.epoch < self.cfg.freeze_epochs, self.epoch)
        self.planned_epochs = self.cfg.epochs
        self.budget.restart()
        size = "x".join(map(str, self.data.plan.input_size))
        procs = f", {self.dist.world_size} processes" if self.dist.enabled else ""
        logger.info("training %s on %s%s: %d train / %d val images at %s, batch %d x %d steps, %s",
                    self.cfg.data.task, self.device, procs, len(self.data.train.ids), len(self.data.val.ids),
                    size, self.data.batch_size, self.data.steps_per_epoch, self.cfg.amp)  # fmt: skip

    def setup_data(self) -> None:
        """Run folder, plan and split (rank 0, shared with all ranks), resolved config.yaml + model_spec.json,
        and the data module (train/val caches, sampler)."""
        self.folder = self.on_main(lambda: make_run_dir(self.cfg, self.resume))
        run = self.on_main(lambda: prepare_run(self.cfg, self.folder, self.resume))
        self.cfg = resolve_config(self.cfg, run.plan, self.folder.path)
        self.cfg.amp = precision_name(amp_dtype(self.cfg.amp, self.device))  # config.yaml: the one used
        self.spec = model_spec(self.cfg, run.plan)
        if self.dist.is_main:
            save_config(self.cfg, self.folder.config)
            write_json(self.folder.spec, self.spec.to_dict())
        self.data = DataModule(run, self.cfg, self.spec, self.dist, self.device)

    def on_epoch_start(self) -> None:
        """Two-stage fine-tuning: the backbone thaws after ``freeze_epochs``."""
        self.epoch_start = time.monotonic()
        if self.learner.frozen != (self.epoch < self.cfg.freeze_epochs):
            self.learner.set_frozen(not self.learner.frozen, self.epoch)

    def train_epoch(self) -> dict[str, float]:
        """One epoch of ``steps_per_epoch`` optimizer steps; returns ``train_loss`` (and ``train_dice``, and
        ``train_cam_outside`` and ``train_ce``, the cross-entropy in the loss, with the attention loss)."""
        self.learner.model.train()
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        bar = tqdm(self.data.sampler.epoch(self.epoch), desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                   leave=False, dynamic_ncols=True, disable=None if self.dist.is_main else True)  # fmt: skip
        steps = 0
        for steps, idx in enumerate(bar, start=1):
            totals += torch.stack([t.double() for t in self.train_step(idx)])
            if steps % 10 == 1 or steps == self.data.steps_per_epoch:
                loss_avg, dice_avg, _, _ = (totals / steps).tolist()
                bar.set_postfix(
                    loss=f"{loss_avg:.4f}", **({"dice": f"{dice_avg:.3f}"} if self.data.is_seg else {})
                )
            if self.time_is_up():
                self.stop_reason = f"time budget of {self.cfg.max_time_minutes} min reached"
                break
        bar.close()
        loss_sum, dice_sum, outside_sum, ce_sum, count = distributed.all_reduce_sum(
            [*totals.tolist(), steps], self.dist, self.device
        )
        stats = {"train_loss": loss_sum / max(count, 1)}
        if self.data.is_seg:
            stats["train_dice"] = dice_sum / max(count, 1)
        if self.cfg.cam_penalty > 0:  # train_loss holds the attention loss; train_ce compares with val_loss
            stats["train_cam_outside"] = outside_sum / max(count, 1)
            stats["train_ce"] = ce_sum / max(count, 1)
        return stats

    def train_step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch (augmented; mixed for classification when asked) and the learner's step on it. Returns
        detached (loss, batch Dice, share of the evidence outside the guide's region, data loss), 0 when not
        measured."""
        x, y, region = self.data.get_batch(self.data.train, idx, augment=True)
        target, cfg, plan = y, self.cfg, self.data.plan
        if not self.data.is_seg and (cfg.mixup > 0 or cfg.cutmix > 0):
            x, target = batches.mix_batch(x, y, plan.num_classes, cfg.mixup, cfg.cutmix)
        step = self.learner.step(x, target, region)
        with torch.no_grad():
            dice = (
                dice_iou(step.logits, y, plan.mode, label_sets=self.data.label_sets)[0].mean()
                if self.data.is_seg
                else torch.zeros(())
            )
        zero = torch.zeros((), device=self.device)
        outside = zero if step.outside is None else step.outside.to(self.device)
        return step.loss, dice.to(self.device), outside, step.data_loss

    def on_epoch_end(self, train_stats: dict[str, float], val_stats: dict[str, float]) -> None:
        """Record the epoch, keep the best, save checkpoints, write metrics.csv + curves.png, decide to
        stop."""
        self.epoch += 1
        row = {"epoch": self.epoch, "lr": self.learner.lr, **train_stats, **val_stats,
               "time_s": round(time.monotonic() - self.epoch_start, 2)}  # fmt: skip
        self.history.append(row)
        improved = self.validator.record(self.epoch, val_stats)
        self.save_checkpoint(best=improved)
        if self.dist.is_main:
            self.reports.write_metrics(self.history)
        self.log_epoch(row)
        patience = self.cfg.early_stopping_patience
        if self.validator.patience_spent(patience) and self.stop_reason is None:
            key = self.validator.score_key
            self.stop_reason = f"early stopping: no better {key} for {patience} validations"
        self.fit_schedule_to_budget()

    def fit_schedule_to_budget(self) -> None:
        """With ``max_time_minutes``, shorten the planned epochs, and the LR schedule with them, to what the
        budget still holds, so that a time-limited run ends its decay instead of being cut off at a high
        learning rate. An epoch's time is judged over the last validation cycles
        (:meth:`TimeBudget.epoch_seconds`)."""
        if self.budget.minutes is None or self.stop_reason is not None or self.epoch >= self.planned_epochs:
            return
        times = [float(r["time_s"]) for r in self.history]
        fits = self.budget.epochs_that_fit(self.epoch, self.planned_epochs, times)
        planned = distributed.broadcast_object(fits, self.dist)
        if planned >= self.planned_epochs:
            return
        if planned <= self.epoch:
            self.stop_reason = f"time budget of {self.budget.minutes} min holds no further epoch"
            return
        logger.info("time budget of %s min: %d epochs planned instead of %d (about %.0f s each); LR schedule "
                    "shortened to match", self.budget.minutes, planned, self.planned_epochs,
                    self.budget.epoch_seconds(times))  # fmt: skip
        self.planned_epochs = planned
        self.learner.scheduler.set_total_steps(planned * self.data.steps_per_epoch)

    def on_train_end(self) -> None:
        """Best checkpoint -> final validation metrics (+ calibration for classification), model_spec.json."""
        if self.stop_reason:
            logger.info("stopped after epoch %d: %s", self.epoch, self.stop_reason)
        if self.dist.enabled:
            if not distributed.parameters_in_sync(self.learner.net, self.dist):
                raise MedlensError("distributed training: model weights differ across ranks")
            logger.info("weights identical on all %d ranks", self.dist.world_size)
        if self.dist.is_main:
            self.reports.write_metrics(self.history, plot=True)
            self.spec = self.reports.final(self.spec, self.epoch, self.stop_reason)
        distributed.barrier(self.dist)
        logger.info("run folder: %s (best %s %.4f at epoch %d)", self.folder.path, self.validator.score_key,
                    self.validator.best_score, self.validator.best_epoch)  # fmt: skip

    # ----------------------------------------------------------------------------------------------- helpers
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
        if self.budget.minutes is None:
            return False
        return distributed.any_rank(self.budget.is_up(), self.dist, self.device)

    def validation_due(self) -> bool:
        e = self.epoch + 1
        return e % self.cfg.val_every == 0 or e >= self.planned_epochs or self.stop_reason is not None

    # ------------------------------------------------------------------------------------ state and files
    def state_dict(self) -> dict[str, Any]:
        """The full state of ``last.pt``: the learner's, the loop's, the selection's and the generators'."""
        learner = self.learner.state_dict()
        return {**learner, "epoch": self.epoch, **self.validator.state_dict(), "history": self.history,
                "rng": rng_state(), "model_spec": self.spec.to_dict()}  # fmt: skip

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore a last.pt (``--resume``); the schedule is stretched if ``epochs`` grew."""
        self.learner.load_state_dict(ckpt)
        self.epoch = int(ckpt["epoch"])
        self.validator.load_state_dict(ckpt)
        self.history = [dict(r) for r in ckpt["history"]][: self.epoch]
        if self.dist.is_main:
            set_rng_state(ckpt["rng"])
        v = self.validator
        logger.info("resumed %s after epoch %d (best %s %.4f at epoch %d)", self.folder.path, self.epoch,
                    v.score_key, v.best_score, v.best_epoch)  # fmt: skip

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

    def log_epoch(self, row: dict[str, float]) -> None:
        shown = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train_", "val_")))
        v = self.validator
        logger.info("epoch %d/%d: %s (best %.4f @ %d) lr %.2e %.1f s", row["epoch"], self.cfg.epochs, shown,
                    v.best_score, v.best_epoch, row["lr"], row["time_s"])  # fmt: skip


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

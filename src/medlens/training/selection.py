"""The trainer's validation part: the network's outputs over a cached split, the per-epoch validation score,
and the choice of the best epoch (with early stopping's count of validations without improvement).

Per-epoch scores are computed on the training device (:func:`medlens.training.validation.dice_iou`); with
several data sources the score is the mean of the per-source scores, so that a small source counts.
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from medlens.data.cache import CachedData
from medlens.evaluation.classification_metrics import balanced_accuracy
from medlens.evaluation.metrics import selection_score
from medlens.training import distributed
from medlens.training.datamodule import DataModule
from medlens.training.distributed import DistInfo
from medlens.training.learner import Learner
from medlens.training.validation import dice_iou, source_scores


class Validator:
    """Validation of the learner's network on the data module's splits, and the best epoch so far."""

    def __init__(self, data: DataModule, learner: Learner) -> None:
        self.data, self.learner = data, learner
        self.dist, self.device, self.is_seg = data.dist, data.device, data.is_seg
        self.score_key = "val_dice" if self.is_seg else "val_balanced_accuracy"
        self.best_score, self.best_epoch, self.bad_epochs = -math.inf, 0, 0

    # ------------------------------------------------------------------------------------------- validation
    def validate(self) -> dict[str, float]:
        """Validation loss and score on the whole val split (sharded over ranks, then gathered); with several
        data sources also the per-source scores (``val_dice_<source>``)."""
        out = self.predict(self.data.val, distributed_=True)
        sources = self.data.sources(self.data.val, distributed_=True)
        stats = {"val_loss": out["loss"]}
        if self.is_seg:
            dice = out["dice"].numpy()
            per_source = source_scores(dice, sources)
            stats.update(
                val_dice=selection_score(float(dice.mean()), per_source), val_iou=float(out["iou"].mean())
            )
        else:
            y, pred = out["targets"].numpy(), out["logits"].argmax(1).numpy()
            both = np.stack([y, pred], axis=1)
            per_source = source_scores(both, sources, lambda rows: balanced_accuracy(rows[:, 0], rows[:, 1]))
            stats.update(val_balanced_accuracy=selection_score(balanced_accuracy(y, pred), per_source),
                         val_accuracy=float((y == pred).mean()))  # fmt: skip
        stats.update({f"{self.score_key}_{name}": value for name, value in per_source.items()})
        return stats

    @torch.no_grad()
    def predict(self, data: CachedData, distributed_: bool, fp32: bool = False) -> dict[str, Any]:
        """Loss and per-sample outputs over a cached split with the plain network in eval mode.

        Returns ``{"loss": float, "dice": (N,), "iou": (N,)}`` (segmentation) or ``{"loss", "logits": (N, K)
        float32, "targets": (N,) int64}`` (classification) as CPU tensors; ``distributed_`` shards the split
        over the ranks and gathers the outputs (every rank gets all of them); ``fp32`` turns autocast off.
        """
        net, plan = self.learner.net, self.data.plan
        net.eval()
        info = self.dist if distributed_ else DistInfo()
        outs: dict[str, list[torch.Tensor]] = defaultdict(list)
        loss_sum = 0.0
        for idx in torch.arange(len(data.ids))[info.rank :: info.world_size].split(2 * self.data.batch_size):
            x, y, _ = self.data.get_batch(data, idx, augment=False)
            with nullcontext() if fp32 else self.learner.autocast():
                logits = net(x).float()
            loss_sum += float(self.learner.loss_fn(logits, y)) * len(idx)
            if self.is_seg:
                dice, iou = dice_iou(logits, y, plan.mode, label_sets=self.data.label_sets)
                outs["dice"].append(dice.cpu())
                outs["iou"].append(iou.cpu())
            else:
                outs["logits"].append(logits.cpu())
                outs["targets"].append(y.cpu())
        net.train()
        empty = {"dice": torch.zeros(0), "iou": torch.zeros(0), "targets": torch.zeros(0, dtype=torch.int64),
                 "logits": torch.zeros(0, plan.num_classes)}  # fmt: skip
        keys = ("dice", "iou") if self.is_seg else ("logits", "targets")
        local = {k: torch.cat(outs[k]) if outs[k] else empty[k] for k in keys}
        loss_sum, count = distributed.all_reduce_sum([loss_sum, len(local[keys[0]])], info, self.device)
        return {
            "loss": loss_sum / max(count, 1),
            **{k: distributed.gather_tensors(v, info) for k, v in local.items()},
        }

    # -------------------------------------------------------------------------------------------- selection
    def record(self, epoch: int, stats: dict[str, float]) -> bool:
        """Take an epoch's validation ``stats`` ({} when it was not validated); whether it is the new best."""
        improved = bool(stats) and stats[self.score_key] > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = stats[self.score_key], epoch, 0
        elif stats:
            self.bad_epochs += 1
        return improved

    def patience_spent(self, patience: int | None) -> bool:
        """Whether ``patience`` validations in a row brought nothing better (early stopping; None, 0: off)."""
        return bool(patience) and self.bad_epochs >= patience

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.best_score = float(ckpt["best_score"])
        self.best_epoch, self.bad_epochs = int(ckpt["best_epoch"]), int(ckpt["bad_epochs"])

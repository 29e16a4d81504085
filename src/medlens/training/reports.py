"""The trainer's evaluation hooks: validation each epoch, and the final report of the best checkpoint on the
validation split (calibration and decision rules) and on the test split that no choice has seen.

A mixin of :class:`~medlens.training.trainer.Trainer` (it uses the trainer's network, data, loss and
distributed state), kept apart so that the training loop reads on one screen.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from medlens.evaluation.classification_metrics import balanced_accuracy
from medlens.jsonable import write_json
from medlens.training import distributed
from medlens.training.checkpoint import load_checkpoint, save_checkpoint
from medlens.training.distributed import DistInfo
from medlens.training.prepare import cache_split
from medlens.training.validation import (
    classification_report,
    classification_test_report,
    dice_iou,
    segmentation_report,
    selection_score,
    source_scores,
)

logger = logging.getLogger(__name__)


class ReportsMixin:
    """Validation and final reports (see the module docstring)."""

    def sources(self, data: Any, distributed_: bool) -> list[str | None]:
        """The data source of each sample of a split, in the order :meth:`predict_split` returns them."""
        info = self.dist if distributed_ else DistInfo()
        order = [i for r in range(info.world_size) for i in range(len(data.ids))[r :: info.world_size]]
        items = self.data.index.lookup(data.ids)
        return [items[i].source for i in order]

    def validate(self) -> dict[str, float]:
        """Validation loss and score on the whole val split (sharded over ranks, then gathered). With several
        data sources the score is the mean of the per-source scores (also recorded, ``val_dice_<source>``)."""
        out = self.predict_split(self.val_data, distributed_=True)
        sources = self.sources(self.val_data, distributed_=True)
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
    def predict_split(self, data: Any, distributed_: bool, fp32: bool = False) -> dict[str, Any]:
        """Loss and per-sample outputs over a cached split with the plain network in eval mode.

        Returns ``{"loss": float, "dice": (N,), "iou": (N,)}`` (segmentation) or ``{"loss", "logits": (N, K)
        float32, "targets": (N,) int64}`` (classification) as CPU tensors; ``distributed_`` shards the split
        over the ranks and gathers the outputs (every rank gets all of them); ``fp32`` turns autocast off.
        """
        self.net.eval()
        info = self.dist if distributed_ else DistInfo()
        outs: dict[str, list[torch.Tensor]] = defaultdict(list)
        loss_sum = 0.0
        for idx in torch.arange(len(data.ids))[info.rank :: info.world_size].split(2 * self.batch_size):
            x, y = self.get_batch(data, idx, augment=False)
            with nullcontext() if fp32 else self.autocast():
                logits = self.net(x).float()
            loss_sum += float(self.loss_fn(logits, y)) * len(idx)
            if self.is_seg:
                dice, iou = dice_iou(logits, y, self.plan.mode, label_sets=self.label_sets)
                outs["dice"].append(dice.cpu())
                outs["iou"].append(iou.cpu())
            else:
                outs["logits"].append(logits.cpu())
                outs["targets"].append(y.cpu())
        self.net.train()
        empty = {"dice": torch.zeros(0), "iou": torch.zeros(0), "targets": torch.zeros(0, dtype=torch.int64),
                 "logits": torch.zeros(0, self.plan.num_classes)}  # fmt: skip
        keys = ("dice", "iou") if self.is_seg else ("logits", "targets")
        local = {k: torch.cat(outs[k]) if outs[k] else empty[k] for k in keys}
        loss_sum, count = distributed.all_reduce_sum([loss_sum, len(local[keys[0]])], info, self.device)
        return {
            "loss": loss_sum / max(count, 1),
            **{k: distributed.gather_tensors(v, info) for k, v in local.items()},
        }

    def final_report(self) -> None:
        """Evaluate best.pt in fp32 on the val split (classification: calibrate and set the decision rule
        there) and, when the split has one, on the test split that no choice has seen."""
        best = load_checkpoint(self.folder.best)
        self.net.load_state_dict(best["model"])
        out = self.predict_split(self.val_data, distributed_=False, fp32=True)
        if self.is_seg:
            metrics = segmentation_report(out["dice"].numpy(), out["iou"].numpy(), self.spec.threshold,
                                          self.sources(self.val_data, distributed_=False))  # fmt: skip
        else:
            metrics = self.fit_decisions(out["logits"].numpy(), out["targets"].numpy())
            save_checkpoint({**best, "model_spec": self.spec.to_dict()}, self.folder.best)
        metrics.update(split="val", best_epoch=self.best_epoch, epochs_trained=self.epoch,
                       val_loss=out["loss"], input_size=list(self.plan.input_size),
                       stop_reason=self.stop_reason, precision=self.cfg.amp)  # fmt: skip
        write_json(self.folder.spec, self.spec.to_dict())
        write_json(self.folder.val_metrics, metrics)
        key = "dice" if self.is_seg else "balanced_accuracy"
        key = "dice_source_mean" if "dice_source_mean" in metrics else key
        logger.info("best checkpoint (epoch %d) on %d val images: %s %.4f", self.best_epoch,
                    len(self.val_data.ids), key, metrics[key])  # fmt: skip
        if self.data.splits.get("test"):
            self.test_report()

    def fit_decisions(self, logits: np.ndarray, targets: np.ndarray) -> dict:
        """Calibration and decision rules fitted on the validation logits, pooled with those of
        ``decision_roots`` when given (``self.spec`` updated); returns the validation split's metrics, and the
        figures of each pooled source under the fitted rules (``decision_sources``)."""
        c = self.cfg
        counts = np.bincount(self.train_data.targets.cpu().numpy(), minlength=self.plan.num_classes)
        extra = {root: self.predict_folder(root) for root in c.decision_roots}
        pooled_logits = np.concatenate([logits, *(x for x, _ in extra.values())])
        pooled_targets = np.concatenate([targets, *(y for _, y in extra.values())])
        update, metrics = classification_report(pooled_logits, pooled_targets, self.plan.classes, c.calibrate,
                                                c.target_sensitivity, c.positive_class,
                                                counts if c.balanced_decision else None, c.class_groups,
                                                c.group_sensitivity)  # fmt: skip
        if not extra:
            self.spec = dataclasses.replace(self.spec, **update)
            return metrics
        fitted_on = " + ".join(["val", *c.decision_roots])
        if update["decision"] is not None:
            update["decision"] = dataclasses.replace(update["decision"], fitted_on=fitted_on)
        self.spec = dataclasses.replace(self.spec, **update)
        val = classification_test_report(logits, targets, self.plan.classes, self.spec)
        val.update(temperature=update["temperature"], calibrated_on=fitted_on, pooled_fit=metrics,
                   decision_sources={root: classification_test_report(x, y, self.plan.classes, self.spec)
                                     for root, (x, y) in extra.items()})  # fmt: skip
        return val

    def predict_folder(self, root: str) -> tuple[np.ndarray, np.ndarray]:
        """fp32 logits and targets of every image of a ``decision_roots`` folder (read by ``prepare_run``)."""
        from medlens.training.prepare import RunData

        index = self.data.decision[root]
        cached = cache_split(
            RunData(index, self.plan, {"all": list(index.ids)}), "all", self.cfg, self.device
        )
        out = self.predict_split(cached, distributed_=False, fp32=True)
        logger.info("decision rules: %d images of %s pooled with the validation split", len(index), root)
        return out["logits"].numpy(), out["targets"].numpy()

    def test_report(self) -> None:
        """``test_metrics.json``: best.pt in fp32 on the test split, under the rule fixed on validation."""
        test = cache_split(self.data, "test", self.cfg, self.device)
        out = self.predict_split(test, distributed_=False, fp32=True)
        if self.is_seg:
            metrics = segmentation_report(out["dice"].numpy(), out["iou"].numpy(), self.spec.threshold,
                                          self.sources(test, distributed_=False))  # fmt: skip
        else:
            metrics = classification_test_report(out["logits"].numpy(), out["targets"].numpy(),
                                                 self.plan.classes, self.spec)  # fmt: skip
        metrics.update(split="test", best_epoch=self.best_epoch, input_size=list(self.plan.input_size))
        write_json(self.folder.test_metrics, metrics)
        key = "dice" if self.is_seg else "balanced_accuracy"
        logger.info("best checkpoint on %d test images: %s %.4f", len(test.ids), key, metrics[key])

"""The trainer's reports part: metrics.csv and curves.png during training, and at the end the report of the
best checkpoint on the validation split (calibration and decision rules fitted there) and on the test split
that no choice has seen."""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np

from medlens.config import TrainConfig
from medlens.folders import RunFolder
from medlens.jsonable import write_json
from medlens.spec import ModelSpec
from medlens.training.checkpoint import load_checkpoint, save_checkpoint
from medlens.training.datamodule import DataModule
from medlens.training.learner import Learner
from medlens.training.runfolder import write_metrics_csv
from medlens.training.selection import Validator
from medlens.training.validation import classification_report, classification_test_report, segmentation_report

logger = logging.getLogger(__name__)

# curves.png is redrawn at most this often during training (matplotlib takes ~1 s), and always at the end
PLOT_EVERY_S = 30.0


class Reports:
    """What a run writes about itself besides checkpoints (rank 0 only; the trainer calls it there)."""

    def __init__(
        self, folder: RunFolder, cfg: TrainConfig, data: DataModule, learner: Learner, validator: Validator
    ) -> None:
        self.folder, self.cfg, self.data, self.learner, self.validator = folder, cfg, data, learner, validator
        self.last_plot = -math.inf

    def write_metrics(self, history: list[dict[str, float]], plot: bool | None = None) -> None:
        """metrics.csv, and curves.png when ``plot`` (None: when the last one is :data:`PLOT_EVERY_S` old)."""
        from medlens.evaluation.plots import plot_training_curves

        write_metrics_csv(history, self.folder.metrics_csv)
        if plot or (plot is None and time.monotonic() - self.last_plot >= PLOT_EVERY_S):
            plot_training_curves(self.folder.metrics_csv, self.folder.curves)
            self.last_plot = time.monotonic()

    def final(self, spec: ModelSpec, epochs_trained: int, stop_reason: str | None) -> ModelSpec:
        """Evaluate best.pt in fp32 on the val split (classification: calibrate and set the decision rules
        there, also in best.pt) and, when the split has one, on the test split; returns the final spec,
        written to model_spec.json."""
        best = load_checkpoint(self.folder.best)
        self.learner.net.load_state_dict(best["model"])
        val = self.data.val
        out = self.validator.predict(val, distributed_=False, fp32=True)
        if self.data.is_seg:
            metrics = segmentation_report(out["dice"].numpy(), out["iou"].numpy(), spec.threshold,
                                          self.data.sources(val, distributed_=False))  # fmt: skip
        else:
            spec, metrics = self.fit_decisions(spec, out["logits"].numpy(), out["targets"].numpy())
            save_checkpoint({**best, "model_spec": spec.to_dict()}, self.folder.best)
        metrics.update(split="val", best_epoch=self.validator.best_epoch, epochs_trained=epochs_trained,
                       val_loss=out["loss"], input_size=list(self.data.plan.input_size),
                       stop_reason=stop_reason, precision=self.cfg.amp)  # fmt: skip
        write_json(self.folder.spec, spec.to_dict())
        write_json(self.folder.val_metrics, metrics)
        key = "dice" if self.data.is_seg else "balanced_accuracy"
        key = "dice_source_mean" if "dice_source_mean" in metrics else key
        logger.info("best checkpoint (epoch %d) on %d val images: %s %.4f", self.validator.best_epoch,
                    len(val.ids), key, metrics[key])  # fmt: skip
        if self.data.run.splits.get("test"):
            self.test(spec)
        return spec

    def fit_decisions(
        self, spec: ModelSpec, logits: np.ndarray, targets: np.ndarray
    ) -> tuple[ModelSpec, dict]:
        """Calibration and decision rules fitted on the validation logits, pooled with those of
        ``decision_roots`` when given; returns the spec with them and the validation split's metrics, with
        the figures of each pooled source under the fitted rules (``decision_sources``)."""
        c, classes = self.cfg, self.data.plan.classes
        counts = self.data.class_counts()
        extra = {root: self.predict_folder(root) for root in c.decision_roots}
        pooled_logits = np.concatenate([logits, *(x for x, _ in extra.values())])
        pooled_targets = np.concatenate([targets, *(y for _, y in extra.values())])
        update, metrics = classification_report(pooled_logits, pooled_targets, classes, c.calibrate,
                                                c.target_sensitivity, c.positive_class,
                                                counts if c.balanced_decision else None, c.class_groups,
                                                c.group_sensitivity)  # fmt: skip
        if not extra:
            return dataclasses.replace(spec, **update), metrics
        fitted_on = " + ".join(["val", *c.decision_roots])
        if update["decision"] is not None:
            update["decision"] = dataclasses.replace(update["decision"], fitted_on=fitted_on)
        spec = dataclasses.replace(spec, **update)
        val = classification_test_report(logits, targets, classes, spec)
        val.update(temperature=update["temperature"], calibrated_on=fitted_on, pooled_fit=metrics,
                   decision_sources={root: classification_test_report(x, y, classes, spec)
                                     for root, (x, y) in extra.items()})  # fmt: skip
        return spec, val

    def predict_folder(self, root: str) -> tuple[np.ndarray, np.ndarray]:
        """fp32 logits and targets of every image of a ``decision_roots`` folder (read by ``prepare_run``)."""
        index = self.data.run.decision[root]
        out = self.validator.predict(self.data.cache_index(index), distributed_=False, fp32=True)
        logger.info("decision rules: %d images of %s pooled with the validation split", len(index), root)
        return out["logits"].numpy(), out["targets"].numpy()

    def test(self, spec: ModelSpec) -> None:
        """``test_metrics.json``: best.pt in fp32 on the test split, under the rules fixed on validation."""
        test = self.data.cache("test")
        out = self.validator.predict(test, distributed_=False, fp32=True)
        if self.data.is_seg:
            metrics = segmentation_report(out["dice"].numpy(), out["iou"].numpy(), spec.threshold,
                                          self.data.sources(test, distributed_=False))  # fmt: skip
        else:
            metrics = classification_test_report(out["logits"].numpy(), out["targets"].numpy(),
                                                 self.data.plan.classes, spec)  # fmt: skip
        metrics.update(split="test", best_epoch=self.validator.best_epoch,
                       input_size=list(self.data.plan.input_size))  # fmt: skip
        write_json(self.folder.test_metrics, metrics)
        key = "dice" if self.data.is_seg else "balanced_accuracy"
        logger.info("best checkpoint on %d test images: %s %.4f", len(test.ids), key, metrics[key])

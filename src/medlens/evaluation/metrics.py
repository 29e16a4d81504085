"""Functional segmentation metrics (numpy) beside an accumulator that summarises them; bootstrap CIs.

Segmentation functions take boolean masks ``pred`` and ``target`` of shape ``(H, W)`` (any array that casts
to bool) and return a Python ``float``. Conventions for undefined ratios (a zero denominator):

* ``dice``, ``iou``, ``sensitivity`` and ``precision``: 1.0 when prediction and target are both empty
  (nothing to find, nothing found), 0.0 when only one of them is empty (e.g. precision of an empty prediction
  of a non-empty target is 0.0, so that predicting nothing is never rewarded).
* ``specificity``: 1.0 when the target has no background pixel (no negative can be misclassified).
* ``hd95``: 0.0 when both are empty, ``nan`` when exactly one is empty (no surface to measure against).

The classification metrics live in :mod:`medlens.evaluation.classification_metrics`;
:func:`classification_metrics` and :func:`sensitivity_at_specificity` are re-exported here.
Every dict this module returns is JSON-safe after :func:`medlens.jsonable.to_jsonable` (``nan`` -> ``None``).
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import MedlensError
from medlens.evaluation.bootstrap import bootstrap_ci, nanmean

__all__ = [
    "SEGMENTATION_METRICS",
    "SegmentationMetricAccumulator",
    "bootstrap_ci",
    "dice",
    "hd95",
    "iou",
    "pixel_accuracy",
    "precision",
    "segmentation_scores",
    "segmentation_scores_multiclass",
    "sensitivity",
    "specificity",
]


logger = logging.getLogger(__name__)

SEGMENTATION_METRICS = ("dice", "iou", "sensitivity", "specificity", "precision", "pixel_accuracy", "hd95")


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if pred.shape != target.shape:
        raise MedlensError(f"prediction shape {pred.shape} does not match target shape {target.shape}")
    if pred.size == 0:
        raise MedlensError("cannot score an empty (zero-pixel) mask")
    return pred, target


def _counts(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) pixel counts of two bool arrays of the same shape."""
    pred, target = _pair(pred, target)
    tp = int(np.count_nonzero(pred & target))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(target)) - tp
    return tp, fp, fn, pred.size - tp - fp - fn


def _ratio(num: int, den: int, both_empty: bool) -> float:
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice = 2 TP / (2 TP + FP + FN) of bool ``(H, W)`` masks; 1.0 when both are empty."""
    tp, fp, fn, _ = _counts(pred, target)
    return _ratio(2 * tp, 2 * tp + fp + fn, tp + fp + fn == 0)


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union (Jaccard) = TP / (TP + FP + FN); 1.0 when both are empty."""
    tp, fp, fn, _ = _counts(pred, target)
    return _ratio(tp, tp + fp + fn, tp + fp + fn == 0)


def sensitivity(pred: np.ndarray, target: np.ndarray) -> float:
    """Sensitivity (recall) = TP / (TP + FN); 1.0 when both are empty, 0.0 for an empty target only."""
    tp, fp, fn, _ = _counts(pred, target)
    return _ratio(tp, tp + fn, fp == 0)


def specificity(pred: np.ndarray, target: np.ndarray) -> float:
    """Specificity = TN / (TN + FP); 1.0 when the target has no background pixel."""
    _, fp, _, tn = _counts(pred, target)
    return _ratio(tn, tn + fp, True)


def precision(pred: np.ndarray, target: np.ndarray) -> float:
    """Precision = TP / (TP + FP); 1.0 when both are empty, 0.0 for an empty prediction of a non-empty
    target."""
    tp, fp, fn, _ = _counts(pred, target)
    return _ratio(tp, tp + fp, fn == 0)


def pixel_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Fraction of pixels where prediction and target agree."""
    tp, _, _, tn = _counts(pred, target)
    return (tp + tn) / np.asarray(pred).size


def hd95(pred: np.ndarray, target: np.ndarray, spacing: float | Sequence[float] | None = None) -> float:
    """95th percentile symmetric Hausdorff distance between mask surfaces (MONAI
    ``compute_hausdorff_distance`` on the edge pixels, linear interpolation between distances).

    Args:
        pred, target: bool ``(H, W)`` masks.
        spacing: pixel spacing as one number or ``(row, col)`` (e.g. DICOM PixelSpacing in mm);
            ``None`` = pixels.

    Returns:
        The distance in pixels (or spacing units); 0.0 when both are empty, ``nan`` when exactly one is.
    """
    from monai.metrics import compute_hausdorff_distance

    pred, target = _pair(pred, target)
    has_pred, has_target = bool(pred.any()), bool(target.any())
    if not has_pred and not has_target:
        return 0.0
    if has_pred != has_target:
        return float("nan")
    if spacing is not None and not np.isscalar(spacing):
        spacing = [float(s) for s in spacing]  # type: ignore[union-attr]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_hausdorff_distance(
            pred[None, None], target[None, None], include_background=True, percentile=95, spacing=spacing
        )
    return float(value.reshape(-1)[0])


_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "dice": dice,
    "iou": iou,
    "sensitivity": sensitivity,
    "specificity": specificity,
    "precision": precision,
    "pixel_accuracy": pixel_accuracy,
}


def segmentation_scores(
    pred: np.ndarray, target: np.ndarray, spacing: float | Sequence[float] | None = None
) -> dict[str, float]:
    """All binary metrics of one image: keys ``dice, iou, sensitivity, specificity, precision, pixel_accuracy,
    hd95`` (see the module docstring for empty-mask conventions). ``pred``/``target``: bool ``(H, W)``."""
    pred, target = _pair(pred, target)
    scores = {name: fn(pred, target) for name, fn in _FUNCTIONS.items()}
    scores["hd95"] = hd95(pred, target, spacing)
    return scores


def segmentation_scores_multiclass(
    pred_labels: np.ndarray,
    target_labels: np.ndarray,
    num_classes: int,
    spacing: float | Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-class binary scores of integer label maps ``(H, W)`` plus their mean over foreground classes.

    Class 0 is background and is left out of the mean. Returns the metric keys of
    :func:`segmentation_scores` holding the foreground mean (``hd95`` as a nan-mean) and ``per_class``:
    ``{name: {metric: value}}`` for every class including background (names default to ``"0"``, ``"1"``...).
    """
    pred_labels, target_labels = np.asarray(pred_labels), np.asarray(target_labels)
    if pred_labels.shape != target_labels.shape:
        raise MedlensError(
            f"prediction shape {pred_labels.shape} does not match target {target_labels.shape}"
        )
    names = [str(n) for n in class_names] if class_names is not None else [str(k) for k in range(num_classes)]
    if len(names) != num_classes or num_classes < 2:
        raise MedlensError(f"need num_classes >= 2 and one name per class, got {num_classes} and {names}")
    per_class = {
        names[k]: segmentation_scores(pred_labels == k, target_labels == k, spacing)
        for k in range(num_classes)
    }
    result: dict[str, Any] = {}
    for metric in SEGMENTATION_METRICS:
        values = [per_class[names[k]][metric] for k in range(1, num_classes)]
        result[metric] = nanmean(values)
    result["per_class"] = per_class
    return result


# ------------------------------------------------------------------------------------------ accumulator
class SegmentationMetricAccumulator:
    """Collect per-image segmentation scores and summarise them (MONAI ``DiceMetric``-style accumulator).

    Args:
        num_classes: ``None`` or 2 for binary masks; > 2 for integer label maps (foreground mean + per-class
            columns ``{metric}_{class name}``).
        class_names: names of the classes (multi-class only).
        n_boot, alpha, seed: bootstrap settings of the summary CIs.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        n_boot: int = 1000,
        alpha: float = 0.05,
        seed: int = 0,
    ) -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.n_boot, self.alpha, self.seed = n_boot, alpha, seed
        self.rows: list[dict[str, Any]] = []

    @property
    def multiclass(self) -> bool:
        return self.num_classes is not None and self.num_classes > 2

    def update(
        self,
        pred: np.ndarray,
        target: np.ndarray,
        spacing: float | Sequence[float] | None = None,
        image_id: str | None = None,
    ) -> dict[str, Any]:
        """Score one image (``(H, W)`` bool masks, or label maps when multi-class) and store the row."""
        if self.multiclass:
            scores = segmentation_scores_multiclass(pred, target, self.num_classes, spacing, self.class_names)
            per_class = scores.pop("per_class")
            for name, class_scores in list(per_class.items())[1:]:
                scores.update({f"{metric}_{name}": v for metric, v in class_scores.items()})
        else:
            scores = segmentation_scores(pred, target, spacing)
        return self.add_row(scores, image_id)

    def add_row(self, scores: Mapping[str, float], image_id: str | None = None) -> dict[str, Any]:
        """Store already computed scores of one image; returns the stored row (``id`` first)."""
        row: dict[str, Any] = {"id": image_id if image_id is not None else str(len(self.rows))}
        row.update({k: float(v) for k, v in scores.items()})
        self.rows.append(row)
        return row

    def metric_names(self) -> list[str]:
        names: list[str] = []
        for row in self.rows:
            names.extend(k for k in row if k != "id" and k not in names)
        return names

    def summary(self) -> dict[str, float]:
        """``{metric}_mean/_std/_median/_ci_low/_ci_high`` per metric (nan-aware), ``hd95_n_undefined``
        (images where HD95 is nan) and ``n_images``."""
        out: dict[str, float] = {"n_images": len(self.rows)}
        for name in self.metric_names():
            values = np.asarray([row.get(name, np.nan) for row in self.rows], dtype=np.float64)
            valid = values[~np.isnan(values)]
            out[f"{name}_mean"] = float(valid.mean()) if valid.size else float("nan")
            out[f"{name}_std"] = float(valid.std(ddof=1)) if valid.size > 1 else float("nan")
            out[f"{name}_median"] = float(np.median(valid)) if valid.size else float("nan")
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = bootstrap_ci(
                valid, self.n_boot, self.alpha, self.seed
            )
            if name.startswith("hd95"):
                out[f"{name}_n_undefined"] = int(values.size - valid.size)
        return out

    def ranked(self, metric: str = "dice", ascending: bool = True) -> list[dict[str, Any]]:
        """Rows sorted by ``metric`` (worst first by default for Dice-like metrics); nan rows last."""
        rows = [r for r in self.rows if not math.isnan(r.get(metric, math.nan))]
        rest = [r for r in self.rows if math.isnan(r.get(metric, math.nan))]
        return sorted(rows, key=lambda r: r[metric], reverse=not ascending) + rest

    def to_csv(self, path: str | Path) -> Path:
        """Write one row per image (``id`` + metrics; nan as empty cells)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["id", *self.metric_names()])
            writer.writeheader()
            for row in self.rows:
                writer.writerow(
                    {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                )
        return path

    def reset(self) -> None:
        self.rows.clear()


def selection_score(pooled: float, per_source: dict[str, float]) -> float:
    """The score that ranks two epochs or two settings of a model: the mean over sources when there are
    several (so that a small source counts as much as a large one), else the pooled score."""
    return float(np.mean(list(per_source.values()))) if per_source else float(pooled)

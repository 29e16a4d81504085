"""Functional classification metrics (numpy): a report of ``N`` images and sensitivity at a specificity.

They follow scikit-learn (which is the oracle in the tests) and add the ISIC 2018 Task 3 headline metric
(balanced accuracy = mean per-class recall), one-vs-rest AUCs, calibration and percentile bootstrap CIs.
Every dict this module returns is JSON-safe after :func:`medlens.jsonable.to_jsonable`
(``nan`` -> ``None``). :mod:`medlens.evaluation.metrics` re-exports the public names.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medlens.errors import MedlensError
from medlens.evaluation.bootstrap import bootstrap, bootstrap_ci, nanmean


def _check_classification(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> tuple:
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != y_true.shape[0] or probs.shape[1] != len(classes):
        raise MedlensError(
            f"probabilities of shape {probs.shape} do not match {y_true.shape[0]} labels "
            f"and {len(classes)} classes"
        )
    if y_true.size == 0:
        raise MedlensError("cannot compute classification metrics of zero images")
    if y_true.min() < 0 or y_true.max() >= len(classes):
        raise MedlensError(
            f"labels must be class indices in 0..{len(classes) - 1}, got {y_true.min()}..{y_true.max()}"
        )
    return y_true, probs


def _balanced_accuracy_boot(
    y_true: np.ndarray, correct: np.ndarray, k: int
) -> Callable[[np.ndarray], np.ndarray]:
    """Vectorised balanced accuracy of bootstrap index matrices (classes absent from a resample skipped)."""

    def statistic(idx: np.ndarray) -> np.ndarray:
        yt, ok = y_true[idx], correct[idx]
        recalls = np.full((idx.shape[0], k), np.nan)
        for c in range(k):
            support = (yt == c).sum(axis=1)
            hits = ((yt == c) & ok).sum(axis=1)
            recalls[:, c] = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(recalls, axis=1)

    return statistic


def _roc_aucs(y_true: np.ndarray, probs: np.ndarray) -> list[float]:
    """One-vs-rest AUC per class; nan where the class is absent from (or is all of) ``y_true``."""
    from sklearn.metrics import roc_auc_score

    aucs = []
    for c in range(probs.shape[1]):
        positives = y_true == c
        aucs.append(
            float(roc_auc_score(positives, probs[:, c])) if 0 < positives.sum() < positives.size else math.nan
        )
    return aucs


def sensitivity_at_specificity(
    y_true: np.ndarray, p_pos: np.ndarray, specificity_target: float = 0.9
) -> float:
    """Highest sensitivity on the ROC curve with specificity >= ``specificity_target``.

    ``y_true`` ``(N,)`` 0/1 labels, ``p_pos`` ``(N,)`` positive-class scores; nan when one class is absent."""
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true).reshape(-1)
    if y_true.min() == y_true.max():
        return float("nan")
    fpr, tpr, _ = roc_curve(y_true, np.asarray(p_pos).reshape(-1))
    ok = (1.0 - fpr) >= specificity_target - 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    specificity_target: float = 0.9,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Classification report of ``N`` images.

    Args:
        y_true: ``(N,)`` int class indices.
        probs: ``(N, K)`` float probabilities (rows sum to 1); the prediction is the arg-max.
        classes: the ``K`` class names.
        specificity_target: operating point of ``sensitivity_at_specificity`` (binary only, class 1 positive).

    Returns:
        ``accuracy``, ``balanced_accuracy`` (mean recall over classes present in ``y_true``; ISIC 2018
        Task 3), their bootstrap CIs (``*_ci_low/_ci_high``), ``per_class`` ``{name: {precision, recall, f1,
        support, auc}}``, ``auc_macro`` (one-vs-rest, classes absent from ``y_true`` skipped),
        ``confusion_matrix`` (rows = true), ``ece``, ``brier``, ``n_images``; for K = 2 also ``auc``,
        ``sensitivity_at_specificity`` and ``specificity_target``. Values are plain floats (nan where
        undefined; see :func:`~medlens.jsonable.to_jsonable`).
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    from medlens.evaluation.calibration import brier_score, expected_calibration_error

    y_true, probs = _check_classification(y_true, probs, classes)
    k = len(classes)
    y_pred = probs.argmax(axis=1)
    labels = list(range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    aucs = _roc_aucs(y_true, probs)
    out: dict[str, Any] = {
        "n_images": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "auc_macro": nanmean(aucs),
        "ece": expected_calibration_error(probs, y_true),
        "brier": brier_score(probs, y_true),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class": {
            str(name): {
                "precision": float(prec[c]),
                "recall": float(rec[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
                "auc": aucs[c],
            }
            for c, name in enumerate(classes)
        },
    }
    correct = (y_pred == y_true).astype(np.float64)
    out["accuracy_ci_low"], out["accuracy_ci_high"] = bootstrap_ci(correct, n_boot, alpha, seed)
    out["balanced_accuracy_ci_low"], out["balanced_accuracy_ci_high"] = bootstrap(
        y_true.size, _balanced_accuracy_boot(y_true, correct.astype(bool), k), n_boot, alpha, seed
    )
    if k == 2:
        out["auc"] = aucs[1]
        out["specificity_target"] = float(specificity_target)
        out["sensitivity_at_specificity"] = sensitivity_at_specificity(
            y_true, probs[:, 1], specificity_target
        )
    return out


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (ISIC 2018 Task 3 metric)."""
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def label_figures(y_true: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """Figures of the labels a decision rule gave: accuracy, balanced accuracy, per-class recall (None for a
    class without items) and the confusion matrix (rows: true class)."""
    from sklearn.metrics import confusion_matrix

    recall = {c: float((pred[y_true == k] == k).mean()) if (y_true == k).any() else None
              for k, c in enumerate(classes)}  # fmt: skip
    return {
        "accuracy": float((pred == y_true).mean()),
        "balanced_accuracy": balanced_accuracy(y_true, pred),
        "recall": recall,
        "confusion_matrix": confusion_matrix(y_true, pred, labels=range(len(classes))).tolist(),
    }


def flag_scores(p: np.ndarray, inside: np.ndarray, threshold: float) -> dict:
    """Sensitivity and specificity of flagging ``p >= threshold`` for the items ``inside`` a group."""
    called = p >= threshold
    return {
        "sensitivity": float(called[inside].mean()) if inside.any() else None,
        "specificity": float((~called[~inside]).mean()) if (~inside).any() else None,
    }

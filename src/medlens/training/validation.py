"""Validation scores during training and the final report of the best checkpoint (with calibration).

Per-epoch Dice/IoU are computed on the training device, vectorised over the batch:
``monai.metrics.compute_dice`` gives the same numbers but costs ~6 s of import on every ``medlens train``; the
empty-empty = 1 convention matches ``medlens.evaluation.metrics.dice``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from medlens.errors import ConfigError
from medlens.evaluation.classification_metrics import flag_scores, label_figures
from medlens.evaluation.metrics import selection_score
from medlens.inference.decisions import apply_decision, group_probability
from medlens.spec import Decision, Mode, ModelSpec, PriorDecision, ThresholdDecision
from medlens.training.decisions import fit_group_flags, fit_prior_decision

logger = logging.getLogger(__name__)

NEGATIVE_NAMES = (
    "normal",
    "benign",
    "negative",
    "healthy",
    "nevus",
    "nv",
    "no",
    "none",
    "absent",
    "0",
    "false",
)


def binarize(logits: torch.Tensor, mode: str, threshold: float = 0.5) -> tuple[torch.Tensor, bool]:
    """Logits -> boolean per-class maps ``(B, K', H, W)`` and whether channel 0 is background
    (multi-class)."""
    if mode == Mode.MULTICLASS:
        labels = logits.argmax(dim=1)
        return torch.nn.functional.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).bool(), True
    return logits.float().sigmoid() > threshold, False


def target_maps(targets: torch.Tensor, mode: str, num_classes: int) -> torch.Tensor:
    """Loss targets -> boolean ``(B, K', H, W)``: binary/multilabel ``(B, K, H, W)``; multiclass one-hot of
    ``(B, H, W)``."""
    if mode == Mode.MULTICLASS:
        return torch.nn.functional.one_hot(targets.long(), num_classes).permute(0, 3, 1, 2).bool()
    return targets > 0.5


def dice_iou(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mode: str,
    threshold: float = 0.5,
    label_sets: list[tuple[int, ...]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU ``(B,)`` float32, averaged over foreground classes; empty prediction and target
    -> 1.

    Args:
        logits: ``(B, K, H, W)`` model output.
        targets: binary/multilabel ``(B, K, H, W)`` float 0/1; multiclass ``(B, H, W)`` int labels, or codes
            with ``label_sets`` (partially labelled images are scored on the foreground groups they name).
    """
    if mode == Mode.MULTICLASS and label_sets:
        return _partial_dice_iou(logits, targets, label_sets)
    pred, has_background = binarize(logits, mode, threshold)
    true = target_maps(targets, mode, logits.shape[1])
    if has_background and pred.shape[1] > 1:
        pred, true = pred[:, 1:], true[:, 1:]
    inter = (pred & true).sum(dim=(2, 3)).float()
    total = pred.sum(dim=(2, 3)).float() + true.sum(dim=(2, 3)).float()
    union = total - inter
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(inter), 2 * inter / total.clamp(min=1))
    iou = torch.where(empty, torch.ones_like(inter), inter / union.clamp(min=1))
    return dice.mean(dim=1), iou.mean(dim=1)


def _partial_dice_iou(
    logits: torch.Tensor, targets: torch.Tensor, label_sets: list[tuple[int, ...]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dice_iou` for targets with merged-class codes (:mod:`medlens.data.partial`).

    A fully labelled image is scored as usual (foreground classes 1..K-1); an image with merged codes on the
    groups its codes name that exclude the background (e.g. "left or right lung"), the prediction counted in
    a group when its arg-max class belongs to it.
    """
    from medlens.data.partial import membership

    k = logits.shape[1]
    members = torch.from_numpy(membership(k, label_sets)).to(logits.device)  # (K+M, K)
    pred = torch.nn.functional.one_hot(logits.argmax(dim=1), k).bool()  # (B, H, W, K)
    true = members[targets.long()]  # (B, H, W, K) classes each pixel may be
    groups = members[:, None, None, None, :]  # (G = K+M, 1, 1, 1, K)
    p = (pred[None] & groups).any(-1)  # (G, B, H, W) predicted inside the group
    t = (true[None] & groups).any(-1) & (true[None] & ~groups).logical_not().all(-1)
    inter, total = (p & t).sum(dim=(2, 3)).float(), p.sum(dim=(2, 3)).float() + t.sum(dim=(2, 3)).float()
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(inter), 2 * inter / total.clamp(min=1))  # (G, B)
    iou = torch.where(empty, torch.ones_like(inter), inter / (total - inter).clamp(min=1))
    present = torch.nn.functional.one_hot(targets.long().flatten(1), len(members)).amax(1).bool().T  # (G, B)
    partial = present[k:].any(0)  # (B,)
    scored = torch.zeros_like(present)
    scored[1:k] = ~partial  # fully labelled: the foreground classes
    scored[k:] = present[k:] & ~members[k:, :1]  # partially labelled: the merged groups without background
    scored[1:k] |= present[1:k] & partial  # ... and single foreground classes they name
    weight = scored.float()
    n = weight.sum(0).clamp(min=1)
    return (dice * weight).sum(0) / n, (iou * weight).sum(0) / n


def source_scores(values: np.ndarray, sources: list[str | None], score: Any = np.mean) -> dict[str, float]:
    """``score`` of ``values`` per data source (``{}`` when all come from one source).

    ``values``: ``(N, ...)`` per-sample values in the order of ``sources``; ``score`` maps the rows of one
    source to a float (e.g. ``np.mean`` of per-image Dice).
    """
    names = sorted({s for s in sources if s is not None})
    if len(names) < 2:
        return {}
    where = np.array([s or "" for s in sources])
    return {name: float(score(values[where == name])) for name in names}


def segmentation_report(
    dice: np.ndarray, iou: np.ndarray, threshold: float, sources: list[str | None] | None = None
) -> dict:
    """Mean per-image Dice (with its bootstrap 95% CI) and IoU of a split's images, ``(N,)`` each; with
    several sources also ``dice_<source>`` and ``dice_source_mean``."""
    from medlens.evaluation.bootstrap import bootstrap_ci

    low, high = bootstrap_ci(dice)
    report = {"dice": float(dice.mean()), "dice_ci_low": low, "dice_ci_high": high, "iou": float(iou.mean()),
              "n_images": len(dice), "threshold": float(threshold)}  # fmt: skip
    per_source = source_scores(dice, sources or [])
    for name, value in per_source.items():
        low, high = bootstrap_ci(dice[np.array(sources) == name])
        report.update({f"dice_{name}": value, f"dice_{name}_ci_low": low, f"dice_{name}_ci_high": high})
    if per_source:
        report["dice_source_mean"] = selection_score(report["dice"], per_source)
    return report


def positive_class(classes: list[str], configured: str | None) -> str:
    """The positive class of a binary task: ``configured``, else the one not named like "normal"/"benign"."""
    if configured is not None:
        if configured not in classes:
            raise ConfigError(f"positive_class: {configured!r} is not a class; classes: {', '.join(classes)}")
        return configured
    negatives = [c for c in classes if c.lower() in NEGATIVE_NAMES]
    if len(negatives) == 1:
        return next(c for c in classes if c not in negatives)
    logger.warning(
        "positive class not obvious among %s; using %r (set positive_class to choose)", classes, classes[1]
    )
    return classes[1]


def classification_report(
    logits: np.ndarray,
    y_true: np.ndarray,
    classes: list[str],
    calibrate: bool,
    target_sensitivity: float | None,
    configured_positive: str | None,
    train_counts: np.ndarray | None = None,
    groups: dict[str, list[str]] | None = None,
    group_sensitivity: float = 0.9,
) -> tuple[dict, dict]:
    """Calibrate the best checkpoint's validation logits, fit the decision rules and report on them.

    Args:
        logits: ``(N, K)`` float validation logits. y_true: ``(N,)`` int class indices.
        train_counts: ``(K,)`` training items per class: fit a prior-corrected multi-class decision
            (:func:`~medlens.training.decisions.fit_prior_decision`); None = arg-max.
        groups: named class groups flagged at ``group_sensitivity`` (:func:`~medlens.training.decisions.
            fit_group_flags`).

    Returns:
        ``(spec_update, metrics)``: ``{"temperature", "decision", "groups"}`` (a float, a
        :class:`~medlens.spec.Decision` or None, a list of :class:`~medlens.spec.ClassGroup` or None) for the
        model spec, and the
        ``val_metrics.json`` content (``classification_metrics`` of the calibrated probabilities, plus the
        uncalibrated ECE/Brier and, with a decision threshold, its validation sensitivity/specificity).
    """
    from medlens.evaluation.calibration import (
        apply_temperature,
        brier_score,
        expected_calibration_error,
        fit_temperature,
    )
    from medlens.evaluation.classification_metrics import classification_metrics

    temperature = float(fit_temperature(logits, y_true)) if calibrate else 1.0
    raw = apply_temperature(logits, 1.0)
    probs = apply_temperature(logits, temperature)
    metrics = classification_metrics(y_true, probs, classes)
    metrics.update(
        temperature=temperature,
        calibrated_on="val",
        ece_uncalibrated=expected_calibration_error(raw, y_true),
        brier_uncalibrated=brier_score(raw, y_true),
    )
    decision = None
    if target_sensitivity is not None and len(classes) == 2:
        decision = _sensitivity_threshold(probs, y_true, classes, configured_positive, target_sensitivity)
        metrics["decision"] = decision_report(probs, y_true, classes, decision, "val_")
    elif target_sensitivity is not None:
        logger.warning(
            "target_sensitivity is for binary tasks; %d classes here, no decision threshold set", len(classes)
        )
    elif train_counts is not None:
        decision = fit_prior_decision(probs, y_true, train_counts)
        metrics["decision"] = decision_report(probs, y_true, classes, decision)
    flags = fit_group_flags(probs, y_true, classes, groups, group_sensitivity) if groups else None
    if flags:
        metrics["groups"] = [flag.to_dict() for flag in flags]
    return {"temperature": temperature, "decision": decision, "groups": flags}, metrics


def _sensitivity_threshold(
    probs: np.ndarray, y_true: np.ndarray, classes: list[str], configured: str | None, sensitivity: float
) -> ThresholdDecision:
    """The binary rule: the positive class when its probability reaches the threshold of ``sensitivity``."""
    from medlens.evaluation.calibration import threshold_for_sensitivity

    pos = positive_class(classes, configured)
    k = classes.index(pos)
    threshold = float(threshold_for_sensitivity(probs[:, k], (y_true == k).astype(np.int64), sensitivity))
    return ThresholdDecision(threshold, positive_class=pos, target_sensitivity=float(sensitivity))


def decision_report(
    probs: np.ndarray, y_true: np.ndarray, classes: list[str], decision: Decision, prefix: str = ""
) -> dict:
    """The rule (its JSON form) with its figures on ``probs``: a binary threshold its sensitivity and
    specificity (``{prefix}sensitivity``...), a prior-corrected rule its balanced accuracy, accuracy,
    per-class recall and confusion matrix (rows: true class)."""
    if isinstance(decision, PriorDecision):
        pred = apply_decision(probs, classes, decision)
        return {**decision.to_dict(), **label_figures(y_true, pred, classes)}
    if not isinstance(decision, ThresholdDecision):
        raise TypeError(f"not a decision rule: {decision!r}")
    k = decision.class_index(classes)
    called, y_pos = probs[:, k] >= decision.threshold, y_true == k
    rule = decision.to_dict()
    rule = rule if isinstance(rule, dict) else {"threshold": rule}  # a bare-number rule
    return {**rule, f"{prefix}sensitivity": float(called[y_pos].mean()) if y_pos.any() else None,
            f"{prefix}specificity": float((~called[~y_pos]).mean()) if (~y_pos).any() else None,
            "accuracy": float((called == y_pos).mean())}  # fmt: skip


def classification_test_report(
    logits: np.ndarray, y_true: np.ndarray, classes: list[str], spec: ModelSpec
) -> dict:
    """Metrics of held-out logits ``(N, K)`` under the temperature and decision rule fixed on validation."""
    from medlens.evaluation.calibration import apply_temperature
    from medlens.evaluation.classification_metrics import classification_metrics

    probs = apply_temperature(logits, float(spec.temperature))
    metrics = classification_metrics(y_true, probs, classes)
    if spec.decision:
        metrics["decision"] = decision_report(probs, y_true, classes, spec.decision)
    if spec.groups:
        metrics["groups"] = []
        for flag in spec.groups:
            p = group_probability(probs, classes, flag.classes)
            inside = np.isin(y_true, [classes.index(c) for c in flag.classes])
            metrics["groups"].append({**flag.to_dict(), **flag_scores(p, inside, flag.threshold)})
    return metrics

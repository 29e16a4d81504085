"""Decisions: probabilities -> masks (threshold or arg-max) and -> class indices (a spec's decision rule).

The rules themselves are fitted at the end of training (:mod:`medlens.training.decisions`) and stored in the
model spec; every predictor, evaluation and pipeline applies them through this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medlens.errors import ConfigError, MedlensError
from medlens.spec import Decision, Mode, PriorDecision, ThresholdDecision


def probs_to_mask(prob: np.ndarray, mode: str, threshold: float = 0.5) -> np.ndarray:
    """Probabilities -> uint8 mask: binary ``(H, W)`` -> 0/1 at ``threshold``; multi-class ``(K, H, W)`` ->
    ``(H, W)`` arg-max labels; multi-label ``(K, H, W)`` -> ``(H, W, K)`` 0/1 at ``threshold``."""
    threshold = float(threshold)
    if mode == Mode.MULTICLASS:
        return prob.argmax(axis=0).astype(np.uint8)
    if mode == Mode.MULTILABEL:
        return np.moveaxis(prob >= threshold, 0, -1).astype(np.uint8)
    return (prob >= threshold).astype(np.uint8)


def apply_decision(
    probs: np.ndarray, classes: Sequence[str], decision: Decision | float | dict | None
) -> np.ndarray:
    """Predicted class indices ``(N,)`` from ``(N, K)`` probabilities and a spec's decision rule.

    ``decision``: None -> arg-max; a :class:`~medlens.spec.ThresholdDecision` -> its positive class (class 1
    for a bare number) when that class's probability reaches the threshold, else the arg-max of the others; a
    :class:`~medlens.spec.PriorDecision` -> arg-max of ``p_k * w_k``. A JSON form (number or mapping) is read
    with :meth:`Decision.from_dict`.
    """
    probs = np.asarray(probs)
    decision = Decision.from_dict(decision)
    if decision is None:
        return probs.argmax(axis=1)
    if isinstance(decision, ThresholdDecision):
        index = decision.class_index(classes)
        others = probs.copy()
        others[:, index] = -np.inf
        return np.where(probs[:, index] >= float(decision.threshold), index, others.argmax(axis=1))
    if not isinstance(decision, PriorDecision):
        raise TypeError(f"not a decision rule: {decision!r}")
    weights = np.asarray(decision.class_weights, dtype=np.float64)
    if weights.shape != (probs.shape[1],):
        raise MedlensError(f"decision class_weights {weights.tolist()} do not fit {probs.shape[1]} classes")
    return (probs * weights).argmax(axis=1)


def group_probability(probs: np.ndarray, classes: list[str], members: Sequence[str]) -> np.ndarray:
    """``(N,)`` probability of any class in ``members``."""
    unknown = [m for m in members if m not in classes]
    if unknown:
        raise ConfigError(f"class group {list(members)}: {unknown} are not classes; classes: {classes}")
    return probs[:, [classes.index(m) for m in members]].sum(axis=1)

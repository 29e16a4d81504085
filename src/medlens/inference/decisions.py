"""Decisions: probabilities -> masks (threshold or arg-max) and -> class indices (a spec's decision rule).

The rules themselves are fitted at the end of training (:mod:`medlens.training.decisions`) and stored in the
model spec; every predictor, evaluation and pipeline applies them through this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medlens.errors import ConfigError, MedlensError
from medlens.spec import Mode


def probs_to_mask(prob: np.ndarray, mode: str, threshold: float = 0.5) -> np.ndarray:
    """Probabilities -> uint8 mask: binary ``(H, W)`` -> 0/1 at ``threshold``; multi-class ``(K, H, W)`` ->
    ``(H, W)`` arg-max labels; multi-label ``(K, H, W)`` -> ``(H, W, K)`` 0/1 at ``threshold``."""
    threshold = float(threshold)
    if mode == Mode.MULTICLASS:
        return prob.argmax(axis=0).astype(np.uint8)
    if mode == Mode.MULTILABEL:
        return np.moveaxis(prob >= threshold, 0, -1).astype(np.uint8)
    return (prob >= threshold).astype(np.uint8)


def apply_decision(probs: np.ndarray, classes: Sequence[str], decision: object) -> np.ndarray:
    """Predicted class indices ``(N,)`` from ``(N, K)`` probabilities and a spec ``decision``.

    ``decision``: None -> arg-max; a number ``t`` -> class 1 (the positive class of a binary model) when its
    probability >= t, else the arg-max of the others; a dict ``{"positive_class": name, "threshold": t}`` (as
    training writes for a target sensitivity) -> that class when its probability >= t;
    a dict ``{"class_weights": [w_1..w_K]}`` (a prior-corrected multi-class rule) -> arg-max of ``p_k * w_k``.
    """
    probs = np.asarray(probs)
    if decision is None:
        return probs.argmax(axis=1)
    if isinstance(decision, dict) and "class_weights" in decision:
        weights = np.asarray(decision["class_weights"], dtype=np.float64)
        if weights.shape != (probs.shape[1],):
            raise MedlensError(
                f"decision class_weights {weights.tolist()} do not fit {probs.shape[1]} classes"
            )
        return (probs * weights).argmax(axis=1)
    if isinstance(decision, dict):
        name = decision.get("positive_class")
        if name not in classes or "threshold" not in decision:
            raise MedlensError(
                f"decision {decision} needs a 'positive_class' among {list(classes)} and a 'threshold' "
                "(or 'class_weights')"
            )
        index, threshold = list(classes).index(name), float(decision["threshold"])
    else:
        index, threshold = 1, float(decision)
    others = probs.copy()
    others[:, index] = -np.inf
    return np.where(probs[:, index] >= threshold, index, others.argmax(axis=1))


def group_probability(probs: np.ndarray, classes: list[str], members: list[str]) -> np.ndarray:
    """``(N,)`` probability of any class in ``members``."""
    unknown = [m for m in members if m not in classes]
    if unknown:
        raise ConfigError(f"class group {members}: {unknown} are not classes; classes: {classes}")
    return probs[:, [classes.index(m) for m in members]].sum(axis=1)

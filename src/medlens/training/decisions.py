"""Decision rules fitted on the validation split and stored in the model spec (used by every predictor).

- :func:`fit_prior_decision`: multi-class arg-max of ``p_k * w_k`` with ``w_k = prior_k ** -tau``; ``tau``
  (one number, so little room to overfit a small validation set) maximises balanced accuracy. ``tau = 0`` is
  the plain arg-max, ``tau = 1`` the Bayes rule for equal class priors.
- :func:`fit_group_flags`: a summed probability over a group of classes (e.g. "malignant" = melanoma + basal
  cell carcinoma + actinic keratosis) and the threshold at which it reaches a target sensitivity.
"""

from __future__ import annotations

import numpy as np

from medlens.errors import ConfigError
from medlens.evaluation.classification_metrics import balanced_accuracy, flag_scores
from medlens.inference.decisions import group_probability
from medlens.spec import ClassGroup, PriorDecision

PRIOR_POWERS = np.round(np.linspace(0.0, 1.5, 16), 2)


def prior_weights(class_counts: np.ndarray, tau: float) -> np.ndarray:
    """``prior ** -tau``, normalised to a mean of 1 (``(K,)``; a class with no items counts as one)."""
    prior = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    weights = (prior / prior.sum()) ** -float(tau)
    return weights / weights.mean()


def fit_prior_decision(probs: np.ndarray, y_true: np.ndarray, class_counts: np.ndarray) -> PriorDecision:
    """The prior-corrected rule that maximises balanced accuracy on ``(N, K)`` validation probabilities (the
    smallest ``tau`` among equals)."""
    scores = [
        balanced_accuracy(y_true, (probs * prior_weights(class_counts, t)).argmax(1)) for t in PRIOR_POWERS
    ]
    tau = float(PRIOR_POWERS[int(np.argmax(scores))])
    weights = tuple(round(float(w), 6) for w in prior_weights(class_counts, tau))
    return PriorDecision(class_weights=weights, prior_power=tau, fitted_on="val")


def fit_group_flags(
    probs: np.ndarray,
    y_true: np.ndarray,
    classes: list[str],
    groups: dict[str, list[str]],
    sensitivity: float,
) -> list[ClassGroup]:
    """For each named group, the threshold on its summed probability that flags ``sensitivity`` of the
    validation items in the group, with that split's sensitivity and specificity."""
    from medlens.evaluation.calibration import threshold_for_sensitivity

    flags = []
    for name, members in groups.items():
        p = group_probability(probs, classes, members)
        inside = np.isin(y_true, [classes.index(m) for m in members])
        if not inside.any() or inside.all():
            raise ConfigError(f"class group {name!r}: validation needs items inside and outside the group")
        threshold = float(threshold_for_sensitivity(p, inside.astype(np.int64), sensitivity))
        scores = flag_scores(p, inside, threshold)
        flags.append(ClassGroup(name, tuple(members), threshold, float(sensitivity), **scores))
    return flags

"""Classification evaluation: calibrated probabilities, the model's decision rule, and its class-group flags.

Writes ``predictions.csv``, ``confusion_matrix.png``, ``roc.png`` and ``reliability.png``; the metrics are
:func:`~medlens.evaluation.classification_metrics.classification_metrics` of the probabilities, plus
``decision`` (accuracy, balanced accuracy, per-class recall and the confusion matrix at the shipped rule:
the labels of ``predictions.csv`` and of ``confusion_matrix.png``; the top-level figures are arg-max) and
``groups`` (each summed group's sensitivity and specificity at its flag threshold, and AUC).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.index import DatasetIndex
from medlens.errors import DatasetError
from medlens.evaluation.reading import batches, read_batch, write_csv
from medlens.spec import ClassGroup, Decision


def decision_metrics(y_true: np.ndarray, y_pred: np.ndarray, decision: Decision, classes: list[str]) -> dict:
    """The rule (its JSON form) and :func:`~medlens.evaluation.classification_metrics.label_figures` of the
    labels it gave."""
    from medlens.evaluation.classification_metrics import label_figures

    return {"rule": decision.to_dict(), **label_figures(y_true, y_pred, classes)}


def group_metrics(
    probs: np.ndarray, y_true: np.ndarray, classes: list[str], groups: list[ClassGroup]
) -> list[dict]:
    """Each class group's flag (summed probability >= threshold): sensitivity, specificity and AUC."""
    from sklearn.metrics import roc_auc_score

    from medlens.evaluation.classification_metrics import flag_scores
    from medlens.inference.decisions import group_probability

    out = []
    for flag in groups:
        p = group_probability(probs, classes, flag.classes)
        inside = np.isin(y_true, [classes.index(c) for c in flag.classes])
        auc = float(roc_auc_score(inside, p)) if 0 < inside.sum() < len(inside) else None
        out.append({"name": flag.name, "classes": list(flag.classes), "threshold": flag.threshold,
                    **flag_scores(p, inside, flag.threshold), "auc": auc})  # fmt: skip
    return out


def evaluate_classification(predictor: Any, index: DatasetIndex, out: Path, skip_bad: bool) -> dict:
    """Score every item of ``index``; returns the metrics."""
    from medlens.evaluation.classification_metrics import classification_metrics
    from medlens.evaluation.plots import plot_confusion_matrix, plot_reliability_diagram, plot_roc_curves
    from medlens.inference.decisions import apply_decision

    classes = list(predictor.classes)
    unknown = sorted({item.label for item in index.items} - set(classes))
    if unknown:
        raise DatasetError(f"{index.root}: labels {unknown} are not classes of model {predictor.name!r} "
                           f"(model classes: {classes})")  # fmt: skip
    skipped, kept, probs = list(index.skipped), [], []
    for batch in batches(index.items, predictor.batch_size):
        pairs = read_batch(batch, skip_bad, skipped)
        if pairs:
            kept.extend(item for item, _ in pairs)
            probs.append(predictor.predict_proba([img for _, img in pairs]))  # guided by a guided classifier
    if not kept:
        raise DatasetError(f"{index.root}: no image could be evaluated ({len(skipped)} skipped)")
    p = np.concatenate(probs)
    y_true = np.array([classes.index(item.label) for item in kept])
    metrics = classification_metrics(y_true, p, classes)
    decided = apply_decision(p, classes, predictor.spec.decision)
    if predictor.spec.decision is not None:
        metrics["decision"] = decision_metrics(y_true, decided, predictor.spec.decision, classes)
    if predictor.spec.groups:
        metrics["groups"] = group_metrics(p, y_true, classes, predictor.spec.groups)
    rows = []
    for item, d, row in zip(kept, decided, p, strict=True):
        probs_row = {f"prob_{c}": float(v) for c, v in zip(classes, row, strict=True)}
        rows.append({"id": item.id, "image": str(item.image), "label": item.label, "pred": classes[d],
                     "correct": int(classes[d] == item.label), **probs_row})  # fmt: skip
    write_csv(out / "predictions.csv", rows)
    shown = metrics.get(
        "decision", metrics
    )  # the labels of predictions.csv: at the shipped rule when there is one
    plot_confusion_matrix(shown["confusion_matrix"], classes, out / "confusion_matrix.png")
    plot_roc_curves(y_true, p, classes, out / "roc.png")
    plot_reliability_diagram(p, y_true, out / "reliability.png")
    metrics["skipped"] = [{"file": f, "reason": r} for f, r in skipped]
    return metrics

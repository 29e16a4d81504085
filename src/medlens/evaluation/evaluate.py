"""Evaluate a run folder or bundle on a labelled data folder: metrics with bootstrap CIs, per-case tables.

Segmentation (``images/`` + ``masks/``): predictions are made at the model's input size and scored at each
mask's own size; per-image Dice, IoU, sensitivity, specificity, precision, pixel accuracy and HD95 (pixels),
averaged over images with percentile-bootstrap 95% CIs. Writes ``metrics.json``, ``per_image.csv``,
``worst_cases.png`` / ``best_cases.png`` (Dice-ranked) and ``overlays/*.png`` (prediction filled red, ground
truth outlined green).

Classification (``images/`` + ``labels.csv``, or class sub-folders): ``metrics.json`` (accuracy, balanced
accuracy, macro AUC, ECE, Brier, per class, confusion matrix, CIs), ``predictions.csv``,
``confusion_matrix.png``, ``roc.png``, ``reliability.png``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import DatasetError, ImageReadError

logger = logging.getLogger(__name__)

GREEN, RED = (0, 200, 0), (230, 40, 40)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + max(1, size)]


def _read_batch(
    items: Sequence, skip_bad: bool, skipped: list[tuple[str, str]]
) -> list[tuple[Any, np.ndarray]]:
    """``(item, HWC uint8 image)`` pairs; unreadable images raise, or with skip_bad are recorded, dropped."""
    from medlens.data.io import read_image

    out = []
    for item in items:
        try:
            out.append((item, read_image(item.image).array))
        except ImageReadError as exc:
            if not skip_bad:
                raise
            logger.warning("skipping %s: %s", item.image, exc.reason)
            skipped.append((str(item.image), exc.reason))
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if isinstance(v, float) and np.isnan(v) else v for k, v in row.items()})
    return path


# ---------------------------------------------------------------------------------- segmentation
def _score(acc, pred: np.ndarray, target: np.ndarray, mode: str, classes: list[str], image_id: str) -> dict:
    """Score one image into the accumulator; multi-label ``(H, W, K)`` masks average per-label scores."""
    from medlens.evaluation.metrics import SEGMENTATION_METRICS, segmentation_scores

    if mode == "binary":
        return acc.update(pred > 0, target > 0, image_id=image_id)
    if mode == "multiclass":
        return acc.update(pred, target, image_id=image_id)
    per_label = [segmentation_scores(pred[..., k] > 0, target[..., k] > 0) for k in range(target.shape[-1])]
    names = classes if len(classes) == len(per_label) else [str(k) for k in range(len(per_label))]
    row = {m: float(np.nanmean([s[m] for s in per_label])) for m in SEGMENTATION_METRICS}
    row.update(
        {f"{m}_{n}": s[m] for n, s in zip(names, per_label, strict=True) for m in SEGMENTATION_METRICS}
    )
    return acc.add_row(row, image_id)


def _overlay(image: np.ndarray, pred: np.ndarray, target: np.ndarray, binary: bool) -> np.ndarray:
    """Prediction filled (red for binary) under the ground-truth contour (green for binary)."""
    from medlens.drawing import overlay_mask

    shown = overlay_mask(image, pred, 0.4, RED if binary else None)
    return overlay_mask(shown, target, 0.0, GREEN if binary else None)


def _save_cases(predictor, index, rows: list[dict], out: Path, n_cases: int) -> dict[str, list[str]]:
    """Dice-ranked worst and best cases: ``worst_cases.png``, ``best_cases.png`` and ``overlays/*.png``."""
    from PIL import Image

    from medlens.data.io import read_image
    from medlens.data.layout import load_target
    from medlens.evaluation.plots import save_case_grid
    from medlens.inference.decisions import probs_to_mask

    ranked = sorted((r for r in rows if not np.isnan(r["dice"])), key=lambda r: r["dice"])
    chosen = {"worst": ranked[:n_cases], "best": ranked[::-1][:n_cases]}
    (out / "overlays").mkdir(exist_ok=True)
    binary = predictor.mode == "binary"
    for kind, picked in chosen.items():
        cases = []
        for rank, row in enumerate(picked, 1):
            item = index.get(row["id"])
            image, target = read_image(item.image).array, load_target(item, index)
            prob = predictor.predict_proba([image], sizes=[target.shape[:2]])[0]
            pred = probs_to_mask(prob, predictor.spec.mode, predictor.spec.threshold)
            if image.shape[:2] != target.shape[:2]:
                image = np.asarray(Image.fromarray(image.squeeze()).resize(target.shape[1::-1]))
            flat = (lambda m: m.max(axis=-1)) if pred.ndim == 3 else (lambda m: m)
            cases.append((image, flat(target), flat(pred), f"{item.id} dice {row['dice']:.3f}"))
            overlay = _overlay(image, flat(pred), flat(target), binary)
            Image.fromarray(overlay).save(out / "overlays" / f"{kind}{rank}_{item.id.replace('/', '_')}.png")
        if cases:
            save_case_grid(cases, out / f"{kind}_cases.png")
    return {kind: [r["id"] for r in picked] for kind, picked in chosen.items()}


def _evaluate_segmentation(predictor, data: Path, out: Path, skip_bad: bool, mask_dirs, n_cases: int) -> dict:
    from medlens.data.layout import discover, load_target
    from medlens.evaluation.metrics import SegmentationMetricAccumulator
    from medlens.inference.decisions import probs_to_mask

    spec, mode = predictor.spec, predictor.mode
    classes = list(predictor.classes)
    index = discover(
        data,
        "segmentation",
        mode=mode,
        mask_dirs=mask_dirs or spec.mask_dirs,
        classes=classes if mode == "multiclass" else None,
        skip_bad=skip_bad,
    )
    acc = SegmentationMetricAccumulator(
        num_classes=len(classes) if mode == "multiclass" else None,
        class_names=classes if mode == "multiclass" else None,
    )
    skipped, extras = list(index.skipped), {}
    for batch in _batches(index.items, predictor.batch_size):
        pairs = _read_batch(batch, skip_bad, skipped)
        targets = [load_target(item, index) for item, _ in pairs]
        probs = predictor.predict_proba([img for _, img in pairs], sizes=[t.shape[:2] for t in targets])
        for (item, _), target, prob in zip(pairs, targets, probs, strict=True):
            pred = probs_to_mask(prob, spec.mode, spec.threshold)
            _score(acc, pred, target, mode, classes, item.id)
            extras[item.id] = {
                "image": str(item.image),
                "height": target.shape[0],
                "width": target.shape[1],
                "target_fraction": float((target > 0).mean()),
                "pred_fraction": float((pred > 0).mean()),
            }
    if not acc.rows:
        raise DatasetError(f"{data}: no image could be evaluated ({len(skipped)} skipped)")
    _write_csv(out / "per_image.csv", [{**row, **extras[row["id"]]} for row in acc.rows])
    metrics: dict[str, Any] = acc.summary()
    metrics["hd95_unit"] = "px"
    if n_cases > 0:
        metrics["cases"] = _save_cases(predictor, index, acc.rows, out, n_cases)
    metrics["skipped"] = [{"file": f, "reason": r} for f, r in skipped]
    return metrics


# ---------------------------------------------------------------------------------- classification
def _decision_metrics(y_true: np.ndarray, y_pred: np.ndarray, decision: object) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    return {
        "rule": decision,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
    }


def _evaluate_classification(predictor, data: Path, out: Path, skip_bad: bool, label_column: str) -> dict:
    from medlens.data.layout import discover
    from medlens.evaluation.classification_metrics import classification_metrics
    from medlens.evaluation.plots import plot_confusion_matrix, plot_reliability_diagram, plot_roc_curves
    from medlens.inference.decisions import apply_decision

    classes = list(predictor.classes)
    index = discover(data, "classification", label_column=label_column, skip_bad=skip_bad)
    unknown = sorted(set(index.classes) - set(classes))
    if unknown:
        raise DatasetError(
            f"{data}: labels {unknown} are not classes of model {predictor.name!r} (model classes: {classes})"
        )
    skipped, kept, probs = list(index.skipped), [], []
    for batch in _batches(index.items, predictor.batch_size):
        pairs = _read_batch(batch, skip_bad, skipped)
        if pairs:
            kept.extend(item for item, _ in pairs)
            probs.append(predictor.predict_proba(predictor.guided_inputs([img for _, img in pairs])))
    if not kept:
        raise DatasetError(f"{data}: no image could be evaluated ({len(skipped)} skipped)")
    p = np.concatenate(probs)
    y_true = np.array([classes.index(item.label) for item in kept])
    metrics = classification_metrics(y_true, p, classes)
    decided = apply_decision(p, classes, predictor.spec.decision)
    if predictor.spec.decision is not None:
        metrics["decision"] = _decision_metrics(y_true, decided, predictor.spec.decision)
    rows = [
        {
            "id": item.id,
            "image": str(item.image),
            "label": item.label,
            "pred": classes[d],
            "correct": int(classes[d] == item.label),
            **{f"prob_{c}": float(v) for c, v in zip(classes, row, strict=True)},
        }
        for item, d, row in zip(kept, decided, p, strict=True)
    ]
    _write_csv(out / "predictions.csv", rows)
    plot_confusion_matrix(metrics["confusion_matrix"], classes, out / "confusion_matrix.png")
    plot_roc_curves(y_true, p, classes, out / "roc.png")
    plot_reliability_diagram(p, y_true, out / "reliability.png")
    metrics["skipped"] = [{"file": f, "reason": r} for f, r in skipped]
    return metrics


# ---------------------------------------------------------------------------------- entry point
def evaluate(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    runtime: str = "torch",
    tta: bool = False,
    batch_size: int = 8,
    skip_bad: bool = False,
    *,
    label_column: str = "label",
    mask_dirs: list[str] | None = None,
    n_cases: int = 4,
    device: str = "cpu",
) -> dict:
    """Evaluate ``model`` (run folder or bundle) on the labelled folder ``data``; write the report to ``out``.

    Args:
        runtime: ``"torch"`` or ``"onnx"`` (same results within float tolerance).
        tta: flip test-time augmentation.
        skip_bad: drop unreadable / inconsistent items (listed under ``skipped``) instead of failing.
        label_column: classification label column of ``labels.csv`` (other columns are ignored).
        mask_dirs: segmentation mask folders (default ``["masks"]``, or the spec's ``mask_dirs``).
        n_cases: how many worst and best segmentation cases to draw (0: none).

    Returns:
        The metrics dict also written to ``out/metrics.json`` (segmentation: ``{metric}_mean``,
        ``_ci_low``, ``_ci_high`` for dice, iou, sensitivity, specificity, precision, pixel_accuracy, hd95,
        plus ``n_images``;
        classification: see :func:`medlens.evaluation.classification_metrics.classification_metrics`).
    """
    from medlens.inference.predictor import create_predictor
    from medlens.jsonable import write_json

    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise DatasetError(f"data set folder {data} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    predictor = create_predictor(model, runtime=runtime, device=device, tta=tta, batch_size=batch_size)
    if predictor.task == "segmentation":
        metrics = _evaluate_segmentation(predictor, data, out, skip_bad, mask_dirs, n_cases)
    else:
        metrics = _evaluate_classification(predictor, data, out, skip_bad, label_column)
    metrics.update(
        {
            "task": predictor.task,
            "model": str(model),
            "model_name": predictor.name,
            "data": str(data),
            "runtime": runtime,
            "tta": tta,
            "classes": predictor.classes,
        }
    )
    write_json(out / "metrics.json", metrics)
    logger.info(
        "evaluated %s on %s (%d images); report in %s", predictor.name, data, metrics["n_images"], out
    )
    return metrics

"""Segmentation evaluation: predictions at the model's input size, scored at each mask's own size.

Per image: Dice, IoU, sensitivity, specificity, precision, pixel accuracy and HD95 (pixels), averaged over
images with percentile-bootstrap 95% CIs (multi-class: per class as well). Images of a partially labelled
source (:mod:`medlens.data.partial`) are scored on the merged classes their masks name (e.g.
"left_lung+right_lung"). Writes ``per_image.csv``, ``dice_distribution.png``, ``worst_cases.png`` /
``best_cases.png`` (Dice-ranked) and ``overlays/*.png`` (prediction filled red, ground truth outlined green).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.index import DatasetIndex, Item
from medlens.errors import DatasetError
from medlens.evaluation.reading import batches, read_batch, write_csv
from medlens.spec import Mode

GREEN, RED = (0, 200, 0), (230, 40, 40)


def score(acc, pred: np.ndarray, target: np.ndarray, mode: str, classes: list[str], image_id: str) -> dict:
    """Score one image into the accumulator; multi-label ``(H, W, K)`` masks average per-label scores."""
    from medlens.evaluation.metrics import SEGMENTATION_METRICS, segmentation_scores

    if mode == Mode.BINARY:
        return acc.update(pred > 0, target > 0, image_id=image_id)
    if mode == Mode.MULTICLASS:
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

    from medlens.data.index import load_target
    from medlens.data.io import read_image
    from medlens.evaluation.plots import save_case_grid
    from medlens.inference.decisions import probs_to_mask

    ranked = sorted((r for r in rows if not np.isnan(r["dice"])), key=lambda r: r["dice"])
    chosen = {"worst": ranked[:n_cases], "best": ranked[::-1][:n_cases]}
    (out / "overlays").mkdir(exist_ok=True)
    binary = predictor.mode == Mode.BINARY
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


def score_partial(acc, pred: np.ndarray, codes: np.ndarray, index: DatasetIndex, image_id: str) -> dict:
    """Score an image of a partially labelled source on each merged class set its mask names that excludes
    the background: ``{metric}_{a+b}`` columns, ``{metric}`` their mean."""
    from medlens.evaluation.metrics import SEGMENTATION_METRICS, segmentation_scores

    k, row = len(index.classes), {}
    for j, group in enumerate(index.label_sets):
        if 0 in group or not (codes == k + j).any():
            continue
        name = "+".join(index.classes[c] for c in group)
        scores = segmentation_scores(np.isin(pred, group), codes == k + j)
        row.update({f"{m}_{name}": v for m, v in scores.items()})
    if not row:
        raise DatasetError(f"{image_id}: its partial mask names no foreground class to score")
    for m in SEGMENTATION_METRICS:
        row[m] = float(np.nanmean([v for key, v in row.items() if key.startswith(f"{m}_")]))
    return acc.add_row(row, image_id)


def ctr_agreement(pairs: list[tuple[float | None, float | None]], plot: Path) -> dict[str, Any]:
    """Agreement of the predicted cardiothoracic ratio with the reference masks' (Bland–Altman): mean
    absolute error with its bootstrap CI, bias and 95% limits of agreement, and the plot."""
    from medlens.evaluation.bootstrap import bootstrap_ci
    from medlens.evaluation.plots import plot_bland_altman

    both = np.array([(p, r) for p, r in pairs if p is not None and r is not None], dtype=np.float64)
    out: dict[str, Any] = {"n_images": len(both), "n_unmeasured": len(pairs) - len(both)}
    if len(both):
        diff = both[:, 0] - both[:, 1]
        low, high = bootstrap_ci(np.abs(diff))
        sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        bias = float(diff.mean())
        out.update(mae_mean=float(np.abs(diff).mean()), mae_ci_low=low, mae_ci_high=high, bias=bias,
                   loa_low=bias - 1.96 * sd, loa_high=bias + 1.96 * sd)  # fmt: skip
        plot_bland_altman(both[:, 0], both[:, 1], "cardiothoracic ratio", plot)
    return out


def _accumulator(predictor: Any):
    from medlens.evaluation.metrics import SegmentationMetricAccumulator

    multiclass = predictor.mode == Mode.MULTICLASS
    return SegmentationMetricAccumulator(
        num_classes=len(predictor.classes) if multiclass else None,
        class_names=predictor.classes if multiclass else None,
    )


def by_source(predictor: Any, rows: list[dict], items: dict[str, Item]) -> dict[str, dict]:
    """The summary of each data source's rows (only when the rows come from several sources)."""
    sources = sorted({items[r["id"]].source for r in rows if items[r["id"]].source is not None})
    if len(sources) < 2:
        return {}
    out = {}
    for source in sources:
        acc = _accumulator(predictor)
        for row in rows:
            if items[row["id"]].source == source:
                acc.add_row({k: v for k, v in row.items() if k != "id"}, row["id"])
        out[source] = acc.summary()
    return out


def evaluate_segmentation(
    predictor: Any, index: DatasetIndex, out: Path, skip_bad: bool, n_cases: int
) -> dict:
    """Score every item of ``index``; returns the metrics (summary, ``by_source``, cases, skipped)."""
    from medlens.data.index import load_target
    from medlens.evaluation.anatomy import HEART, ctr_of
    from medlens.evaluation.plots import plot_score_distribution
    from medlens.inference.decisions import probs_to_mask

    spec, mode, classes = predictor.spec, predictor.mode, list(predictor.classes)
    acc, skipped, extras = _accumulator(predictor), list(index.skipped), {}
    measures_ctr, ctr = mode == Mode.MULTICLASS and HEART in classes, {}
    for batch in batches(index.items, predictor.batch_size):
        pairs = read_batch(batch, skip_bad, skipped)
        targets = [load_target(item, index) for item, _ in pairs]
        probs = predictor.predict_proba([img for _, img in pairs], sizes=[t.shape[:2] for t in targets])
        for (item, _), target, prob in zip(pairs, targets, probs, strict=True):
            pred = probs_to_mask(prob, spec.mode, spec.threshold)
            if item.source in index.partial:
                score_partial(acc, pred, target, index, item.id)
            else:
                score(acc, pred, target, mode, classes, item.id)
                if measures_ctr:
                    ctr[item.id] = (ctr_of(pred, classes), ctr_of(target, classes))
            extras[item.id] = {
                "image": str(item.image),
                "source": item.source,
                "height": target.shape[0],
                "width": target.shape[1],
                "target_fraction": float((target > 0).mean()),
                "pred_fraction": float((pred > 0).mean()),
            }
    if not acc.rows:
        raise DatasetError(f"{index.root}: no image could be evaluated ({len(skipped)} skipped)")
    for image_id, (pred_ctr, ref_ctr) in ctr.items():
        extras[image_id].update(ctr_pred=pred_ctr, ctr_ref=ref_ctr)
    write_csv(out / "per_image.csv", [{**row, **extras[row["id"]]} for row in acc.rows])
    metrics: dict[str, Any] = acc.summary()
    if ctr:
        metrics["cardiothoracic_ratio"] = ctr_agreement(list(ctr.values()), out / "bland_altman_ctr.png")
    metrics["hd95_unit"] = "px"
    items = {item.id: item for item in index.items}
    sources = by_source(predictor, acc.rows, items)
    if sources:
        metrics["by_source"] = sources
    plot_score_distribution(
        {"all": [r["dice"] for r in acc.rows]}, "Dice per image", out / "dice_distribution.png"
    )
    if n_cases > 0:
        full = [r for r in acc.rows if items[r["id"]].source not in index.partial]
        metrics["cases"] = _save_cases(predictor, index, full, out, n_cases)
    metrics["skipped"] = [{"file": f, "reason": r} for f, r in skipped]
    return metrics

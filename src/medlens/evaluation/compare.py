"""Two models scored on the same images, compared: the paired difference of each figure with a bootstrap CI.

``medlens compare NEW OLD`` reads what ``medlens evaluate`` wrote into two report folders (``metrics.json``
and ``per_image.csv`` or ``predictions.csv``), keeps the images both scored, and resamples images with one
draw for both models, so that the interval is that of the difference (narrower than two separate intervals
when the models err on the same images). Segmentation: mean Dice, overall and per source; classification:
balanced accuracy and each class's recall at the shipped rule, and each class-group flag's sensitivity and
specificity at its threshold.

Neither scikit-learn nor MONAI pairs two models' per-image results for a bootstrap of their difference, hence
this module (the resampling itself is :func:`medlens.evaluation.bootstrap.bootstrap`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medlens.errors import DatasetError
from medlens.evaluation.bootstrap import bootstrap

N_BOOT = 2000


def _read_report(folder: Path) -> tuple[dict, list[dict[str, str]]]:
    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file():
        raise DatasetError(f"{folder}: no metrics.json; give a report folder of `medlens evaluate`")
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{metrics_file}: not a readable report ({exc})") from exc
    if not isinstance(metrics, dict) or metrics.get("task") not in ("segmentation", "classification"):
        raise DatasetError(f"{metrics_file}: no task; give a report folder of `medlens evaluate`")
    segmentation = metrics["task"] == "segmentation"
    table = folder / ("per_image.csv" if segmentation else "predictions.csv")
    if not table.is_file():
        raise DatasetError(f"{folder}: {table.name} is missing")
    with table.open(newline="") as fh:
        reader = csv.DictReader(fh)
        needed = {"id", "dice"} if segmentation else {"id", "label", "pred"}
        missing = sorted(needed - set(reader.fieldnames or []))
        if missing:
            raise DatasetError(f"{table}: column(s) {missing} missing; is it a report of `medlens evaluate`?")
        return metrics, list(reader)


def _paired(new: np.ndarray, old: np.ndarray, stat: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> dict:
    """``stat(values, idx)`` of each model and of their difference, with the difference's 95% CI."""
    n = len(new)
    full = np.arange(n)[None, :]
    a, b = float(stat(new, full)[0]), float(stat(old, full)[0])
    low, high = bootstrap(n, lambda idx: stat(new, idx) - stat(old, idx), N_BOOT, 0.05, seed=0)
    return {"new": a, "old": b, "difference": a - b, "ci_low": low, "ci_high": high, "n_images": n}


def _mean(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.nanmean(values[idx], axis=1)


def _recall_of(inside: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The share of the ``inside`` images that are positive (a 0/1 array), per bootstrap row."""

    def stat(hit: np.ndarray, idx: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (hit[idx] * inside[idx]).sum(1) / inside[idx].sum(1)

    return stat


def _balanced_accuracy(
    labels: np.ndarray, classes: list[str]
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    recalls = [_recall_of((labels == c).astype(np.float64)) for c in classes]

    def stat(correct: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.nanmean(np.stack([r(correct, idx) for r in recalls]), axis=0)

    return stat


def compare_reports(new: str | Path, old: str | Path) -> dict[str, dict]:
    """``{figure: {"new", "old", "difference", "ci_low", "ci_high", "n_images"}}`` over the images both
    report folders scored (DatasetError when they share none, or are of different tasks)."""
    (m_new, rows_new), (m_old, rows_old) = _read_report(Path(new)), _read_report(Path(old))
    if m_new.get("task") != m_old.get("task"):
        raise DatasetError(f"{new} and {old}: a {m_new.get('task')} and a {m_old.get('task')} report")
    old_by_id = {r["id"]: r for r in rows_old}
    pairs = [(r, old_by_id[r["id"]]) for r in rows_new if r["id"] in old_by_id]
    if not pairs:
        raise DatasetError(f"{new} and {old} share no scored image")
    truth = "label" if m_new["task"] != "segmentation" else "target_fraction"  # the reference of each image
    differ = [a["id"] for a, b in pairs if a.get(truth) != b.get(truth)]
    if differ:
        raise DatasetError(f"{new} and {old}: image {differ[0]!r} has another reference in each report "
                           f"({len(differ)} such ids); were they scored on the same data?")  # fmt: skip
    if m_new["task"] == "segmentation":
        return _compare_segmentation(pairs)
    return _compare_classification(pairs, m_new, m_old)


def _column(pairs: list[tuple[dict, dict]], key: str, side: int) -> np.ndarray:
    return np.array([float(p[side][key]) if p[side].get(key) not in (None, "") else np.nan for p in pairs])


def _compare_segmentation(pairs: list[tuple[dict, dict]]) -> dict[str, dict]:
    finite = np.isfinite(_column(pairs, "dice", 0)) & np.isfinite(_column(pairs, "dice", 1))
    pairs = [p for p, ok in zip(pairs, finite, strict=True) if ok]  # the same images on both sides
    if not pairs:
        raise DatasetError("the two reports share no image with a Dice on both sides")
    out = {"dice": _paired(_column(pairs, "dice", 0), _column(pairs, "dice", 1), _mean)}
    sources = sorted({p[0].get("source") for p in pairs if p[0].get("source")})
    for source in sources if len(sources) > 1 else []:
        mine = [p for p in pairs if p[0].get("source") == source]
        out[f"dice, {source}"] = _paired(_column(mine, "dice", 0), _column(mine, "dice", 1), _mean)
    return out


def _compare_classification(pairs: list[tuple[dict, dict]], m_new: dict, m_old: dict) -> dict[str, dict]:
    labels = np.array([p[0]["label"] for p in pairs])
    classes = [c for c in m_new.get("classes", []) if (labels == c).any()]
    correct = [np.array([float(p[side]["pred"] == p[side]["label"]) for p in pairs]) for side in (0, 1)]
    out = {"balanced accuracy": _paired(*correct, _balanced_accuracy(labels, classes))}
    for c in classes:
        out[f"recall of {c}"] = _paired(*correct, _recall_of((labels == c).astype(np.float64)))
    old_groups = {g["name"]: g for g in m_old.get("groups") or []}
    for group in m_new.get("groups") or []:
        if group["name"] not in old_groups:
            continue
        inside = np.isin(labels, group["classes"]).astype(np.float64)
        flags = []
        for side, g in ((0, group), (1, old_groups[group["name"]])):
            p = sum(_column(pairs, f"prob_{c}", side) for c in g["classes"])
            flags.append((p >= float(g["threshold"])).astype(np.float64))
        out[f"{group['name']} flag sensitivity"] = _paired(*flags, _recall_of(inside))
        out[f"{group['name']} flag specificity"] = _paired(
            *(1.0 - f for f in flags), _recall_of(1.0 - inside)
        )
    return out


def format_comparison(result: dict[str, dict]) -> str:
    """A markdown table of :func:`compare_reports`."""
    lines = ["| figure | new | old | new - old (95% CI) | images |", "|---|---|---|---|---|"]
    for name, r in result.items():
        lines.append(f"| {name} | {r['new']:.3f} | {r['old']:.3f} | {r['difference']:+.3f} "
                     f"({r['ci_low']:+.3f} to {r['ci_high']:+.3f}) | {r['n_images']} |")  # fmt: skip
    return "\n".join(lines)

"""Figures of a run or an evaluation (matplotlib, Agg canvas; nothing is shown) and fast numpy mask overlays.

Every ``plot_*`` / ``save_*`` function writes a PNG and returns its ``Path``. Figures are built on
``matplotlib.figure.Figure`` directly, not ``pyplot``, so they hold no global state and are safe in a web
server.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from medlens.drawing import PALETTE, as_rgb, boundary, overlay_mask
from medlens.errors import MedlensError

logger = logging.getLogger(__name__)


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


# ------------------------------------------------------------------------------------------ training curves
def _read_metrics_csv(metrics_csv: str | Path) -> dict[str, np.ndarray]:
    path = Path(metrics_csv)
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise MedlensError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not rows:
        raise MedlensError(f"cannot plot {path}: no epoch rows")

    def number(value: str | None) -> float:
        try:
            return float(value) if value not in (None, "") else math.nan
        except ValueError:
            return math.nan

    return {key: np.array([number(r.get(key)) for r in rows]) for key in rows[0] if key is not None}


def _plot_series(ax, x: np.ndarray, y: np.ndarray, label: str) -> None:
    ok = ~np.isnan(y)
    if ok.any():
        ax.plot(x[ok], y[ok], marker="o" if ok.sum() < 30 else None, markersize=3, label=label)


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Three panels from a run's ``metrics.csv``: train/val loss, validation metrics (``val_*`` other than
    ``val_loss``) and learning rate (log scale). Missing columns leave their panel empty; empty cells are
    skipped."""
    data = _read_metrics_csv(metrics_csv)
    epochs = data.get("epoch", np.arange(1, len(next(iter(data.values()))) + 1, dtype=float))
    fig = Figure(figsize=(13, 3.8))
    ax_loss, ax_metric, ax_lr = fig.subplots(1, 3)
    for key in ("train_loss", "val_loss"):
        if key in data:
            _plot_series(ax_loss, epochs, data[key], key)
    for key in sorted(k for k in data if k.startswith("val_") and k != "val_loss"):
        _plot_series(ax_metric, epochs, data[key], key)
    if "lr" in data:
        _plot_series(ax_lr, epochs, data["lr"], "lr")
        if np.nanmin(np.append(data["lr"], np.inf)) > 0:
            ax_lr.set_yscale("log")
    for ax, title in ((ax_loss, "loss"), (ax_metric, "validation"), (ax_lr, "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------------ classification
def plot_confusion_matrix(
    cm: Sequence[Sequence[int]] | np.ndarray,
    classes: Sequence[str],
    out_png: str | Path,
    normalize: bool = True,
) -> Path:
    """Confusion matrix (rows = true class). ``normalize`` colours by row fraction (recall); cells show
    counts (and the fraction)."""
    counts = np.asarray(cm, dtype=np.float64)
    if counts.shape != (len(classes), len(classes)):
        raise MedlensError(f"confusion matrix of shape {counts.shape} does not match {len(classes)} classes")
    rows = counts.sum(axis=1, keepdims=True)
    shown = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0) if normalize else counts
    size = 2.5 + 0.6 * len(classes)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(shown.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = (1.0 if normalize else shown.max()) / 2
    for i, j in np.ndindex(counts.shape):
        text = f"{int(counts[i, j])}\n{shown[i, j]:.0%}" if normalize else f"{int(counts[i, j])}"
        color = "white" if shown[i, j] > threshold else "black"
        ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    return _save(fig, out_png)


def plot_roc_curves(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], out_png: str | Path
) -> Path:
    """One-vs-rest ROC curve per class with its AUC (binary: the positive class only).

    ``y_true`` ``(N,)`` int, ``probs`` ``(N, K)`` float."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y_true, probs = np.asarray(y_true).reshape(-1), np.asarray(probs, dtype=np.float64)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    for c in [1] if len(classes) == 2 else range(len(classes)):
        positives = y_true == c
        if positives.all() or not positives.any():
            logger.info("ROC of class %s skipped: it is absent from (or all of) the labels", classes[c])
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, c])
        ax.plot(fpr, tpr, label=f"{classes[c]} (AUC {roc_auc_score(positives, probs[:, c]):.3f})")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title("ROC curves")
    return _save(fig, out_png)


def plot_reliability_diagram(
    probs: np.ndarray, y_true: np.ndarray, out_png: str | Path, n_bins: int = 15
) -> Path:
    """Reliability diagram (top-label accuracy per confidence bin vs the diagonal, gap shaded, ECE in the
    title) above a histogram of confidences."""
    from medlens.evaluation.calibration import reliability_curve

    curve = reliability_curve(probs, y_true, n_bins)
    centers = (curve.edges[:-1] + curve.edges[1:]) / 2
    width = 1.0 / n_bins
    filled = curve.counts > 0
    fig = Figure(figsize=(5, 6))
    ax, ax_hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers[filled], curve.accuracy[filled], width=width, edgecolor="black", label="accuracy")
    gap_bottom = np.minimum(curve.accuracy, curve.confidence)[filled]
    gap_height = np.abs(curve.accuracy - curve.confidence)[filled]
    ax.bar(centers[filled], gap_height, bottom=gap_bottom, width=width, color="red", alpha=0.3, label="gap")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"reliability (ECE {curve.ece:.3f})")
    ax_hist.bar(centers, curve.counts, width=width, edgecolor="black", color="grey")
    ax_hist.set_xlabel("confidence")
    ax_hist.set_ylabel("count")
    ax_hist.set_xlim(0, 1)
    return _save(fig, out_png)


def plot_score_distribution(scores: dict[str, Sequence[float]], label: str, out_png: str | Path) -> Path:
    """Histogram of per-image scores in [0, 1] (e.g. Dice), one series per key, with each mean and median."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    bins = np.linspace(0.0, 1.0, 41)
    for name, values in scores.items():
        arr = np.asarray([v for v in values if v == v], dtype=np.float64)  # nan-free
        if arr.size:
            shown = f"{name}: mean {arr.mean():.3f}, median {np.median(arr):.3f} (n={arr.size})"
            ax.hist(arr, bins=bins, alpha=0.6, edgecolor="black", label=shown)
    ax.set_xlabel(label)
    ax.set_ylabel("images")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, out_png)


def plot_bland_altman(pred: np.ndarray, ref: np.ndarray, name: str, out_png: str | Path) -> Path:
    """Bland–Altman plot of a measurement: difference (predicted - reference) against the pair's mean, with
    the bias and the 95% limits of agreement (bias +- 1.96 SD)."""
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    diff, mean = pred - ref, (pred + ref) / 2
    bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.scatter(mean, diff, s=14, alpha=0.7)
    lines = [(bias, "-", "bias"), (bias + 1.96 * sd, "--", "+1.96 SD"), (bias - 1.96 * sd, "--", "-1.96 SD")]
    for y, style, label in lines:
        ax.axhline(y, linestyle=style, color="grey")
        where = {"xycoords": ("axes fraction", "data"), "ha": "right", "va": "bottom", "fontsize": 8}
        ax.annotate(f"{label} {y:+.3f}", (1.0, y), **where)
    ax.set_xlabel(f"mean of predicted and reference {name}")
    ax.set_ylabel("predicted - reference")
    ax.set_title(f"{name}: agreement with the reference masks (n={diff.size})")
    return _save(fig, out_png)


def save_case_grid(
    cases: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray, str]],
    out_png: str | Path,
    alpha: float = 0.45,
) -> Path:
    """One row per case: image | ground truth (green) | prediction (blue) | both contours.

    ``cases``: ``(image HWC uint8, gt_mask (H, W) or None, pred_mask (H, W), title)``, e.g. the worst and best
    images of an evaluation ranked by Dice.
    """
    if not cases:
        raise MedlensError(f"cannot write {out_png}: no cases to show")
    green, blue = PALETTE[0], PALETTE[2]  # blue contrasts with red/brown colonoscopy and dermoscopy images
    fig = Figure(figsize=(12, 3.1 * len(cases)))
    axes = np.asarray(fig.subplots(len(cases), 4, squeeze=False))
    for row, (image, gt, pred, title) in zip(axes, cases, strict=True):
        panels = [as_rgb(image)]
        panels.append(overlay_mask(image, gt, alpha, green) if gt is not None else as_rgb(image))
        panels.append(overlay_mask(image, pred, alpha, blue))
        both = overlay_mask(image, np.asarray(pred) > 0, 0.0, blue)
        if gt is not None:
            edge = boundary(np.asarray(gt) > 0, max(1, min(both.shape[:2]) // 300))
            both[edge] = green
        panels.append(both)
        for ax, panel, name in zip(
            row, panels, ("image", "ground truth", "prediction", "contours"), strict=True
        ):
            ax.imshow(panel)
            ax.set_axis_off()
            ax.set_title(f"{title}\n{name}" if name == "image" else name, fontsize=9)
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------------ history
def plot_label_counts_over_time(
    records: Iterable[tuple[datetime | date | str, str]], out_png: str | Path, title: str = "analyses per day"
) -> Path:
    """Stacked daily counts of labels, e.g. from the history store: ``records`` = ``(timestamp, label)`` pairs
    (timestamps as ``datetime``/``date`` or ISO strings)."""
    counts: Counter[tuple[date, str]] = Counter()
    for stamp, label in records:
        when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else stamp
        counts[(when.date() if isinstance(when, datetime) else when, str(label))] += 1
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    days = sorted({d for d, _ in counts})
    labels = sorted({lab for _, lab in counts})
    bottom = np.zeros(len(days))
    for label in labels:
        values = np.array([counts[(d, label)] for d in days], dtype=float)
        ax.bar(days, values, bottom=bottom, label=label)
        bottom += values
    if labels:
        ax.legend(fontsize=8)
    ax.set_ylabel("count")
    ax.set_title(title)
    fig.autofmt_xdate()
    return _save(fig, out_png)

"""What the dashboard shows of a bundle: its plots, and its metrics in words, split by split side by side.

Bundles of format 2 carry ``evaluations`` (``{"val": ..., "test": ..., "external:<data set>": ...}``, the keys
``medlens evaluate`` writes to metrics.json) and plots under ``plots/`` (``test_confusion_matrix.png``,
``test_roc.png``, ``test_reliability.png``, ``test_dice_distribution.png``); format-1 bundles have only the
validation metrics and, at most, top-level plots (``confusion_matrix.png``, ``roc.png``, ``curves.png``...).
Pure functions, no Gradio: the UI and the tests call them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from medlens.folders import BundleFolder

LEGACY_PLOTS = ("confusion_matrix.png", "roc.png", "reliability.png", "dice_distribution.png", "curves.png")
PLOT_KINDS = {
    "confusion_matrix": "Confusion matrix",
    "roc": "ROC curves",
    "reliability": "Reliability diagram",
    "dice_distribution": "Dice distribution",
    "bland_altman_ctr": "CTR agreement (Bland–Altman)",
    "curves": "Training curves",
}
SPLIT_WORDS = {"val": "validation", "test": "test"}
METRIC_WORDS = {
    "dice": "Dice", "iou": "IoU", "hd95": "HD95 (pixels)", "sensitivity": "sensitivity",
    "specificity": "specificity", "precision": "precision", "pixel_accuracy": "pixel accuracy",
    "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auc_macro": "macro AUC",
    "macro_auc": "macro AUC", "auc": "AUC", "ece": "calibration error (ECE)", "brier": "Brier score",
    "recall": "recall", "f1": "F1", "support": "images", "n_images": "images", "threshold": "threshold",
    "temperature": "temperature", "val_loss": "validation loss", "best_epoch": "best epoch",
    "epochs_trained": "epochs trained",
}  # fmt: skip
SUFFIX_WORDS = {"_mean": "", "_median": " (median)", "_std": " (SD)", "_ci_low": ", 95% CI low",
                "_ci_high": ", 95% CI high", "_uncalibrated": " before calibration"}  # fmt: skip
HIDDEN = {"confusion_matrix", "split", "calibrated_on", "input_size", "stop_reason", "skipped", "cases",
          "hd95_unit", "classes", "decision", "groups"}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- plots
def bundle_plots(folder: str | Path) -> dict[str, Path]:
    """Plot PNGs of a bundle by file name: every ``plots/*.png``, then the format-1 top-level ones."""
    folder = Path(folder)
    found = {p.name: p for p in sorted(BundleFolder(folder).plots.glob("*.png")) if p.is_file()}
    for name in LEGACY_PLOTS:
        if name not in found and (folder / name).is_file():
            found[name] = folder / name
    return found


def plot_title(name: str) -> str:
    """ "test_roc.png" -> "ROC curves (test)"; "curves.png" -> "Training curves"."""
    stem = name.removesuffix(".png")
    split, _, rest = stem.partition("_")
    if split in SPLIT_WORDS and rest:
        return f"{PLOT_KINDS.get(rest, rest.replace('_', ' ').capitalize())} ({split})"
    return PLOT_KINDS.get(stem, stem.replace("_", " ").capitalize())


# ---------------------------------------------------------------------------------------------------- words
def split_name(key: str) -> str:
    """ "val" -> "validation", "external:cvc_clinicdb" -> "external: cvc_clinicdb"."""
    if key.startswith("external:"):
        return f"external: {key.split(':', 1)[1]}"
    return SPLIT_WORDS.get(key, key)


def _words(key: str) -> str:
    for suffix, extra in SUFFIX_WORDS.items():
        base = key.removesuffix(suffix)
        if base != key and base in METRIC_WORDS:
            return METRIC_WORDS[base] + extra
    return METRIC_WORDS.get(key, key.replace("_", " "))


RULE = " at the shipped rule"


def metric_name(key: str, class_names: Mapping[str, str] | None = None, argmax: bool = False) -> str:
    """A flat metric key in words: "dice_mean" -> "Dice", "per_class.mel.recall" -> "Melanoma recall",
    "balanced_accuracy_ci_low" -> "balanced accuracy, 95% CI low", "rule.recall.mel" -> "Melanoma recall at
    the shipped rule", "flag.malignant.sensitivity" -> "malignant flag sensitivity". ``argmax``: the model
    decides by a fitted rule, so its plain arg-max figures are labelled as such."""
    parts = key.split(".")
    if parts[0] == "rule":
        if len(parts) == 3:
            return f"{(class_names or {}).get(parts[2], parts[2])} recall{RULE}"
        return _words(parts[1]) + RULE
    if parts[0] == "flag" and len(parts) == 3:
        return f"{parts[1]} flag {_words(parts[2])}"
    if argmax and parts[0].removesuffix("_ci_low").removesuffix("_ci_high") in (
        "accuracy",
        "balanced_accuracy",
    ):
        return _words(parts[0]) + " (arg-max)"
    if len(parts) == 3 and parts[0] == "per_class":
        name = (class_names or {}).get(parts[1], parts[1])
        return f"{name} {_words(parts[2])}"
    return " · ".join(_words(p) for p in parts)


def _rule_figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of the shipped decision rule and the class-group flags, as flat ``rule.*`` / ``flag.*``
    keys: what the app decides with, shown before the plain arg-max figures."""
    out: dict[str, Any] = {}
    decision = metrics.get("decision")
    if isinstance(decision, Mapping):
        for key in ("balanced_accuracy", "accuracy"):
            out[f"rule.{key}"] = decision.get(key)
        out.update({f"rule.recall.{c}": v for c, v in (decision.get("recall") or {}).items()})
    for group in metrics.get("groups") or []:
        if isinstance(group, Mapping) and group.get("name"):
            out.update(
                {f"flag.{group['name']}.{k}": group.get(k) for k in ("sensitivity", "specificity", "auc")}
            )
    return {k: v for k, v in out.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _flat(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in HIDDEN:
            continue
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def _unmeasured(flat: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The flat figures with those not measured as None, shown as "—" (an evaluation writes 0 for them): the
    recall and F1 of a class with no images in the split (``per_class.<c>.support`` 0), and the precision of
    a class nothing was predicted as (its confusion-matrix column sums to 0; without a matrix, that of a
    class with no images). A class predicted but absent has a measured precision: 0."""
    classes = list(metrics.get("per_class") or {})  # in the confusion matrix's order
    matrix = metrics.get("confusion_matrix") or []
    columns = [sum(column) for column in zip(*matrix, strict=True)]
    predicted = dict(zip(classes, columns, strict=True)) if len(columns) == len(classes) else None
    blank = set()
    for c in classes:
        absent = flat.get(f"per_class.{c}.support") == 0
        blank |= {f"per_class.{c}.recall", f"per_class.{c}.f1"} if absent else set()
        if absent if predicted is None else predicted[c] == 0:
            blank.add(f"per_class.{c}.precision")
    return {k: None if k in blank else v for k, v in flat.items()}


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def evaluations_of(bundle: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The bundle's evaluations by split; format-1 bundles: ``{"val": metrics}``."""
    evaluations = dict(bundle.get("evaluations") or {})
    if not evaluations and bundle.get("metrics"):
        evaluations = {"val": bundle["metrics"]}
    order = {"val": 0, "test": 1}
    return dict(sorted(evaluations.items(), key=lambda kv: (order.get(kv[0], 2), kv[0])))


def metrics_frame(bundle: Mapping[str, Any], class_names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per scalar metric in words, one column per split (validation, test, external...); a
    classifier's figures at its shipped decision rule and its group flags come first, its arg-max figures are
    labelled; a figure not measured in a split shows "—" there (a class with no images, or nothing
    predicted as it: `_unmeasured`)."""
    splits = {
        split_name(k): _unmeasured({**_rule_figures(v), **_flat(v)}, v)
        for k, v in evaluations_of(bundle).items()
    }
    keys = [
        k for k in dict.fromkeys(k for flat in splits.values() for k in flat) if not re.search(r"_std$", k)
    ]
    argmax = any(k.startswith("rule.") for k in keys)
    rows = [
        [metric_name(k, class_names, argmax), *(_fmt(flat.get(k)) for flat in splits.values())] for k in keys
    ]
    return pd.DataFrame(rows, columns=["metric", *splits])

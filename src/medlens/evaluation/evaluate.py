"""Evaluate a run folder or bundle on labelled data: metrics with bootstrap CIs, per-case tables and plots.

The data is a folder (``medlens evaluate MODEL DATA``) or one side of the model's own split
(``medlens evaluate MODEL --split test``: the data folders of its ``config.yaml`` and the ids of its
``split.json``). Segmentation: :mod:`medlens.evaluation.seg_eval`; classification:
:mod:`medlens.evaluation.cls_eval`. Both write ``metrics.json`` into ``out``; with data from several folders
the figures are also given per folder (``by_source``). ``record`` stores the figures and plots in the bundle
(:func:`medlens.evaluation.record.record_evaluation`); :func:`choose_tta` records whether flip TTA helps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medlens.data.index import DatasetIndex
from medlens.errors import BundleError, DatasetError
from medlens.evaluation.metrics import selection_score
from medlens.spec import Mode, Task

logger = logging.getLogger(__name__)


def folder_index(
    predictor: Any, data: Path, skip_bad: bool, label_column: str | None, mask_dirs: list[str] | None
) -> DatasetIndex:
    """The labelled folder ``data`` read as the model was trained (mask folders, classes, label column)."""
    from medlens.data.layout import discover

    spec = predictor.spec
    if not data.is_dir():
        raise DatasetError(f"data set folder {data} does not exist")
    if predictor.task == Task.CLASSIFICATION:
        return discover(data, "classification", label_column=label_column or spec.label_column or "label",
                        skip_bad=skip_bad)  # fmt: skip
    classes = predictor.classes if predictor.mode == Mode.MULTICLASS else None
    return discover(data, "segmentation", mode=predictor.mode, mask_dirs=mask_dirs or spec.mask_dirs,
                    classes=classes, skip_bad=skip_bad)  # fmt: skip


def evaluate(
    model: str | Path,
    data: str | Path | None,
    out: str | Path,
    runtime: str = "torch",
    tta: bool = False,
    batch_size: int = 8,
    skip_bad: bool = False,
    *,
    split: str | None = None,
    split_of: str | Path | None = None,
    label_column: str | None = None,
    mask_dirs: list[str] | None = None,
    n_cases: int = 4,
    device: str = "cpu",
    record: str | None = None,
) -> dict:
    """Evaluate ``model`` (run folder or bundle) on ``data`` or on its own ``split``; report into ``out``.

    Args:
        data: a labelled folder; None with ``split``.
        split: ``"val"`` or ``"test"``: that side of the model's ``split.json``, read from the data folders of
            its ``config.yaml`` (relative paths are relative to the working directory).
        split_of: another bundle or run folder whose split and data to use (to score two models on the same
            held-out images, e.g. a bundle and the one it replaces).
        runtime: ``"torch"`` or ``"onnx"`` (same results within float tolerance).
        tta: flip test-time augmentation.
        skip_bad: drop unreadable / inconsistent items (listed under ``skipped``) instead of failing.
        label_column: classification label column of ``labels.csv`` (default: the model's).
        mask_dirs: segmentation mask folders (default: the model's, else ``["masks"]``).
        n_cases: how many worst and best segmentation cases to draw (0: none).
        record: store the figures and plots in the bundle under this name (``"test"``,
            ``"external:ph2"``...).

    Returns:
        The metrics dict also written to ``out/metrics.json`` (segmentation: ``{metric}_mean``,
        ``_ci_low``, ``_ci_high`` for dice, iou, sensitivity, specificity, precision, pixel_accuracy, hd95,
        plus ``n_images``; classification: see
        :func:`medlens.evaluation.classification_metrics.classification_metrics`).
    """
    from medlens.evaluation.cls_eval import evaluate_classification
    from medlens.evaluation.record import record_evaluation, split_index
    from medlens.evaluation.seg_eval import evaluate_segmentation
    from medlens.inference.predictor import create_predictor
    from medlens.jsonable import write_json

    if (data is None) == (split is None):
        raise DatasetError("evaluate: give a data folder or a split (val or test), not both")
    if split is not None and (label_column or mask_dirs):
        raise DatasetError(
            "evaluate: --label-column and --mask-dirs read a data folder; --split reads the model's own data "
            "as its config.yaml does"
        )
    out = Path(out)
    predictor = create_predictor(model, runtime=runtime, device=device, tta=tta, batch_size=batch_size)
    if split is not None:
        index = split_index(split_of or model, split, skip_bad)
    else:
        index = folder_index(predictor, Path(data), skip_bad, label_column, mask_dirs)
    out.mkdir(parents=True, exist_ok=True)
    if predictor.task == Task.SEGMENTATION:
        metrics = evaluate_segmentation(predictor, index, out, skip_bad, n_cases)
    else:
        metrics = evaluate_classification(predictor, index, out, skip_bad)
    shown = str(data) if split is None else f"split {split}" + (f" of {split_of}" if split_of else "")
    metrics.update(task=predictor.task, model=str(model), model_name=predictor.name, data=shown,
                   runtime=runtime, tta=tta, classes=predictor.classes)  # fmt: skip
    write_json(out / "metrics.json", metrics)
    logger.info(
        "evaluated %s on %s (%d images); report in %s", predictor.name, shown, metrics["n_images"], out
    )
    if record:
        record_evaluation(model, record, metrics, out)
    return metrics


def primary_score(metrics: dict) -> tuple[str, float]:
    """``(name, value)`` of the figure that ranks two settings of one model: segmentation Dice (the mean over
    sources when there are several, so that the smaller one counts as much), a classifier's balanced accuracy
    at its shipped decision rule (arg-max without one)."""
    if metrics.get("task") == Task.SEGMENTATION:
        sources = metrics.get("by_source") or {}
        per_source = {name: s["dice_mean"] for name, s in sources.items()} if len(sources) > 1 else {}
        name = "dice, mean over sources" if per_source else "dice"
        return name, selection_score(metrics["dice_mean"], per_source)
    if isinstance(metrics.get("decision"), dict):
        return "balanced accuracy at the shipped rule", float(metrics["decision"]["balanced_accuracy"])
    return "balanced accuracy", float(metrics["balanced_accuracy"])


def choose_tta(model: str | Path, out: str | Path, split: str = "val", **kwargs: Any) -> dict:
    """Score a bundle on its own ``split`` without and with flip TTA and record the choice in it
    (``spec.tta``, ``tta_choice`` in bundle.json, a line in the card): TTA by default only where it scores
    higher. ``kwargs`` go to :func:`evaluate`. Returns the choice."""
    from medlens.inference.bundle import is_bundle
    from medlens.inference.packaging import read_bundle_meta, write_bundle_meta

    if not is_bundle(model):
        raise BundleError(f"{model}: --choose-tta records the choice in a bundle; this is not one")
    if split != "val":
        raise DatasetError(
            f"--choose-tta chooses on the validation split, not on {split!r} (it sees no test)"
        )
    out = Path(out)
    plain = evaluate(model, None, out / "without-tta", split=split, tta=False, **kwargs)
    flips = evaluate(model, None, out / "with-tta", split=split, tta=True, **kwargs)
    (name, without), (_, with_) = primary_score(plain), primary_score(flips)
    choice = {"split": split, "metric": name, "without": without, "with": with_, "tta": with_ > without}
    meta = read_bundle_meta(model)
    meta["spec"]["tta"] = choice["tta"]
    meta["tta_choice"] = choice
    write_bundle_meta(Path(model), meta)
    logger.info("%s: flip TTA %s by default (%s on %s: %.4f without, %.4f with)", model,
                "on" if choice["tta"] else "off", name, split, without, with_)  # fmt: skip
    return choice

"""int8 static quantisation of a bundle's graph, kept only where it does not change the results: the int8
and float32 graphs are scored on the bundle's held-out split (test, else validation) and the int8 graph is
accepted when the metric moves by at most ``tolerance`` either way (a gain also means changed decisions).

The graph-level work (calibrated static quantisation, the cache of accepted graphs) is in
:mod:`medlens.inference.quantize`; this module is the acceptance check, which needs the evaluation data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import BundleError
from medlens.inference.bundle import Bundle, is_bundle
from medlens.inference.quantize import INT8_FILE, REPORT_FILE, TOLERANCE, quantize_onnx
from medlens.jsonable import write_json
from medlens.spec import Mode, Task

logger = logging.getLogger(__name__)


def _read(items: Sequence) -> list[np.ndarray]:
    from medlens.data.io import read_image

    return [read_image(item.image).array for item in items]


def _dice(pred: np.ndarray, target: np.ndarray, k: int) -> float:
    """Dice of a binary mask (``k`` = 0) or the mean foreground Dice of ``k``-class label maps."""
    from medlens.evaluation.metrics import dice

    if k == 0:
        return dice(pred > 0, target > 0)
    return float(np.mean([dice(pred == c, target == c) for c in range(1, k)]))


def scored_items(items: Sequence, index: Any) -> list:
    """The items the check scores: those of partially labelled sources are left out (their masks name merged
    classes, not the model's labels)."""
    return [item for item in items if item.source not in index.partial]


def score(predictor: Any, items: Sequence, index: Any, batch: int = 32) -> float:
    """Mean Dice (segmentation, at each mask's size) or decision accuracy (classification) on
    :func:`scored_items` of ``items``."""
    from medlens.data.index import load_target
    from medlens.inference.decisions import probs_to_mask

    spec, values = predictor.spec, []
    items = scored_items(items, index)
    k = len(spec.classes) if spec.mode.value == Mode.MULTICLASS else 0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = _read(chunk)  # a guided classifier guides them
        if predictor.task == Task.SEGMENTATION:
            targets = [load_target(item, index) for item in chunk]
            probs = predictor.predict_proba(images, sizes=[t.shape[:2] for t in targets])
            values += [
                _dice(probs_to_mask(p, spec.mode, spec.threshold), t, k)
                for p, t in zip(probs, targets, strict=True)
            ]
        else:
            labels = predictor.predict_label(images)
            values += [label == item.label for label, item in zip(labels, chunk, strict=True)]
    return float(np.mean(values))


# ------------------------------------------------------------------------------------------------ entry
def quantize_model(
    source: str | Path | Bundle,
    data: Sequence[str | Path] | None = None,
    n_calibration: int = 64,
    tolerance: float = TOLERANCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Quantise a bundle's graph, score fp32 and int8 on its held-out split; accept within ``tolerance``.

    Returns (and writes to ``int8.json`` beside the graph) ``{"accepted", "metric", "fp32", "int8", "delta",
    "tolerance", "split", "n_images", "n_calibration", "path"}``.
    """
    from medlens.evaluation.record import split_index
    from medlens.inference.export import ensure_onnx, onnx_cache_dir
    from medlens.inference.predictor import create_predictor

    bundle = source if isinstance(source, Bundle) else Bundle.load(source) if is_bundle(source) else None
    if bundle is None:
        raise BundleError(
            f"{source}: int8 quantisation needs a bundle (its split.json names the held-out ids)"
        )
    heldout = "test" if bundle.training.get("split_sizes", {}).get("test") else "val"
    held = split_index(bundle.path, heldout, roots=data)
    train = split_index(bundle.path, "train", roots=data).items
    fp32 = create_predictor(bundle, runtime="onnx", batch_size=32)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(train), min(n_calibration, len(train)), replace=False)
    calib_images = _read([train[i] for i in sorted(picks)])
    out = onnx_cache_dir(bundle) / INT8_FILE
    quantize_onnx(ensure_onnx(bundle), out, fp32.preprocess(calib_images).numpy())  # guided, if the model is
    int8 = create_predictor(bundle, runtime="onnx", batch_size=32, precision="int8", onnx_path=out)
    a, b = score(fp32, held.items, held), score(int8, held.items, held)
    report = {
        "accepted": bool(abs(b - a) <= tolerance),
        "metric": "dice" if bundle.spec.is_segmentation else "accuracy",
        "fp32": round(a, 5),
        "int8": round(b, 5),
        "delta": round(b - a, 5),
        "tolerance": tolerance,
        "split": heldout,
        "n_images": len(scored_items(held.items, held)),
        "n_calibration": len(picks),
        "path": str(out),
    }
    write_json(out.parent / REPORT_FILE, report)
    logger.info("int8 %s: %s %s fp32 %.4f int8 %.4f -> %s", bundle.name, heldout, report["metric"], a, b,
                "accepted" if report["accepted"] else "rejected")  # fmt: skip
    return report

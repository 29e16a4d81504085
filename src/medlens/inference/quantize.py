"""Static int8 quantisation of a model's ONNX graph, kept only when its held-out metric holds.

:func:`quantize_model` quantises the float32 export (:func:`medlens.inference.export.ensure_onnx`) with ONNX
Runtime's static QDQ quantisation (per-channel int8 weights, uint8 activations, MinMax ranges calibrated on
``n_calibration`` images of the model's own training split), then scores both graphs on the held-out split of
its ``split.json`` (``test`` when it has one, else ``val``): mean Dice for segmentation, accuracy of the
decision rule for classification. The int8 graph is *accepted* only when ``|int8 - fp32| <= tolerance``
(default 0.005): a large gain is as much a sign of changed decisions as a loss. Graph and report
(``int8.json``) go to the model's cache folder (``$MEDLENS_HOME/cache/onnx/<sha256 of the weights>/``);
:func:`int8_path` returns the graph only when accepted, and predictors with ``precision="int8"`` load it
(float32 otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import BundleError, DatasetError
from medlens.inference.bundle import Bundle, is_bundle

logger = logging.getLogger(__name__)

TOLERANCE = 0.005
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "int8.json"


def int8_path(source: str | Path | Bundle) -> Path | None:
    """The accepted int8 graph of a model (see the module docstring), else None."""
    from medlens.inference.export import onnx_cache_dir

    try:
        folder = onnx_cache_dir(source)
        report = json.loads((folder / REPORT_FILE).read_text())
    except (OSError, ValueError, BundleError):
        return None
    path = folder / INT8_FILE
    return path if report.get("accepted") and path.is_file() else None


def quantize_onnx(fp32: str | Path, out: str | Path, calibration: np.ndarray) -> Path:
    """QDQ static quantisation of ``fp32`` into ``out`` (written atomically; medlens metadata kept).

    Args:
        calibration: float32 ``(N, C, H, W)`` model inputs (preprocessed) for the activation ranges.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quant-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
        proto, meta = onnx.load(str(q)), onnx.load(str(fp32), load_external_data=False).metadata_props
        del proto.metadata_props[:]
        proto.metadata_props.extend(meta)
        onnx.save(proto, str(q))
        os.replace(q, out)
    return out


# ------------------------------------------------------------------------------------------------ data
def _data_roots(bundle: Bundle, data: Sequence[str | Path] | None) -> list[Path]:
    roots = [Path(d) for d in (data or bundle.training.get("data_roots") or [])]
    missing = [str(r) for r in roots if not r.is_dir()]
    if not roots or missing:
        raise DatasetError(
            f"{bundle.name}: its data folders {missing or '(none recorded)'} are not here; give them (--data)"
        )
    return roots


def split_items(bundle: Bundle, data: Sequence[str | Path] | None = None) -> tuple[dict[str, Any], str]:
    """``({"train": items, "heldout": items}, held-out split name)`` from the bundle's ``split.json`` over its
    data folders (those it was trained on unless ``data`` is given)."""
    from medlens.data.layout import discover, merge_indexes

    splits = (
        json.loads((bundle.path / "split.json").read_text()) if (bundle.path / "split.json").is_file() else {}
    )
    heldout = "test" if splits.get("test") else "val"
    if not splits.get("train") or not splits.get(heldout):
        raise DatasetError(f"{bundle.path}: split.json lacks train and val/test ids")
    spec, cfg = bundle.spec, (bundle.training.get("config") or {}).get("data") or {}
    kwargs: dict[str, Any] = {"task": spec.task.value, "mode": spec.mode.value, "check": False}
    if spec.is_segmentation:
        kwargs["mask_dirs"] = spec.mask_dirs or cfg.get("mask_dirs")
    else:
        kwargs["label_column"] = spec.label_column or cfg.get("label_column") or "label"
    indexes = [discover(root, **kwargs) for root in _data_roots(bundle, data)]
    index = merge_indexes(indexes) if len(indexes) > 1 else indexes[0]
    by_id = {item.id: item for item in index.items}
    out = {
        k: [by_id[i] for i in splits[s] if i in by_id] for k, s in (("train", "train"), ("heldout", heldout))
    }
    if len(out["heldout"]) < len(splits[heldout]):
        logger.warning("%s: %d of the %s ids are not in the data", bundle.name,
                       len(splits[heldout]) - len(out["heldout"]), heldout)  # fmt: skip
    return {**out, "index": index}, heldout


def _read(items: Sequence) -> list[np.ndarray]:
    from medlens.data.io import read_image

    return [read_image(item.image).array for item in items]


def _inputs(predictor: Any, images: list[np.ndarray]) -> list[np.ndarray]:
    return images if predictor.task == "segmentation" else predictor.guided_inputs(images)


def _dice(pred: np.ndarray, target: np.ndarray, k: int) -> float:
    """Dice of a binary mask (``k`` = 0) or the mean foreground Dice of ``k``-class label maps."""
    from medlens.evaluation.metrics import dice

    if k == 0:
        return dice(pred > 0, target > 0)
    return float(np.mean([dice(pred == c, target == c) for c in range(1, k)]))


def score(predictor: Any, items: Sequence, index: Any, batch: int = 32) -> float:
    """Mean Dice (segmentation, at each mask's size) or decision accuracy (classification) on ``items``."""
    from medlens.data.layout import load_target
    from medlens.inference.decisions import probs_to_mask

    spec, values = predictor.spec, []
    k = len(spec.classes) if spec.mode.value == "multiclass" else 0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = _inputs(predictor, _read(chunk))
        if predictor.task == "segmentation":
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
    from medlens.inference.export import ensure_onnx, onnx_cache_dir
    from medlens.inference.predictor import create_predictor

    bundle = source if isinstance(source, Bundle) else Bundle.load(source) if is_bundle(source) else None
    if bundle is None:
        raise BundleError(
            f"{source}: int8 quantisation needs a bundle (its split.json names the held-out ids)"
        )
    items, heldout = split_items(bundle, data)
    fp32 = create_predictor(bundle, runtime="onnx", batch_size=32)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(items["train"]), min(n_calibration, len(items["train"])), replace=False)
    calib_images = _inputs(fp32, _read([items["train"][i] for i in sorted(picks)]))
    out = onnx_cache_dir(bundle) / INT8_FILE
    quantize_onnx(ensure_onnx(bundle), out, fp32.preprocess(calib_images).numpy())
    int8 = create_predictor(bundle, runtime="onnx", batch_size=32, precision="int8", onnx_path=out)
    a, b = score(fp32, items["heldout"], items["index"]), score(int8, items["heldout"], items["index"])
    report = {
        "accepted": bool(abs(b - a) <= tolerance),
        "metric": "dice" if bundle.spec.is_segmentation else "accuracy",
        "fp32": round(a, 5),
        "int8": round(b, 5),
        "delta": round(b - a, 5),
        "tolerance": tolerance,
        "split": heldout,
        "n_images": len(items["heldout"]),
        "n_calibration": len(picks),
        "path": str(out),
    }
    (out.parent / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    logger.info("int8 %s: %s %s fp32 %.4f int8 %.4f -> %s", bundle.name, heldout, report["metric"], a, b,
                "accepted" if report["accepted"] else "rejected")  # fmt: skip
    return report

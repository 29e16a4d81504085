"""Batch prediction over files and folders, with a model (plain) or a full pipeline.

Plain mode (``model`` = run folder or bundle) writes per image into ``out``:

- segmentation: ``<stem>_mask.png`` (0/255 from a binary segmenter, class labels from a multi-class one, as
  in pipeline mode: `medlens.drawing.viewable_mask`; one 0/255 ``<stem>_mask_<class>.png`` per label for
  multi-label), ``<stem>_overlay.png`` (several structures: with their colour key drawn in,
  :func:`medlens.pipelines.overlay.draw_overlay`) and ``<stem>.json`` (image size, input notes, what each
  value of the mask PNG shows (``mask_values``), area fraction, bounding box, connected components (each
  structure's own for a multi-class mask, with area and components per class), model name,
  post-processing, TTA uncertainty);
- classification: ``<stem>.json`` (label, probabilities, uncertainty with TTA, input notes).

Input notes say what reading did to an image (a transparent one laid on white, `medlens.data.io.read_image`);
they are also logged as warnings and joined in the ``input_notes`` column of ``summary.csv``.

Pipeline mode (``model`` = a pipeline name under ``models_dir``, a pipeline YAML, or ``auto``: each image the
pipeline of its modality, `medlens.pipelines.batch_analysis`) writes ``<stem>.json`` (``Analysis.to_dict()``
and the REST API's ``classification``), ``<stem>_mask.png``, ``<stem>_overlay.png`` and
``<stem>_gradcam.png``; its ``summary.csv`` rows are ``Analysis.csv_row()`` (the pipeline that analysed the
image, the modality seen, the reading, the findings, the Grad-CAM share inside the region, scalar features)
with the file names. A refused image's probabilities are kept and marked ``reading`` false in both, as the
API marks them.

Both write ``summary.csv``: one row per input with ``status`` ok/error; unreadable files are reported there
with the reason and skipped, never fatal (every readable one is still predicted and written). ``summary.json``
gives the counts, the wall time, the images/s and ``failed``: the ``source`` and ``error`` (the reason) of
each unreadable input, which `medlens predict` names on stderr before it exits non-zero.
Both modes run the models on batches of ``batch_size`` images (pipelines: `Pipeline.analyze_batch`).
``<stem>`` is the file's path relative to the folder given, with ``/`` turned into ``__`` so that files of
the same name in different sub-folders do not collide.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medlens.errors import BundleError, ImageReadError, MedlensError
from medlens.inference.bundle import read_spec, source_kind
from medlens.jsonable import write_json
from medlens.pipelines.analysis import FINDINGS_SEPARATOR
from medlens.spec import Mode, Task

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.csv"
SUMMARY_JSON = "summary.json"
_RED = (230, 40, 40)


# ---------------------------------------------------------------------------------- inputs and outputs
def _is_candidate(path: Path) -> bool:
    from medlens.data.io import IMAGE_EXTENSIONS

    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in (*IMAGE_EXTENSIONS, "")


def collect_inputs(inputs: str | Path | Iterable[str | Path]) -> list[tuple[Path, str]]:
    """``(file, output stem)`` for every input file and every image file under input folders (recursive,
    sorted; extension-less files are kept because DICOM often has none). Missing paths are kept so that they
    are reported in the summary."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    found: list[tuple[Path, str]] = []
    for item in map(Path, items):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if _is_candidate(p) and not _hidden(p, item))
            found += [(p, p.relative_to(item).with_suffix("").as_posix().replace("/", "__")) for p in files]
        else:
            found.append((item, item.stem))
    seen: dict[str, int] = {}
    unique = []
    for path, stem in found:
        seen[stem] = seen.get(stem, 0) + 1
        unique.append((path, stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"))
    return unique


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _save_png(path: Path, array: np.ndarray) -> str:
    array = np.asarray(array)
    Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array).save(path)
    return path.name


def _write_summary(path: Path, rows: list[dict[str, Any]]) -> Path:
    fields = ["id", "source", "status", "error"]
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _read(path: Path):
    from medlens.data.io import read_image

    if not path.exists():
        raise ImageReadError(path, "file not found")
    return read_image(path)


def _batches(inputs: list[tuple[Path, str]], batch_size: int, rows: dict[int, dict], done: str
             ) -> Iterator[list[tuple[int, Path, str, Any]]]:  # fmt: skip
    """The readable inputs in batches of ``(input position, path, stem, ImageRecord)``; an unreadable one is
    logged and its error row put in ``rows`` at its position."""
    batch: list[tuple[int, Path, str, Any]] = []
    for n, (path, stem) in enumerate(inputs, 1):
        try:
            record = _read(path)
            batch.append((n, path, stem, record))
            for note in record.notes:  # said in its JSON and summary row too
                logger.warning("%s: %s", path, note)
        except ImageReadError as exc:
            logger.warning("%s; skipped", exc)  # the CLI's wording: "cannot read <file>: <reason>"
            rows[n] = {"id": stem, "source": str(path), "status": "error", "error": exc.reason}
        if len(batch) == batch_size or (n == len(inputs) and batch):
            yield batch
            batch = []
            logger.info("%s %d / %d images", done, n, len(inputs))


# ---------------------------------------------------------------------------------- plain: segmentation
def _mask_payload(mask: np.ndarray, classes: Sequence[str], mode: str) -> dict[str, Any]:
    """Area fraction, bounding box and components of a mask (+ per class for label and multi-label masks;
    the components of a label mask are each structure's, `structure_components`)."""
    from medlens.inference.postprocess import (
        area_fraction,
        bounding_box,
        connected_components,
        label_planes,
        structure_components,
    )

    fg = mask.max(axis=-1) if mask.ndim == 3 else mask
    labels = mode == Mode.MULTICLASS and mask.ndim == 2
    payload: dict[str, Any] = {
        "area_fraction": area_fraction(fg),
        "bbox": bounding_box(fg),
        "components": structure_components(mask, classes) if labels else connected_components(fg),
    }
    payload["n_components"] = len(payload["components"])
    if mode != Mode.BINARY:
        named = len(classes) == mask.shape[-1]
        planes = label_planes(mask, classes) if mask.ndim == 2 else {
            classes[k] if named else str(k): mask[..., k] for k in range(mask.shape[-1])}  # fmt: skip
        payload["per_class"] = {
            name: {
                "area_fraction": area_fraction(p),
                "bbox": bounding_box(p),
                "n_components": len(connected_components(p)),
            }
            for name, p in planes.items()
        }
    return payload


def _postprocess(mask: np.ndarray, options: dict[str, Any]) -> np.ndarray:
    from medlens.inference.postprocess import apply_postprocess

    kw = {
        "fill": options["fill_holes"],
        "largest": options["largest_component"],
        "min_size": options["min_size"],
    }
    if mask.ndim == 3:  # multi-label: each label on its own
        return np.stack([apply_postprocess(mask[..., k], **kw) for k in range(mask.shape[-1])], axis=-1)
    return apply_postprocess(mask, **kw)


def _write_segmentation(predictor, stem: str, record, prob, unc, out: Path, options) -> dict:
    from medlens.drawing import binary_segmenter, mask_values, overlay_mask, viewable_mask
    from medlens.inference.decisions import probs_to_mask
    from medlens.pipelines.names import readable
    from medlens.pipelines.overlay import draw_overlay

    mask = _postprocess(probs_to_mask(prob, predictor.spec.mode, predictor.spec.threshold), options)
    mode, classes, image = predictor.mode, predictor.classes, record.array
    files = {}
    if mask.ndim == 3:
        for k in range(mask.shape[-1]):
            name = classes[k] if len(classes) == mask.shape[-1] else str(k)
            files[f"mask_{name}"] = _save_png(out / f"{stem}_mask_{name}.png", mask[..., k] * 255)
        values = {0: "background", 255: "the class its file names"}
    else:
        files["mask"] = _save_png(out / f"{stem}_mask.png", viewable_mask(mask, classes))
        values = mask_values([readable(c) for c in classes])
    binary = mask.ndim == 2 and binary_segmenter(classes)  # one structure, in red; several: with their key
    overlay = overlay_mask(image, mask, colors=_RED) if binary else draw_overlay(image, mask, classes)[0]
    files["overlay"] = _save_png(out / f"{stem}_overlay.png", overlay)
    payload = {
        "id": stem,
        "model": predictor.name,
        "task": "segmentation",
        "mode": mode,
        "classes": classes,
        "image_size": list(image.shape[:2]),
        "input_notes": record.notes,
        "threshold": predictor.spec.threshold,
        "mask_values": values,
        **_mask_payload(mask, classes, mode),
        "postprocess": options,
        "uncertainty": unc,
        "files": files,
    }
    write_json(out / f"{stem}.json", payload)
    return {
        "area_fraction": payload["area_fraction"],
        "n_components": payload["n_components"],
        "uncertainty": unc,
        "input_notes": FINDINGS_SEPARATOR.join(record.notes),
        **files,
        "json": f"{stem}.json",
    }


def _predict_segmentation(predictor, batch, out: Path, options: dict) -> list[dict]:
    images = [record.array for _, _, record in batch]
    if predictor.tta:
        results = [(p, u) for p, _, u in predictor.predict_batch_with_uncertainty(images)]
    else:
        results = [(p, None) for p in predictor.predict_proba(images)]
    return [
        _write_segmentation(predictor, stem, record, prob, unc, out, options)
        for (_, stem, record), (prob, unc) in zip(batch, results, strict=True)
    ]


# ---------------------------------------------------------------------------------- plain: classification
def _predict_classification(predictor, batch, out: Path, options: dict) -> list[dict]:
    images = [record.array for _, _, record in batch]  # a guided classifier guides them
    if predictor.tta:
        probs, uncertainty = predictor.predict_with_uncertainty(images)
    else:
        probs, uncertainty = predictor.predict_proba(images), [None] * len(images)
    rows = []
    for (_, stem, record), p, label, unc in zip(
        batch, probs, predictor.decide(probs), uncertainty, strict=True
    ):
        probabilities = {c: float(v) for c, v in zip(predictor.classes, p, strict=True)}
        payload = {
            "id": stem,
            "model": predictor.name,
            "task": "classification",
            "label": label,
            "probabilities": probabilities,
            "uncertainty": unc,
            "image_size": list(record.array.shape[:2]),
            "input_notes": record.notes,
            "decision": predictor.spec.decision.to_dict() if predictor.spec.decision else None,
            "temperature": predictor.temperature,
        }
        write_json(out / f"{stem}.json", payload)
        rows.append(
            {
                "label": label,
                "confidence": max(probabilities.values()),
                "uncertainty": unc,
                "input_notes": FINDINGS_SEPARATOR.join(record.notes),
                **{f"prob_{c}": v for c, v in probabilities.items()},
                "json": f"{stem}.json",
            }
        )
    return rows


def _run_plain(
    model, inputs, out: Path, runtime: str, tta: bool | None, batch_size: int, options: dict, precision: str
) -> list[dict]:
    from medlens.inference.predictor import create_predictor

    tta = read_spec(model).runs_tta(tta)  # the model's own choice unless asked
    predictor = create_predictor(model, runtime=runtime, tta=tta, batch_size=batch_size, precision=precision)
    out.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    handler = _predict_segmentation if predictor.task == Task.SEGMENTATION else _predict_classification
    rows: dict[int, dict] = {}  # by input position, so that the summary keeps the input order
    for batch in _batches(inputs, batch_size, rows, "predicted"):
        results = handler(predictor, [(p, s, record) for _, p, s, record in batch], out, options)
        for (pos, p, s, _), result in zip(batch, results, strict=True):
            rows[pos] = {"id": s, "source": str(p), "status": "ok", "error": "", **result}
    return [rows[k] for k in sorted(rows)]


# ---------------------------------------------------------------------------------- pipeline mode
def _run_pipeline(
    model, inputs, out: Path, models_dir, runtime: str, batch_size: int, precision: str, tta: bool | None
) -> list:
    from medlens.pipelines.batch_analysis import load_analyser, write_analysis

    analyse = load_analyser(model, models_dir, runtime, batch_size, precision)
    out.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    rows: dict[int, dict] = {}  # by input position
    for batch in _batches(inputs, batch_size, rows, "analysed"):
        analyses = analyse([record for *_, record in batch], tta)
        for (pos, p, s, _), analysis in zip(batch, analyses, strict=True):
            analysis.id = analysis.id or s
            rows[pos] = {"id": s, "source": str(p), "status": "ok", "error": "",
                         **write_analysis(analysis, s, p, out)}  # fmt: skip
    return [rows[k] for k in sorted(rows)]


# ---------------------------------------------------------------------------------- entry point
def _is_model_source(model: str | Path) -> bool:
    """A bundle, run folder or checkpoint (plain prediction), rather than a pipeline name or YAML."""
    try:
        return bool(source_kind(model))
    except BundleError:
        return False


def predict_paths(
    model: str | Path,
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    runtime: str = "torch",
    tta: bool | None = None,
    fill_holes: bool = False,
    largest_component: bool = False,
    batch_size: int = 8,
    models_dir: str | Path = "models",
    *,
    min_size: int = 0,
    precision: str = "fp32",
) -> Path:
    """Predict every image in ``inputs`` (files and/or folders, recursive) and write the results to ``out``.

    Args:
        model: run folder or bundle (plain prediction), or a pipeline name / pipeline YAML / ``auto`` (full
            analysis; ``auto`` sends each image to the pipeline of its modality and refuses those none takes).
        runtime: ``"torch"`` or ``"onnx"`` (both modes).
        tta: flip test-time augmentation (adds an ``uncertainty`` per image); None = each model as chosen on
            its validation split. Each row says whether it ran; ``summary.json`` records what was asked.
        fill_holes, largest_component, min_size: mask post-processing (plain segmentation).
        batch_size: images per batched model call (both modes; a pipeline's classifier gets their 3 TTA
            views each).
        models_dir: where pipelines and their bundles live (pipeline mode).
        precision: ONNX graphs, "fp32" or "int8" (used when `medlens export --int8` accepted one).

    Returns:
        The path of ``out/summary.csv`` (one row per input; unreadable files have ``status`` "error");
        ``out/summary.json`` holds the counts, seconds and images/s, and the unreadable inputs (``failed``).
    """
    out = Path(out)
    files = collect_inputs(inputs)
    if not files:
        raise MedlensError(f"no images found in {inputs}")
    options = {"fill_holes": fill_holes, "largest_component": largest_component, "min_size": min_size}
    t0, batch_size = time.perf_counter(), max(1, batch_size)
    if _is_model_source(model):
        rows = _run_plain(model, files, out, runtime, tta, batch_size, options, precision)
    else:
        rows = _run_pipeline(model, files, out, models_dir, runtime, batch_size, precision, tta)
    seconds = time.perf_counter() - t0  # models loaded, images read, predicted and written
    failed = [{"source": r["source"], "error": r["error"]} for r in rows if r["status"] != "ok"]
    n_bad = len(failed)
    rate = (len(rows) - n_bad) / seconds if seconds > 0 else None
    stats = {"images": len(rows), "ok": len(rows) - n_bad, "errors": n_bad, "seconds": round(seconds, 3),
             "images_per_s": rate and round(rate, 2), "batch_size": batch_size, "runtime": runtime,
             "precision": precision, "tta": tta, "failed": failed}  # fmt: skip
    write_json(out / SUMMARY_JSON, stats)
    logger.info("%d images predicted (%.2f images/s), %d unreadable; results in %s",
                len(rows) - n_bad, rate or 0.0, n_bad, out)  # fmt: skip
    return _write_summary(out / SUMMARY_FILE, rows)

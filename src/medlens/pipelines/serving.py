"""Serving helpers around `medlens.pipelines.pipeline.Pipeline`: batched analysis and warm-up.

:func:`analyze_batch` runs each model once for a whole batch of images (their TTA views included) and then
finishes every image with `Pipeline.analyze`, handing it the model outputs (:class:`Prefetched`), so that a
batch gives the same results as analysing its images one by one. :func:`warm_up` runs every model stage
once on a synthetic image before the first request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.data.io import ImageRecord
from medlens.inference.decisions import probs_to_mask
from medlens.inference.guided import GuidedInputs, guide_one
from medlens.inference.runtime import image_views
from medlens.pipelines.advice import check_modality
from medlens.pipelines.analysis import Analysis
from medlens.pipelines.features import compute_features
from medlens.pipelines.modality import ModalityVerdict
from medlens.pipelines.stages import as_image, enhance_contrast

if TYPE_CHECKING:
    from medlens.pipelines.pipeline import Pipeline

logger = logging.getLogger(__name__)


@dataclass
class Prefetched:
    """One image of a batch, prepared, with the model outputs computed for the whole batch.

    ``modality``: the modality classifier's verdict (None without the check); ``seg``: ``(probabilities at the
    image's size, TTA uncertainty or None)``; ``cls``: ``(per-view probabilities (V, K), per-view feature maps
    (V, C, h, w) or None)``; ``ms``: this image's share of the batch's stage times."""

    original: np.ndarray
    spacing: Any
    work: np.ndarray
    modality: ModalityVerdict | None = None
    seg: tuple[np.ndarray, float | None] | None = None
    cls: tuple[np.ndarray, np.ndarray | None] | None = None
    ms: dict[str, float] = field(default_factory=dict)


def _prepare(images: Sequence[np.ndarray | ImageRecord], clahe: bool) -> list[Prefetched]:
    out = []
    for image in images:
        t0 = time.perf_counter()
        original, spacing = as_image(image)
        work = enhance_contrast(original) if clahe else original
        out.append(Prefetched(original, spacing, work, ms={"preprocess": (time.perf_counter() - t0) * 1e3}))
    return out


def _see_all(pipeline: Pipeline, prepared: list[Prefetched], given: Sequence[ModalityVerdict] | None) -> None:
    """Each image's modality verdict: ``given`` (``pipeline=auto`` ran the classifier), else one batched call
    of the pipeline's modality classifier; nothing without the check."""
    gate = pipeline.modality_gate
    if gate is None and given is None:
        return
    t0 = time.perf_counter()
    seen = list(given) if given is not None else gate.classifier.classify([p.original for p in prepared])
    share = (time.perf_counter() - t0) * 1e3 / max(1, len(prepared))
    for p, verdict in zip(prepared, seen, strict=True):
        p.modality, p.ms["modality"] = verdict, share


def _in_scope(pipeline: Pipeline, p: Prefetched) -> bool:
    """Whether the image goes on to the models (the modality check and the scope's colour check pass)."""
    gate = pipeline.modality_gate
    if gate is not None and gate.check(p.original, p.modality)[1] is not None:
        return False
    return check_modality(p.original, pipeline.config.scope) is None


def _segment_all(pipeline: Pipeline, live: list[Prefetched], tta: bool) -> None:
    t0, seg = time.perf_counter(), pipeline.segmenter
    works = [p.work for p in live]
    if tta:
        outs = [(prob, unc) for prob, _, unc in seg.predict_batch_with_uncertainty(works)]
    else:
        outs = [(prob, None) for prob in seg.predict_proba(works)]
    share = (time.perf_counter() - t0) * 1e3 / len(live)
    for p, out in zip(live, outs, strict=True):
        p.seg, p.ms["segment"] = out, share


def _classify_all(pipeline: Pipeline, live: list[Prefetched], tta: bool) -> None:
    t0, clf = time.perf_counter(), pipeline.classifier
    inputs = []
    for p in live:
        x = p.work
        if pipeline.guide_mode is not None:
            raw = probs_to_mask(p.seg[0], pipeline.segmenter.spec.mode, pipeline.segmenter.spec.threshold)
            x = guide_one(p.work, raw, pipeline.guide_mode, clf.input_size, margin=clf.guide_margin)
        inputs += image_views(x, tta, clf.flips)
    probs, feats = clf.predict_proba_with_features(GuidedInputs(inputs))  # (N * V, K), (N * V, C, h, w)|None
    v = len(inputs) // len(live)
    share = (time.perf_counter() - t0) * 1e3 / len(live)
    for i, p in enumerate(live):
        part = slice(i * v, (i + 1) * v)
        p.cls, p.ms["classify"] = (probs[part], feats[part] if feats is not None else None), share


def analyze_batch(
    pipeline: Pipeline,
    images: Sequence[np.ndarray | ImageRecord],
    clahe: bool = False,
    gradcam: bool = True,
    tta: bool | None = None,
    modality: Sequence[ModalityVerdict] | None = None,
) -> list[Analysis]:
    """`Pipeline.analyze` of every image, each model run once per batch (chunked by its ``batch_size``).

    Images out of scope for the pipeline's modality skip the models, as in ``analyze``; the results equal
    those of ``analyze`` image by image within float tolerance of batched convolutions. ``modality``: the
    images' modality verdicts when the classifier already ran on them (``pipeline=auto``)."""
    prepared = _prepare(images, clahe)
    _see_all(pipeline, prepared, modality)
    live = [p for p in prepared if _in_scope(pipeline, p)]
    if live and pipeline.segmenter is not None:
        _segment_all(pipeline, live, pipeline.model_tta(pipeline.segmenter, tta))
    if live and pipeline.classifier is not None:
        _classify_all(pipeline, live, pipeline.model_tta(pipeline.classifier, tta))
    return [pipeline.analyze(p.original, clahe, gradcam, tta, prefetched=p) for p in prepared]


def synthetic_image(size: tuple[int, int] = (192, 256)) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture of a dark round blob on a light background (no patient data)."""
    yy, xx = np.mgrid[: size[0], : size[1]]
    blob = np.exp(-((yy - size[0] / 2) ** 2 + (xx - size[1] / 2) ** 2) / (2 * (min(size) / 5) ** 2))
    return (np.array([200.0, 150.0, 130.0]) * (1 - 0.6 * blob[..., None])).astype(np.uint8)


def warm_up(pipeline: Pipeline, size: tuple[int, int] = (192, 256), rounds: int = 2) -> float:
    """Run every model stage of ``pipeline`` ``rounds`` times on :func:`synthetic_image`, bypassing the
    out-of-scope checks, so that first calls (ONNX Runtime buffers and the memory pattern it records on a
    first run and reuses from the second, torch Grad-CAM, lazy imports) are paid before the first request.
    Returns the milliseconds it took."""
    t0, image = time.perf_counter(), synthetic_image(size)
    for _ in range(max(1, rounds)):
        if pipeline.modality_gate is not None:
            pipeline.modality_gate.classifier.classify([image])
        result, raw, cls_input, features = pipeline._empty_result(image), None, image, None
        if pipeline.segmenter is not None:
            raw = pipeline._segment(result, image, image, True)
            result.features = compute_features(pipeline.config.features, image, result.mask, None,
                                               classes=pipeline.segmenter.classes)  # fmt: skip
        if pipeline.classifier is not None:
            if pipeline.guide_mode is not None:
                cls_input = guide_one(
                    image,
                    raw,
                    pipeline.guide_mode,
                    pipeline.classifier.input_size,
                    margin=pipeline.classifier.guide_margin,
                )
            features = pipeline._classify(result, cls_input, True)
        pipeline._gradcam(result, image, image, cls_input, raw, features)
    ms = (time.perf_counter() - t0) * 1000.0
    logger.info("pipeline %s warmed up in %.0f ms", pipeline.name, ms)
    return ms

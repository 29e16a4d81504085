"""The one sequence of a pipeline's stages, run over a batch of images (one image is a batch of one).

1. intake: the image as ``(H, W, C)`` uint8 and its pixel spacing, contrast-enhanced (CLAHE) for the models
   when asked;
2. modality: the modality classifier's verdict (one batched call, or the verdicts ``pipeline=auto`` already
   has), then the scope's colour check; an image out of scope here skips the models;
3. segment: one batched call (flip-TTA views included), then per image the mask before and after
   post-processing, its area and components (per structure for a multi-class mask) and TTA uncertainty, and
   the region check;
4. features and the overlay;
5. classify: one batched call of every image's test-time views, guided by the classifier itself with the
   masks of step 3 before post-processing; the probabilities, decision, class groups, TTA uncertainty, and
   the confidence check;
6. Grad-CAM of the images still in scope (the classifier's predicted class, else the segmenter);
7. conclude: the out-of-scope verdict or the reading, and every finding.

`medlens.pipelines.pipeline.Pipeline` runs it for ``analyze`` (one image), ``analyze_batch`` and
``warm_up`` (every stage once on a synthetic image, the scope checks off). Each image's ``timings_ms`` are
its own stages plus its share of the batched model calls; ``total`` is their sum.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlens.data.io import ImageRecord
from medlens.inference.decisions import probs_to_mask
from medlens.inference.postprocess import (
    apply_postprocess,
    area_fraction,
    connected_components,
    structure_areas,
    structure_components,
)
from medlens.inference.predictor import ClassificationPredictor, SegmentationPredictor
from medlens.pipelines.advice import (
    DEFAULT_NOTICE,
    AdviceContext,
    check_confidence,
    check_modality,
    check_region,
    out_of_scope_text,
    scope_summary,
)
from medlens.pipelines.analysis import Analysis
from medlens.pipelines.config import DEFAULT_TTA, PipelineConfig
from medlens.pipelines.features import compute_features
from medlens.pipelines.groups import group_scores
from medlens.pipelines.heatmap import heatmap_overlay, place_cam, share_inside
from medlens.pipelines.modality import ModalityGate, ModalityVerdict, check_gate
from medlens.pipelines.names import region_names
from medlens.pipelines.overlay import draw_overlay
from medlens.pipelines.stages import StageTimer, as_image, enhance_contrast
from medlens.spec import Mode

logger = logging.getLogger(__name__)


@dataclass
class ImageWork:
    """One image on its way through the stages: the image, what the models see, the result filled in stage
    by stage, its stage timer, every reason it is out of scope (empty: in scope so far), the segmentation
    before post-processing (what guides the classifier) and the classifier's ``(C, h, w)`` feature map of
    its identity view when the runtime gives one (Grad-CAM without backpropagation)."""

    original: np.ndarray
    spacing: tuple[float, float] | None
    work: np.ndarray
    result: Analysis
    timer: StageTimer
    reasons: list[str] = field(default_factory=list)
    raw_mask: np.ndarray | None = None
    features: np.ndarray | None = None

    def refuse(self, *reasons: str | None) -> None:
        """Add the out-of-scope reasons a check gave (None: the check passed)."""
        self.reasons += [reason for reason in reasons if reason]


@contextmanager
def shared(items: Sequence[ImageWork], stage: str) -> Iterator[None]:
    """Time a batched call and count each image's share of it in ``stage``."""
    t0 = time.perf_counter()
    yield
    share = (time.perf_counter() - t0) * 1e3 / max(1, len(items))
    for item in items:
        item.timer.add(stage, share)


def synthetic_image(size: tuple[int, int] = (192, 256)) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture of a dark round blob on a light background (no patient data)."""
    yy, xx = np.mgrid[: size[0], : size[1]]
    blob = np.exp(-((yy - size[0] / 2) ** 2 + (xx - size[1] / 2) ** 2) / (2 * (min(size) / 5) ** 2))
    return (np.array([200.0, 150.0, 130.0]) * (1 - 0.6 * blob[..., None])).astype(np.uint8)


class Analyzer:
    """A pipeline's models, config and modality check, and the one sequence of stages (module docstring).

    Not thread-safe (Grad-CAM hooks the model): give each thread its own :meth:`replicate`.
    """

    def __init__(
        self,
        config: PipelineConfig,
        segmenter: SegmentationPredictor | None,
        classifier: ClassificationPredictor | None,
        gate: ModalityGate | None,
        learnt_from: dict[str, str],
    ) -> None:
        self.config, self.segmenter, self.classifier = config, segmenter, classifier
        self.gate, self.learnt_from = gate, learnt_from

    def replicate(self) -> Analyzer:
        """A twin for another thread: same config and check, predictors replicated."""
        twin = copy.copy(self)
        twin.segmenter = self.segmenter.replicate() if self.segmenter is not None else None
        twin.classifier = self.classifier.replicate() if self.classifier is not None else None
        return twin

    @staticmethod
    def model_tta(model: Any, tta: bool | None) -> bool:
        """Whether ``model`` (segmenter or classifier, None = absent) runs flip TTA when ``tta`` is asked
        (never when it was trained under no flip)."""
        return model is not None and model.spec.runs_tta(tta)

    # -- the sequence ---------------------------------------------------------------------------------------
    def run(
        self, images: Sequence[np.ndarray | ImageRecord], clahe: bool = False, gradcam: bool = True,
        tta: bool | None = DEFAULT_TTA, modality: Sequence[ModalityVerdict] | None = None, *,
        scope: bool = True,
    ) -> list[Analysis]:  # fmt: skip
        """One `Analysis` per image, in order (see `Pipeline.analyze` for the arguments). ``scope=False``
        runs every stage whatever the out-of-scope checks say (warm-up)."""
        items = [self._take(image, clahe) for image in images]
        self._check_modality(items, modality)
        live = [item for item in items if not item.reasons or not scope]
        if live and self.segmenter is not None:
            self._segment(live, tta)
        if live and self.classifier is not None:
            self._classify(live, tta)
        for item in live:
            if self.classifier is None:
                item.result.uncertainty = item.result.segmentation_uncertainty
            if gradcam and (not item.reasons or not scope):
                with item.timer("gradcam"):
                    item.result.gradcam = self._explain(item)
        for item in items:
            result = item.result
            with item.timer("advice"):
                self._conclude(result, item.reasons)
            result.timings_ms = item.timer.finish()
            logger.info(
                "pipeline %s: label=%s out_of_scope=%s in %.0f ms",
                self.config.name, result.label, result.out_of_scope, result.timings_ms["total"],
            )  # fmt: skip
        return [item.result for item in items]

    def warm_up(self, size: tuple[int, int] = (192, 256), rounds: int = 2) -> float:
        """Run every stage ``rounds`` times on :func:`synthetic_image`, the out-of-scope checks off, so that
        first calls (ONNX Runtime buffers and the memory pattern it records on a first run and reuses from
        the second, torch Grad-CAM, lazy imports) are paid before the first request. Returns the ms taken."""
        t0, image = time.perf_counter(), synthetic_image(size)
        for _ in range(max(1, rounds)):
            self.run([image], gradcam=True, tta=True, scope=False)
        ms = (time.perf_counter() - t0) * 1000.0
        logger.info("pipeline %s warmed up in %.0f ms", self.config.name, ms)
        return ms

    # -- the stages -----------------------------------------------------------------------------------------
    def _take(self, image: np.ndarray | ImageRecord, clahe: bool) -> ImageWork:
        timer = StageTimer()
        with timer("preprocess"):
            record = as_image(image)
            work = enhance_contrast(record.array) if clahe else record.array
        return ImageWork(record.array, record.spacing_mm, work, self._empty_result(record), timer)

    def _check_modality(self, items: list[ImageWork], given: Sequence[ModalityVerdict] | None) -> None:
        """The modality check (``given``: the verdicts when ``pipeline=auto`` ran the classifier, else one
        batched call of the pipeline's classifier), then the scope's colour check."""
        if given is None and self.gate is not None and items:
            with shared(items, "modality"):
                given = self.gate.classifier.classify([item.original for item in items])
        for item, seen in zip(items, given if given is not None else [None] * len(items), strict=True):
            with item.timer("modality"):
                item.result.modality, refused = check_gate(self.gate, item.original, seen)
            item.refuse(refused, check_modality(item.original, self.config.scope))

    def _segment(self, items: list[ImageWork], tta: bool | None) -> None:
        """Masks (before and after post-processing), area, components, TTA uncertainty; the region check;
        then the features and the overlay."""
        seg, post, flipped = self.segmenter, self.config.segmenter, self.model_tta(self.segmenter, tta)
        with shared(items, "segment"):
            works = [item.work for item in items]
            if flipped:
                outs = [(prob, unc) for prob, _, unc in seg.predict_batch_with_uncertainty(works)]
            else:
                outs = [(prob, None) for prob in seg.predict_proba(works)]
        for item, (prob, uncertainty) in zip(items, outs, strict=True):
            result = item.result
            with item.timer("segment"):
                item.raw_mask = probs_to_mask(prob, seg.spec.mode, seg.spec.threshold)
                mask = apply_postprocess(
                    item.raw_mask, post.fill_holes, post.largest_component, post.min_size_px
                )
                result.mask, result.area_fraction = mask, area_fraction(mask)
                if seg.mode == Mode.MULTICLASS:  # lungs and heart apart, not one region
                    result.area_fractions = structure_areas(mask, seg.classes)
                    result.components = structure_components(mask, seg.classes)
                else:
                    result.components = connected_components(mask > 0)
                result.segmentation_uncertainty, result.tta = uncertainty, result.tta or flipped
            item.refuse(check_region(result.area_fraction, self.config.scope))
            with item.timer("features"):
                result.features = compute_features(
                    self.config.features, item.original, mask, item.spacing, classes=seg.classes
                )
                result.overlay, result.colour_key = draw_overlay(
                    item.original, mask, result.mask_names, result.features
                )

    def _classify(self, items: list[ImageWork], tta: bool | None) -> None:
        """Calibrated probabilities, label, class groups and, with TTA, the uncertainty: the standard
        deviation over the views (the identity and the flips the model was trained under) of the predicted
        class's probability (0 = the views agree; None with a single view); then the confidence check."""
        clf, views_tta = self.classifier, self.model_tta(self.classifier, tta)
        masks = [item.raw_mask for item in items] if self.segmenter is not None else None
        with shared(items, "classify"):
            per_view, feats = clf.predict_views([item.work for item in items], masks, tta=views_tta)
        for i, item in enumerate(items):
            result = item.result
            with item.timer("classify"):
                probs = per_view[i].mean(axis=0, keepdims=True)  # (V, K) -> (1, K)
                result.probabilities = {c: float(p) for c, p in zip(clf.classes, probs[0], strict=True)}
                result.label = clf.decide(probs)[0]
                result.groups = group_scores(result.probabilities, clf.spec.groups)
                if len(per_view[i]) > 1:  # the identity and at least one flip ran
                    result.uncertainty = float(per_view[i][:, clf.classes.index(result.label)].std())
                    result.tta = True
                item.features = feats[i][0] if feats is not None else None
            top = max(result.probabilities.values()) if result.probabilities else None
            item.refuse(check_confidence(top, result.uncertainty, self.config.scope))

    def _explain(self, item: ImageWork) -> np.ndarray | None:
        """Grad-CAM overlay on the original image: the classifier's predicted class (placed back where a
        crop-guided classifier cropped), else the segmenter; sets ``gradcam_inside_region``, the share of the
        map inside the segmented region."""
        cfg, result = self.config, item.result
        if self.classifier is not None and cfg.classifier.gradcam:
            clf = self.classifier
            cam = clf.explain(item.work, clf.classes.index(result.label), item.raw_mask, item.features)
            cam = place_cam(cam, clf.guide_crop(item.raw_mask), item.original.shape[:2])
        elif self.segmenter is not None and cfg.segmenter.gradcam and self.classifier is None:
            cam = self.segmenter.explain(item.work)
        else:
            return None
        if result.mask is not None:
            result.gradcam_inside_region = share_inside(cam, result.mask > 0)
        return heatmap_overlay(item.original, cam)

    def _conclude(self, result: Analysis, reasons: list[str]) -> None:
        """Out-of-scope verdict (every reason, and all of them in one line) or the reading, and every finding
        that applies. A refused result carries its refusal and the generic notice only: no class, no flag, no
        model provenance, no pipeline's notice."""
        reason = scope_summary(reasons)
        result.out_of_scope, result.scope_reason, result.scope_reasons = bool(reasons), reason, list(reasons)
        if reason is not None:
            result.label, result.learnt_from, result.notice = None, {}, DEFAULT_NOTICE
            result.groups = [{**g, "flagged": None} for g in result.groups]
        ctx = AdviceContext(
            label=result.label, probability=result.probability, probabilities=result.probabilities,
            uncertainty=result.uncertainty, features=result.features,
            region_found=None if self.segmenter is None else bool(result.area_fraction),
            gradcam_inside=result.gradcam_inside_region,
        )  # fmt: skip
        advice = self.config.advice
        result.recommendation = out_of_scope_text(reason, self.config.title) if reason else advice.advise(ctx)
        result.findings = advice.find(ctx, reasons)

    def _empty_result(self, record: ImageRecord) -> Analysis:
        seg, cfg = self.segmenter, self.config.segmenter
        return Analysis(
            id=None, pipeline=self.config.name, image_size=record.array.shape[:2],
            mask=None, overlay=None, area_fraction=None, components=[], label=None, probabilities={},
            uncertainty=None, out_of_scope=False, features={}, recommendation="",
            notice=self.config.advice.notice, gradcam=None, timings_ms={}, tta=False,
            class_names=dict(self.config.class_names), learnt_from=dict(self.learnt_from),
            mask_classes=seg.classes if seg is not None else [],
            mask_names=region_names(seg.classes, cfg.structure) if seg is not None else [],
            input_notes=list(record.notes), original_size=record.original_size,
        )  # fmt: skip

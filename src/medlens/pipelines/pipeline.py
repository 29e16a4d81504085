"""Analysis pipelines: segment -> features -> classify -> Grad-CAM -> advice, defined by a YAML file.

The YAML schema, its validation (`PipelineConfig`) and the loading of shipped and user files live in
`medlens.pipelines.config`; the result type `Analysis` in `medlens.pipelines.analysis`. Both are
re-exported here. ``Pipeline.analyze`` returns an `Analysis`; every stage is timed in ``timings_ms``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.data.io import ImageRecord
from medlens.drawing import overlay_mask
from medlens.errors import BundleError, ConfigError, MedlensError
from medlens.inference.bundle import Bundle
from medlens.inference.decisions import probs_to_mask
from medlens.inference.guided import crop_box, guide_one
from medlens.inference.postprocess import apply_postprocess, area_fraction, connected_components
from medlens.inference.predictor import ClassificationPredictor, SegmentationPredictor
from medlens.inference.runtime import image_views
from medlens.pipelines.advice import (
    AdviceContext,
    check_confidence,
    check_modality,
    check_region,
    out_of_scope_text,
)
from medlens.pipelines.analysis import Analysis
from medlens.pipelines.chest import draw_measurements
from medlens.pipelines.config import (
    DEFAULT_TTA,
    ClassifierConfig,
    PipelineConfig,
    SegmenterConfig,
    load_pipeline_configs,
    shipped_pipeline_files,
)
from medlens.pipelines.features import compute_features
from medlens.pipelines.groups import group_scores
from medlens.pipelines.heatmap import heatmap_overlay, place_cam
from medlens.pipelines.stages import (
    StageTimer,
    as_image,
    enhance_contrast,
    find_bundle,
)
from medlens.spec import GuideMode, Mode

if TYPE_CHECKING:
    from medlens.pipelines.serving import Prefetched

__all__ = [
    "Analysis",
    "ClassifierConfig",
    "Pipeline",
    "PipelineConfig",
    "SegmenterConfig",
    "StageTimer",
    "as_image",
    "enhance_contrast",
    "find_bundle",
    "load_pipeline_configs",
    "load_pipelines",
    "shipped_pipeline_files",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- pipeline
class Pipeline:
    """A segmenter and/or classifier with features, advice and out-of-scope checks (see the module docstring).

    Not thread-safe (Grad-CAM hooks the model): serialise calls per pipeline, or give each thread its own
    :meth:`replicate` (the server's pool does).
    """

    def __init__(
        self,
        config: PipelineConfig,
        segmenter: SegmentationPredictor | None = None,
        classifier: ClassificationPredictor | None = None,
    ) -> None:
        self.config, self.segmenter, self.classifier = config, segmenter, classifier
        seg_ok = (config.segmenter is None) == (segmenter is None)
        clf_ok = (config.classifier is None) == (classifier is None)
        if not (seg_ok and clf_ok):
            raise ConfigError(f"{config.source}: the predictors given do not match the pipeline's models")
        if segmenter is not None and segmenter.mode == Mode.MULTILABEL:
            raise ConfigError(
                f"{config.source}: pipelines take binary or multi-class segmenters, not multi-label"
            )
        self.guide_mode = self._resolve_guide()

    @classmethod
    def from_yaml(
        cls, path: str | Path, models_dir: str | Path = "models", runtime: str = "torch", device: str = "cpu"
    ) -> Pipeline:
        """Load a pipeline YAML and its bundles from ``models_dir`` (`BundleError` when one is missing)."""
        return cls.from_config(PipelineConfig.from_yaml(path), models_dir, runtime, device)

    @classmethod
    def from_config(
        cls,
        config: PipelineConfig,
        models_dir: str | Path = "models",
        runtime: str = "torch",
        device: str = "cpu",
        *,
        num_threads: int | None = None,
        precision: str = "fp32",
    ) -> Pipeline:
        """Build the predictors a validated config names, from the bundles in ``models_dir`` (``num_threads``
        and ``precision``: see the predictors)."""

        def load(name: str) -> Bundle:
            try:
                return Bundle.load(find_bundle(models_dir, name))
            except BundleError as e:
                raise BundleError(f"pipeline {config.name!r} ({config.source}): {e}") from e

        seg = clf = None
        kw = {"runtime": runtime, "device": device, "num_threads": num_threads, "precision": precision}
        if config.segmenter is not None:
            seg = SegmentationPredictor(load(config.segmenter.bundle), **kw)
        if config.classifier is not None:
            clf = ClassificationPredictor(load(config.classifier.bundle), **kw)
        return cls(config, seg, clf)

    def replicate(self) -> Pipeline:
        """A twin to run in another thread at the same time: same config, predictors replicated (ONNX
        Runtime sessions shared, torch models copied; see ``_Predictor.replicate``)."""
        twin = copy.copy(self)
        twin.segmenter = self.segmenter.replicate() if self.segmenter is not None else None
        twin.classifier = self.classifier.replicate() if self.classifier is not None else None
        return twin

    def warm_up(self) -> float:
        """Run every model stage once on a synthetic image (see `medlens.pipelines.serving.warm_up`)."""
        from medlens.pipelines.serving import warm_up

        return warm_up(self)

    # -- description ----------------------------------------------------------------------------------------
    name = property(lambda self: self.config.name)
    title = property(lambda self: self.config.title)
    description = property(lambda self: self.config.description)
    modality = property(lambda self: self.config.modality)

    @property
    def classes(self) -> list[str]:
        """The classifier's classes ([] without a classifier)."""
        return self.classifier.classes if self.classifier is not None else []

    @property
    def structure(self) -> str:
        """DICOM SEG segment type of the segmentation (see `medlens.pipelines.dicom_seg.segment_types`)."""
        return self.config.segmenter.structure if self.config.segmenter else "lesion"

    def info(self) -> dict[str, Any]:
        """JSON-safe description for listings (API, UI)."""
        cfg = self.config
        return {
            "name": cfg.name,
            "title": cfg.title,
            "description": cfg.description,
            "modality": cfg.modality,
            "segmenter": cfg.segmenter.bundle if cfg.segmenter else None,
            "classifier": cfg.classifier.bundle if cfg.classifier else None,
            "classes": self.classes,
            "class_names": dict(cfg.class_names),
            "class_groups": list(cfg.class_groups),
            "guided": self.guide_mode,
            "features": list(cfg.features),
            "notice": cfg.advice.notice,
        }

    def _resolve_guide(self) -> GuideMode | None:
        """The guide mode: the YAML's ``classifier.guided`` if given, else the classifier spec's ``guide``."""
        if self.classifier is None or self.config.classifier is None:
            return None
        src, cfg = self.config.source, self.config.classifier
        guide = self.classifier.spec.guide
        trained = guide.mode if guide is not None else None
        mode = trained if cfg.guided is None else (cfg.guided or None)
        if trained is not None and mode != trained:
            shown = mode.value if mode else mode
            raise ConfigError(
                f"{src}: classifier.guided is {shown!r} but {cfg.bundle} was trained with {trained.value!r}"
            )
        if mode is None:
            return None
        if self.segmenter is None:
            raise ConfigError(
                f"{src}: the classifier {cfg.bundle} needs guided inputs ({mode.value}); add a segmenter"
            )
        in_ch = self.classifier.spec.in_channels
        if not mode.fits(in_ch):
            raise ConfigError(
                f"{src}: guided={mode.value!r} does not fit {cfg.bundle}, which takes {in_ch} input channels"
            )
        trained_with = Path(guide.bundle).name if guide is not None else ""
        if trained_with and trained_with != self.config.segmenter.bundle:
            logger.warning("%s: %s was trained on masks of %s, not of the pipeline's segmenter %s",
                           src, cfg.bundle, trained_with, self.config.segmenter.bundle)  # fmt: skip
        return mode

    # -- analysis -------------------------------------------------------------------------------------------
    def analyze_batch(
        self, images: Sequence[np.ndarray | ImageRecord], clahe: bool = False, gradcam: bool = True,
        tta: bool | None = DEFAULT_TTA,
    ) -> list[Analysis]:  # fmt: skip
        """:meth:`analyze` of several images with one batched model call per model (TTA views included);
        each result's model stage timings are its share of the batch's."""
        from medlens.pipelines.serving import analyze_batch

        return analyze_batch(self, images, clahe=clahe, gradcam=gradcam, tta=tta)

    def analyze(
        self, image: np.ndarray | ImageRecord, clahe: bool = False, gradcam: bool = True,
        tta: bool | None = DEFAULT_TTA, *, prefetched: Prefetched | None = None,
    ) -> Analysis:  # fmt: skip
        """Analyse one image.

        Args:
            image: ``(H, W, C)`` uint8 (C in 1, 3, 4) or an `ImageRecord` (its DICOM pixel spacing gives mm).
            clahe: contrast-enhance (CLAHE) the image the models see; features and overlays use the original.
            gradcam: compute the Grad-CAM overlay when the pipeline enables it.
            tta: flip test-time augmentation, which also yields the uncertainty; None (`DEFAULT_TTA`): each
                model as chosen on its validation split (:meth:`ModelSpec.runs_tta`).
            prefetched: the image prepared and its model outputs computed by :meth:`analyze_batch`.
        """
        timer = StageTimer()
        with timer("preprocess"):
            if prefetched is None:
                original, spacing = as_image(image)
                work = enhance_contrast(original) if clahe else original
            else:
                original, spacing, work = prefetched.original, prefetched.spacing, prefetched.work
            reason = check_modality(original, self.config.scope)
        result = self._empty_result(original, tta)
        if reason is None:
            reason = self._run_models(result, original, work, spacing, gradcam, tta, timer, prefetched)
        for stage, ms in (prefetched.ms if prefetched is not None else {}).items():
            timer.add(stage, ms)
        with timer("advice"):
            self._conclude(result, reason)
        result.timings_ms = timer.finish()
        logger.info(
            "pipeline %s: label=%s out_of_scope=%s in %.0f ms",
            self.name, result.label, result.out_of_scope, result.timings_ms["total"],
        )  # fmt: skip
        return result

    def model_tta(self, model: Any, tta: bool | None) -> bool:
        """Whether ``model`` (segmenter or classifier, None = absent) runs flip TTA when ``tta`` is asked."""
        return model is not None and model.spec.runs_tta(tta)

    def _empty_result(self, original: np.ndarray, tta: bool | None = DEFAULT_TTA) -> Analysis:
        return Analysis(
            id=None, pipeline=self.name, image_size=(int(original.shape[0]), int(original.shape[1])),
            mask=None, overlay=None, area_fraction=None, components=[], label=None, probabilities={},
            uncertainty=None, out_of_scope=False, features={}, recommendation="",
            notice=self.config.advice.notice, gradcam=None, timings_ms={},
            tta=self.model_tta(self.segmenter, tta) or self.model_tta(self.classifier, tta),
            class_names=dict(self.config.class_names),
        )  # fmt: skip

    def _run_models(self, result: Analysis, original: np.ndarray, work: np.ndarray, spacing: Any,
                    want_cam: bool, tta: bool | None, timer: StageTimer,
                    pre: Prefetched | None = None) -> str | None:  # fmt: skip
        """Segment, describe, classify and explain; returns an out-of-scope reason or None."""
        reason, raw_mask, cls_input, features = None, None, work, None
        if self.segmenter is not None:
            with timer("segment"):
                raw_mask = self._segment(result, original, work, self.model_tta(self.segmenter, tta), pre)
            reason = check_region(result.area_fraction, self.config.scope)
            with timer("features"):
                result.features = compute_features(
                    self.config.features, original, result.mask, spacing, classes=self.segmenter.classes
                )
                result.overlay = draw_measurements(result.overlay, result.features)
        if self.classifier is not None:
            with timer("classify"):
                if self.guide_mode is not None:
                    cls_input = guide_one(work, raw_mask, self.guide_mode, self.classifier.input_size)
                features = self._classify(result, cls_input, self.model_tta(self.classifier, tta), pre)
            top = max(result.probabilities.values()) if result.probabilities else None
            reason = reason or check_confidence(top, result.uncertainty, self.config.scope)
        else:
            result.uncertainty = result.segmentation_uncertainty
        if want_cam and reason is None:
            with timer("gradcam"):
                result.gradcam = self._gradcam(result, original, work, cls_input, raw_mask, features)
        return reason

    def _segment(self, result: Analysis, original: np.ndarray, work: np.ndarray, tta: bool,
                 pre: Prefetched | None = None) -> np.ndarray:  # fmt: skip
        """Fill mask, area, components, overlay, TTA uncertainty; return the mask before post-processing."""
        seg = self.segmenter
        if pre is not None and pre.seg is not None:
            prob, result.segmentation_uncertainty = pre.seg
        elif tta:
            prob, _, result.segmentation_uncertainty = seg.predict_with_uncertainty(work)
        else:
            prob = seg.predict_proba([work])[0]
        raw = probs_to_mask(prob, seg.spec.mode, seg.spec.threshold)
        post = self.config.segmenter
        mask = apply_postprocess(raw, post.fill_holes, post.largest_component, post.min_size_px)
        result.mask, result.area_fraction = mask, area_fraction(mask)
        result.components = connected_components(mask > 0)
        result.overlay = overlay_mask(original, mask)
        return raw

    def _classify(self, result: Analysis, x: np.ndarray, tta: bool,
                  pre: Prefetched | None = None) -> np.ndarray | None:  # fmt: skip
        """Calibrated probabilities, label and, with ``tta``, the flip-TTA uncertainty; returns the identity
        view's ``(C, h, w)`` feature map when the classifier's runtime gives one (Grad-CAM without backprop).

        TTA views are run here rather than by the predictor so that their spread is kept: the uncertainty is
        the standard deviation over the views (the identity and the flips the model was trained under) of the
        probability of the predicted class (0 = the views agree; None with a single view). One batch.
        """
        clf = self.classifier
        if pre is not None and pre.cls is not None:
            per_view, feats = pre.cls
        else:
            views = image_views(x, tta, clf.flips)
            per_view, feats = clf.predict_proba_with_features(views)  # (V, K), (V, C, h, w)
        probs = per_view.mean(axis=0, keepdims=True)
        result.probabilities = {c: float(p) for c, p in zip(clf.classes, probs[0], strict=True)}
        result.label = clf.decide(probs)[0]
        result.groups = group_scores(result.probabilities, clf.spec.groups)
        if tta and len(per_view) > 1:
            result.uncertainty = float(per_view[:, clf.classes.index(result.label)].std())
        return feats[0] if feats is not None else None

    def _gradcam(self, result: Analysis, original: np.ndarray, work: np.ndarray, cls_input: np.ndarray,
                 raw_mask: np.ndarray | None, features: np.ndarray | None) -> np.ndarray | None:  # fmt: skip
        """Grad-CAM overlay on the original image: the classifier's predicted class (from ``features`` when
        the classification pass returned them, else by backpropagation in torch), else the segmenter."""
        from medlens.inference.explain import gradcam

        cfg = self.config
        if self.classifier is not None and cfg.classifier.gradcam:
            clf, index = self.classifier, self.classes.index(result.label)
            if features is not None:
                cam = clf.cam(features, index)
            else:
                cam = gradcam(clf.model, clf.preprocess([cls_input]), class_index=index)
            box = crop_box(raw_mask) if self.guide_mode and self.guide_mode.crops else None
            cam = place_cam(cam, box, original.shape[:2])
        elif self.segmenter is not None and cfg.segmenter.gradcam and self.classifier is None:
            cam = gradcam(self.segmenter.model, self.segmenter.preprocess([work]))
        else:
            return None
        return heatmap_overlay(original, cam)

    def _conclude(self, result: Analysis, reason: str | None) -> None:
        """Out-of-scope verdict, or the advice text."""
        result.out_of_scope, result.scope_reason = reason is not None, reason
        if reason is not None:
            result.label = None
            result.groups = [{**g, "flagged": None} for g in result.groups]
            result.recommendation = out_of_scope_text(reason, self.title)
            return
        ctx = AdviceContext(
            label=result.label,
            probability=result.probability,
            probabilities=result.probabilities,
            uncertainty=result.uncertainty,
            features=result.features,
            region_found=None if self.segmenter is None else bool(result.area_fraction),
        )
        result.recommendation = self.config.advice.advise(ctx)


# ---------------------------------------------------------------------------------------------------- loading
def load_pipelines(
    models_dir: str | Path = "models", runtime: str = "torch", device: str = "cpu", **kwargs: Any
) -> dict[str, Pipeline]:
    """Every pipeline (see `load_pipeline_configs`) whose bundles load from ``models_dir``; others are skipped
    with a logged warning (missing bundle, wrong task, guide mismatch). ``kwargs``: `Pipeline.from_config`'s
    ``num_threads`` and ``precision``."""
    out: dict[str, Pipeline] = {}
    for name, cfg in load_pipeline_configs(models_dir).items():
        try:
            out[name] = Pipeline.from_config(cfg, models_dir, runtime, device, **kwargs)
        except MedlensError as e:
            logger.warning("pipeline %r skipped: %s", name, e)
    logger.info("pipelines loaded from %s: %s", models_dir, ", ".join(out) or "none")
    return out

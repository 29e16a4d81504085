"""Analysis pipelines: segment -> features -> classify -> Grad-CAM -> advice, defined by a YAML file.

The YAML schema, its validation (`PipelineConfig`) and the loading of shipped and user files live in
`medlens.pipelines.config`; the result type `Analysis` in `medlens.pipelines.analysis`. Both are
re-exported here. ``Pipeline.analyze`` returns an `Analysis`; every stage is timed in ``timings_ms``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.data.io import ImageRecord
from medlens.errors import BundleError, ConfigError, MedlensError
from medlens.inference.bundle import Bundle
from medlens.inference.decisions import probs_to_mask
from medlens.inference.guided import GuidedInputs, crop_box, guide_one
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
from medlens.pipelines.heatmap import heatmap_overlay, place_cam, share_inside
from medlens.pipelines.modality import (
    ModalityGate,
    ModalityVerdict,
    check_gate,
    load_gate,
    modality_routes,
    share_routes,
)
from medlens.pipelines.overlay import draw_overlay
from medlens.pipelines.stages import StageTimer, as_image, enhance_contrast, find_bundle, resolve_guide
from medlens.spec import Mode

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
        modality: ModalityGate | None = None,
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
        self.guide_mode = resolve_guide(config, segmenter, classifier)
        self.modality_gate = modality
        said = config.classifier.learnt_from if config.classifier else {}
        self.learnt_from = {c: said[c] for c in self.classes if c in said}  # the YAML's, for its classes

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
        shared: dict | None = None,
        routes: Mapping[str, str] | None = None,
    ) -> Pipeline:
        """Build the predictors a validated config names, from the bundles in ``models_dir`` (``num_threads``
        and ``precision``: see the predictors), and its modality check (`medlens.pipelines.modality`;
        ``shared``: modality classifiers already loaded, by bundle name; ``routes``: the pipeline of each
        modality class, by default from the configs of ``models_dir``)."""

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
        if routes is None and config.modality_check is not None:
            routes = modality_routes(load_pipeline_configs(models_dir))
        gate = load_gate(config.modality_check, config.source, models_dir, routes or {}, shared, **kw)
        return cls(config, seg, clf, gate)

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
            "modality_label": cfg.modality_check.label if cfg.modality_check else None,
            "modality_check": self.modality_gate.classifier.name if self.modality_gate else None,
            "segmenter": cfg.segmenter.bundle if cfg.segmenter else None,
            "classifier": cfg.classifier.bundle if cfg.classifier else None,
            "classes": self.classes,
            "class_names": dict(cfg.class_names),
            "class_groups": list(cfg.class_groups),
            "guided": self.guide_mode,
            "features": list(cfg.features),
            "learnt_from": dict(self.learnt_from),
            "notice": cfg.advice.notice,
        }

    # -- analysis -------------------------------------------------------------------------------------------
    def analyze_batch(
        self, images: Sequence[np.ndarray | ImageRecord], clahe: bool = False, gradcam: bool = True,
        tta: bool | None = DEFAULT_TTA, modality: Sequence[ModalityVerdict] | None = None,
    ) -> list[Analysis]:  # fmt: skip
        """:meth:`analyze` of several images with one batched model call per model (TTA views included);
        each result's model stage timings are its share of the batch's."""
        from medlens.pipelines.serving import analyze_batch

        return analyze_batch(self, images, clahe=clahe, gradcam=gradcam, tta=tta, modality=modality)

    def analyze(
        self, image: np.ndarray | ImageRecord, clahe: bool = False, gradcam: bool = True,
        tta: bool | None = DEFAULT_TTA, *, prefetched: Prefetched | None = None,
        modality: ModalityVerdict | None = None,
    ) -> Analysis:  # fmt: skip
        """Analyse one image.

        Args:
            image: ``(H, W, C)`` uint8 (C in 1, 3, 4) or an `ImageRecord` (its DICOM pixel spacing gives mm).
            clahe: contrast-enhance (CLAHE) the image the models see; features and overlays use the original.
            gradcam: compute the Grad-CAM overlay when the pipeline enables it.
            tta: flip test-time augmentation, which also yields the uncertainty; None (`DEFAULT_TTA`): each
                model as chosen on its validation split (:meth:`ModelSpec.runs_tta`).
            prefetched: the image prepared and its model outputs computed by :meth:`analyze_batch`.
            modality: the modality classifier's verdict on the image when it already ran (``pipeline=auto``).
        """
        timer = StageTimer()
        with timer("preprocess"):
            if prefetched is None:
                original, spacing = as_image(image)
                work = enhance_contrast(original) if clahe else original
            else:
                original, spacing, work = prefetched.original, prefetched.spacing, prefetched.work
        with timer("modality"):  # the modality classifier first, then the scope's colour check
            given = modality or getattr(prefetched, "modality", None)
            seen, reason = check_gate(self.modality_gate, original, given)
        reason = reason or check_modality(original, self.config.scope)
        result = self._empty_result(original, tta)
        result.modality = seen
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
            class_names=dict(self.config.class_names), learnt_from=dict(self.learnt_from),
            mask_classes=self.segmenter.classes if self.segmenter is not None else [],
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
                result.overlay, result.colour_key = draw_overlay(
                    original, result.mask, result.mask_classes, result.features
                )
        if self.classifier is not None:
            with timer("classify"):
                if self.guide_mode is not None:
                    cls_input = guide_one(
                        work,
                        raw_mask,
                        self.guide_mode,
                        self.classifier.input_size,
                        margin=self.classifier.guide_margin,
                    )
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
        """Fill mask, area, components, TTA uncertainty; return the mask before post-processing."""
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
            views = GuidedInputs(image_views(x, tta, clf.flips))  # guided above when the classifier is
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
        the classification pass returned them, else by backpropagation in torch), else the segmenter; sets
        ``result.gradcam_inside_region``, the share of the map inside the segmented region."""
        from medlens.inference.explain import gradcam

        cfg = self.config
        if self.classifier is not None and cfg.classifier.gradcam:
            clf, index = self.classifier, self.classes.index(result.label)
            if features is not None:
                cam = clf.cam(features, index)
            else:
                cam = gradcam(clf.model, clf.preprocess(GuidedInputs([cls_input])), class_index=index)
            box = crop_box(raw_mask, clf.guide_margin) if self.guide_mode and self.guide_mode.crops else None
            cam = place_cam(cam, box, original.shape[:2])
        elif self.segmenter is not None and cfg.segmenter.gradcam and self.classifier is None:
            cam = gradcam(self.segmenter.model, self.segmenter.preprocess([work]))
        else:
            return None
        if result.mask is not None:
            result.gradcam_inside_region = share_inside(cam, result.mask > 0)
        return heatmap_overlay(original, cam)

    def _conclude(self, result: Analysis, reason: str | None) -> None:
        """Out-of-scope verdict or the reading, and every finding that applies."""
        result.out_of_scope, result.scope_reason = reason is not None, reason
        if reason is not None:
            result.label = None
            result.groups = [{**g, "flagged": None} for g in result.groups]
        ctx = AdviceContext(
            label=result.label, probability=result.probability, probabilities=result.probabilities,
            uncertainty=result.uncertainty, features=result.features,
            region_found=None if self.segmenter is None else bool(result.area_fraction),
            gradcam_inside=result.gradcam_inside_region,
        )  # fmt: skip
        advice = self.config.advice
        result.recommendation = out_of_scope_text(reason, self.title) if reason else advice.advise(ctx)
        result.findings = advice.find(ctx, reason)


# ---------------------------------------------------------------------------------------------------- loading
def load_pipelines(
    models_dir: str | Path = "models", runtime: str = "torch", device: str = "cpu", **kwargs: Any
) -> dict[str, Pipeline]:
    """Every pipeline (see `load_pipeline_configs`) whose bundles load from ``models_dir``; others are skipped
    with a logged warning (missing bundle, wrong task, guide mismatch). ``kwargs``: `Pipeline.from_config`'s
    ``num_threads`` and ``precision``."""
    out: dict[str, Pipeline] = {}
    configs = load_pipeline_configs(models_dir)
    shared, routes = {}, modality_routes(configs)  # one modality classifier for all
    for name, cfg in configs.items():
        try:
            out[name] = Pipeline.from_config(cfg, models_dir, runtime, device, shared=shared, routes=routes,
                                             **kwargs)  # fmt: skip
        except MedlensError as e:
            logger.warning("pipeline %r skipped: %s", name, e)
    share_routes(out)  # refusals name pipelines that loaded
    logger.info("pipelines loaded from %s: %s", models_dir, ", ".join(out) or "none")
    return out

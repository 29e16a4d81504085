"""Analysis pipelines: segment -> features -> classify -> Grad-CAM -> advice, defined by a YAML file.

`Pipeline` loads a pipeline's models and describes it; its stages are sequenced once, in
`medlens.pipelines.analyzer.Analyzer`, which ``analyze`` (one image), ``analyze_batch`` and ``warm_up`` all
run. The YAML schema, its validation (`PipelineConfig`) and the loading of shipped and user files live in
`medlens.pipelines.config`; the result type `Analysis` in `medlens.pipelines.analysis`. Both are re-exported
here. ``Pipeline.analyze`` returns an `Analysis`; every stage is timed in ``timings_ms``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.io import ImageRecord
from medlens.errors import BundleError, ConfigError, MedlensError
from medlens.inference.bundle import Bundle
from medlens.inference.predictor import ClassificationPredictor, SegmentationPredictor
from medlens.pipelines.analysis import Analysis
from medlens.pipelines.analyzer import Analyzer
from medlens.pipelines.config import (
    DEFAULT_TTA,
    ClassifierConfig,
    PipelineConfig,
    SegmenterConfig,
    load_pipeline_configs,
    shipped_pipeline_files,
)
from medlens.pipelines.modality import ModalityGate, ModalityVerdict, load_gate, modality_routes, share_routes
from medlens.pipelines.stages import StageTimer, as_image, enhance_contrast, find_bundle, resolve_guide
from medlens.spec import GuideMode, Mode

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
        self.config = config
        seg_ok = (config.segmenter is None) == (segmenter is None)
        clf_ok = (config.classifier is None) == (classifier is None)
        if not (seg_ok and clf_ok):
            raise ConfigError(f"{config.source}: the predictors given do not match the pipeline's models")
        if segmenter is not None and segmenter.mode == Mode.MULTILABEL:
            raise ConfigError(
                f"{config.source}: pipelines take binary or multi-class segmenters, not multi-label"
            )
        guide = resolve_guide(config, segmenter, classifier)
        if classifier is not None and classifier.guide_mode != guide:  # the YAML guides a bundle without one
            classifier.given_guide = guide
        said = config.classifier.learnt_from if config.classifier else {}
        learnt_from = {c: said[c] for c in (classifier.classes if classifier else []) if c in said}
        self.analyzer = Analyzer(config, segmenter, classifier, modality, learnt_from)

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
        Runtime sessions shared, torch models copied; see `Predictor.replicate`)."""
        twin = copy.copy(self)
        twin.analyzer = self.analyzer.replicate()
        return twin

    def warm_up(self) -> float:
        """Run every stage once on a synthetic image (see `Analyzer.warm_up`); returns the ms taken."""
        return self.analyzer.warm_up()

    # -- description ----------------------------------------------------------------------------------------
    name = property(lambda self: self.config.name)
    title = property(lambda self: self.config.title)
    description = property(lambda self: self.config.description)
    modality = property(lambda self: self.config.modality)
    segmenter = property(lambda self: self.analyzer.segmenter)
    classifier = property(lambda self: self.analyzer.classifier)
    modality_gate = property(lambda self: self.analyzer.gate)
    learnt_from = property(lambda self: self.analyzer.learnt_from)

    @property
    def guide_mode(self) -> GuideMode | None:
        """How the segmentation guides the classifier (None: not guided; see `resolve_guide`)."""
        return self.classifier.guide_mode if self.classifier is not None else None

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
    def analyze(
        self, image: np.ndarray | ImageRecord, clahe: bool = False, gradcam: bool = True,
        tta: bool | None = DEFAULT_TTA, *, modality: ModalityVerdict | None = None, scope: bool = True,
    ) -> Analysis:  # fmt: skip
        """Analyse one image (the stage sequence of `medlens.pipelines.analyzer`, on a batch of one).

        Args:
            image: ``(H, W, C)`` uint8 (C in 1, 3, 4) or an `ImageRecord` (its DICOM pixel spacing gives mm).
            clahe: contrast-enhance (CLAHE) the image the models see; features and overlays use the original.
            gradcam: compute the Grad-CAM overlay when the pipeline enables it.
            tta: flip test-time augmentation, which also yields the uncertainty; None (`DEFAULT_TTA`): each
                model as chosen on its validation split (:meth:`ModelSpec.runs_tta`).
            modality: the modality classifier's verdict on the image when it already ran (``pipeline=auto``).
            scope: False runs every stage whatever the out-of-scope checks, the modality check's included,
                say (they still run, and their verdict is recorded): for timing every stage (benchmarks).
        """
        seen = None if modality is None else [modality]
        return self.analyzer.run([image], clahe, gradcam, tta, seen, scope=scope)[0]

    def analyze_batch(
        self, images: Sequence[np.ndarray | ImageRecord], clahe: bool = False, gradcam: bool = True,
        tta: bool | None = DEFAULT_TTA, modality: Sequence[ModalityVerdict] | None = None, *,
        scope: bool = True,
    ) -> list[Analysis]:  # fmt: skip
        """:meth:`analyze` of several images with one batched model call per model (TTA views included;
        chunked by each predictor's ``batch_size``); each result's model stage timings are its share of the
        batch's. Images out of scope for the pipeline's modality skip the models (unless ``scope=False``, as
        in :meth:`analyze`). ``modality``: the images' modality verdicts when the classifier already ran on
        them (``pipeline=auto``)."""
        return self.analyzer.run(images, clahe, gradcam, tta, modality, scope=scope)

    def model_tta(self, model: Any, tta: bool | None) -> bool:
        """Whether ``model`` (segmenter or classifier, None = absent) runs flip TTA when ``tta`` is asked."""
        return Analyzer.model_tta(model, tta)


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

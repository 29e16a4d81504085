"""Pipeline YAML files: the schema, its validation (`PipelineConfig`) and loading the shipped and user files.

Shipped pipelines live in ``medlens/pipelines/*.yaml``; more (or same-name overrides) in
``<models_dir>/pipelines``. Schema (unknown keys raise `ConfigError` naming the file)::

    name: skin                      # required, unique
    title: Skin lesion (dermoscopy)
    description: ...
    modality:                       # optional; the older one-word form names the images and runs no check
      name: dermoscopy              # how people call the images it takes
      label: dermoscopy             # the modality classifier's class of them (medlens.pipelines.modality)
      bundle: modality              # the modality classifier bundle; missing: no check (logged once)
    class_names: {mel: Melanoma, nv: Melanocytic nevus}   # optional: full names of the classifier's codes
    class_groups: [malignant]       # optional: class groups (spec.groups) the UI summarises, or says it lacks
    segmenter:                      # optional; a bundle folder (or bundle name) under models_dir
      bundle: skin-seg
      postprocess: {fill_holes: true, largest_component: true, min_size_px: 0}
      structure: skin_lesion        # DICOM SEG property type (lesion, skin_lesion, polyp, lung)
      gradcam: false                # Grad-CAM of the segmenter when there is no classifier
    classifier:                     # optional (at least one of segmenter / classifier)
      bundle: skin-cls
      guided: crop                  # false | crop | channel | both | field; left out: as trained
      gradcam: true
      learnt_from: {mel: "..."}     # optional: per class, the population / hospital the bundle learnt it from
    features: [area, asymmetry, border, colour, diameter]     # names from medlens.pipelines.features
    advice: {rules: [...], findings: [...], default: "...", notice: "..."}  # see medlens.pipelines.advice
    scope: {expect: colour, min_probability: 0.35, max_uncertainty: 0.1, require_region: true}

`medlens.pipelines.pipeline.Pipeline` builds the predictors a validated config names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from medlens.errors import ConfigError, UnknownNameError
from medlens.pipelines import chest  # noqa: F401  (registers the chest anatomy features)
from medlens.pipelines.advice import AdviceConfig, ScopeConfig
from medlens.pipelines.dicom_seg import segment_types
from medlens.pipelines.features import get_feature
from medlens.pipelines.modality import ModalityConfig
from medlens.spec import GUIDE_MODES, GuideMode

logger = logging.getLogger(__name__)

DEFAULT_TTA = None
"""Flip test-time augmentation by default, for every entry point (API, UI, ``medlens predict``): None lets
each model run it as chosen on its validation split and recorded in its bundle (``ModelSpec.tta``, on where
nothing was recorded: the uncertainty needs it); True or False force it. Results say whether it ran
(``"tta"``)."""

DESCRIPTION_KEYS = {"name", "title", "description", "modality"}
TOP_KEYS = DESCRIPTION_KEYS | {"class_names", "class_groups", "segmenter", "classifier", "features", "advice",
                               "scope"}  # fmt: skip
SEGMENTER_KEYS = {"bundle", "postprocess", "structure", "gradcam"}
POSTPROCESS_KEYS = {"fill_holes", "largest_component", "min_size_px"}
CLASSIFIER_KEYS = {"bundle", "guided", "gradcam", "learnt_from"}


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class SegmenterConfig:
    bundle: str
    fill_holes: bool = False
    largest_component: bool = False
    min_size_px: int = 0
    structure: str = "lesion"
    gradcam: bool = False


@dataclass
class ClassifierConfig:
    bundle: str
    guided: GuideMode | Literal[False] | None = None  # False = not guided, None = as the bundle's spec says
    gradcam: bool = True
    learnt_from: dict[str, str] = field(default_factory=dict)  # class code -> the films it was learnt from


@dataclass
class PipelineConfig:
    """A validated pipeline YAML."""

    name: str
    title: str
    description: str = ""
    modality: str = ""  # the images it takes, in words
    modality_check: ModalityConfig | None = (
        None  # the modality classifier's check, when the YAML asks for one
    )
    class_names: dict[str, str] = field(default_factory=dict)  # class code -> full name
    class_groups: list[str] = field(default_factory=list)  # groups the classifier's spec should provide
    segmenter: SegmenterConfig | None = None
    classifier: ClassifierConfig | None = None
    features: list[str] = field(default_factory=list)
    advice: AdviceConfig = field(default_factory=AdviceConfig)
    scope: ScopeConfig = field(default_factory=ScopeConfig)
    source: str = "<pipeline>"

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<pipeline>") -> PipelineConfig:
        """Validate a parsed YAML mapping; `ConfigError` naming ``source`` and the bad key otherwise."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: a pipeline file must be a mapping, got {type(raw).__name__}")
        _check_keys(raw, TOP_KEYS, source, "pipeline")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{source}: 'name' is required")
        seg = _segmenter(raw.get("segmenter"), source)
        clf = _classifier(raw.get("classifier"), source)
        if seg is None and clf is None:
            raise ConfigError(f"{source}: a pipeline needs a 'segmenter', a 'classifier' or both")
        if clf is not None and clf.guided and seg is None:
            raise ConfigError(f"{source}: classifier.guided={clf.guided!r} needs a segmenter")
        features = raw.get("features") or []
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ConfigError(f"{source}: 'features' must be a list of feature names")
        for f in features:
            try:
                get_feature(f)
            except UnknownNameError as e:
                raise ConfigError(f"{source}: {e}") from e
        if features and seg is None:
            raise ConfigError(f"{source}: 'features' are computed on the segmentation; add a segmenter")
        modality, check = ModalityConfig.parse(raw.get("modality"), source)
        scope = ScopeConfig.from_dict(raw.get("scope"), source)
        if not scope.modality_name:
            scope.modality_name = modality
        return cls(
            name=name.strip(),
            title=str(raw.get("title") or name),
            description=str(raw.get("description") or "").strip(),
            modality=modality,
            modality_check=check,
            class_names=_class_texts(raw.get("class_names"), source),
            class_groups=_names(raw.get("class_groups"), source, "class_groups"),
            segmenter=seg,
            classifier=clf,
            features=list(features),
            advice=AdviceConfig.from_dict(raw.get("advice"), source),
            scope=scope,
            source=source,
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        """Read and validate a pipeline YAML file."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read pipeline file {path}: {e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        return cls.from_dict(raw, str(path))


def _check_keys(raw: dict, allowed: set[str], source: str, where: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) in {where}: {', '.join(sorted(map(str, unknown)))}; "
            f"valid: {', '.join(sorted(allowed))}"
        )


def _bundle_name(raw: dict, source: str, where: str) -> str:
    bundle = raw.get("bundle")
    if not isinstance(bundle, str) or not bundle.strip():
        raise ConfigError(f"{source}: {where}.bundle (a bundle name) is required")
    return bundle.strip()


def _class_texts(raw: Any, source: str, key: str = "class_names", what: str = "full names") -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(f"{source}: '{key}' must map class codes to {what}")
    return {str(k): " ".join(v.split()) for k, v in raw.items()}


def _names(raw: Any, source: str, key: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise ConfigError(f"{source}: '{key}' must be a list of names")
    return list(raw)


def _segmenter(raw: Any, source: str) -> SegmenterConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: 'segmenter' must be a mapping")
    _check_keys(raw, SEGMENTER_KEYS, source, "segmenter")
    post = raw.get("postprocess") or {}
    if not isinstance(post, dict):
        raise ConfigError(f"{source}: segmenter.postprocess must be a mapping")
    _check_keys(post, POSTPROCESS_KEYS, source, "segmenter.postprocess")
    min_size = post.get("min_size_px", 0)
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise ConfigError(f"{source}: segmenter.postprocess.min_size_px must be an integer >= 0")
    structure = str(raw.get("structure", "lesion"))
    if structure not in segment_types():
        raise ConfigError(f"{source}: segmenter.structure must be one of {', '.join(segment_types())}")
    return SegmenterConfig(
        bundle=_bundle_name(raw, source, "segmenter"),
        fill_holes=bool(post.get("fill_holes", False)),
        largest_component=bool(post.get("largest_component", False)),
        min_size_px=min_size,
        structure=structure,
        gradcam=bool(raw.get("gradcam", False)),
    )


def _classifier(raw: Any, source: str) -> ClassifierConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: 'classifier' must be a mapping")
    _check_keys(raw, CLASSIFIER_KEYS, source, "classifier")
    guided = raw.get("guided")
    if guided is not None and guided is not False:
        if guided not in GUIDE_MODES:
            raise ConfigError(f"{source}: classifier.guided must be false or one of {', '.join(GUIDE_MODES)}")
        guided = GuideMode(guided)
    return ClassifierConfig(
        bundle=_bundle_name(raw, source, "classifier"),
        guided=guided,
        gradcam=bool(raw.get("gradcam", True)),
        learnt_from=_class_texts(raw.get("learnt_from"), source, "classifier.learnt_from", "text"),
    )


# ---------------------------------------------------------------------------------------------------- loading
def shipped_pipeline_files() -> list[Path]:
    """The pipeline YAMLs shipped in ``medlens/pipelines``."""
    root = resources.files("medlens.pipelines")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith((".yaml", ".yml")))


def load_pipeline_configs(models_dir: str | Path = "models") -> dict[str, PipelineConfig]:
    """Validated configs by name: shipped ones, then ``<models_dir>/pipelines/*.yaml`` (same name replaces).

    A broken shipped file raises; a broken user file is logged and skipped.
    """
    user_dir = Path(models_dir) / "pipelines"
    user = sorted([*user_dir.glob("*.yaml"), *user_dir.glob("*.yml")]) if user_dir.is_dir() else []
    configs: dict[str, PipelineConfig] = {}
    for path in shipped_pipeline_files() + user:
        try:
            cfg = PipelineConfig.from_yaml(path)
        except ConfigError as e:
            if path not in user:
                raise
            logger.error("skipping pipeline file: %s", e)
            continue
        if cfg.name in configs:
            logger.info("pipeline %r from %s replaces %s", cfg.name, path, configs[cfg.name].source)
        configs[cfg.name] = cfg
    return configs

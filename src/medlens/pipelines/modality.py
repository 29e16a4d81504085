"""The modality check every pipeline runs first: a classifier of the imaging modality, and what it answers.

A pipeline YAML names the modality classifier (a classification bundle whose classes are modalities, e.g.
``chest_xray, dermoscopy, endoscopy, fundus, other``) and the class of the images it takes::

    modality:
      name: dermoscopy      # how people call them (the older one-word ``modality: dermoscopy`` still reads,
      label: dermoscopy     # and runs no check); label: the modality classifier's class of those images
      bundle: modality      # the classifier, by bundle name under models_dir (default "modality")

An image the classifier calls another class is out of scope, and the reason names what it looks like and the
pipeline that takes it: "this looks like a colonoscopy (endoscopy) frame (modality check: endoscopy, 0.97):
use the polyp pipeline", or says that none does. The existing checks (colour against grey, low confidence, no
region: `medlens.pipelines.advice`) follow as further reasons. ``pipeline=auto``
(`medlens.pipelines.routing`) sends each image to the pipeline that takes its class.

A pipeline whose modality bundle is missing loads and runs without the check (a warning, once per models
folder and bundle), so that models folders from before the check keep working; a bundle that is there but
lacks the pipeline's class is a `ConfigError`. The pipelines of one models folder share one classifier
(inference only: no Grad-CAM hooks, so it is safe to share between threads and replicas). It runs without
flip TTA: one forward pass at its input size (128 px for the shipped recipe).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import BundleError, ConfigError
from medlens.pipelines.names import readable

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE = "modality"
MODALITY_KEYS = {"name", "label", "bundle"}
PHRASES = {
    "dermoscopy": "a dermoscopy image",
    "endoscopy": "a colonoscopy (endoscopy) frame",
    "chest_xray": "a chest X-ray",
    "fundus": "a retinal fundus photograph",
}
"""What an image of each class looks like, in words; other classes read ``a <class> image``."""
OTHER = "other"  # the class of images that are none of the modalities


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class ModalityConfig:
    """The YAML ``modality:`` section's check: the classifier bundle and the class the pipeline takes."""

    label: str
    bundle: str = DEFAULT_BUNDLE

    @staticmethod
    def parse(raw: Any, source: str) -> tuple[str, ModalityConfig | None]:
        """``(name, check)`` from the YAML ``modality`` value: a word (the older form: a name, no check) or a
        mapping of `MODALITY_KEYS`; `ConfigError` naming ``source`` otherwise."""
        if raw is None or isinstance(raw, str):
            return str(raw or "").strip(), None
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{source}: 'modality' must be a word or a mapping with {sorted(MODALITY_KEYS)}"
            )
        unknown = set(raw) - MODALITY_KEYS
        if unknown:
            shown = ", ".join(sorted(map(str, unknown)))
            raise ConfigError(f"{source}: unknown key(s) in modality: {shown}; "
                              f"valid: {', '.join(sorted(MODALITY_KEYS))}")  # fmt: skip
        for key in MODALITY_KEYS & set(raw):
            if not isinstance(raw[key], str) or not raw[key].strip():
                raise ConfigError(f"{source}: modality.{key} must be a non-empty word, got {raw[key]!r}")
        if "label" not in raw:
            raise ConfigError(f"{source}: modality.label (the modality classifier's class of the images this "
                              "pipeline takes) is required in a modality mapping")  # fmt: skip
        name = raw.get("name", raw["label"]).strip()
        return name, ModalityConfig(raw["label"].strip(), raw.get("bundle", DEFAULT_BUNDLE).strip())


# ---------------------------------------------------------------------------------------------------- verdict
@dataclass(frozen=True)
class ModalityVerdict:
    """What the modality classifier made of one image: its decided class and the calibrated probabilities."""

    label: str
    probabilities: Mapping[str, float] = field(default_factory=dict)

    @property
    def probability(self) -> float | None:
        return self.probabilities.get(self.label)

    def describe(self, routes: Mapping[str, str]) -> dict[str, Any]:
        """JSON-safe summary (`Analysis.modality`): the class, in words, its probability, every probability,
        and the pipeline that takes it (None when none does)."""
        return {"label": self.label, "name": phrase(self.label), "probability": self.probability,
                "probabilities": dict(self.probabilities), "pipeline": routes.get(self.label)}  # fmt: skip


def phrase(label: str) -> str:
    """An image of class ``label`` in words (`PHRASES`)."""
    if label == OTHER:
        return "no medical image that medlens analyses"
    return PHRASES.get(label, f"a {readable(label)} image")


def modality_reason(seen: ModalityVerdict, routes: Mapping[str, str]) -> str:
    """Why an image of class ``seen.label`` is out of scope here, and which pipeline (``routes``: class ->
    pipeline name) takes it."""
    p = f", {seen.probability:.2f}" if seen.probability is not None else ""
    looks = "this does not look like a medical image that medlens analyses" if seen.label == OTHER else (
        f"this looks like {phrase(seen.label)}")  # fmt: skip
    target = routes.get(seen.label)
    advice = f"use the {target} pipeline" if target else "no medlens pipeline takes it"
    return f"{looks} (modality check: {readable(seen.label)}{p}): {advice}"


# ------------------------------------------------------------------------------------------------- classifier
class ModalityClassifier:
    """The modality bundle's `ClassificationPredictor` (no TTA): HWC uint8 images -> `ModalityVerdict` each,
    by the bundle's decision rule, in batches of the predictor's ``batch_size``."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    @property
    def name(self) -> str:
        return str(self.predictor.name)

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.classes)

    def classify(self, images: Sequence[np.ndarray]) -> list[ModalityVerdict]:
        """One verdict per ``(H, W, C)`` uint8 image (C in 1, 3)."""
        if not images:
            return []
        probs = self.predictor.predict_proba(list(images))
        labels = self.predictor.decide(probs)
        return [ModalityVerdict(label, {c: float(v) for c, v in zip(self.classes, row, strict=True)})
                for label, row in zip(labels, probs, strict=True)]  # fmt: skip


@dataclass
class ModalityGate:
    """A pipeline's modality check: the (shared) classifier, the class the pipeline takes, and which pipeline
    takes each class (``routes``; set for the pipelines loaded together by `share_routes`)."""

    classifier: ModalityClassifier
    expected: str
    routes: dict[str, str] = field(default_factory=dict)

    def check(self, image: np.ndarray, seen: ModalityVerdict | None = None) -> tuple[dict, str | None]:
        """``(Analysis.modality, out-of-scope reason or None)`` of one image; ``seen``: its verdict, when the
        classifier already ran on it (a batch, or ``pipeline=auto``)."""
        seen = seen or self.classifier.classify([image])[0]
        reason = None if seen.label == self.expected else modality_reason(seen, self.routes)
        return seen.describe(self.routes), reason


def check_gate(
    gate: ModalityGate | None, image: np.ndarray, seen: ModalityVerdict | None = None
) -> tuple[dict | None, str | None]:
    """`ModalityGate.check`, or ``(None, None)`` for a pipeline without the check."""
    return (None, None) if gate is None else gate.check(image, seen)


# ---------------------------------------------------------------------------------------------------- loading
_REPORTED: set[tuple[str, str]] = set()  # (models folder, bundle) whose absence was logged


def load_gate(
    check: ModalityConfig | None,
    source: str,
    models_dir: str | Path,
    routes: Mapping[str, str],
    shared: MutableMapping[str, ModalityClassifier | None] | None = None,
    **predictor_kw: Any,
) -> ModalityGate | None:
    """The modality check of a pipeline (``source``: its YAML, for messages): None without a ``check`` or when
    its bundle is missing (logged once per models folder and bundle). ``shared``: classifiers already loaded,
    by bundle name (the pipelines of one models folder share them); ``predictor_kw``: the predictor's
    runtime, device, threads and precision."""
    if check is None:
        return None
    shared = {} if shared is None else shared
    if check.bundle not in shared:
        shared[check.bundle] = _load_classifier(check.bundle, models_dir, predictor_kw)
    classifier = shared[check.bundle]
    if classifier is None:
        return None
    if check.label not in classifier.classes:
        raise ConfigError(f"{source}: modality.label {check.label!r} is not a class of the modality "
                          f"classifier {check.bundle!r} ({', '.join(classifier.classes)})")  # fmt: skip
    return ModalityGate(classifier, check.label, dict(routes))


def _load_classifier(bundle: str, models_dir: str | Path, kw: Mapping[str, Any]) -> ModalityClassifier | None:
    from medlens.inference.bundle import Bundle
    from medlens.inference.predictor import ClassificationPredictor
    from medlens.pipelines.stages import find_bundle

    try:
        path = find_bundle(models_dir, bundle)
    except BundleError as e:
        key = (str(Path(models_dir).resolve()), bundle)
        if key not in _REPORTED:
            _REPORTED.add(key)
            logger.warning(
                "pipelines run without the modality check: %s (configs/cpu/modality.yaml trains it)", e
            )
        return None
    return ModalityClassifier(ClassificationPredictor(Bundle.load(path), **kw))


def modality_routes(configs: Mapping[str, Any]) -> dict[str, str]:
    """Modality class -> the name of the first pipeline config (``PipelineConfig`` by name) that takes it."""
    routes: dict[str, str] = {}
    for name, cfg in configs.items():
        if cfg.modality_check is not None:
            routes.setdefault(cfg.modality_check.label, name)
    return routes


def share_routes(pipelines: Mapping[str, Any]) -> None:
    """Point every loaded pipeline's modality check at the loaded pipelines that take each class, so that a
    refusal names a pipeline that is there."""
    gates = {name: getattr(p, "modality_gate", None) for name, p in pipelines.items()}
    routes: dict[str, str] = {}
    for name, gate in gates.items():
        if gate is not None:
            routes.setdefault(gate.expected, name)
    for gate in gates.values():
        if gate is not None:
            gate.routes = dict(routes)

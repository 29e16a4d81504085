"""A rule in place of the modality classifier, for tests of what pipelines do with its verdicts: the red value
of an image's top-left pixel names its modality (`MARKS`; anything else is "other"), and images registered in
`KNOWN` (real ones) get the modality given there."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from medlens.pipelines.modality import ModalityClassifier, ModalityVerdict
from tests.helpers_inference import MODALITY_CLASSES

MARKS = {"dermoscopy": 10, "endoscopy": 20, "chest_xray": 30, "fundus": 40}
KNOWN: dict[str, str] = {}  # sha1 of an image's pixels -> the modality the rule gives it (real images)
REAL_CLASSIFY = ModalityClassifier.classify  # the classifier itself, for the test that runs it


def key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image[..., :3]).tobytes()).hexdigest()


def rule(image: np.ndarray) -> str:
    if key(image) in KNOWN:
        return KNOWN[key(image)]
    return next((label for label, v in MARKS.items() if int(image[0, 0, 0]) == v), "other")


def verdict(label: str) -> ModalityVerdict:
    return ModalityVerdict(label, {c: 0.92 if c == label else 0.02 for c in MODALITY_CLASSES})


def marked(label: str, size: int = 64, grey: bool = False, seed: int = 0) -> np.ndarray:
    """A textured image whose top-left pixel tells the rule its modality (grey for X-rays)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 200, (size, size, 3), dtype=np.uint8)
    image[..., 0] = np.clip(image[..., 0].astype(int) + 40, 0, 255)  # reddish: colour for the chroma check
    if grey or label == "chest_xray":
        image = np.repeat(image[..., 1:2], 3, axis=2)
    image[0, 0] = MARKS.get(label, 250)
    return image


@contextmanager
def rule_based_classifier() -> Iterator[None]:
    """Every `ModalityClassifier` answers by `rule` (probability 0.92 for its class) inside the block."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ModalityClassifier, "classify", lambda self, images: [verdict(rule(i)) for i in images])
        yield

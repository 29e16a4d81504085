"""How identifiers read for people: the one home of the names the UI, the API's messages and the CLI show.

JSON fields keep the machine identifiers (class codes, the modality classifier's classes, the segmenter's
classes); text for people names them through :func:`readable` (``"chest_xray"`` -> "chest X-ray",
``"left_lung"`` -> "left lung"), :func:`region_names` (the segmenter's classes, its generic one named by the
pipeline) and :func:`display_name` (a class code with its full name, "Melanoma (mel)").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medlens.spec import GENERIC_REGION

WORDS = {"chest_xray": "chest X-ray"}
"""Identifiers whose name is not just their words with spaces."""


def readable(identifier: str) -> str:
    """An identifier as people read it: ``"chest_xray"`` -> "chest X-ray", ``"left_lung"`` -> "left lung"."""
    return WORDS.get(identifier, identifier.replace("_", " "))


def region_names(classes: Sequence[str], region: str) -> list[str]:
    """The segmenter's classes (label k is ``classes[k]``) as people read them; the generic class of a data
    set that named none (`GENERIC_REGION`, "foreground") is the pipeline's ``region`` (its YAML
    ``segmenter.structure``, e.g. "skin lesion")."""
    return [readable(region if c == GENERIC_REGION else c) for c in classes]


def region_name(cls: str, classes: Sequence[str], names: Sequence[str]) -> str:
    """The segmenter's class ``cls`` as people read it: its name in ``names`` (:func:`region_names` of
    ``classes``, as an analysis records them), else :func:`readable` (older records without names)."""
    return dict(zip(classes, names, strict=False)).get(cls) or readable(cls)


def display_name(code: str | None, class_names: Mapping[str, str] | None) -> str | None:
    """``"Melanoma (mel)"`` for a class code with a full name (just ``"Normal"`` when the name only differs
    in case), else the code itself (None stays None)."""
    if code is None:
        return None
    name = (class_names or {}).get(code)
    if not name or name.lower() == code.lower():
        return name or code
    return f"{name} ({code})"

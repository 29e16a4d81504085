"""The REST API's JSON for a stored analysis record (see :class:`medlens.app.schemas.AnalysisView`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medlens.pipelines.analysis import classification_view, stored_uncertainty_note
from medlens.pipelines.describe import describe_features


def _links(record: Mapping[str, Any], base: str) -> dict[str, str | None]:
    """Picture URLs by file kind (None where the record has no such picture)."""
    url = f"{base}/analyses/{record['id']}"
    files = record["files"]
    return {
        kind: f"{url}/{'thumbnail' if kind == 'thumb' else kind}" if files.get(kind) else None
        for kind in ("image", "mask", "overlay", "gradcam", "thumb")
    }


def _segmentation(result: Mapping[str, Any], links: Mapping[str, str | None]) -> dict[str, Any] | None:
    if not links["mask"] and result.get("area_fraction") is None:
        return None
    return {
        "mask_url": links["mask"],
        "mask_values": result.get("mask_values") or {},
        "overlay_url": links["overlay"],
        "area_fraction": result.get("area_fraction"),
        "area_fractions": result.get("area_fractions") or {},
        "components": result.get("components") or [],
        "classes": result.get("mask_classes") or [],
        "colour_key": result.get("colour_key") or [],
        "reading": not result.get("out_of_scope", False),
    }


def scope_reasons(result: Mapping[str, Any]) -> list[str]:
    """Every reason the image is out of scope; a record stored before they were listed has its one."""
    if "scope_reasons" in result:
        return list(result["scope_reasons"])
    return [result["scope_reason"]] if result.get("scope_reason") else []


def analysis_view(record: Mapping[str, Any], base: str = "/api/v1") -> dict[str, Any]:
    """The API's JSON for a stored record; picture URLs under ``base`` (include a proxy's root_path).

    A refused image (``out_of_scope``) gets no reading: no label, no flag, the refusal as its recommendation.
    The classifier's probabilities and the features measured before the refusal are kept for integrators,
    marked as not a reading: ``classification.reading`` false (`classification_view`, which batch prediction's
    JSON and CSV use too); the UI shows neither (`medlens.app.render.refused`)."""
    result = record["result"]
    links = _links(record, base)
    features = record.get("features") or {}
    return {
        "id": record["id"],
        "created": record["created"],
        "pipeline": record["pipeline"],
        "auto": bool(result.get("auto", False)),
        "modality": result.get("modality"),
        "source_format": record["source_format"],
        "image_size": result.get("image_size"),
        "original_size": result.get("original_size"),
        "input_notes": result.get("input_notes") or [],
        "clahe": result.get("clahe", False),
        "tta": result.get("tta"),
        "image_url": links["image"],
        "thumbnail_url": links["thumb"],
        "segmentation": _segmentation(result, links),
        "classification": classification_view(record.get("label"), record.get("probabilities") or {}, result),
        "features": features,
        "feature_details": describe_features(features),
        "recommendation": result.get("recommendation", ""),
        "findings": result.get("findings") or [],
        "notice": result.get("notice", ""),
        "uncertainty": result.get("uncertainty"),
        "uncertainty_note": stored_uncertainty_note(result),
        "out_of_scope": bool(result.get("out_of_scope", False)),
        "scope_reason": result.get("scope_reason"),
        "scope_reasons": scope_reasons(result),
        "gradcam_url": links["gradcam"],
        "gradcam_inside_region": result.get("gradcam_inside_region"),
        "timings": result.get("timings_ms") or {},
    }

"""Feature values for people: a name, a unit, a formatted value and a one-line explanation per feature key.

`describe_features` turns the dict that `medlens.pipelines.features.compute_features` returns into table rows;
values in millimetres stay blank, with the reason, when the image carries no pixel size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from medlens.pipelines.names import readable


class FeatureInfo(NamedTuple):
    name: str
    unit: str
    explanation: str
    percent: bool = False  # a 0..1 fraction shown as a percentage


NO_SPACING = (
    "blank: the pixel size is unknown (PNG and JPEG carry no physical scale; DICOM PixelSpacing or a TIFF "
    "resolution in centimetres gives millimetres)"
)
_SHARE = "share of the image"
_PCT = "% of the image"
_ASYMMETRY = "mean share of the shape that misses its mirror image about its two main axes; 0 = symmetric"
_COMPACTNESS = "perimeter² / (4π·area): about 1 for a circle, larger when the border is ragged"
FEATURE_INFO: dict[str, FeatureInfo] = {
    "area_px": FeatureInfo("Area", "pixels", "segmented area in image pixels"),
    "area_fraction": FeatureInfo("Area", "% of the image", _SHARE + " that the segmentation covers", True),
    "area_mm2": FeatureInfo("Area", "mm²", "segmented area in square millimetres"),
    "asymmetry": FeatureInfo("Asymmetry", "0–1", _ASYMMETRY),
    "asymmetry_major_axis": FeatureInfo("Asymmetry (long axis)", "0–1", "mirrored about the long axis"),
    "asymmetry_minor_axis": FeatureInfo("Asymmetry (short axis)", "0–1", "mirrored about the short axis"),
    "perimeter_px": FeatureInfo("Border length", "pixels", "length of the outline"),
    "compactness": FeatureInfo("Border irregularity", "≥ 1", _COMPACTNESS),
    "diameter_px": FeatureInfo("Largest diameter", "pixels", "widest caliper width of the shape"),
    "diameter_mm": FeatureInfo("Largest diameter", "mm", "widest caliper width in millimetres"),
    "colour_count": FeatureInfo("Colours", "count", "distinct colours in the lesion (CIE Lab clusters)"),
    "colour_std_L": FeatureInfo("Lightness spread", "ΔE", "standard deviation of CIE Lab lightness"),
    "colour_std_a": FeatureInfo("Red–green spread", "ΔE", "standard deviation of CIE Lab a*"),
    "colour_std_b": FeatureInfo("Yellow–blue spread", "ΔE", "standard deviation of CIE Lab b*"),
    "colour_spread": FeatureInfo("Colour variegation", "ΔE", "overall colour spread (L*, a*, b* combined)"),
    "count": FeatureInfo("Regions found", "count", "separate segmented regions"),
    "size_fractions": FeatureInfo("Region sizes", "% of the frame", "each region, largest first", True),
    "size_fraction_total": FeatureInfo("Total size", "% of the frame", "all regions together", True),
    "locations": FeatureInfo("Locations", "", "where each region lies in the frame, largest first"),
    "lung_fraction_total": FeatureInfo("Lung fields", "% of the image", "both lung fields together", True),
    "lung_fraction_image_left": FeatureInfo("Lung, image left", _PCT, "right lung on a PA film", True),
    "lung_fraction_image_right": FeatureInfo("Lung, image right", _PCT, "left lung on a PA film", True),
    "lung_ratio_left_right": FeatureInfo("Left / right ratio", "ratio", "image-left over image-right area"),
    "lung_area_mm2": FeatureInfo("Lung area", "mm²", "both lung fields in square millimetres"),
    "class_area_fractions": FeatureInfo("Area per structure", "% of the image", _SHARE + " per class", True),
    "right_lung_fraction": FeatureInfo(
        "Right lung", _PCT, "the patient's right lung (image left on a PA film)", True
    ),
    "left_lung_fraction": FeatureInfo(
        "Left lung", _PCT, "the patient's left lung (image right on a PA film)", True
    ),
    "right_lung_area_mm2": FeatureInfo(
        "Right lung area", "mm²", "the patient's right lung in square millimetres"
    ),
    "left_lung_area_mm2": FeatureInfo(
        "Left lung area", "mm²", "the patient's left lung in square millimetres"
    ),
    "lung_area_ratio": FeatureInfo(
        "Lung size balance", "ratio", "smaller lung's area / larger lung's; 1 = equal"
    ),
    "lung_asymmetry_flag": FeatureInfo(
        "One lung much smaller", "", "a lung is missing or under half the other"
    ),
    "smaller_lung": FeatureInfo("Smaller lung", "", "the patient's side of the flagged lung"),
    "cardiothoracic_ratio": FeatureInfo(
        "Cardiothoracic ratio",
        "ratio",
        "widest heart diameter / widest inner chest diameter (the two lines the overlay's colour key names); "
        "reference: ≤ 0.50 on an adult PA film, not valid on AP or paediatric films",
    ),
    "cardiothoracic_ratio_upper_normal": FeatureInfo("CTR upper limit", "ratio", "adult PA films"),
    "cardiothoracic_ratio_failed": FeatureInfo(
        "CTR not measured",
        "ratio",
        "the heart came out as wide as the chest or wider, which cannot be: the outlines are off here",
    ),
}
#: Keys that carry drawing geometry for the overlay, not values for people.
HIDDEN_KEYS = frozenset({"cardiothoracic_lines"})


def _number(value: float, percent: bool) -> str:
    if percent:
        return f"{100 * value:.1f}%"
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e9 else f"{value:.3g}"


def format_value(key: str, value: Any) -> str:
    """A feature value as text: fractions as percentages, lists joined, locations as a numbered list."""
    info = FEATURE_INFO.get(key, FeatureInfo(key, "", ""))
    if value is None:
        return "—"
    if key == "locations":
        return "; ".join(f"{i}: {loc.get('label', '?')}" for i, loc in enumerate(value, 1)) or "none"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int | float):
        return _number(value, info.percent)
    if isinstance(value, Mapping):
        return ", ".join(f"{readable(k)}: {format_value(key, v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(format_value(key, v) for v in value) or "none"
    return str(value)


def describe_features(features: Mapping[str, Any]) -> list[dict[str, str]]:
    """Rows ``{"key", "name", "value", "unit", "explanation"}`` in the features' order.

    Unknown keys keep their key as the name. A millimetre value that is None says why in its explanation.
    """
    rows = []
    for key, value in features.items():
        if key in HIDDEN_KEYS:
            continue
        info = FEATURE_INFO.get(key, FeatureInfo(readable(key), "", ""))
        explanation = NO_SPACING if value is None and "mm" in info.unit else info.explanation
        rows.append(
            {
                "key": key,
                "name": info.name,
                "value": format_value(key, value),
                "unit": info.unit,
                "explanation": explanation,
            }
        )
    return rows

"""Features on hand-made masks whose answers are known (disc, ellipse, blobs, two lungs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medlens.errors import UnknownNameError
from medlens.pipelines.features import compute_features, get_feature, list_features, location_label


def disc(size: int = 64, r: int = 20, cy: int = 32, cx: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.uint8)


def ellipse(size: int = 64, a: int = 25, b: int = 10, angle_deg: float = 30.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(float) - size // 2
    t = math.radians(angle_deg)
    u = xx * math.cos(t) + yy * math.sin(t)
    v = -xx * math.sin(t) + yy * math.cos(t)
    return ((u / a) ** 2 + (v / b) ** 2 <= 1).astype(np.uint8)


def grey(size: int = 64, value: int = 120) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


def test_registry_lists_and_rejects_unknown_names():
    names = list_features()
    for n in ["area", "asymmetry", "border", "colour", "diameter", "count", "relative_size", "location"]:
        assert n in names
    with pytest.raises(UnknownNameError, match=r"valid names:.*asymmetry"):
        get_feature("no-such-feature")
    with pytest.raises(UnknownNameError):
        compute_features(["area", "bogus"], grey(), disc())


def test_disc_is_symmetric_compact_and_feret_is_its_diameter():
    m = disc(r=20)
    f = compute_features(["area", "asymmetry", "border", "diameter"], grey(), m)
    assert f["area_px"] == int(m.sum())
    assert f["area_fraction"] == pytest.approx(m.sum() / m.size, rel=1e-4)
    assert f["area_mm2"] is None and f["diameter_mm"] is None
    assert f["asymmetry_major_axis"] < 0.03 and f["asymmetry_minor_axis"] < 0.03
    assert f["compactness"] == pytest.approx(1.0, abs=0.15)
    assert f["diameter_px"] == pytest.approx(41, abs=1.5)  # 2r + 1 pixels across


def test_spacing_gives_millimetres():
    m = disc(r=20)
    f = compute_features(["area", "diameter"], grey(), m, spacing=(0.5, 0.5))
    assert f["area_mm2"] == pytest.approx(m.sum() * 0.25, rel=1e-4)
    assert f["diameter_mm"] == pytest.approx(f["diameter_px"] * 0.5, rel=0.02)


def test_ellipse_symmetric_but_elongated_and_half_disc_asymmetric():
    e = ellipse(a=25, b=10, angle_deg=30)
    f = compute_features(["asymmetry", "border", "diameter"], grey(), e)
    assert f["asymmetry"] < 0.05  # symmetric about both principal axes, whatever the orientation
    assert f["compactness"] > 1.3  # an ellipse 2.5:1 is less compact than a disc
    assert f["diameter_px"] == pytest.approx(51, abs=2)

    # A "D" shape: a disc cut by a vertical chord is symmetric about one axis only.
    d = disc(r=20)
    d[:, 40:] = 0
    g = compute_features(["asymmetry"], grey(), d)
    assert min(g["asymmetry_major_axis"], g["asymmetry_minor_axis"]) < 0.05
    assert max(g["asymmetry_major_axis"], g["asymmetry_minor_axis"]) > 0.1


def test_ragged_border_is_less_compact_than_disc():
    m = disc(r=20)
    yy, xx = np.mgrid[:64, :64]
    ang = np.arctan2(yy - 32, xx - 32)
    star = ((yy - 32) ** 2 + (xx - 32) ** 2) <= (14 + 7 * np.cos(8 * ang)) ** 2
    fd = compute_features(["border"], grey(), m)["compactness"]
    fs = compute_features(["border"], grey(), star.astype(np.uint8))["compactness"]
    assert fs > fd + 0.5


def test_colour_count_and_spread():
    m = disc(r=20)
    one = grey(value=150)
    f1 = compute_features(["colour"], one, m)
    assert f1["colour_count"] == 1 and f1["colour_spread"] == pytest.approx(0.0, abs=1e-6)

    two = grey(value=150)
    two[:32] = [140, 70, 30]  # brown upper half
    two[32:] = [40, 40, 120]  # blue-grey lower half
    f2 = compute_features(["colour"], two, m)
    assert f2["colour_count"] == 2 and f2["colour_spread"] > 10

    # Small noise inside one colour must not create new colours (merge threshold in Lab).
    noisy = np.clip(grey(value=150) + np.random.default_rng(0).normal(0, 3, (64, 64, 3)), 0, 255).astype(
        np.uint8
    )
    assert compute_features(["colour"], noisy, m)["colour_count"] == 1


def test_polyp_count_size_and_location():
    m = disc(r=10, cy=12, cx=12) | disc(r=6, cy=50, cx=50)
    f = compute_features(["count", "relative_size", "location"], grey(), m)
    assert f["count"] == 2
    big, small = f["size_fractions"]
    assert big > small
    assert f["size_fraction_total"] == pytest.approx(m.sum() / m.size, rel=1e-4)
    assert [loc["label"] for loc in f["locations"]] == ["upper-left", "lower-right"]
    x, y = f["locations"][0]["centroid_xy"]
    assert x == pytest.approx(12.5 / 64, abs=1e-3) and y == pytest.approx(12.5 / 64, abs=1e-3)
    assert location_label(0.5, 0.5) == "centre" and location_label(0.9, 0.5) == "right"


def test_empty_mask_gives_zeros_not_errors():
    empty = np.zeros((64, 64), np.uint8)
    f = compute_features(list_features(), grey(), empty)
    assert f["area_px"] == 0 and f["count"] == 0 and f["asymmetry"] is None and f["colour_count"] == 0
    assert f["lung_fraction_total"] == 0 and f["lung_ratio_left_right"] is None
    json.dumps(f)  # JSON-safe


def test_two_lungs_split_by_component_even_across_midline():
    m = np.zeros((64, 64), np.uint8)
    m[10:54, 6:30] = 1  # image-left lung: 44 x 24
    m[12:50, 31:58] = 1  # image-right lung: 38 x 27, crosses the midline (column 32) by one pixel
    f = compute_features(["lung_areas"], grey(), m)
    left, right = 44 * 24, 38 * 27
    assert f["lung_fraction_image_left"] == pytest.approx(left / 4096, rel=1e-4)
    assert f["lung_fraction_image_right"] == pytest.approx(right / 4096, rel=1e-4)
    assert f["lung_fraction_total"] == pytest.approx((left + right) / 4096, rel=1e-4)
    assert f["lung_ratio_left_right"] == pytest.approx(left / right, rel=1e-3)

    merged = np.zeros((64, 64), np.uint8)
    merged[10:50, 16:48] = 1  # one region: split at the midline
    g = compute_features(["lung_areas"], grey(), merged, spacing=(0.1, 0.1))
    assert g["lung_ratio_left_right"] == pytest.approx(1.0)
    assert g["lung_area_mm2"] == pytest.approx(40 * 32 * 0.01)


def test_class_areas_on_multiclass_mask():
    m = np.zeros((10, 10), np.uint8)
    m[:5] = 1
    m[5:, :2] = 2
    f = compute_features(["class_areas"], grey(10), m, classes=["background", "lungs", "heart", "clavicle"])
    assert f["class_area_fractions"] == {"lungs": 0.5, "heart": 0.1, "clavicle": 0.0}
    assert compute_features(["class_areas"], grey(10), m)["class_area_fractions"] == {"1": 0.5, "2": 0.1}

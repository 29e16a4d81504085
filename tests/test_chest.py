"""Chest anatomy features: lungs by the patient's side, the cardiothoracic ratio and its lines."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.evaluation.anatomy import ctr_of, lungs_by_side
from medlens.pipelines.chest import cardiothoracic_ratio, lungs
from medlens.pipelines.overlay import draw_overlay

CLASSES = ["background", "left_lung", "right_lung", "heart"]


def _chest(lung_scale: float = 1.0) -> np.ndarray:
    """A 100x100 PA-like label map: right lung (image left) cols 10-39, left lung (image right) cols 60-89,
    heart cols 35-69 on rows 50-79 (widest on row 60 at 30 px)."""
    mask = np.zeros((100, 100), np.uint8)
    mask[20:90, 10:40] = 2  # patient's right lung, on the image left
    mask[20 : 20 + int(70 * lung_scale), 60:90] = 1  # patient's left lung
    mask[50:80, 38:62] = 3
    mask[60, 35:65] = 3  # the widest heart row: 30 px
    return mask


def test_ctr_is_heart_width_over_inner_thoracic_width() -> None:
    mask = _chest()
    assert ctr_of(mask, CLASSES) == pytest.approx(30 / 80)  # thorax: cols 10..89
    out = cardiothoracic_ratio(None, mask, classes=CLASSES)
    assert out["cardiothoracic_lines"] == {"heart": [60, 35, 64], "thorax": [20, 10, 89]}
    assert (
        cardiothoracic_ratio(None, (mask > 0).astype(np.uint8), classes=["background", "lung"])[
            "cardiothoracic_ratio"
        ]
        is None
    )  # no heart class: no CTR


def test_a_heart_as_wide_as_the_chest_is_a_failed_measurement_not_a_ratio() -> None:
    mask = _chest()
    mask[62, 5:95] = 3  # a heart row wider than the lungs' widest row (cols 10..89)
    out = cardiothoracic_ratio(None, mask, classes=CLASSES)
    assert out["cardiothoracic_ratio"] is None and out["cardiothoracic_lines"] is None
    assert out["cardiothoracic_ratio_failed"] == pytest.approx(90 / 80)
    assert cardiothoracic_ratio(None, _chest(), classes=CLASSES)["cardiothoracic_ratio_failed"] is None


def test_lungs_are_named_by_the_patients_side_and_a_small_one_is_flagged() -> None:
    right, left = lungs_by_side(_chest(), CLASSES)
    assert right[30, 20] and left[30, 70] and not right[:, 50:].any() and not left[:, :50].any()
    binary = ((_chest() == 1) | (_chest() == 2)).astype(np.uint8)  # a lung-only model: split by components
    b_right, b_left = lungs_by_side(binary, ["background", "lung"])
    np.testing.assert_array_equal(b_right, right)
    np.testing.assert_array_equal(b_left, left)
    ok = lungs(None, _chest(), classes=CLASSES)
    assert ok["lung_area_ratio"] == 1.0 and not ok["lung_asymmetry_flag"]
    both = (_chest() == 1) | (_chest() == 2)
    assert ok["lung_fraction_total"] == pytest.approx(both.mean(), abs=1e-6)
    assert ok["lung_fraction_total"] == pytest.approx(
        ok["right_lung_fraction"] + ok["left_lung_fraction"], abs=1e-5
    )
    small = lungs(None, _chest(lung_scale=0.3), classes=CLASSES)
    assert small["lung_asymmetry_flag"] and small["smaller_lung"] == "left"
    mask = _chest(lung_scale=0.3)
    assert small["lung_area_ratio"] == pytest.approx((mask == 1).sum() / (mask == 2).sum(), abs=1e-4)


def test_ctr_lines_are_drawn_where_measured_in_colours_of_their_own() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    features = cardiothoracic_ratio(None, _chest(), classes=CLASSES)
    overlay, key = draw_overlay(image, _chest(), CLASSES, features, alpha=0.0)
    colours = {e.name: e.rgb for e in key}
    assert tuple(overlay[60, 50]) == colours["heart width (CTR)"]
    assert tuple(overlay[20, 50]) == colours["chest width (CTR)"]
    assert not overlay[40, 50].any()  # between the lines: the image (opacity 0, no outline there)
    assert len(set(colours.values())) == len(key) == 5  # three structures, two lines: five colours

"""Post-processing of masks: hand-made masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.inference.postprocess import (
    apply_postprocess,
    area_fraction,
    bounding_box,
    connected_components,
    fill_holes,
    keep_largest_component,
    label_planes,
    remove_small_components,
    structure_areas,
    structure_components,
)


def _two_blobs() -> np.ndarray:
    m = np.zeros((20, 30), np.uint8)
    m[2:8, 3:13] = 1  # 6 x 10 = 60 px
    m[12:15, 20:22] = 1  # 3 x 2 = 6 px
    return m


def test_fill_holes_closes_a_ring_but_not_an_open_shape():
    ring = np.zeros((9, 9), np.uint8)
    ring[2:7, 2:7] = 1
    ring[4, 4] = 0
    assert fill_holes(ring)[4, 4] == 1
    assert fill_holes(ring).sum() == 25
    open_shape = ring.copy()
    open_shape[4, 2:5] = 0  # a channel from the hole to the outside
    assert fill_holes(open_shape)[4, 4] == 0


def test_keep_largest_and_remove_small():
    m = _two_blobs()
    largest = keep_largest_component(m)
    assert largest.sum() == 60 and largest[13, 21] == 0
    assert remove_small_components(m, 7).sum() == 60
    assert remove_small_components(m, 6).sum() == 66
    assert keep_largest_component(np.zeros((4, 4), np.uint8)).sum() == 0


def test_diagonal_touching_pixels_are_one_component():
    m = np.eye(5, dtype=np.uint8)
    assert len(connected_components(m)) == 1


def test_connected_components_statistics():
    comps = connected_components(_two_blobs())
    assert [c["label"] for c in comps] == [1, 2]
    big, small = comps
    assert big["area_px"] == 60 and small["area_px"] == 6
    assert big["bbox"] == [3, 2, 13, 8]
    assert small["bbox"] == [20, 12, 22, 15]
    assert big["centroid"] == pytest.approx([7.5, 4.5])
    assert big["area_fraction"] == pytest.approx(60 / 600)
    assert len(connected_components(_two_blobs(), min_size=10)) == 1
    assert connected_components(np.zeros((5, 5), np.uint8)) == []


def test_bounding_box_and_area_fraction():
    m = _two_blobs()
    assert bounding_box(m) == [3, 2, 22, 15]
    assert bounding_box(np.zeros((3, 3))) is None
    assert area_fraction(m) == pytest.approx(66 / 600)
    assert area_fraction(m * 255) == pytest.approx(66 / 600)


def test_apply_postprocess_on_label_mask_keeps_labels():
    m = np.zeros((20, 20), np.uint8)
    m[1:6, 1:6] = 1
    m[3, 3] = 0
    m[10:18, 10:18] = 2
    m[0, 19] = 2  # a speck of class 2
    out = apply_postprocess(m, fill=True, largest=True)
    assert out[3, 3] == 1 and out[0, 19] == 0
    assert set(np.unique(out)) == {0, 1, 2}
    assert (out == 2).sum() == 64
    assert apply_postprocess(m) is m


def test_rejects_non_2d_masks():
    with pytest.raises(ValueError, match="shape"):
        fill_holes(np.zeros((4, 4, 3)))


def test_each_structure_of_a_label_mask_is_measured_on_its_own():
    """Two lungs and the heart between them touch: one region as a whole, three structures apart."""
    chest = ["background", "left_lung", "right_lung", "heart", "clavicle"]
    m = np.zeros((20, 30), np.uint8)
    m[2:18, 2:12], m[2:18, 18:28], m[10:16, 12:18] = 2, 1, 3  # the heart touches both lungs
    assert len(connected_components(m > 0)) == 1
    assert structure_areas(m, chest) == pytest.approx(
        {"left_lung": 160 / 600, "right_lung": 160 / 600, "heart": 36 / 600, "clavicle": 0.0}
    )
    parts = structure_components(m, chest)
    assert [(c["structure"], c["label"], c["area_px"]) for c in parts] == [
        ("left_lung", 1, 160), ("right_lung", 1, 160), ("heart", 1, 36),
    ]  # fmt: skip
    assert parts[2]["bbox"] == [12, 10, 18, 16]
    m[0, 0] = 7  # a label the classes do not name is named by its value; without classes, labels present
    assert list(label_planes(m, chest)) == ["left_lung", "right_lung", "heart", "clavicle", "7"]
    assert list(structure_areas(m)) == ["1", "2", "3", "7"]

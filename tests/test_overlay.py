"""The overlay a reader can read: one colour per thing drawn, measurement lines, and a colour key drawn in."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.drawing import PALETTE, draw_key, key_box
from medlens.pipelines.overlay import colour_key, draw_overlay

CHEST = ["background", "left_lung", "right_lung", "heart"]
LINES = {"cardiothoracic_lines": {"heart": [150, 100, 160], "thorax": [120, 40, 220]}}


def _grey(size: int = 256) -> np.ndarray:
    return np.full((size, size, 3), 128, np.uint8)


def test_the_key_goes_to_the_emptiest_corner_and_names_each_colour():
    entries = [("left lung", (0, 230, 64)), ("heart", (40, 120, 255))]
    mask = np.zeros((256, 256), bool)
    mask[:, :128] = True  # the left half is taken: the key goes to the top right
    out = draw_key(_grey(), entries, avoid=mask)
    changed = (out != _grey()).any(axis=2)
    rows, cols = np.nonzero(changed)
    assert rows.min() == 0 and cols.max() == 255 and cols.min() > 128  # in the top-right corner only
    box_h, box_w, size = key_box((256, 256), [name for name, _ in entries])
    assert changed.sum() == box_h * box_w  # the box is darkened, nothing else touched
    for _, colour in entries:  # a full swatch of each colour
        assert ((out == colour).all(axis=2)).sum() >= size * size
    text = out[:box_h, 256 - box_w + 2 * size :]  # right of the swatches
    assert (text.min(axis=2) > 150).sum() > 20  # light text on the darkened box
    assert (draw_key(_grey(40), entries) == _grey(40)).all()  # too small to hold a key: left out
    assert (draw_key(_grey(), []) == _grey()).all()


def test_regions_then_lines_each_in_a_colour_of_its_own():
    mask = np.zeros((256, 256), np.uint8)
    mask[60:200, 30:110], mask[60:200, 150:230], mask[140:190, 100:160] = 2, 1, 3
    key = colour_key(mask, CHEST, LINES)
    assert [(e.name, e.kind) for e in key] == [
        ("left lung", "region"), ("right lung", "region"), ("heart", "region"),
        ("heart width (CTR)", "line"), ("chest width (CTR)", "line"),
    ]  # fmt: skip
    assert [e.rgb for e in key] == list(PALETTE[:5]) and len({e.colour for e in key}) == 5
    overlay, drawn = draw_overlay(_grey(), mask, CHEST, LINES, alpha=0.0)
    assert drawn == key
    assert tuple(overlay[150, 130]) == key[3].rgb and tuple(overlay[120, 200]) == key[4].rgb
    many = np.arange(9, dtype=np.uint8).repeat(30)[None, :].repeat(4, axis=0)  # labels 1..8 present
    key = colour_key(many, [], LINES)
    assert key[0].name == "label 1" and len({e.colour for e in key}) == len(key) == 10
    assert colour_key(mask, CHEST, None)[-1].name == "heart"  # no measurements: no lines


def test_multilabel_and_single_structure_overlays():
    planes = np.zeros((64, 64, 3), np.uint8)
    planes[:20, :, 0], planes[40:, :, 2] = 1, 1
    key = colour_key(planes, ["optic_disc", "cup", "vessel"])
    assert [(e.name, e.rgb) for e in key] == [("optic disc", PALETTE[0]), ("vessel", PALETTE[2])]
    binary = np.zeros((256, 256), np.uint8)
    binary[100:150, 100:150] = 1
    overlay, key = draw_overlay(_grey(), binary, ["background", "lesion"])
    assert [e.name for e in key] == ["lesion"]  # one structure: nothing to tell apart, no key drawn
    assert (overlay[:40, :40] == 128).all() and (overlay[-40:, -40:] == 128).all()


def test_the_ui_reblend_draws_the_lines_and_the_key():
    pytest.importorskip("pandas")
    from medlens.app import render

    mask = np.zeros((256, 256), np.uint8)
    mask[60:200, 30:110], mask[60:200, 150:230], mask[140:190, 100:160] = 2, 1, 3
    shown = render.blend(_grey(), mask, 0.3, CHEST, LINES)
    np.testing.assert_array_equal(shown, draw_overlay(_grey(), mask, CHEST, LINES, alpha=0.3)[0])
    assert tuple(shown[150, 130]) == PALETTE[3]  # the heart width line

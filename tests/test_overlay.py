"""The overlay a reader can read: one colour per thing drawn, measurement lines, and a colour key drawn in."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.drawing import PALETTE, draw_key, key_layout, mask_labels, mask_values, viewable_mask
from medlens.pipelines.overlay import colour_key, draw_overlay

CHEST = ["background", "left_lung", "right_lung", "heart"]
LINES = {"cardiothoracic_lines": {"heart": [150, 100, 160], "thorax": [120, 40, 220]}}


def _grey(size: int = 256) -> np.ndarray:
    return np.full((size, size, 3), 128, np.uint8)


def test_the_key_goes_under_the_image_and_names_each_colour():
    entries = [("left lung", (0, 230, 64)), ("heart", (40, 120, 255))]
    out = draw_key(_grey(), entries)
    spots, strip_h, size = key_layout((256, 256), [name for name, _ in entries])
    assert out.shape == (256 + strip_h, 256, 3)
    assert (out[:256] == _grey()).all()  # the image itself is not covered anywhere
    strip = out[256:]
    for (_, colour), (x, y) in zip(entries, spots, strict=True):  # a full swatch of each colour
        assert (strip[y : y + size, x : x + size] == colour).all()
    assert spots[0][1] == spots[1][1]  # side by side, in one row: the strip stays low
    text = strip[:, spots[0][0] + size : spots[1][0]]  # between the swatches: the first name
    assert (text.min(axis=2) > 150).sum() > 20  # light text on the dark strip
    many = [(f"structure number {k}", PALETTE[k]) for k in range(6)]  # wider than one row: more rows
    rows = {y for x, y in key_layout((256, 256), [name for name, _ in many])[0]}
    assert len(rows) > 1 and draw_key(_grey(), many).shape[0] > out.shape[0]
    assert (draw_key(_grey(40), entries) == _grey(40)).all()  # too narrow for an entry: left out
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


def test_the_ui_reblend_lines_up_with_the_original_and_shows_the_key_apart():
    pytest.importorskip("pandas")
    from medlens.app import render

    mask = np.zeros((256, 256), np.uint8)
    mask[60:200, 30:110], mask[60:200, 150:230], mask[140:190, 100:160] = 2, 1, 3
    shown = render.blend(_grey(), mask, 0.3, CHEST, LINES)
    png, key = draw_overlay(_grey(), mask, CHEST, LINES, alpha=0.3)  # the API's PNG: a key strip under it
    assert shown.shape == _grey().shape and png.shape[0] > 256  # the UI's is the image's size
    np.testing.assert_array_equal(shown, png[:256])  # the same drawing, without the strip
    assert tuple(shown[150, 130]) == PALETTE[3]  # the heart width line
    record = {"colour_key": [{"name": e.name, "colour": e.colour, "kind": e.kind} for e in key]}
    html = render.key_html(record)
    assert all(e.name in html and e.colour in html for e in key) and html.count('class="entry"') == 5
    assert render.key_html({"colour_key": []}) == render.key_html(None) == ""


def test_on_a_small_film_the_key_covers_no_structure():
    """A 128 px film with lungs in every corner: the key goes under it; each lung pixel keeps its colour."""
    mask = np.zeros((128, 128), np.uint8)
    mask[:, :60], mask[:, 68:], mask[80:120, 60:68] = 2, 1, 3  # lungs to the edges, the heart between
    overlay, key = draw_overlay(_grey(128), mask, CHEST, alpha=1.0)
    assert len(key) == 3 and overlay.shape[0] > 128 and overlay.shape[1] == 128
    for entry, label in zip(key, (1, 2, 3), strict=True):
        assert (overlay[:128][mask == label] == entry.rgb).all()


def test_a_stored_mask_reads_back_as_the_labels_it_was_written_from():
    """`viewable_mask` and `mask_labels` are one definition: the UI's redraw reads the stored PNG back."""
    binary, chest = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    binary[2:5, 2:5], chest[:, :3], chest[:, 5:], chest[6:, 3:5] = 1, 1, 2, 3
    stored = viewable_mask(binary, ["background", "lesion"])
    assert set(np.unique(stored)) == {0, 255} and (mask_labels(stored) == binary).all()
    assert (viewable_mask(binary, []) == stored).all()  # a bundle that named no classes: binary too
    one_lung = viewable_mask(np.where(chest == 1, 1, 0).astype(np.uint8), CHEST)  # labels, not 0/255
    assert one_lung.max() == 1 and (mask_labels(viewable_mask(chest, CHEST)) == chest).all()
    assert mask_values(["background", "skin lesion"]) == {0: "background", 255: "skin lesion"}
    assert mask_values([]) == {0: "background", 255: "segmented region"}
    assert mask_values(["background", "left lung", "right lung"]) == {
        0: "background", 1: "left lung", 2: "right lung"}  # fmt: skip

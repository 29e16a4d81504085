"""Segmentation-guided inputs: crop centred on the predicted region, mask channel, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.errors import UnknownNameError
from medlens.inference.guided import crop_box, guide_inputs, guide_one, guide_regions
from medlens.spec import DEFAULT_GUIDE_MARGIN, Guide, GuideMode, parse_enum


class FixedMaskPredictor:
    """Stands in for a SegmentationPredictor: a fixed rectangle (or nothing) per image."""

    def __init__(self, box: tuple[int, int, int, int] | None) -> None:
        self.box, self.calls = box, 0

    def predict(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        m = np.zeros(image.shape[:2], np.uint8)
        if self.box is not None:
            r0, c0, r1, c1 = self.box
            m[r0:r1, c0:c1] = 1
        return m


def gradient_image(h: int = 60, w: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.stack([yy * 4 % 256, xx * 3 % 256, (yy + xx) % 256], -1).astype(np.uint8)


def test_crop_box_is_square_centred_with_margin_and_inside_the_image():
    m = np.zeros((60, 80), np.uint8)
    m[20:30, 30:50] = 1  # 10 x 20 box centred at (25, 40)
    top, left, side = crop_box(m)
    assert side == 30  # 20 * (1 + 2 * 0.25)
    assert (top + side / 2, left + side / 2) == (25, 40)
    m2 = np.zeros((60, 80), np.uint8)
    m2[0:8, 72:80] = 1  # corner lesion: the square is shifted inside the image
    top, left, side = crop_box(m2)
    assert side == 12 and top == 0 and left == 80 - 12
    assert crop_box(np.zeros((5, 5), np.uint8)) is None


def test_crop_keeps_only_the_largest_region_and_matches_manual_crop():
    img = gradient_image()
    m = np.zeros((60, 80), np.uint8)
    m[20:30, 30:50] = 1
    m[55:57, 2:4] = 1  # speck, ignored
    out = guide_one(img, m, GuideMode.CROP, (30, 30))
    np.testing.assert_array_equal(out, img[10:40, 25:55])  # same size: no resampling


def test_modes_shapes_and_mask_channel():
    img = gradient_image()
    seg = FixedMaskPredictor((20, 30, 30, 50))
    modes = (GuideMode.CROP, GuideMode.CHANNEL, GuideMode.BOTH)
    crop, chan, both = (guide_inputs([img], seg, mode, (32, 32))[0] for mode in modes)
    assert crop.shape == (32, 32, 3) and chan.shape == (32, 32, 4) and both.shape == (32, 32, 4)
    assert crop.dtype == chan.dtype == both.dtype == np.uint8
    assert set(np.unique(chan[..., 3])) == {0, 255}
    # in "both" the lesion fills the centre of the crop: its share is (20*10)/(30*30) of the crop
    assert (both[..., 3] > 0).mean() == pytest.approx(200 / 900, abs=0.05)
    assert both[16, 16, 3] == 255 and both[0, 0, 3] == 0
    grey = gradient_image()[..., :1]
    assert guide_inputs([grey], seg, GuideMode.CHANNEL, (16, 16))[0].shape == (16, 16, 2)
    assert [m.extra_channels for m in GuideMode] == [0, 1, 1, 0]  # crop, channel, both, field
    assert GuideMode.CHANNEL.fits(4) and GuideMode.BOTH.fits(2) and GuideMode.CROP.fits(3)
    assert not GuideMode.CHANNEL.fits(3) and not GuideMode.CROP.fits(4)


def test_nothing_found_uses_whole_image_and_is_deterministic():
    img = gradient_image()
    seg = FixedMaskPredictor(None)
    a = guide_inputs([img, img], seg, GuideMode.CROP, (30, 40))
    b = guide_inputs([img, img], seg, GuideMode.CROP, (30, 40))
    assert seg.calls == 4
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[0], a[1])
    whole = guide_inputs([img], None, GuideMode.BOTH, (60, 80), masks=[np.zeros((60, 80), np.uint8)])[0]
    np.testing.assert_array_equal(whole[..., :3], img)
    assert not whole[..., 3].any()


def test_lesion_larger_than_image_is_padded_not_distorted():
    img = np.full((20, 40, 3), 200, np.uint8)
    m = np.ones((20, 40), np.uint8)  # side = min(40 * 1.5, 40) = 40 > image height 20
    out = guide_one(img, m, GuideMode.BOTH, (40, 40))
    assert out.shape == (40, 40, 4)
    assert (out[:10, :, :3] == 0).all() and (out[10:30, :, :3] == 200).all() and (out[30:, :, :3] == 0).all()


def test_bad_mode_and_bad_inputs():
    img = gradient_image()
    with pytest.raises(UnknownNameError, match="crop"):
        parse_enum(GuideMode, "zoom", "guide mode")
    with pytest.raises(ValueError, match="predictor"):
        guide_inputs([img], None, GuideMode.CROP, (8, 8))
    with pytest.raises(ValueError, match="does not match"):
        guide_one(img, np.zeros((5, 5), np.uint8), GuideMode.CROP, (8, 8))


def test_field_mode_blanks_what_lies_away_from_the_region():
    img = np.full((200, 240, 1), 200, np.uint8)
    img[12:20, 32:40] = 255  # a burned-in marker inside the crop square, far from the region
    mask = np.zeros((200, 240), np.uint8)
    mask[60:140, 60:180] = 1  # crop square: side 180 at (10, 30)
    field = guide_one(img, mask, GuideMode.FIELD, (90, 90))
    crop = guide_one(img, mask, GuideMode.CROP, (90, 90))
    assert field.shape == crop.shape == (90, 90, 1) and field.dtype == np.uint8
    assert (crop == 0).mean() == 0  # the crop square lies inside the image: nothing blank
    assert field[45, 45, 0] == 200  # the region keeps its pixels...
    assert crop.max() == 255 and field.max() == 200  # ...the marker is gone
    # the region fills 80 x 120 of the 180-px square, and with its edge of 4 % of 180 px on each side
    edge = 2 * 0.04 * 180
    assert (field > 0).mean() == pytest.approx((80 + edge) * (120 + edge) / 180**2, abs=0.02)
    empty = np.zeros_like(mask)  # nothing found: the whole image, as "crop"
    as_crop = guide_one(img, empty, GuideMode.CROP, (90, 90))
    assert np.array_equal(guide_one(img, empty, GuideMode.FIELD, (90, 90)), as_crop)
    assert GuideMode.FIELD.extra_channels == 0 and GuideMode.FIELD.crops and GuideMode.FIELD.fits(3)


def test_guide_margin_sets_the_crop_and_round_trips_through_the_spec():
    m = np.zeros((60, 80), np.uint8)
    m[20:30, 30:50] = 1  # a 20-wide box
    assert crop_box(m, 0.05)[2] == 22  # 20 * (1 + 2 * 0.05)
    assert crop_box(m, 0.0)[2] == 20
    img = gradient_image()
    np.testing.assert_array_equal(guide_one(img, m, GuideMode.CROP, (22, 22), margin=0.05), img[14:36, 29:51])
    old = Guide(**{"bundle": "b", "mode": "crop"})  # a bundle written before the margin was a field
    assert old.margin == DEFAULT_GUIDE_MARGIN and old.to_dict() == {"bundle": "b", "mode": "crop"}
    tight = Guide("b", "crop", 0.08)
    assert tight.to_dict() == {"bundle": "b", "mode": "crop", "margin": 0.08}
    assert Guide(**tight.to_dict()) == tight
    with pytest.raises(ValueError, match="margin"):
        Guide("b", "crop", 1.5)


@pytest.mark.parametrize("mode", [GuideMode.CROP, GuideMode.CHANNEL, GuideMode.FIELD])
def test_regions_of_some_structures_line_up_with_the_input_of_all(mode: GuideMode) -> None:
    """cam_region: the lung fields without the heart, in the crop of lungs and heart together."""
    mask = np.zeros((60, 80), np.uint8)
    mask[10:50, 10:30], mask[10:50, 30:50], mask[20:40, 50:70] = 1, 2, 3  # right lung, heart, left lung
    size = (32, 32)
    every = guide_regions([mask], [1, 2, 3], mode, size)
    lungs = guide_regions([mask], [1, 3], mode, size)
    assert every.shape == lungs.shape == (1, 1, *size) and every.dtype == bool
    # all structures: the same region as the mask channel of the same crop
    with_mask = GuideMode.BOTH if mode.crops else GuideMode.CHANNEL
    channel = guide_inputs([gradient_image()], None, with_mask, size, masks=[mask])[0][..., -1] > 0
    assert (every[0, 0] != channel).mean() < 0.03
    # the lungs alone: inside that region, without the heart's band in the middle
    assert lungs.sum() < every.sum() and not (lungs & ~every).any()
    heart_column = 40 * size[1] // 80 if not mode.crops else size[1] // 2 - 1
    assert not lungs[0, 0, :, heart_column].any() and every[0, 0, :, heart_column].any()


def test_region_names_are_checked_against_the_guide() -> None:
    from medlens.errors import ConfigError
    from medlens.training.prepare import region_labels

    classes = ["background", "left_lung", "right_lung", "heart"]
    assert region_labels(classes, []) == [1, 2, 3]
    assert region_labels(classes, ["right_lung", "left_lung"]) == [2, 1]
    with pytest.raises(ConfigError, match=r"cam_region.*lungs"):
        region_labels(classes, ["lungs"])
    # a guide with no structure has no region: refused, not a loss of 0
    with pytest.raises(ConfigError, match="no structure"):
        region_labels(["background"], [])


def test_empty_regions_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    """Images whose guide found no region are left out of the attention loss: a warning with their count;
    all of them: refused (the loss would be 0)."""
    import logging

    from medlens.errors import ConfigError
    from medlens.training.prepare import check_regions

    regions = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
    regions[:3, :, 2:6, 2:6] = 1
    with caplog.at_level(logging.WARNING, logger="medlens.training.prepare"):
        check_regions(regions[:3], "guide")
        assert not caplog.records
        check_regions(regions, "guide")
    assert len(caplog.records) == 1 and "2 of 5" in caplog.records[0].getMessage()
    with pytest.raises(ConfigError, match=r"no region.*any of 3 images"):
        check_regions(torch.zeros(3, 1, 8, 8, dtype=torch.uint8), "guide")

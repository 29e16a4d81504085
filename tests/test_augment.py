"""GPU batch augmentation: masks follow the image geometry exactly and keep their values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medlens.data.augment import AugmentConfig, GpuAugmenter
from medlens.errors import ConfigError, UnknownNameError

OFF = {"hflip": 0.0, "vflip": 0.0, "p_affine": 0.0, "elastic": 0.0, "p_color": 0.0}
STRONG_GEOMETRY = AugmentConfig(
    hflip=0.5, vflip=0.5, rotate_deg=45.0, scale=(0.7, 1.3), shift=0.1, p_affine=1.0, elastic=1.0, p_color=0.0
)


def _discs(batch: int = 4, size: int = 48, seed: int = 0) -> torch.Tensor:
    """(B, 1, H, W) uint8 masks with one off-centre disc each."""
    gen = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = []
    for _ in range(batch):
        cy, cx = gen.integers(size // 4, size // 2, size=2)
        masks.append(((yy - cy) ** 2 + (xx - cx) ** 2) <= (size // 6) ** 2)
    return torch.from_numpy(np.stack(masks)[:, None].astype(np.uint8))


def test_all_probabilities_zero_is_identity() -> None:
    images = torch.rand(3, 3, 32, 32)
    masks = _discs(3, 32)
    out, out_masks = GpuAugmenter(AugmentConfig(**OFF), "segmentation")(images, masks)
    assert torch.equal(out, images) and torch.equal(out_masks, masks)
    out, none = GpuAugmenter(AugmentConfig(**OFF, gamma=0.3, hue=0.1), "classification")(images, None)
    assert none is None and torch.equal(out, images)


@pytest.mark.parametrize(
    ("channels", "make_target"),
    [
        (3, lambda: _discs(4)),  # binary uint8 (B, 1, H, W)
        (1, lambda: _discs(4).float()),  # binary float
        (3, lambda: torch.randint(0, 4, (4, 48, 48))),  # multi-class int64 (B, H, W)
        (1, lambda: torch.randint(0, 2, (4, 3, 48, 48), dtype=torch.uint8)),  # multi-label (B, K, H, W)
    ],
)
def test_shapes_dtypes_and_mask_values_are_kept(channels: int, make_target) -> None:
    torch.manual_seed(0)
    images = torch.rand(4, channels, 48, 48)
    target = make_target()
    cfg = AugmentConfig(
        hflip=0.5, vflip=0.5, rotate_deg=30, p_affine=1.0, elastic=1.0, gamma=0.2, hue=0.05, p_color=1.0
    )
    out, out_target = GpuAugmenter(cfg, "segmentation")(images, target)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out_target.shape == target.shape and out_target.dtype == target.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert set(torch.unique(out_target).tolist()) <= set(torch.unique(target).tolist())
    assert not torch.equal(out, images)


def test_geometry_is_identical_for_image_and_mask() -> None:
    torch.manual_seed(0)
    masks = _discs(8)
    images = masks.float().repeat(
        1, 3, 1, 1
    )  # the image is the mask: thresholding it must give the mask back
    out, out_masks = GpuAugmenter(STRONG_GEOMETRY, "segmentation")(images, masks)
    recovered = (out[:, 0] > 0.5).to(torch.uint8)
    disagreement = (recovered != out_masks[:, 0]).float().mean(dim=(1, 2))
    assert disagreement.max() < 0.02  # only boundary pixels differ (bilinear image vs nearest mask)
    moved = (out_masks != masks).float().mean(dim=(1, 2, 3))
    assert (moved > 0.05).sum() >= 6  # and the masks really were transformed


def test_a_certain_flip_is_exact() -> None:
    images = torch.rand(2, 3, 16, 16)
    masks = torch.randint(0, 5, (2, 16, 16))
    cfg = AugmentConfig(**{**OFF, "hflip": 1.0})
    out, out_masks = GpuAugmenter(cfg, "segmentation")(images, masks)
    assert torch.equal(out, images.flip(-1)) and torch.equal(out_masks, masks.flip(-1))


def test_reproducible_with_manual_seed() -> None:
    images, masks = torch.rand(4, 3, 32, 32), _discs(4, 32)
    aug = GpuAugmenter(AugmentConfig(elastic=0.5, gamma=0.2, hue=0.05), "segmentation")
    torch.manual_seed(7)
    first = aug(images, masks)
    torch.manual_seed(7)
    second = aug(images, masks)
    torch.manual_seed(8)
    third = aug(images, masks)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], third[0])


def test_photometric_changes_leave_masks_alone() -> None:
    torch.manual_seed(0)
    images, masks = torch.rand(4, 3, 32, 32), _discs(4, 32)
    cfg = AugmentConfig(**{**OFF, "p_color": 1.0}, brightness=0.3, contrast=0.3, gamma=0.3, hue=0.1)
    out, out_masks = GpuAugmenter(cfg, "segmentation")(images, masks)
    assert torch.equal(out_masks, masks)
    assert (out - images).abs().mean() > 0.01


def test_classification_images_only_and_float64_kept() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    out, target = GpuAugmenter(AugmentConfig(hue=0.1), "classification")(images, None)  # hue ignored for C=1
    assert target is None and out.dtype == torch.float64 and out.shape == images.shape


def test_bad_input_and_config() -> None:
    with pytest.raises(UnknownNameError):
        GpuAugmenter(AugmentConfig(), "detection")
    aug = GpuAugmenter(AugmentConfig(), "segmentation")
    with pytest.raises(ConfigError, match="do not fit"):
        aug(torch.rand(2, 3, 32, 32), torch.zeros(2, 1, 16, 16))
    with pytest.raises(ConfigError, match="needs target masks"):
        aug(torch.rand(2, 3, 32, 32), None)
    with pytest.raises(ConfigError, match="float"):
        aug(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="hflip"):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ConfigError, match="scale"):
        AugmentConfig(scale=(1.2, 0.8))
    with pytest.raises(ConfigError, match="unknown option"):
        AugmentConfig.from_dict({"rotation": 10})


def test_config_round_trip_from_plan_style_dict() -> None:
    cfg = AugmentConfig.from_dict({"scale": [0.8, 1.2], "vflip": 0.5, "rotate_deg": 180.0})
    assert cfg.scale == (0.8, 1.2)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg


def test_real_multiclass_label_map_keeps_its_labels(shared_datasets: Path) -> None:
    """JSRT heart/lung label map (values 0..3) on its radiograph, downsized to 64 px."""
    root = shared_datasets / "cxr_lungs_jsrt"
    names = sorted(p.name for p in (root / "masks_multiclass").glob("*.png"))[:2]
    if not names:
        pytest.skip("cxr_lungs_jsrt/masks_multiclass is empty")
    images = [np.asarray(Image.open(root / "images" / n).convert("L").resize((64, 64))) for n in names]
    labels = [
        np.asarray(Image.open(root / "masks_multiclass" / n).resize((64, 64), Image.NEAREST)) for n in names
    ]
    x = torch.from_numpy(np.stack(images)[:, None]).float() / 255
    y = torch.from_numpy(np.stack(labels)).long()
    torch.manual_seed(0)
    out, out_y = GpuAugmenter(STRONG_GEOMETRY, "segmentation")(x, y)
    assert out.shape == x.shape and out_y.shape == y.shape
    assert set(torch.unique(out_y).tolist()) <= set(torch.unique(y).tolist())
    for label in torch.unique(y)[1:].tolist():  # every structure survives the deformation
        assert (out_y == label).sum() > 0.3 * (y == label).sum()


def test_blur_softens_images_and_leaves_masks_alone() -> None:
    torch.manual_seed(0)
    images, masks = torch.rand(4, 3, 32, 32), _discs(4, 32)
    out, out_masks = GpuAugmenter(AugmentConfig(**OFF, blur=1.0, blur_sigma=1.5), "segmentation")(
        images, masks
    )
    assert torch.equal(out_masks, masks) and out.shape == images.shape

    def roughness(x: torch.Tensor) -> float:  # mean difference between horizontal neighbours
        return float((x[..., 1:] - x[..., :-1]).abs().mean())

    assert roughness(out) < 0.8 * roughness(images)
    with pytest.raises(ConfigError, match="blur"):
        AugmentConfig(blur=2.0)
    with pytest.raises(ConfigError, match="blur_sigma"):
        AugmentConfig(blur_sigma=0.05)

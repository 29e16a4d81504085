"""GPU batch augmentation with kornia: one geometric draw for image and mask, photometric ops on images only.

>>> aug = GpuAugmenter(AugmentConfig(vflip=0.5), task="segmentation")
>>> images, masks = aug(images, masks)  # images float (B, C, H, W) in 0..1; masks (B, 1|K, H, W) or (B, H, W)

Order: flips -> affine (rotation, scale, shift) -> elastic -> colour (brightness, contrast, hue) -> gamma.
Masks go through the same geometric draws with nearest-neighbour resampling and zero (background) padding, so
their values stay in their original set. torch and kornia are imported on first use, so that
``medlens.config`` can import :class:`AugmentConfig` without them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medlens.errors import ConfigError, UnknownNameError
from medlens.spec import TASKS, Task

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


#: Built-in values of the settings that neither the config nor the data set's plan chose.
AUGMENT_DEFAULTS: dict[str, Any] = {
    "hflip": 0.5,
    "vflip": 0.0,
    "rotate_deg": 15.0,
    "scale": (0.85, 1.15),
    "shift": 0.06,
    "elastic": 0.0,
    "elastic_alpha": 2.0,
    "elastic_sigma": 8.0,
    "brightness": 0.15,
    "contrast": 0.15,
    "gamma": 0.0,
    "hue": 0.0,
    "p_affine": 0.7,
    "p_color": 0.8,
    "blur": 0.0,
    "blur_sigma": 1.0,
}


@dataclass
class AugmentConfig:
    """Augmentation settings. ``hflip``, ``vflip``, ``p_affine``, ``elastic``, ``p_color`` are probabilities;
    the others are magnitudes (0 turns an operation off).

    ``None`` (the default of every field) means "not set": training fills it from the data set's plan (e.g.
    vertical flips for dermoscopy, none for X-rays), else from :data:`AUGMENT_DEFAULTS` (:meth:`filled`). A
    value you set is kept, even when it equals the built-in default.
    """

    hflip: float | None = None  # probability of a horizontal flip
    vflip: float | None = None  # probability of a vertical flip
    rotate_deg: float | None = None  # rotation drawn from [-rotate_deg, rotate_deg] degrees
    scale: tuple[float, float] | None = None  # isotropic zoom range
    shift: float | None = None  # translation up to this fraction of width / height
    elastic: float | None = None  # probability of an elastic deformation
    elastic_alpha: float | None = None  # elastic displacement scale (kornia: normalised coordinates)
    elastic_sigma: float | None = None  # smoothness (Gaussian sigma, pixels) of the elastic displacement
    brightness: float | None = None  # additive brightness drawn from [-b, b]
    contrast: float | None = None  # contrast factor drawn from [1 - c, 1 + c]
    gamma: float | None = None  # gamma drawn from [1 - g, 1 + g]
    hue: float | None = None  # hue shift drawn from [-h, h] (fraction of the colour circle; RGB only)
    p_affine: float | None = None  # probability of the affine transform (rotation + scale + shift together)
    p_color: float | None = None  # probability of the colour jitter and, separately, of the gamma change
    # probability of a Gaussian blur (sigma drawn from [0.1, blur_sigma] pixels): an image resampled from
    # another size or a softer camera looks like this, and a classifier trained on crisp images only can
    # swing on it (skin-cls: melanoma .46 -> .87 on an example blurred by a 2x up- and downscaling)
    blur: float | None = None
    blur_sigma: float | None = None

    def __post_init__(self) -> None:
        if self.scale is not None:
            self.scale = tuple(float(s) for s in self.scale)  # type: ignore[assignment]  # YAML gives lists
            if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
                raise ConfigError(f"augment.scale must be (low, high) with 0 < low <= high, got {self.scale}")
        for name in ("hflip", "vflip", "elastic", "p_affine", "p_color", "blur"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"augment.{name} is a probability in [0, 1], got {value}")
        for name in ("rotate_deg", "shift", "elastic_alpha", "brightness", "contrast", "gamma", "hue"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"augment.{name} must be >= 0, got {value}")
        if (
            (self.elastic_sigma is not None and self.elastic_sigma <= 0)
            or (self.blur_sigma is not None and self.blur_sigma <= 0.1)
            or (self.gamma is not None and self.gamma >= 1)
            or (self.hue is not None and self.hue > 0.5)
        ):
            raise ConfigError("augment: need elastic_sigma > 0, blur_sigma > 0.1, gamma < 1 and hue <= 0.5")

    def filled(self, suggestions: dict[str, Any] | None = None) -> AugmentConfig:
        """A copy with every unset field taken from ``suggestions`` (a plan's), else the built-in default."""
        values = {}
        for name in AUGMENT_DEFAULTS:
            value = getattr(self, name)
            if value is None:
                value = (suggestions or {}).get(name, AUGMENT_DEFAULTS[name])
            values[name] = tuple(value) if isinstance(value, list) else value
        return AugmentConfig(**values)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Build from a plain dict (plan.json / YAML); unknown keys raise ConfigError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"augment: unknown option(s) {unknown}; valid: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-friendly dict (``scale`` as a list)."""
        out = dataclasses.asdict(self)
        out["scale"] = None if self.scale is None else list(self.scale)
        return out


class GpuAugmenter:
    """Augment a batch on its own device (CPU or GPU) with ``kornia.augmentation.AugmentationSequential``.

    Targets by task: segmentation binary ``(B, 1, H, W)``, multi-class ``(B, H, W)``, multi-label
    ``(B, K, H, W)`` (any dtype; returned in the same dtype and shape); classification ``None``. Random draws
    use torch's global generator, so ``torch.manual_seed`` makes a call reproducible.
    """

    def __init__(self, cfg: AugmentConfig, task: str) -> None:
        if task not in TASKS:
            raise UnknownNameError("task", task, TASKS)
        self.cfg, self.task = cfg.filled(), task
        self._pipelines: dict[tuple[int, int, int], nn.Module] = {}

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``images`` float ``(B, C, H, W)`` in 0..1, ``C`` in {1, 3}; returns augmented (images, targets)."""
        if images.ndim != 4 or not images.is_floating_point():
            raise ConfigError(
                f"augment: images must be float (B, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if self.task == Task.SEGMENTATION and targets is None:
            raise ConfigError("augment: segmentation needs target masks")
        b, c, h, w = images.shape
        pipeline = self._pipeline(c, h, w)
        if pipeline is None:
            return images, targets
        work = images.float()
        if self.task == Task.CLASSIFICATION or targets is None:
            return pipeline(work, data_keys=["input"]).to(images.dtype), targets
        if targets.shape[0] != b or targets.shape[-2:] != (h, w):
            raise ConfigError(
                f"augment: masks {tuple(targets.shape)} do not fit images {tuple(images.shape)}"
            )
        mask = targets.unsqueeze(1) if targets.ndim == 3 else targets
        out, out_mask = pipeline(work, mask.to(work.dtype), data_keys=["input", "mask"])
        out_mask = out_mask.round().to(targets.dtype)
        return out.to(images.dtype), out_mask[:, 0] if targets.ndim == 3 else out_mask

    def _pipeline(self, channels: int, height: int, width: int) -> nn.Module | None:
        key = (channels, height, width)  # the elastic kernel depends on the image size
        if key not in self._pipelines:
            self._pipelines[key] = self._build(channels, height, width)
        return self._pipelines[key]

    def _build(self, channels: int, height: int, width: int) -> nn.Module | None:
        import kornia.augmentation as K
        from kornia.constants import DataKey, Resample

        cfg, ops = self.cfg, []
        if cfg.hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=cfg.hflip))
        if cfg.vflip > 0:
            ops.append(K.RandomVerticalFlip(p=cfg.vflip))
        if cfg.p_affine > 0 and (cfg.rotate_deg > 0 or cfg.shift > 0 or cfg.scale != (1.0, 1.0)):
            ops.append(
                K.RandomAffine(
                    degrees=cfg.rotate_deg,
                    translate=(cfg.shift, cfg.shift),
                    scale=cfg.scale,
                    padding_mode="zeros",
                    p=cfg.p_affine,
                )
            )
        if cfg.elastic > 0 and cfg.elastic_alpha > 0:
            kernel = _elastic_kernel(cfg.elastic_sigma, height, width)
            sigma = (cfg.elastic_sigma, cfg.elastic_sigma)
            alpha = (cfg.elastic_alpha, cfg.elastic_alpha)
            ops.append(K.RandomElasticTransform(kernel_size=kernel, sigma=sigma, alpha=alpha, p=cfg.elastic))
        hue = cfg.hue if channels == 3 else 0.0
        if cfg.p_color > 0 and (cfg.brightness > 0 or cfg.contrast > 0 or hue > 0):
            ops.append(
                K.ColorJiggle(brightness=cfg.brightness, contrast=cfg.contrast, hue=hue, p=cfg.p_color)
            )
        if cfg.p_color > 0 and cfg.gamma > 0:
            ops.append(K.RandomGamma(gamma=(1.0 - cfg.gamma, 1.0 + cfg.gamma), p=cfg.p_color))
        if cfg.blur > 0:
            half = math.ceil(3 * cfg.blur_sigma)  # the kernel covers +-3 sigma
            ops.append(K.RandomGaussianBlur((2 * half + 1,) * 2, (0.1, cfg.blur_sigma), p=cfg.blur))
        if not ops:
            return None
        logger.debug(
            "augmentation for (%d, %d, %d): %s", channels, height, width, [type(o).__name__ for o in ops]
        )
        # Masks: nearest resampling on the same grid convention as the images (kornia's default leaves
        # align_corners=None for masks, which warns and differs from the images' False).
        mask_args = {DataKey.MASK: {"resample": Resample.NEAREST, "align_corners": False}}
        return K.AugmentationSequential(*ops, data_keys=["input", "mask"], extra_args=mask_args)


def _elastic_kernel(sigma: float, height: int, width: int) -> tuple[int, int]:
    """Odd Gaussian kernel covering +-3 sigma, no larger than the image (kornia pads by reflection)."""

    def size(limit: int) -> int:
        k = min(2 * math.ceil(3 * sigma) + 1, limit if limit % 2 else limit - 1)
        return max(k, 3)

    return size(height), size(width)

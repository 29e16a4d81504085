"""Pre-processing shared by every predictor and runtime: channels per spec, the training cache's resize (so
that a model sees at inference the pixels it was trained on), 0..1 scaling and the spec's normalisation."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.spec import IMAGE_CHANNELS, ModelSpec

logger = logging.getLogger(__name__)


def ensure_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` uint8 -> ``(H, W, channels)`` uint8 (ITU-R 601 luma for RGB -> grey,
    grey repeated for grey -> RGB). Images with ``channels`` channels pass unchanged.

    RGBA is flattened on white by `medlens.data.io.flatten_alpha`, as the readers and the pipelines flatten
    it, so that a predictor called directly sees the pixels an analysis of the same image sees; its note (how
    much of the image was transparent, never pixel values) is logged as a warning."""
    from medlens.data.io import convert_channels, flatten_alpha

    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.dtype != np.uint8:
        raise MedlensError(f"expected an (H, W, C) uint8 image, got shape {image.shape} dtype {image.dtype}")
    if image.shape[2] == channels:
        return image
    if image.shape[2] == 4:
        image, note = flatten_alpha(image)
        if note:
            logger.warning("RGBA input: %s", note)
    if image.shape[2] not in IMAGE_CHANNELS or channels not in IMAGE_CHANNELS:
        raise MedlensError(
            f"cannot convert a {image.shape[2]}-channel image to the {channels} the model expects"
        )
    return convert_channels(image, channels)


def to_input_tensor(image: np.ndarray, size: Sequence[int]) -> torch.Tensor:
    """``(H, W, C)`` uint8 -> ``(C, h, w)`` uint8 tensor at ``size = (h, w)``, resized by the training cache's
    function (PIL antialiased bilinear) so that the model sees at inference the pixels it was trained on."""
    from medlens.data.cache import resize_image as cache_resize

    resized = cache_resize(image, (int(size[0]), int(size[1])))
    if resized.ndim == 2:
        resized = resized[..., None]
    if not resized.flags.writeable or not resized.flags.c_contiguous:  # PIL-backed arrays are read-only
        resized = np.array(resized, copy=True, order="C")
    return torch.from_numpy(resized).permute(2, 0, 1)


def normalise(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float32 ``(B, C, H, W)``: ``(x / 255 - mean) / std`` per channel."""
    c = x.shape[1]
    mean = torch.as_tensor(spec.mean or [0.0] * c, dtype=torch.float32)
    std = torch.as_tensor(spec.std or [1.0] * c, dtype=torch.float32)
    mean, std = mean.expand(c) if mean.numel() == 1 else mean, std.expand(c) if std.numel() == 1 else std
    return (x.float() / 255.0 - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)


def preprocess(images: Sequence[np.ndarray], spec: ModelSpec) -> torch.Tensor:
    """A list of HWC uint8 images of any sizes -> float32 ``(B, C, H, W)`` at the spec's ``input_size``
    (guided classifiers: images that already carry the guide's mask channel)."""
    batch = torch.stack(
        [to_input_tensor(ensure_channels(img, spec.in_channels), spec.input_size) for img in images]
    )
    return normalise(batch, spec)

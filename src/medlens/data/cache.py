"""Resize a data set once and keep it in memory as ``uint8`` tensors; training then only indexes them.

Images are resized with PIL's antialiased bilinear filter (area-like when shrinking), masks with nearest
neighbour, both straight to ``input_size`` (no letterbox). :func:`resize_image` and :func:`resize_mask` are
the same functions inference must use, so that training and prediction see identical pixels.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from medlens.data.index import DatasetIndex, Item, load_target
from medlens.data.io import read_image
from medlens.spec import Mode, Task

logger = logging.getLogger(__name__)


@dataclass
class CachedData:
    """A resized data set in memory.

    images: (N, C, H, W) uint8. targets: binary segmentation (N, 1, H, W) uint8 0/1; multiclass (N, H, W)
    uint8 labels; multilabel (N, K, H, W) uint8 0/1; classification (N,) int64 class indices.
    regions: (N, 1, H, W) uint8 0/1, where a guided classifier should look (its guide's region, aligned with
    ``images``), for the attention loss; None otherwise.
    """

    images: torch.Tensor
    targets: torch.Tensor
    ids: list[str]
    regions: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, C) uint8 image to ``size`` = (H, W) with antialiased bilinear filtering."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    # PIL's BILINEAR widens its support by the scale factor when shrinking: it antialiases like INTER_AREA;
    # reducing_gap first reduces by an integer factor (box filter) to keep large images fast.
    planes = [image] if image.shape[-1] == 3 else [image[..., c] for c in range(image.shape[-1])]
    out = [
        np.array(Image.fromarray(p).resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0))
        for p in planes
    ]
    return out[0] if len(planes) == 1 and out[0].ndim == 3 else np.stack(out, axis=-1)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) or (H, W, K) uint8 mask to ``size`` = (H, W) with nearest neighbour."""
    h, w = size
    if mask.shape[:2] == (h, w):
        return mask
    if mask.ndim == 3:
        return np.stack([resize_mask(mask[..., k], size) for k in range(mask.shape[-1])], axis=-1)
    return np.array(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))


def load_sample(
    item: Item, index: DatasetIndex, input_size: tuple[int, int], in_channels: int
) -> tuple[np.ndarray, np.ndarray | int]:
    """Read, convert and resize one item.

    Returns ``(image, target)``: image (in_channels, H, W) uint8; target (1, H, W) uint8 0/1 for binary
    segmentation, (H, W) uint8 for multiclass, (K, H, W) uint8 0/1 for multilabel, the class index for
    classification.
    """
    size = (int(input_size[0]), int(input_size[1]))
    image = resize_image(read_image(item.image, channels=in_channels).array, size)
    image = np.ascontiguousarray(image.transpose(2, 0, 1))
    if index.task == Task.CLASSIFICATION:
        return image, index.class_index(item)
    target = resize_mask(load_target(item, index), size)
    if index.mode == Mode.BINARY:
        target = target[None]
    elif index.mode == Mode.MULTILABEL:
        target = target.transpose(2, 0, 1)
    return image, np.ascontiguousarray(target)


def build_cache(
    index: DatasetIndex, ids: list[str], input_size: tuple[int, int], in_channels: int, num_workers: int = 0
) -> CachedData:
    """Load ``ids`` of ``index``, resized to ``input_size`` = (H, W), as uint8 tensors (:class:`CachedData`).

    ``num_workers > 0`` reads with that many threads (PIL and zlib release the GIL while decoding).
    """
    items = index.lookup(ids)

    def load(item: Item) -> tuple[np.ndarray, np.ndarray | int]:
        return load_sample(item, index, input_size, in_channels)

    if num_workers > 0:
        with ThreadPoolExecutor(num_workers) as pool:
            samples = list(pool.map(load, items))
    else:
        samples = [load(item) for item in items]
    h, w = int(input_size[0]), int(input_size[1])
    images = (
        torch.from_numpy(np.stack([s[0] for s in samples]))
        if samples
        else torch.zeros((0, in_channels, h, w), dtype=torch.uint8)
    )
    if index.task == Task.CLASSIFICATION:
        targets = torch.tensor([int(s[1]) for s in samples], dtype=torch.int64)
    elif samples:
        targets = torch.from_numpy(np.stack([np.asarray(s[1]) for s in samples]))
    else:
        targets = torch.zeros(_empty_target_shape(index, h, w), dtype=torch.uint8)
    logger.info(
        "cached %d items at %dx%d (%.1f MB)",
        len(items),
        h,
        w,
        (images.numel() + targets.numel() * targets.element_size()) / 1e6,
    )
    return CachedData(images, targets, list(ids))


def _empty_target_shape(index: DatasetIndex, h: int, w: int) -> tuple[int, ...]:
    if index.mode == Mode.BINARY:
        return (0, 1, h, w)
    if index.mode == Mode.MULTILABEL:
        return (0, len(index.mask_dirs), h, w)
    return (0, h, w)

"""Segmentation-guided classification inputs: a lesion-centred crop, the mask as an extra channel, or both.

The same function feeds the trainer (inputs cached once before training, with ``guide_bundle`` /
``guide_mode``) and a guided `ClassificationPredictor` (with its guide bundle's masks, or with those its
caller passes: a pipeline's own segmentation), so a classifier sees at inference exactly what it was trained
on. Everything here is deterministic.

Modes (:class:`medlens.spec.GuideMode`):

- ``"crop"``: a square crop centred on the bounding box of the largest predicted region, its side the box's
  longer side plus a margin on each side (the guide's ``margin``, by default `DEFAULT_MARGIN`, 25%); the
  square is shifted to stay inside the image when it fits and padded with zeros where it does not. The whole
  image is used when nothing is found.
- ``"channel"``: the whole image with the predicted mask (0/255) appended as an extra channel (RGB -> 4
  channels, grey -> 2 channels).
- ``"both"``: the crop, with the cropped mask appended.
- ``"field"``: the crop, every pixel farther than `FIELD_MARGIN` (4% of the crop's side) from the predicted
  region set to 0, so that the classifier sees the region (e.g. the lung fields and heart) and its edge only:
  burned-in markers, borders and soft tissue outside it cannot carry the decision.

Outputs are resized to ``size`` ``(H, W)``: images with area-averaging (PIL ``BOX``) when shrinking and
bilinear when enlarging, masks with nearest neighbour.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image
from scipy import ndimage

from medlens.inference.postprocess import bounding_box, keep_largest_component
from medlens.spec import DEFAULT_GUIDE_MARGIN, GuideMode

logger = logging.getLogger(__name__)

DEFAULT_MARGIN = DEFAULT_GUIDE_MARGIN
FIELD_MARGIN = 0.04


class GuidedInputs(list):
    """Classifier inputs a guide made (what :func:`guide_inputs` returns): a guided
    `ClassificationPredictor` takes them as they are instead of guiding them again."""


class MaskPredictor(Protocol):
    """Anything with ``predict(image HWC uint8) -> (H, W) uint8 label mask`` (a `SegmentationPredictor`)."""

    def predict(self, image: np.ndarray) -> np.ndarray: ...


def crop_box(mask: np.ndarray, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int] | None:
    """Square crop ``(top, left, side)`` around the largest region of ``mask`` ``(H, W)``; None when empty.

    ``top``/``left`` may be negative and ``top + side`` may pass the image edge only when the square is larger
    than the image along that axis (the rest is padded).
    """
    box = bounding_box(keep_largest_component(mask > 0))
    if box is None:
        return None
    x0, y0, x1, y1 = box
    h, w = mask.shape[:2]
    side = round(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin))
    side = max(1, min(side, max(h, w)))
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0

    def place(centre: float, extent: int) -> int:
        start = round(centre - side / 2.0)
        if side <= extent:  # shift inside the image
            return int(min(max(start, 0), extent - side))
        return round((extent - side) / 2.0)  # larger than the image: centre it, pad both sides

    return place(cy, h), place(cx, w), side


def _crop(array: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """Square ``side`` crop of ``(H, W[, C])`` at ``(top, left)``, zero-padded outside the image."""
    h, w = array.shape[:2]
    out = np.zeros((side, side, *array.shape[2:]), dtype=array.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + side, h), min(left + side, w)
    out[r0 - top : r1 - top, c0 - left : c1 - left] = array[r0:r1, c0:c1]
    return out


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize ``(H, W)`` or ``(H, W, C)`` uint8 to ``size`` ``(H, W)``."""
    if array.shape[:2] == tuple(size):
        return array
    shrink = array.shape[0] >= size[0] and array.shape[1] >= size[1]
    method = Image.NEAREST if nearest else (Image.BOX if shrink else Image.BILINEAR)
    chans = [array] if array.ndim == 2 else [array[..., c] for c in range(array.shape[2])]
    out = [np.asarray(Image.fromarray(c).resize((size[1], size[0]), method)) for c in chans]
    return out[0] if array.ndim == 2 else np.stack(out, axis=-1)


def guide_one(
    image: np.ndarray,
    mask: np.ndarray,
    mode: GuideMode,
    size: tuple[int, int],
    margin: float = DEFAULT_MARGIN,
) -> np.ndarray:
    """Guided input of one image.

    Args:
        image: ``(H, W, C)`` uint8, ``C`` in {1, 3} (a ``(H, W)`` array is taken as one channel).
        mask: ``(H, W)`` uint8 predicted mask (non-zero = region).
        mode: how the segmentation guides the classifier.
        size: output ``(H, W)``.
    Returns:
        ``(size[0], size[1], C)`` uint8 for ``"crop"`` and ``"field"``, ``(size[0], size[1], C + 1)`` for the
        others.
    """
    image = image[..., None] if image.ndim == 2 else image
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape[:2]} does not match image shape {image.shape[:2]}")
    fg = (np.asarray(mask) > 0).astype(np.uint8) * 255
    if mode.crops:
        box = crop_box(fg, margin)
        if box is not None:
            image, fg = _crop(image, *box), _crop(fg, *box)
    if mode is GuideMode.FIELD and fg.any():
        reach = FIELD_MARGIN * max(fg.shape)
        near = ndimage.distance_transform_edt(fg == 0) <= reach
        image = np.where(near[..., None], image, 0).astype(np.uint8)
    out = _resize(image, size)
    out = out[..., None] if out.ndim == 2 else out
    if not mode.extra_channels:
        return np.ascontiguousarray(out)
    return np.concatenate([out, _resize(fg, size, nearest=True)[..., None]], axis=-1)


def guide_inputs(
    images: Sequence[np.ndarray],
    seg: MaskPredictor | None,
    mode: GuideMode,
    size: tuple[int, int],
    masks: Sequence[np.ndarray] | None = None,
    margin: float = DEFAULT_MARGIN,
) -> GuidedInputs:
    """Segmentation-guided classification inputs for a list of images.

    Args:
        images: ``(H, W, C)`` uint8 images (sizes may differ).
        seg: segmentation predictor giving each image's ``(H, W)`` mask; may be None when ``masks`` are given.
        mode: how the segmentation guides the classifier (crop, mask channel, both, or field: crop and blank
            what lies far from the region).
        size: output ``(H, W)``, usually the classifier's input size.
        masks: precomputed masks (e.g. the pipeline's post-processed segmentation); skips ``seg``.
        margin: crop margin per side as a fraction of the region's longer side.
    Returns:
        One ``(size[0], size[1], C')`` uint8 array per image, ``C'`` = ``C`` (crop, field) or ``C + 1``, as
        :class:`GuidedInputs`.
    """
    if masks is None:
        if seg is None:
            raise ValueError("guide_inputs needs a segmentation predictor or precomputed masks")
        masks = [seg.predict(img) for img in images]
    if len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    empty = sum(1 for m in masks if not np.any(m))
    if empty and mode.crops:
        logger.info(
            "guided inputs: no region found in %d of %d images; using the whole image", empty, len(images)
        )
    return GuidedInputs(
        guide_one(img, m, mode, tuple(size), margin) for img, m in zip(images, masks, strict=True)
    )


def guide_regions(
    masks: Sequence[np.ndarray],
    labels: Sequence[int],
    mode: GuideMode,
    size: tuple[int, int],
    margin: float = DEFAULT_MARGIN,
) -> np.ndarray:
    """Where the guided inputs of ``mode`` show the structures ``labels`` of each label mask: the attention
    loss's region (training/losses.py ``outside_evidence``), aligned with what :func:`guide_inputs` gives.

    The crop stays the one of the whole mask (every structure), so that a region of fewer structures (the
    lung fields without the heart) lines up with the same input.

    Returns:
        ``(N, 1, size[0], size[1])`` bool.
    """
    with_mask = GuideMode.BOTH if mode.crops else GuideMode.CHANNEL
    sources = [np.where(np.isin(m, list(labels)), 255, 0).astype(np.uint8) for m in masks]
    # the structures' own mask goes in as the "image": cropped and resized like the picture
    guided = [guide_one(s, m, with_mask, tuple(size), margin) for s, m in zip(sources, masks, strict=True)]
    return np.stack([g[None, ..., 0] > 127 for g in guided])

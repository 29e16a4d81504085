"""Drawing on images with numpy and PIL only (no matplotlib): mask overlays, colour keys, viewable masks, PNG
bytes.

Used by inference, the pipelines and the web app on every request, so it stays light.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.errors import MedlensError

# Label colours (RGB) for labels 1, 2, ...: lesion green first, then a qualitative palette (tab10-like).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 230, 64),
    (255, 64, 64),
    (40, 120, 255),
    (255, 200, 0),
    (200, 60, 255),
    (0, 220, 220),
    (255, 128, 0),
    (160, 255, 120),
    (255, 105, 180),
    (150, 150, 150),
)


def as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise MedlensError(f"overlay needs a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise MedlensError(f"overlay needs an (H, W, C) image with C in 1, 3, 4; got shape {image.shape}")
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def boundary(region: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Inner boundary band (``thickness`` px) of a bool ``(H, W)`` region; outside the image is background."""
    core = region
    for _ in range(max(1, thickness)):
        padded = np.pad(core, 1, constant_values=False)
        core = core & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~core


def _draw_region(
    out: np.ndarray, region: np.ndarray, color: Sequence[int], alpha: float, thickness: int | None
) -> None:
    """Blend ``color`` into ``out`` ``(H, W, 3)`` uint8 where ``region``, in place, through a per-channel
    256-entry look-up table (integer rounding, ~4x faster than blending the region's pixels in float), then
    draw the region's boundary opaque unless ``thickness`` is None."""
    a = round(alpha * 256)
    levels = np.arange(256, dtype=np.int32)
    for c in range(3):
        lut = ((levels * (256 - a) + int(color[c]) * a + 128) >> 8).astype(np.uint8)
        np.copyto(out[..., c], np.take(lut, out[..., c]), where=region)
    if thickness is not None:
        out[boundary(region, thickness)] = color


def overlay_mask(
    image: np.ndarray,
    mask: np.ndarray,
    alpha: float = 0.45,
    colors: tuple[int, int, int] | Sequence[tuple[int, int, int]] | None = None,
    contour: bool = True,
    thickness: int | None = None,
) -> np.ndarray:
    """Blend a mask over an image and draw its contours (numpy only, ~30 ms for a 1920x1080 image).

    Args:
        image: ``(H, W, C)`` (or ``(H, W)``) uint8, C in {1, 3, 4}.
        mask: ``(H, W)`` labels (0 = background, k > 0 drawn in ``colors[k - 1]``; bool is label 1) or
            ``(H, W, K)`` 0/1 multi-label (channel k drawn in ``colors[k]``, later channels on top).
        alpha: fill opacity; contours are drawn opaque when ``contour``.
        colors: one RGB colour or a list of them; default :data:`PALETTE`.
        contour: draw each region's inner boundary; ``thickness`` in pixels, default
            ``max(1, min(H, W) // 300)`` so that contours stay visible on large images.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    rgb = as_rgb(image)
    mask = np.asarray(mask)
    if mask.shape[:2] != rgb.shape[:2] or mask.ndim not in (2, 3):
        raise MedlensError(f"mask of shape {mask.shape} does not match image of shape {rgb.shape}")
    if colors is None:
        palette = list(PALETTE)
    elif len(colors) == 3 and all(np.isscalar(c) for c in colors):
        palette = [tuple(colors)]  # type: ignore[list-item]
    else:
        palette = [tuple(c) for c in colors]  # type: ignore[union-attr]
    width = (thickness if thickness is not None else max(1, min(rgb.shape[:2]) // 300)) if contour else None
    out = rgb.copy()
    if mask.ndim == 3:
        for k in range(mask.shape[2]):
            _draw_region(out, mask[..., k] > 0, palette[k % len(palette)], alpha, width)
        return out
    if mask.dtype == bool:
        _draw_region(out, mask, palette[0], alpha, width)
        return out
    if not np.issubdtype(mask.dtype, np.integer) or (mask.size and mask.min() < 0):
        raise MedlensError(f"mask must hold integer labels >= 0, got dtype {mask.dtype}")
    counts = np.bincount(mask.ravel()) if mask.size else np.zeros(1, np.int64)  # O(n), unlike np.unique
    for k in np.flatnonzero(counts[1:]) + 1:
        _draw_region(out, mask == k, palette[(k - 1) % len(palette)], alpha, width)
    return out


KEY_TEXT_FRACTION = 1 / 32  # a colour key's text height, as a share of the image's shorter side
KEY_BACKGROUND = (32, 32, 32)  # the strip under the image that holds a colour key: white text reads on it


@functools.lru_cache(maxsize=16)
def _font(size: int) -> Any:  # a scalable FreeType font, or PIL's bitmap one
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, ImportError):
        return ImageFont.load_default()


def _key_pad(size: int) -> int:
    return max(2, size // 3)


def key_layout(
    image_shape: tuple[int, ...], names: Sequence[str]
) -> tuple[list[tuple[int, int]], int, int] | None:
    """Where a colour key naming ``names`` goes in a strip under an image of ``image_shape``: ``(the (x, y)
    of each entry's swatch in the strip, the strip's height, the text size)`` in pixels. The entries run left
    to right in rows as wide as the image. None when one entry is wider than the image (tiny images)."""
    from PIL import Image, ImageDraw

    h, w = image_shape[:2]
    size = max(9, round(min(h, w) * KEY_TEXT_FRACTION))
    font, pad = _font(size), _key_pad(size)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    spots, x, y = [], pad, pad
    for name in names:
        entry = size + pad + math.ceil(measure.textlength(name, font=font))  # swatch, gap, text
        if entry + 2 * pad > w:
            return None
        if x > pad and x + entry + pad > w:  # the row is full: on to the next
            x, y = pad, y + size + pad
        spots.append((x, y))
        x += entry + size  # a text height between entries
    return spots, y + size + pad, size


def draw_key(image: np.ndarray, entries: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    """``image`` with a colour key in a strip under it, so that the key never covers the image: for each
    ``(name, RGB colour)`` entry a swatch and the name, in white on dark grey, left to right in rows.

    Args:
        image: ``(H, W, 3)`` uint8 (not changed).
        entries: what each colour means, in the order listed.
    Returns:
        ``(H + strip height, W, 3)`` uint8, the image on top, unchanged; a copy of the image alone when there
        is nothing to key or the key does not fit its width (:func:`key_layout`).
    """
    from PIL import Image, ImageDraw

    rgb = as_rgb(image)
    layout = key_layout(rgb.shape, [name for name, _ in entries]) if entries else None
    if layout is None:
        return rgb.copy()
    spots, strip_h, size = layout
    strip = Image.new("RGB", (rgb.shape[1], strip_h), KEY_BACKGROUND)
    draw, font, pad = ImageDraw.Draw(strip), _font(size), _key_pad(size)
    for (name, colour), (x, y) in zip(entries, spots, strict=True):
        draw.rectangle([x, y, x + size - 1, y + size - 1], fill=tuple(int(c) for c in colour))
        draw.text((x + size + pad, y + size / 2), name, fill=(255, 255, 255), font=font, anchor="lm")
    return np.concatenate([rgb, np.asarray(strip)], axis=0)


def binary_segmenter(classes: Sequence[str]) -> bool:
    """Whether a segmenter of label masks with ``classes`` (background first) finds one structure: a sigmoid
    one, or a softmax one over background and one class. The one definition of a binary mask: its PNG is
    0/255 (:func:`viewable_mask`) in the pipelines, the API, plain prediction and the UI alike."""
    return len(classes) <= 2


def viewable_mask(mask: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """A mask to store or download as ``(H, W)`` uint8: a binary segmenter's (:func:`binary_segmenter`) 0/1
    as 0/255, else labels as they are (label k is ``classes[k]``, whichever labels the image holds),
    multi-label ``(H, W, K)`` 0/1 as 1 + the index of the last positive channel (0 = background)."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = ((mask > 0) * np.arange(1, mask.shape[2] + 1, dtype=np.uint16)).max(axis=2)
        return mask.astype(np.uint8)
    mask = mask.astype(np.uint8)
    return (mask > 0).astype(np.uint8) * 255 if binary_segmenter(classes) else mask


def mask_values(names: Sequence[str]) -> dict[int, str]:
    """What each value of a label mask's PNG (:func:`viewable_mask`) shows, ``names`` being the segmenter's
    classes in words, background first: ``{0: "background", 255: "skin lesion"}`` from a binary segmenter,
    ``{0: "background", 1: "left lung", ...}`` from a multi-class one."""
    if len(names) < 2:  # a bundle that named no classes, or only its structure
        names = ["background", *(names or ["segmented region"])]
    return {0: names[0], 255: names[-1]} if binary_segmenter(names) else dict(enumerate(names))


def mask_labels(viewable: np.ndarray) -> np.ndarray:
    """The labels of a mask PNG as :func:`viewable_mask` writes it (``(H, W)`` uint8): a binary segmenter's
    255 is label 1, a multi-class one's labels are as they are (they stay below 255)."""
    return np.where(viewable == 255, 1, viewable).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    """``(H, W)`` or ``(H, W, 3)`` uint8 -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()

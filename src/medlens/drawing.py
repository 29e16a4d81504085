"""Drawing on images with numpy and PIL only (no matplotlib): mask overlays, colour keys, viewable masks, PNG
bytes.

Used by inference, the pipelines and the web app on every request, so it stays light.
"""

from __future__ import annotations

import functools
import io
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
KEY_MAX_FRACTION = 0.6  # a key wider or taller than this share of the image is left out (tiny images)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> Any:  # a scalable FreeType font, or PIL's bitmap one
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, ImportError):
        return ImageFont.load_default()


def key_box(image_shape: tuple[int, ...], names: Sequence[str]) -> tuple[int, int, int] | None:
    """``(box height, box width, text size)`` in pixels of a colour key naming ``names`` on an image of
    ``image_shape``, or None when it would take more than `KEY_MAX_FRACTION` of either side."""
    from PIL import Image, ImageDraw

    h, w = image_shape[:2]
    size = max(9, round(min(h, w) * KEY_TEXT_FRACTION))
    font, pad = _font(size), max(2, size // 3)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    text = max((measure.textlength(n, font=font) for n in names), default=0.0)
    box_h, box_w = pad + len(names) * (size + pad), int(3 * pad + size + text + 0.5)
    if box_h > KEY_MAX_FRACTION * h or box_w > KEY_MAX_FRACTION * w:
        return None
    return box_h, box_w, size


def draw_key(
    image: np.ndarray, entries: Sequence[tuple[str, Sequence[int]]], avoid: np.ndarray | None = None
) -> np.ndarray:
    """``image`` with a colour key drawn into one of its corners: for each ``(name, RGB colour)`` entry a
    swatch and the name, in white on a darkened box.

    Args:
        image: ``(H, W, 3)`` uint8 (not changed).
        entries: what each colour means, in the order listed.
        avoid: ``(H, W)`` or ``(H, W, K)``, non-zero where the image should stay visible (e.g. the mask):
            the key goes to the corner where the fewest of these lie under it (ties: top left, top right,
            bottom left, bottom right).
    Returns:
        ``(H, W, 3)`` uint8; the image unchanged when there is nothing to key or the key would not fit
        (:func:`key_box`).
    """
    from PIL import Image, ImageDraw

    rgb = as_rgb(image).copy()
    box = key_box(rgb.shape, [name for name, _ in entries]) if entries else None
    if box is None:
        return rgb
    (box_h, box_w, size), (h, w) = box, rgb.shape[:2]
    corners = [(0, 0), (0, w - box_w), (h - box_h, 0), (h - box_h, w - box_w)]
    if avoid is not None:
        corners.sort(key=lambda tl: np.count_nonzero(avoid[tl[0] : tl[0] + box_h, tl[1] : tl[1] + box_w]))
    top, left = corners[0]
    area = rgb[top : top + box_h, left : left + box_w]
    patch = Image.fromarray(np.ascontiguousarray(area // 3))  # darkened: white text reads on any image
    pad, font, draw = max(2, size // 3), _font(size), ImageDraw.Draw(patch)
    for i, (name, colour) in enumerate(entries):
        y = pad + i * (size + pad)
        draw.rectangle([pad, y, pad + size - 1, y + size - 1], fill=tuple(int(c) for c in colour))
        draw.text((2 * pad + size, y + size / 2), name, fill=(255, 255, 255), font=font, anchor="lm")
    area[...] = np.asarray(patch)
    return rgb


def viewable_mask(mask: np.ndarray, binary: bool) -> np.ndarray:
    """A mask to store or download as ``(H, W)`` uint8: a ``binary`` segmenter's 0/1 as 0/255, else labels
    as they are (label k is class k, whichever labels the image holds), multi-label ``(H, W, K)`` 0/1 as
    1 + the index of the last positive channel (0 = background)."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = ((mask > 0) * np.arange(1, mask.shape[2] + 1, dtype=np.uint16)).max(axis=2)
    mask = mask.astype(np.uint8)
    return (mask > 0).astype(np.uint8) * 255 if binary else mask


def png_bytes(array: np.ndarray) -> bytes:
    """``(H, W)`` or ``(H, W, 3)`` uint8 -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()

"""Post-processing of predicted masks: hole filling, component filtering and component statistics.

Masks are ``(H, W)`` arrays; binary masks hold 0/1 (any non-zero value counts as foreground), label masks
hold integer class labels (0 = background). Bounding boxes are ``[x0, y0, x1, y1]`` in pixel edges: ``x1`` and
``y1`` are exclusive, so ``x1 - x0`` is the box width (the PIL / COCO-corner convention).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

# 8-connectivity: a lesion touching itself at a corner is one lesion.
_STRUCTURE = np.ones((3, 3), dtype=bool)


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    return mask.astype(bool)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions enclosed by foreground. ``(H, W)`` -> ``(H, W)`` uint8 0/1."""
    return ndimage.binary_fill_holes(_as_bool(mask)).astype(np.uint8)


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(_as_bool(mask), structure=_STRUCTURE)
    return labels, int(n)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected foreground component. ``(H, W)`` -> ``(H, W)`` uint8 0/1."""
    labels, n = _label(mask)
    if n <= 1:
        return (labels > 0).astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == int(sizes.argmax())).astype(np.uint8)


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected foreground components smaller than ``min_size`` pixels -> uint8 0/1 ``(H, W)``."""
    labels, n = _label(mask)
    if n == 0 or min_size <= 1:
        return (labels > 0).astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels].astype(np.uint8)


def bounding_box(mask: np.ndarray) -> list[int] | None:
    """``[x0, y0, x1, y1]`` (exclusive ends) of the foreground, or None for an empty mask."""
    fg = _as_bool(mask)
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def area_fraction(mask: np.ndarray) -> float:
    """Fraction of pixels that are foreground (non-zero), in 0..1."""
    fg = _as_bool(mask)
    return float(fg.mean()) if fg.size else 0.0


def connected_components(mask: np.ndarray, min_size: int = 1) -> list[dict]:
    """Describe the 8-connected foreground components, largest first.

    Returns a list of dicts: ``label`` (1-based rank by area), ``area_px``, ``area_fraction``, ``bbox``
    ``[x0, y0, x1, y1]`` and ``centroid`` ``[x, y]`` (float pixel coordinates). Components smaller than
    ``min_size`` pixels are left out.
    """
    labels, n = _label(mask)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    areas = ndimage.sum_labels(np.ones_like(labels), labels, index=index).astype(int)
    centroids = ndimage.center_of_mass(np.ones_like(labels), labels, index=index)
    slices = ndimage.find_objects(labels)
    total = labels.size
    found = []
    for area, (cy, cx), sl in zip(areas, centroids, slices, strict=True):
        if area < min_size:
            continue
        found.append(
            {
                "area_px": int(area),
                "area_fraction": float(area) / total,
                "bbox": [int(sl[1].start), int(sl[0].start), int(sl[1].stop), int(sl[0].stop)],
                "centroid": [round(float(cx), 2), round(float(cy), 2)],
            }
        )
    found.sort(key=lambda c: -c["area_px"])
    return [{"label": i + 1, **c} for i, c in enumerate(found)]


def label_planes(mask: np.ndarray, classes: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The structures of an ``(H, W)`` label mask as boolean planes by name, in label order: label ``k`` is
    ``classes[k]`` (0, the background, left out); every named structure is there (an all-False plane when
    the mask lacks it), and a label present beyond ``classes`` is named by its value."""
    mask = np.asarray(mask)
    counts = np.bincount(mask.ravel().astype(np.int64)) if mask.size else np.zeros(1, np.int64)
    labels = [k for k in range(1, max(len(classes), len(counts))) if k < len(classes) or counts[k]]
    return {(classes[k] if k < len(classes) else str(k)): mask == k for k in labels}


def structure_areas(mask: np.ndarray, classes: Sequence[str] = ()) -> dict[str, float]:
    """Fraction of the image each structure of a label mask covers (see :func:`label_planes`), 0..1."""
    return {name: area_fraction(plane) for name, plane in label_planes(mask, classes).items()}


def structure_components(mask: np.ndarray, classes: Sequence[str] = (), min_size: int = 1) -> list[dict]:
    """:func:`connected_components` of each structure of a label mask on its own (touching structures, such as
    the heart between the lungs, stay apart), each with its ``structure`` name: structures in label order,
    a structure's components largest first (``label`` is the rank within the structure)."""
    return [
        {"structure": name, **component}
        for name, plane in label_planes(mask, classes).items()
        for component in connected_components(plane, min_size)
    ]


def apply_postprocess(
    mask: np.ndarray, fill: bool = False, largest: bool = False, min_size: int = 0
) -> np.ndarray:
    """Apply the chosen steps to a binary or label mask ``(H, W)`` uint8; label masks are processed per class.

    Order: remove components below ``min_size``, keep the largest component, fill holes (filling last so a
    ring-shaped lesion is closed after small specks are gone). Returns a mask of the same dtype and labels.
    """
    mask = np.asarray(mask)
    if not (fill or largest or min_size > 1):
        return mask
    out = np.zeros_like(mask)
    for value in np.unique(mask):
        if value == 0:
            continue
        part = mask == value
        if min_size > 1:
            part = remove_small_components(part, min_size).astype(bool)
        if largest:
            part = keep_largest_component(part).astype(bool)
        if fill:
            part = fill_holes(part).astype(bool)
        out[part] = value
    return out

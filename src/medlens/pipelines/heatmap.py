"""Grad-CAM for display: the heat map up-sampled to the image's own resolution, limited to the field of view
(the black border of an endoscope or dermoscope image is not evidence), blended with a jet colour scale whose
colours the UI's colour bar repeats (:func:`colour_bar_stops`); and how much of it lies inside the segmented
region (:func:`share_inside`).

The Grad-CAM computation itself lives in :mod:`medlens.inference.explain`; this module only places and draws.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

DARK_LEVEL = 20  # a pixel whose brightest channel is at most this is "black" (outside the field of view)
MIN_FOV_FRACTION = 0.25  # a field of view smaller than this share of the image is not trusted
HEAT_ALPHA = 0.5


def jet(values: np.ndarray) -> np.ndarray:
    """The jet colour scale: values in 0..1 (any shape) -> uint8 RGB (``shape + (3,)``); 0 blue, 1 red."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # red, green, blue peaks
    rgb = np.clip(1.5 - np.abs(4.0 * v - 4.0 * centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def colour_bar_stops(n: int = 9) -> list[str]:
    """``n`` CSS colours (``#rrggbb``) from 0 (low) to 1 (high) of :func:`jet`, for a gradient colour bar."""
    return ["#{:02x}{:02x}{:02x}".format(*c) for c in jet(np.linspace(0.0, 1.0, n))]


def field_of_view(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: True inside the field of view.

    Near-black pixels (every channel <= `DARK_LEVEL`) connected to the image border are outside. When that
    leaves less than `MIN_FOV_FRACTION` of the image (a dark image, not a border), everything is inside.
    """
    rgb = image if image.ndim == 3 else image[..., None]
    dark = rgb.max(axis=2) <= DARK_LEVEL
    labels, _ = ndimage.label(dark)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, edge[edge > 0])
    inside = ~ndimage.binary_dilation(outside, iterations=2)  # the rim of the border is dark too
    return inside if inside.mean() >= MIN_FOV_FRACTION else np.ones(dark.shape, bool)


def cam_at(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A ``(h, w)`` heat map in 0..1 -> ``(H, W)`` float32 at ``shape``, bicubic (smooth at any scale)."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32))
    if cam.shape != tuple(shape):
        resized = Image.fromarray(cam, mode="F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
        cam = np.asarray(resized, dtype=np.float32)
    return np.clip(cam, 0.0, 1.0)


def place_cam(cam: np.ndarray, box: tuple[int, int, int] | None, shape: tuple[int, int]) -> np.ndarray:
    """A heat map of a square crop ``box = (top, left, side)`` placed on an image of ``shape`` (0 outside)."""
    if box is None:
        return cam
    top, left, side = box
    resized = cam_at(cam, (side, side))
    out = np.zeros(shape, np.float32)
    r0, c0, r1, c1 = max(top, 0), max(left, 0), min(top + side, shape[0]), min(left + side, shape[1])
    out[r0:r1, c0:c1] = resized[r0 - top : r1 - top, c0 - left : c1 - left]
    return out


def share_inside(cam: np.ndarray, region: np.ndarray) -> float | None:
    """Share of the Grad-CAM mass that lies inside ``region``, 0..1 (None when the map is empty).

    Args:
        cam: ``(h, w)`` heat map in 0..1 (any size; up-sampled to the region's as :func:`cam_at` draws it).
        region: ``(H, W)`` bool, e.g. the segmented lungs and heart.
    Returns:
        ``sum(cam * region) / sum(cam)`` at the region's resolution: 1 = all the evidence lies inside.
    """
    heat = cam_at(cam, region.shape[:2])
    total = float(heat.sum())
    return float(heat[region].sum()) / total if total > 0 else None


def heatmap_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = HEAT_ALPHA) -> np.ndarray:
    """Blend a jet heat map over ``image`` at the image's resolution, inside its field of view only.

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` uint8, C in {1, 3}.
        cam: ``(h, w)`` float heat map in 0..1 (any size; up-sampled bicubically), rescaled to 0..1 inside the
            field of view so that the colours use the whole scale there.
        alpha: heat-map opacity inside the field of view.
    Returns:
        ``(H, W, 3)`` uint8 RGB; outside the field of view the image is unchanged.
    """
    rgb = image if image.ndim == 3 else image[..., None]
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb[..., :3]
    fov = field_of_view(rgb)
    heat = cam_at(cam, rgb.shape[:2])
    lo, hi = float(heat[fov].min()), float(heat[fov].max())
    heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    weight = (alpha * fov)[..., None].astype(np.float32)
    out = (1.0 - weight) * rgb.astype(np.float32) + weight * jet(heat).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)

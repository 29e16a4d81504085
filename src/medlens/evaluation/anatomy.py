"""Chest anatomy measured on label masks (predicted or reference): the lungs by the patient's side and the
cardiothoracic ratio (CTR). The chest pipeline's features (:mod:`medlens.pipelines.chest`) and the CTR
agreement of ``medlens evaluate`` both use these functions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.measure import label as label_components

LEFT_LUNG, RIGHT_LUNG, HEART = "left_lung", "right_lung", "heart"


def lungs_by_side(mask: np.ndarray, classes: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """``(patient's right lung, patient's left lung)`` bool masks of a label mask.

    Multi-class masks with ``left_lung`` / ``right_lung`` classes give them directly; otherwise the two
    largest connected regions of the foreground (heart label excluded) are named by their centroid's side.
    """
    names = list(classes or [])
    if LEFT_LUNG in names and RIGHT_LUNG in names:
        return mask == names.index(RIGHT_LUNG), mask == names.index(LEFT_LUNG)
    fg = mask > 0
    if HEART in names:
        fg &= mask != names.index(HEART)
    lab = label_components(fg, connectivity=2)
    sizes = np.bincount(lab.ravel())[1:]
    largest = np.argsort(sizes)[::-1][:2] + 1
    empty = np.zeros_like(fg)
    parts = [lab == k for k in largest if sizes[k - 1] > 0]
    right, left = empty, empty
    for part in parts:
        centre_x = np.nonzero(part)[1].mean()
        if centre_x < mask.shape[1] / 2:  # image left = patient's right on a PA film
            right = right | part
        else:
            left = left | part
    return right, left


def _widest_row(region: np.ndarray) -> tuple[int, int, int] | None:
    """``(row, first column, last column)`` of the row where ``region`` spans widest (its outer extent)."""
    rows = np.flatnonzero(region.any(axis=1))
    if rows.size == 0:
        return None
    first = np.where(region[rows].any(axis=1), region[rows].argmax(axis=1), 0)
    last = region.shape[1] - 1 - region[rows][:, ::-1].argmax(axis=1)
    k = int(np.argmax(last - first))
    return int(rows[k]), int(first[k]), int(last[k])


def cardiothoracic_lines(mask: np.ndarray, classes: Sequence[str] | None) -> dict[str, list[int]] | None:
    """``{"heart": [row, x0, x1], "thorax": [row, x0, x1]}`` of a mask with heart and lungs, else None."""
    names = list(classes or [])
    if HEART not in names:
        return None
    right, left = lungs_by_side(mask, classes)
    heart = _widest_row(mask == names.index(HEART))
    thorax = _widest_row(right | left)
    if heart is None or thorax is None or not right.any() or not left.any():
        return None
    return {"heart": list(heart), "thorax": list(thorax)}


def ctr_of(mask: np.ndarray, classes: Sequence[str] | None) -> float | None:
    """The cardiothoracic ratio of a mask (None without a heart or without both lungs)."""
    lines = cardiothoracic_lines(mask, classes)
    if lines is None:
        return None
    (_, h0, h1), (_, t0, t1) = lines["heart"], lines["thorax"]
    return (h1 - h0 + 1) / (t1 - t0 + 1)

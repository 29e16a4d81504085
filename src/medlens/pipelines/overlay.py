"""The overlay people read: each structure of the mask in its own colour, the measurements that the features
carry (the cardiothoracic ratio's two widths) as lines, and a colour key naming each of them.

:func:`draw_overlay` is the one drawing: the pipeline's overlay (the API's and the CLI's overlay PNG) and the
UI's re-blend at another opacity both come from it. Colours are taken from one palette
(:data:`medlens.drawing.PALETTE`) in one order, the mask's labels first and the measurement lines after them,
so that no two things in an overlay share a colour. The overlay PNG of an analysis with more than one thing
to tell apart carries its key in a strip under the image, where it covers none of it (the PNG is then taller
than the image, :func:`medlens.drawing.draw_key`); the UI draws none (its overlay lines up with the original
and the Grad-CAM) and shows the key's entries, which are also returned for the JSON, beside the picture.
Numpy and PIL only: the web app redraws on every opacity change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medlens.drawing import PALETTE, draw_key, overlay_mask
from medlens.pipelines.names import readable

#: Measurement lines a feature carries (``{line: [row, x0, x1]}``): feature -> ((line, name in the key), ...)
MEASUREMENT_LINES: dict[str, tuple[tuple[str, str], ...]] = {
    "cardiothoracic_lines": (("heart", "heart width (CTR)"), ("thorax", "chest width (CTR)")),
}
OVERLAY_ALPHA = 0.45


@dataclass(frozen=True)
class KeyEntry:
    """One line of a colour key: what is drawn (``kind``: "region" of the mask or measurement "line"), its
    name and its colour (``#rrggbb``)."""

    name: str
    colour: str
    kind: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _hex(colour: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _name(classes: Sequence[str], k: int) -> str:
    return readable(classes[k]) if k < len(classes) else f"label {k}"


def colour_key(
    mask: np.ndarray | None, classes: Sequence[str], features: Mapping[str, Any] | None = None
) -> list[KeyEntry]:
    """What :func:`draw_overlay` draws, in the order drawn: the structures present in ``mask`` (``(H, W)``
    labels, label k named ``classes[k]``, or ``(H, W, K)`` multi-label, channel k named ``classes[k]``), then
    the measurement lines present in ``features`` (`MEASUREMENT_LINES`)."""
    entries, next_colour = [], 0
    if mask is not None and mask.ndim == 3:  # multi-label: channel k in PALETTE[k]
        for k in range(mask.shape[2]):
            if mask[..., k].any():
                entries.append(KeyEntry(_name(classes, k), _hex(PALETTE[k % len(PALETTE)]), "region"))
        next_colour = max(mask.shape[2], len(classes))
    elif mask is not None:  # labels: label k in PALETTE[k - 1]
        counts = np.bincount(mask.ravel().astype(np.int64)) if mask.size else np.zeros(1, np.int64)
        for k in np.flatnonzero(counts[1:]) + 1:
            entries.append(KeyEntry(_name(classes, int(k)), _hex(PALETTE[(k - 1) % len(PALETTE)]), "region"))
        next_colour = max(len(classes) - 1, len(counts) - 1)
    for key, lines in MEASUREMENT_LINES.items():
        drawn = (features or {}).get(key) or {}
        for line, name in lines:
            if line in drawn:
                entries.append(KeyEntry(name, _hex(PALETTE[next_colour % len(PALETTE)]), "line"))
                next_colour += 1
    return entries


def _draw_line(out: np.ndarray, row: int, x0: int, x1: int, colour: Sequence[int]) -> None:
    """A horizontal line with end ticks on ``out`` ``(H, W, 3)``, in place; thickness grows with the image."""
    t = max(1, min(out.shape[:2]) // 200)
    out[max(0, row - t // 2) : row + t // 2 + 1, x0 : x1 + 1] = colour
    for x in (x0, x1):
        out[max(0, row - 3 * t) : row + 3 * t + 1, max(0, x - t // 2) : x + t // 2 + 1] = colour


def draw_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    classes: Sequence[str],
    features: Mapping[str, Any] | None = None,
    alpha: float = OVERLAY_ALPHA,
    key: bool = True,
) -> tuple[np.ndarray, list[KeyEntry]]:
    """The overlay of a segmentation, its measurement lines and, with more than one entry and ``key``, its
    colour key.

    Args:
        image: ``(H, W, C)`` uint8, C in {1, 3, 4}.
        mask: ``(H, W)`` labels or ``(H, W, K)`` 0/1 multi-label, as :func:`medlens.drawing.overlay_mask`.
        classes: the segmenter's classes (label k is ``classes[k]``; background first for label masks).
        features: the analysis's features; those in `MEASUREMENT_LINES` are drawn as lines.
        alpha: fill opacity of the structures (their outlines and the lines are opaque).
        key: draw the key in a strip under the image (the overlay PNG); False: the image's size (the UI,
            which shows the entries beside it).
    Returns:
        ``((H, W, 3) uint8 overlay, the colour key's entries)``; with a key drawn, the overlay has the key's
        strip under the image: ``(H + strip, W, 3)``, its first ``H`` rows the overlay proper.
    """
    entries = colour_key(mask, classes, features)
    out = overlay_mask(image, mask, alpha=float(np.clip(alpha, 0.0, 1.0)))
    lines = iter(e for e in entries if e.kind == "line")
    for feature, names in MEASUREMENT_LINES.items():
        drawn = (features or {}).get(feature) or {}
        for line, _ in names:
            if line in drawn:
                _draw_line(out, *drawn[line], next(lines).rgb)
    if key and len(entries) > 1:
        out = draw_key(out, [(e.name, e.rgb) for e in entries])
    return out, entries

"""`Analysis`, the result of `medlens.inference.pipeline.Pipeline.analyze`, and its JSON / PNG helpers."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Analysis:
    """The result of one `Pipeline.analyze` call.

    Arrays (never in `to_dict`): ``mask`` ``(H, W)`` uint8 labels (binary 0/1) at the image's size,
    ``overlay`` and ``gradcam`` ``(H, W, 3)`` uint8 RGB. ``probabilities`` are calibrated (flip-TTA mean);
    ``uncertainty`` is the flip-TTA standard deviation of the predicted class's probability or, without a
    classifier, ``segmentation_uncertainty`` (the segmenter's mean TTA standard deviation over the predicted
    region); None without TTA. ``label`` is None when out of scope (``scope_reason`` says why).
    """

    id: str | None
    pipeline: str
    image_size: tuple[int, int]
    mask: np.ndarray | None
    overlay: np.ndarray | None
    area_fraction: float | None
    components: list[dict]
    label: str | None
    probabilities: dict[str, float]
    uncertainty: float | None
    out_of_scope: bool
    features: dict
    recommendation: str
    notice: str
    gradcam: np.ndarray | None
    timings_ms: dict[str, float]
    scope_reason: str | None = None
    segmentation_uncertainty: float | None = None

    @property
    def probability(self) -> float | None:
        """Calibrated probability of ``label`` (None without a label)."""
        return self.probabilities.get(self.label) if self.label is not None else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: every field but the arrays, plus ``probability`` and ``has_<array>`` flags."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("mask", "overlay", "gradcam")}
        out.update(
            probability=self.probability,
            has_mask=self.mask is not None,
            has_overlay=self.overlay is not None,
            has_gradcam=self.gradcam is not None,
        )
        return json_safe(out)

    def mask_png(self) -> bytes | None:
        """The mask as PNG bytes (binary 0/255, multi-class labels as they are), or None."""
        return None if self.mask is None else png_bytes(viewable_mask(self.mask))

    def overlay_png(self) -> bytes | None:
        """The segmentation overlay as PNG bytes, or None."""
        return None if self.overlay is None else png_bytes(self.overlay)

    def gradcam_png(self) -> bytes | None:
        """The Grad-CAM overlay as PNG bytes, or None."""
        return None if self.gradcam is None else png_bytes(self.gradcam)


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars, tuples and non-finite floats made plain JSON types (arrays refused)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        raise TypeError("arrays are not part of an analysis summary")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def viewable_mask(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 mask for display: binary 0/1 -> 0/255; label masks unchanged."""
    mask = np.asarray(mask, dtype=np.uint8)
    return mask * 255 if mask.max(initial=0) <= 1 else mask


def png_bytes(array: np.ndarray) -> bytes:
    """``(H, W)`` or ``(H, W, 3)`` uint8 -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()

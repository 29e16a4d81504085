"""Chest X-ray anatomy features of a segmentation: both lungs by side, and the cardiothoracic ratio (the
measurements themselves are in :mod:`medlens.evaluation.anatomy`, which evaluation shares).

Sides are the patient's: on a posteroanterior (PA) film the patient's right lung is on the image left. A
multi-class anatomy mask (classes ``left_lung``, ``right_lung``, ``heart``, as in the JSRT/SCR labels) names
them; a binary lung mask is split into its two largest components, named by the side of their centroid.

Cardiothoracic ratio (CTR) = widest horizontal diameter of the heart / widest inner horizontal diameter of the
thorax. The heart's is the widest row of the heart mask; the thorax's the widest row between the outer
(lateral) edges of the two lungs, which lie on the inner rib margins. Both rows are returned so that the
lines can be drawn (:mod:`medlens.pipelines.overlay`). A CTR above 0.5 on an adult PA film suggests an
enlarged cardiac silhouette; on anteroposterior (AP) or paediatric films the heart projects larger and the 0.5
limit does not apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.evaluation.anatomy import cardiothoracic_lines, ctr_of, lungs_by_side
from medlens.pipelines.features import Spacing, register_feature

#: A lung under this fraction of the other's area is flagged (missing, collapsed, or mis-segmented).
SMALL_LUNG_RATIO = 0.5
CTR_UPPER_NORMAL = 0.5  # adult PA films
#: A heart as wide as the chest or wider cannot be: the segmentation is off, and no ratio is reported.
CTR_IMPOSSIBLE = 1.0


@register_feature("lungs")
def lungs(
    image: np.ndarray, mask: np.ndarray, spacing: Spacing = None, *, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Each lung by the patient's side and both together: area (fraction of the image, mm² with a known pixel
    spacing), the smaller-to-larger area ratio, and a flag when one lung is missing or under half the other's
    area."""
    right, left = lungs_by_side(mask, classes)
    total = mask.shape[0] * mask.shape[1]
    nr, nl = int(right.sum()), int(left.sum())
    px = None if spacing is None else float(spacing[0]) * float(spacing[1])
    ratio = min(nr, nl) / max(nr, nl) if max(nr, nl) else None
    smaller = None if ratio is None or ratio >= SMALL_LUNG_RATIO else ("right" if nr < nl else "left")
    return {
        "lung_fraction_total": round((nr + nl) / total, 6),
        "right_lung_fraction": round(nr / total, 6),
        "left_lung_fraction": round(nl / total, 6),
        "right_lung_area_mm2": round(nr * px, 1) if px else None,
        "left_lung_area_mm2": round(nl * px, 1) if px else None,
        "lung_area_ratio": round(ratio, 4) if ratio is not None else None,
        "lung_asymmetry_flag": smaller is not None,
        "smaller_lung": smaller,
    }


@register_feature("cardiothoracic_ratio")
def cardiothoracic_ratio(
    image: np.ndarray, mask: np.ndarray, spacing: Spacing = None, *, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """CTR with its measurement rows (``cardiothoracic_lines``: heart and thorax, ``[row, x0, x1]``); None
    when the mask has no heart or not both lungs. A ratio of `CTR_IMPOSSIBLE` or more (the heart as wide as
    the chest) is a failed measurement, not a finding: the ratio and its lines are then None and the value
    measured is kept as ``cardiothoracic_ratio_failed``."""
    lines = cardiothoracic_lines(mask, classes)
    ctr = ctr_of(mask, classes) if lines else None
    failed = ctr if ctr is not None and ctr >= CTR_IMPOSSIBLE else None
    if failed is not None:
        ctr, lines = None, None
    return {
        "cardiothoracic_ratio": round(ctr, 4) if ctr is not None else None,
        "cardiothoracic_ratio_upper_normal": CTR_UPPER_NORMAL,
        "cardiothoracic_ratio_failed": round(failed, 4) if failed is not None else None,
        "cardiothoracic_lines": lines,
    }

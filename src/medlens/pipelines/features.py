"""Named, hand-checkable features of a segmentation: lesion (ABCD-style), polyp and chest X-ray descriptors.

Every feature function has the signature ``fn(image, mask, spacing=None, *, classes=None) -> dict`` where

- ``image``: the analysed image, ``(H, W, C)`` uint8, ``C`` in ``{1, 3}`` (only colour features read it),
- ``mask``: the ``(H, W)`` uint8 label mask at the image's size (``> 0`` is foreground for binary features),
- ``spacing``: ``(row, col)`` pixel spacing in millimetres when known (DICOM ``PixelSpacing``), else ``None``,
- ``classes`` optionally names the label values of a multi-class mask (``classes[k]`` is label ``k``).

The returned dictionaries are JSON-safe (Python ``int``/``float``/``str``/``None``, lists and dicts of those)
and their keys are unique across features so that a pipeline can merge them. An empty mask gives
zeros/``None`` rather than an error: "nothing found" is a valid result.

Geometry comes from ``skimage.measure.regionprops`` (area, perimeter, orientation, maximum Feret diameter,
spacing aware); the colour clusters use SciPy's k-means (``kmeans2``) in CIE Lab (``skimage.color.rgb2lab``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from skimage.color import rgb2lab
from skimage.measure import label as label_components
from skimage.measure import regionprops

from medlens.errors import UnknownNameError
from medlens.inference.postprocess import structure_areas

logger = logging.getLogger(__name__)

Spacing = tuple[float, float] | None
FeatureFn = Callable[..., dict[str, Any]]

FEATURES: dict[str, FeatureFn] = {}

#: k-means settings of the colour-variegation feature (see `colour_variegation`).
MAX_COLOUR_CLUSTERS = 6
COLOUR_MERGE_DELTA_E = 20.0  # cluster centres closer than this CIE76 distance count as one colour
MIN_COLOUR_FRACTION = 0.05  # a colour must cover at least 5% of the lesion to count
MAX_COLOUR_SAMPLES = 4000


def register_feature(name: str) -> Callable[[FeatureFn], FeatureFn]:
    """Decorator adding ``fn`` to the registry under ``name`` (names are unique)."""

    def deco(fn: FeatureFn) -> FeatureFn:
        if name in FEATURES:
            raise ValueError(f"feature {name!r} is already registered")
        FEATURES[name] = fn
        return fn

    return deco


def list_features() -> list[str]:
    """Names of every registered feature, sorted."""
    return sorted(FEATURES)


def get_feature(name: str) -> FeatureFn:
    """The feature function registered as ``name``; `UnknownNameError` lists the valid names otherwise."""
    try:
        return FEATURES[name]
    except KeyError:
        raise UnknownNameError("feature", name, list_features()) from None


def compute_features(
    names: Sequence[str],
    image: np.ndarray,
    mask: np.ndarray,
    spacing: Spacing = None,
    *,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run the features ``names`` (in order) and merge their dictionaries.

    Args:
        names: registered feature names; an unknown one raises `UnknownNameError` before anything runs.
        image: ``(H, W, C)`` uint8 image.
        mask: ``(H, W)`` uint8 label mask of the same height and width.
        spacing: ``(row, col)`` millimetres per pixel, or ``None``.
        classes: names of the label values of a multi-class mask.
    """
    fns = [get_feature(n) for n in names]
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape[:2]} does not match image shape {image.shape[:2]}")
    out: dict[str, Any] = {}
    for fn in fns:
        out.update(fn(image, mask, spacing, classes=classes))
    return out


# ---------------------------------------------------------------------------------------------------- helpers
def _foreground(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask) > 0


def _pixel_area_mm2(spacing: Spacing) -> float | None:
    return None if spacing is None else float(spacing[0]) * float(spacing[1])


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def _single_region(fg: np.ndarray, spacing: Spacing = None):  # -> RegionProperties | None
    """regionprops of the whole foreground taken as one region (a lesion may be split in several pieces)."""
    if not fg.any():
        return None
    kw = {"spacing": tuple(float(s) for s in spacing)} if spacing is not None else {}
    return regionprops(fg.astype(np.uint8), **kw)[0]


# ---------------------------------------------------------------------------------------------------- lesion
@register_feature("area")
def area(image: np.ndarray, mask: np.ndarray, spacing: Spacing = None, *, classes=None) -> dict[str, Any]:
    """Foreground area in pixels, as a fraction of the image, and in mm² when the spacing is known."""
    fg = _foreground(mask)
    n = int(fg.sum())
    px = _pixel_area_mm2(spacing)
    return {
        "area_px": n,
        "area_fraction": _round(n / fg.size, 6),
        "area_mm2": _round(n * px, 3) if px is not None else None,
    }


def _mirror_overlap(coords: np.ndarray, fg: np.ndarray, centroid: np.ndarray, axis: np.ndarray) -> float:
    """Fraction of foreground pixels whose mirror about the line (centroid, axis) lands on background.

    Hand-written: skimage has no reflection about an arbitrary line through a point; mirroring the pixel
    coordinates (rounded to the nearest pixel) avoids interpolating the mask.
    """
    rel = coords - centroid
    refl = 2.0 * (rel @ axis)[:, None] * axis[None, :] - rel + centroid
    r = np.rint(refl).astype(np.int64)
    h, w = fg.shape
    inside = (r[:, 0] >= 0) & (r[:, 0] < h) & (r[:, 1] >= 0) & (r[:, 1] < w)
    hit = np.zeros(len(r), dtype=bool)
    hit[inside] = fg[r[inside, 0], r[inside, 1]]
    return float(1.0 - hit.mean())


@register_feature("asymmetry")
def asymmetry(
    image: np.ndarray, mask: np.ndarray, spacing: Spacing = None, *, classes=None
) -> dict[str, Any]:
    """Shape asymmetry about the two principal axes through the centroid.

    For each axis the mask is mirrored about it and the non-overlap fraction (share of foreground pixels whose
    mirror lands on background) is reported: 0 for a disc or an ellipse, larger for irregular shapes.
    ``asymmetry`` is the mean of the two axes.
    """
    fg = _foreground(mask)
    region = _single_region(fg)
    if region is None:
        return {"asymmetry_major_axis": None, "asymmetry_minor_axis": None, "asymmetry": None}
    theta = region.orientation  # angle between the row axis and the major axis
    major = np.array([math.cos(theta), math.sin(theta)])  # (row, col) direction
    minor = np.array([-major[1], major[0]])
    coords = region.coords.astype(np.float64)
    centroid = np.asarray(region.centroid, dtype=np.float64)
    a_major = _mirror_overlap(coords, fg, centroid, major)
    a_minor = _mirror_overlap(coords, fg, centroid, minor)
    return {
        "asymmetry_major_axis": _round(a_major),
        "asymmetry_minor_axis": _round(a_minor),
        "asymmetry": _round((a_major + a_minor) / 2.0),
    }


@register_feature("border")
def border(image: np.ndarray, mask: np.ndarray, spacing: Spacing = None, *, classes=None) -> dict[str, Any]:
    """Border irregularity as compactness ``perimeter² / (4π·area)``: about 1 for a disc, larger when ragged.

    The perimeter is regionprops' 4-connected contour estimate, which reads about 1.1 on digitised discs.
    """
    region = _single_region(_foreground(mask))
    if region is None or region.area == 0:
        return {"perimeter_px": None, "compactness": None}
    per = float(region.perimeter)
    return {
        "perimeter_px": _round(per, 2),
        "compactness": _round(per**2 / (4.0 * math.pi * float(region.area))),
    }


@register_feature("diameter")
def diameter(image: np.ndarray, mask: np.ndarray, spacing: Spacing = None, *, classes=None) -> dict[str, Any]:
    """Maximum Feret diameter (largest caliper width) in pixels, and in mm when the spacing is known."""
    fg = _foreground(mask)
    region = _single_region(fg)
    if region is None:
        return {"diameter_px": None, "diameter_mm": None}
    d_mm = None
    if spacing is not None:
        d_mm = _round(float(_single_region(fg, spacing).feret_diameter_max), 3)
    return {"diameter_px": _round(float(region.feret_diameter_max), 2), "diameter_mm": d_mm}


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def _count_colours(lab: np.ndarray) -> int:
    """Colours among Lab samples ``(N, 3)``: k-means, then merge centres within `COLOUR_MERGE_DELTA_E`."""
    from scipy.cluster.vq import kmeans2

    n_distinct = len(np.unique(np.round(lab, 1), axis=0))
    k = min(MAX_COLOUR_CLUSTERS, n_distinct)
    if k <= 1:
        return 1
    centres, labels = kmeans2(lab, k, minit="++", seed=0)
    weights = np.bincount(labels, minlength=k) / len(lab)
    groups: list[list[int]] = []  # greedy single-linkage merge of close centres, heaviest first
    for i in np.argsort(-weights):
        for g in groups:
            if min(np.linalg.norm(centres[i] - centres[j]) for j in g) < COLOUR_MERGE_DELTA_E:
                g.append(int(i))
                break
        else:
            groups.append([int(i)])
    return max(1, sum(1 for g in groups if weights[g].sum() >= MIN_COLOUR_FRACTION))


@register_feature("colour")
def colour_variegation(
    image: np.ndarray, mask: np.ndarray, spacing: Spacing = None, *, classes=None
) -> dict[str, Any]:
    """Colour variegation over the lesion pixels in CIE Lab.

    ``colour_count``: number of distinct colours: k-means (k up to `MAX_COLOUR_CLUSTERS`) on at most
    `MAX_COLOUR_SAMPLES` lesion pixels, centres closer than `COLOUR_MERGE_DELTA_E` merged, colours covering
    under `MIN_COLOUR_FRACTION` of the lesion dropped. ``colour_std_{L,a,b}``: standard deviation per Lab
    channel; ``colour_spread``: their root sum of squares. Deterministic (fixed seeds).
    """
    fg = _foreground(mask)
    empty = {"colour_count": 0, "colour_std_L": None, "colour_std_a": None, "colour_std_b": None}
    if not fg.any():
        return {**empty, "colour_spread": None}
    pixels = _as_rgb(image)[fg].astype(np.float64) / 255.0  # (N, 3)
    if len(pixels) > MAX_COLOUR_SAMPLES:
        pixels = pixels[np.random.default_rng(0).choice(len(pixels), MAX_COLOUR_SAMPLES, replace=False)]
    lab = rgb2lab(pixels[None])[0]
    std = lab.std(axis=0)
    return {
        "colour_count": _count_colours(lab),
        "colour_std_L": _round(std[0], 3),
        "colour_std_a": _round(std[1], 3),
        "colour_std_b": _round(std[2], 3),
        "colour_spread": _round(float(np.sqrt((std**2).sum())), 3),
    }


# ---------------------------------------------------------------------------------------------------- polyp
def _components(mask: np.ndarray):  # -> list[RegionProperties], largest first
    lab = label_components(_foreground(mask), connectivity=2)
    return sorted(regionprops(lab), key=lambda r: (-r.area, r.label))


def location_label(x: float, y: float) -> str:
    """Coarse 3x3 location of a normalised point (``x`` left→right, ``y`` top→bottom, both in 0..1)."""
    row = "upper" if y < 1 / 3 else ("lower" if y > 2 / 3 else "")
    col = "left" if x < 1 / 3 else ("right" if x > 2 / 3 else "")
    return "-".join(p for p in (row, col) if p) or "centre"


@register_feature("count")
def count(image: np.ndarray, mask: np.ndarray, spacing: Spacing = None, *, classes=None) -> dict[str, Any]:
    """Number of 8-connected foreground regions (e.g. polyps)."""
    return {"count": len(_components(mask))}


@register_feature("relative_size")
def relative_size(
    image: np.ndarray, mask: np.ndarray, spacing: Spacing = None, *, classes=None
) -> dict[str, Any]:
    """Size of each region (largest first) and of all of them as a fraction of the frame."""
    comps = _components(mask)
    total = mask.shape[0] * mask.shape[1]
    return {
        "size_fractions": [_round(r.area / total, 6) for r in comps],
        "size_fraction_total": _round(sum(r.area for r in comps) / total, 6),
    }


@register_feature("location")
def location(image: np.ndarray, mask: np.ndarray, spacing: Spacing = None, *, classes=None) -> dict[str, Any]:
    """Centroid of each region (largest first) in normalised ``[x, y]`` (0..1) with a coarse 3x3 label."""
    h, w = mask.shape[:2]
    out = []
    for r in _components(mask):
        y, x = (r.centroid[0] + 0.5) / h, (r.centroid[1] + 0.5) / w
        out.append({"centroid_xy": [_round(x), _round(y)], "label": location_label(x, y)})
    return {"locations": out}


# ---------------------------------------------------------------------------------------------------- x-ray
def split_left_right(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split the foreground into its image-left and image-right parts.

    Each connected region goes whole to the side of its centroid when the regions lie on both sides of the
    vertical midline (two lungs, even when one crosses it); otherwise (one merged region, or all on one side)
    the pixels are split at the midline column. In a standard PA chest film the patient's right lung is on the
    image left.
    """
    fg = _foreground(mask)
    w = fg.shape[1]
    mid = w / 2.0
    lab = label_components(fg, connectivity=2)
    regions = regionprops(lab)
    sides = {r.label: (r.centroid[1] + 0.5) < mid for r in regions}
    if len(set(sides.values())) == 2:
        left_labels = [k for k, is_left in sides.items() if is_left]
        left = np.isin(lab, left_labels)
        return left, fg & ~left
    cols = np.arange(w)[None, :] + 0.5 < mid
    return fg & cols, fg & ~cols


@register_feature("lung_areas")
def lung_areas(
    image: np.ndarray, mask: np.ndarray, spacing: Spacing = None, *, classes=None
) -> dict[str, Any]:
    """Lung area as a fraction of the image: total, image-left, image-right and the left/right ratio.

    Image sides, not patient sides: in a PA film the patient's right lung is on the image left. The ratio is
    ``None`` when the image-right part is empty. Areas in mm² are added when the spacing is known.
    """
    left, right = split_left_right(mask)
    total = mask.shape[0] * mask.shape[1]
    nl, nr = int(left.sum()), int(right.sum())
    px = _pixel_area_mm2(spacing)
    return {
        "lung_fraction_total": _round((nl + nr) / total, 6),
        "lung_fraction_image_left": _round(nl / total, 6),
        "lung_fraction_image_right": _round(nr / total, 6),
        "lung_ratio_left_right": _round(nl / nr) if nr else None,
        "lung_area_mm2": _round((nl + nr) * px, 2) if px is not None else None,
    }


@register_feature("class_areas")
def class_areas(
    image: np.ndarray, mask: np.ndarray, spacing: Spacing = None, *, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Area fraction of every non-zero label of a multi-class mask, keyed by class name (or the label value).

    With ``classes`` every named foreground class is reported (0.0 when absent); without, the labels present
    (`medlens.inference.postprocess.structure_areas`).
    """
    areas = structure_areas(mask, classes or ())
    return {"class_area_fractions": {name: _round(area, 6) for name, area in areas.items()}}

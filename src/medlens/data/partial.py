"""Partially labelled segmentation sources: masks that name only some of a multi-class model's classes.

A chest X-ray set with lung masks only can train a lungs-and-heart model beside a set that has every class:
its "lung" pixels are known to be left or right lung, its other pixels background or heart. Such a source is
declared with ``data.partial_roots`` as ``{folder: {mask value: [class, ...]}}``; each value is encoded in the
training targets as a class index (one class) or as code ``K + j`` for the j-th merged set of classes
(:func:`label_sets_of`). The loss then asks only for what the mask knows: the probability summed over a merged
set (the *marginal* loss of Shi et al., "Marginal loss and exclusion loss for partially supervised multi-organ
segmentation", MedIA 2021), and validation scores each image on the groups its mask defines. Neither smp nor
MONAI has a loss or metric for such targets, so both are written here and in the training code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medlens.errors import ConfigError, DatasetError
from medlens.spec import Mode


@dataclass
class PartialLabels:
    """How one source's masks map onto the model's classes.

    mode: the source's own mask reading: ``"binary"`` (non-zero is 1) or ``"multiclass"`` (raw values).
    codes: mask value -> target code (a class index, or ``K + j`` for merged set ``j``).
    """

    mode: str
    codes: dict[int, int]

    def encode(self, mask: np.ndarray, path: object) -> np.ndarray:
        """``(H, W)`` raw mask -> ``(H, W)`` uint8 target codes; DatasetError naming ``path`` for a value
        the mapping does not give."""
        values = (mask > 0).astype(np.uint8) if self.mode == Mode.BINARY else mask
        lut = np.full(256, 255, dtype=np.uint8)
        for value, code in self.codes.items():
            lut[value] = code
        out = lut[values]
        if (out == 255).any():
            bad = sorted(set(np.unique(values[out == 255]).tolist()))
            raise DatasetError(
                f"{path}: mask values {bad} are not in data.partial_roots {sorted(self.codes)}"
            )
        return out


def label_sets_of(mappings: list[dict[int, list[str]]], classes: list[str]) -> list[tuple[int, ...]]:
    """The merged class sets (two classes or more) named in ``mappings``, sorted; code of set j is K + j."""
    sets = {tuple(sorted(_class_indices(names, classes))) for m in mappings for names in m.values()}
    return sorted(s for s in sets if len(s) > 1)


def partial_labels(
    mapping: dict[int, list[str]], classes: list[str], label_sets: list[tuple[int, ...]]
) -> PartialLabels:
    """The :class:`PartialLabels` of one source's ``{mask value: [class names]}``."""
    if not mapping:
        raise ConfigError("data.partial_roots: give {mask value: [classes]} for each folder")
    codes = {}
    for value, names in mapping.items():
        if not isinstance(value, int) or not 0 <= value < 255:
            raise ConfigError(f"data.partial_roots: mask values are integers 0..254, got {value!r}")
        members = tuple(sorted(_class_indices(names, classes)))
        codes[value] = members[0] if len(members) == 1 else len(classes) + label_sets.index(members)
    mode = "binary" if set(codes) <= {0, 1} else "multiclass"
    return PartialLabels(mode, codes)


def _class_indices(names: list[str] | str, classes: list[str]) -> list[int]:
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in classes]
    if unknown or not names:
        raise ConfigError(f"data.partial_roots: {unknown or names} are not classes; classes: {classes}")
    return [classes.index(n) for n in names]


def membership(num_classes: int, label_sets: list[tuple[int, ...]]) -> np.ndarray:
    """``(K + M, K)`` bool: which classes each target code stands for (code k < K: class k alone)."""
    members = np.zeros((num_classes + len(label_sets), num_classes), dtype=bool)
    members[np.arange(num_classes), np.arange(num_classes)] = True
    for j, group in enumerate(label_sets):
        members[num_classes + j, list(group)] = True
    return members

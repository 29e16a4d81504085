"""Seeded train/val/test splits that keep groups together and stratify by label; saved as ``split.json``.

Why not sklearn: ``StratifiedGroupKFold`` only makes 1/k folds (not a 15 % split) and can put every member of
a rare class into the held-out folds, and ``GroupShuffleSplit`` counts groups instead of items and ignores
labels. The greedy allocation below (largest groups first, each to the side whose label quota is least filled)
gives the requested fractions of items, keeps a group on one side and spreads every class over the sides in
proportion.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from medlens.data.index import DatasetIndex
from medlens.errors import ConfigError, DatasetError
from medlens.jsonable import write_json

logger = logging.getLogger(__name__)

SIDES = ("train", "val", "test")


def _groups(index: DatasetIndex) -> dict[str, list[int]]:
    """Item positions per group; an item without a group is its own group."""
    groups: dict[str, list[int]] = defaultdict(list)
    for pos, item in enumerate(index.items):
        groups[f"group:{item.group}" if item.group is not None else f"item:{item.id}"].append(pos)
    return groups


def _label_codes(index: DatasetIndex) -> tuple[np.ndarray, int]:
    """Integer label per item (0 for all when there are no labels) and the number of codes."""
    labels = [item.label for item in index.items]
    if all(label is None for label in labels):
        return np.zeros(len(labels), dtype=np.int64), 1
    names = sorted({str(label) for label in labels})
    code = {name: k for k, name in enumerate(names)}
    return np.array([code[str(label)] for label in labels], dtype=np.int64), len(names)


def _allocate(counts: np.ndarray, fractions: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Side per group. ``counts`` (G, L) items per group and label; ``fractions`` (S,) target share per side.

    Each group, largest first, goes to the side whose targets for the group's labels are least filled,
    relative to each side's own target (weighted by the group's label counts); ties are broken by the side's
    relative shortfall of all items. Relative, not absolute, shortfalls: with absolute ones the large side
    (train) stays the neediest until it is nearly full, so every large group (a long video sequence, a lesion
    photographed many times) would land in train and the validation side would hold only small groups.
    """
    totals = counts.sum(axis=0).astype(np.float64)  # (L,)
    targets = fractions[:, None] * totals[None, :]  # (S, L)
    filled = np.zeros_like(targets)
    size_target = fractions * totals.sum()
    size_filled = np.zeros_like(size_target)
    sides = np.zeros(len(counts), dtype=np.int64)
    open_sides = np.flatnonzero(fractions > 0)
    for g in order:
        need = ((targets - filled) / np.maximum(targets, 1e-9)) @ counts[g]  # (S,)
        size_need = (size_target - size_filled) / np.maximum(size_target, 1e-9)
        best = max(open_sides, key=lambda s: (round(float(need[s]), 9), float(size_need[s])))
        sides[g] = best
        filled[best] += counts[g]
        size_filled[best] += counts[g].sum()
    return sides


def make_splits(
    index: DatasetIndex, val_fraction: float = 0.15, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[str]]:
    """Split item ids into ``{"train", "val", "test"}`` (lists in index order).

    Groups (``item.group``: lesion, video sequence, patient) never cross sides; labels (``item.label``) are
    spread over the sides in proportion; the result depends only on the index and ``seed``.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be >= 0, sum < 1"
        )
    groups = _groups(index)
    names = sorted(groups)
    codes, n_labels = _label_codes(index)
    counts = np.zeros((len(names), n_labels), dtype=np.int64)
    for g, name in enumerate(names):
        np.add.at(counts[g], codes[groups[name]], 1)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(names))
    order = shuffled[
        np.argsort(-counts[shuffled].sum(axis=1), kind="stable")
    ]  # largest first, random among equals
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    sides = _allocate(counts, fractions, order)
    side_of_item = np.empty(len(index.items), dtype=np.int64)
    for g, name in enumerate(names):
        side_of_item[groups[name]] = sides[g]
    splits = {
        side: [index.items[i].id for i in np.flatnonzero(side_of_item == s)] for s, side in enumerate(SIDES)
    }
    _check_sides(splits, fractions, len(names), index)
    logger.info(
        "split %d items in %d groups: %s",
        len(index.items),
        len(names),
        ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
    )
    return splits


def _check_sides(
    splits: dict[str, list[str]], fractions: np.ndarray, n_groups: int, index: DatasetIndex
) -> None:
    for s, side in enumerate(SIDES):
        if fractions[s] > 0 and not splits[side]:
            raise DatasetError(
                f"{index.root}: {n_groups} group(s) are too few for a non-empty {side} split "
                f"(fraction {fractions[s]:.2f}); add data or set its fraction to 0"
            )


def split_summary(splits: dict[str, list[str]], index: DatasetIndex) -> dict[str, dict[str, int]]:
    """Items per label on each side (label "all" when the index has no labels)."""
    summary: dict[str, dict[str, int]] = {}
    for side, ids in splits.items():
        counts: dict[str, int] = defaultdict(int)
        for item in index.lookup(ids):
            counts["all" if item.label is None else item.label] += 1
        summary[side] = dict(sorted(counts.items()))
    return summary


def save_splits(splits: dict[str, list[str]], path: str | Path) -> Path:
    """Write ``splits`` as JSON (``{"train": [...], "val": [...], "test": [...]}``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {side: list(splits.get(side, [])) for side in SIDES}
    write_json(path, data, indent=1)
    return path


def load_splits(path: str | Path) -> dict[str, list[str]]:
    """Read a split JSON; DatasetError naming the file when malformed or when an id sits on two sides."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"cannot read split file {path}: {e}") from e
    if not isinstance(data, dict) or "train" not in data:
        raise DatasetError(f"split file {path}: expected an object with 'train', 'val', 'test' lists")
    splits = {}
    for side in SIDES:
        ids = data.get(side, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DatasetError(f"split file {path}: {side!r} must be a list of id strings")
        splits[side] = ids
    seen: dict[str, str] = {}
    for side, ids in splits.items():
        for item_id in ids:
            if item_id in seen:
                raise DatasetError(f"split file {path}: id {item_id!r} is in both {seen[item_id]} and {side}")
            seen[item_id] = side
    return splits


def check_splits(splits: dict[str, list[str]], index: DatasetIndex, source: str | Path = "split") -> None:
    """DatasetError when a split names ids that the index lacks (e.g. a split.json from another data set)."""
    known = set(index.ids)
    missing = [i for ids in splits.values() for i in ids if i not in known]
    if missing:
        raise DatasetError(f"{source}: {len(missing)} id(s) not in {index.root}, e.g. {missing[:5]}")

"""The in-memory index of a data set: :class:`Item` (an image, its masks, label, group and source) and
:class:`DatasetIndex`; reading an item's target; merging several folders' indexes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medlens.data.io import read_mask_with_format
from medlens.data.partial import PartialLabels
from medlens.errors import DatasetError
from medlens.spec import Mode, Task


@dataclass
class Item:
    """One sample: an image, its mask file(s) and optional label / group."""

    id: str
    image: Path
    masks: list[Path] = field(default_factory=list)  # one path per mask folder; [] for classification
    label: str | None = None  # classification label (informational CSV label for segmentation)
    group: str | None = None  # grouping value (lesion_id, video_sequence, patient)
    source: str | None = None  # the data folder's name when several are merged (data.extra_roots)


@dataclass
class DatasetIndex:
    """The items of a data set folder and how to read their targets."""

    root: Path
    task: str  # "segmentation" | "classification"
    items: list[Item]
    mode: str = "binary"  # segmentation: "binary" | "multiclass" | "multilabel"; classification: "multiclass"
    classes: list[str] = field(default_factory=list)
    mask_dirs: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) dropped by skip_bad
    # multi-class segmentation with partially labelled sources (data.partial_roots, see medlens.data.partial)
    label_sets: list[tuple[int, ...]] = field(default_factory=list)  # merged class sets, codes K, K+1, ...
    partial: dict[str, PartialLabels] = field(default_factory=dict)  # source name -> its mask mapping

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def lookup(self, ids: Sequence[str]) -> list[Item]:
        """The items with these ids, in that order (one pass over the index); DatasetError for absent ids."""
        by_id = {item.id: item for item in self.items}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DatasetError(
                f"{len(missing)} id(s) are not in the data set {self.root}, e.g. {missing[:3]}"
            )
        return [by_id[i] for i in ids]

    def get(self, item_id: str) -> Item:
        """The item with this id (a linear search; :meth:`lookup` for many ids)."""
        return self.lookup([item_id])[0]

    def subset(self, ids: list[str]) -> DatasetIndex:
        """A copy holding only ``ids`` (in that order)."""
        return DatasetIndex(
            self.root,
            self.task,
            self.lookup(ids),
            self.mode,
            list(self.classes),
            list(self.mask_dirs),
            list(self.skipped),
            list(self.label_sets),
            dict(self.partial),
        )

    def class_index(self, item: Item) -> int:
        """Index of a classification item's label in ``classes``."""
        if item.label not in self.classes:
            raise DatasetError(f"{item.image}: label {item.label!r} is not in classes {self.classes}")
        return self.classes.index(item.label)

    def label_counts(self) -> dict[str, int]:
        """Items per label (classification classes in order; segmentation CSV labels when present)."""
        counts: dict[str, int] = dict.fromkeys(self.classes, 0) if self.task == Task.CLASSIFICATION else {}
        for item in self.items:
            if item.label is not None:
                counts[item.label] = counts.get(item.label, 0) + 1
        return counts


def load_target(item: Item, index: DatasetIndex) -> np.ndarray:
    """The segmentation target of ``item`` at the image's size.

    binary: (H, W) uint8 0/1 (non-zero is foreground; lossy JPEG masks are thresholded at 128);
    multiclass: (H, W) uint8 labels; multilabel: (H, W, K) uint8 0/1, one channel per mask folder. An item of
    a partially labelled source gets target codes (:class:`~medlens.data.partial.PartialLabels`).
    """
    if index.task != Task.SEGMENTATION:
        raise DatasetError(
            f"{item.image}: load_target is for segmentation items; use index.class_index(item)"
        )
    if item.source in index.partial:
        return index.partial[item.source].encode(read_mask_with_format(item.masks[0])[0], item.masks[0])
    planes = []
    for path in item.masks:
        mask, fmt = read_mask_with_format(path)
        planes.append(
            mask if index.mode == Mode.MULTICLASS else (mask > (127 if fmt == "jpeg" else 0)).astype(np.uint8)
        )
    return np.stack(planes, axis=-1) if index.mode == Mode.MULTILABEL else planes[0]


def merge_indexes(indexes: list[DatasetIndex]) -> DatasetIndex:
    """Merge data sets of one task, mode and classes (``extra_roots``); clashing ids get a root prefix."""
    first = indexes[0]
    for other in indexes[1:]:
        if (other.task, other.mode, other.classes) != (first.task, first.mode, first.classes):
            raise DatasetError(
                f"cannot merge {other.root} ({other.task}/{other.mode}, classes {other.classes}) into "
                f"{first.root} ({first.task}/{first.mode}, classes {first.classes})"
            )
    seen: set[str] = set()
    items = []
    for idx in indexes:
        for item in idx.items:
            new_id = item.id if item.id not in seen else f"{idx.root.name}/{item.id}"
            seen.add(new_id)
            items.append(Item(new_id, item.image, list(item.masks), item.label, item.group, item.source))
    skipped = [s for idx in indexes for s in idx.skipped]
    merged = DatasetIndex(
        first.root, first.task, items, first.mode, list(first.classes), list(first.mask_dirs), skipped
    )
    merged.label_sets = sorted({s for idx in indexes for s in idx.label_sets})
    merged.partial = {name: p for idx in indexes for name, p in idx.partial.items()}
    return merged

"""The data a config names, as one index: ``data.root``, ``data.extra_roots`` and ``data.partial_roots``.

Training, and evaluation on a model's own split (``medlens evaluate MODEL --split test``), read the data the
same way through :func:`discover_all`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from medlens.data.layout import DatasetIndex, discover, merge_indexes
from medlens.data.partial import label_sets_of, partial_labels
from medlens.errors import ConfigError

logger = logging.getLogger(__name__)


class DataSources(Protocol):
    """What :func:`discover_all` reads of a data configuration (`medlens.config.DataConfig` is one; a protocol
    so that ``data`` does not depend on ``config``, which depends on ``data.augment``)."""

    root: str
    extra_roots: Sequence[str]
    partial_roots: Mapping[str, dict]
    task: str
    mode: str
    classes: Sequence[str] | None
    mask_dirs: Sequence[str] | None
    label_column: str
    group_column: str | None
    skip_bad: bool


def discover_all(d: DataSources, num_workers: int | None = None) -> DatasetIndex:
    """``data.root`` plus ``data.extra_roots`` and ``data.partial_roots`` as one index; with several roots
    every group is prefixed by its root and every item records its source (the root's folder name)."""
    roots = [d.root, *d.extra_roots, *d.partial_roots]
    if d.partial_roots and ((d.task, d.mode) != ("segmentation", "multiclass") or not d.classes):
        raise ConfigError("data.partial_roots is for multi-class segmentation with data.classes given")
    label_sets = label_sets_of(list(d.partial_roots.values()), d.classes or [])
    indexes = []
    for root in roots:
        partial = (
            partial_labels(d.partial_roots[root], d.classes, label_sets) if root in d.partial_roots else None
        )
        index = discover(
            root,
            task=d.task,
            mode=partial.mode if partial else d.mode,
            mask_dirs=None if partial else d.mask_dirs,
            label_column=d.label_column,
            group_column=d.group_column,
            classes=None if partial else d.classes,
            skip_bad=d.skip_bad,
            num_workers=num_workers,
        )
        if partial:  # read from now on as the model's classes, through the mask mapping
            index.mode, index.classes = d.mode, list(d.classes)
            index.partial, index.label_sets = {index.root.name: partial}, label_sets
        if len(roots) > 1:  # keep groups apart across sources (video 1 of one set is not video 1 of another)
            for item in index.items:
                item.group = (
                    f"{index.root.name}:{item.group if item.group is not None else 'item:' + item.id}"
                )
                item.source = index.root.name
        logger.info(
            "data %s: %d items%s",
            index.root,
            len(index),
            f", {len(index.skipped)} skipped" * bool(index.skipped),
        )
        indexes.append(index)
    return merge_indexes(indexes) if len(indexes) > 1 else indexes[0]

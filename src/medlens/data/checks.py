"""Checking a discovered data set: every image header (with a cheap decode check) and every mask is read;
problems (unreadable file, size mismatch, non-binary mask, label value outside the classes) raise a
DatasetError naming the files, or with ``skip_bad`` drop those items and record why."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from medlens.data.index import DatasetIndex, Item
from medlens.data.io import probe_image, read_mask_with_format
from medlens.errors import DatasetError, ImageReadError
from medlens.spec import Mode, Task

logger = logging.getLogger(__name__)

_MAX_SHOWN_PROBLEMS = 20


def resolve_problems(index: DatasetIndex, problems: list[tuple[str, str]], skip_bad: bool) -> None:
    """Raise DatasetError listing ``problems``, or drop the affected items when ``skip_bad``."""
    if not problems:
        return
    if not skip_bad:
        shown = "\n".join(f"  {f}: {r}" for f, r in problems[:_MAX_SHOWN_PROBLEMS])
        more = len(problems) - _MAX_SHOWN_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise DatasetError(
            f"{len(problems)} problem(s) in {index.root}:\n{shown}{tail}\n(skip_bad=True skips them)"
        )
    bad = {f for f, _ in problems}
    index.items = [
        it for it in index.items if str(it.image) not in bad and not bad.intersection(map(str, it.masks))
    ]
    index.skipped.extend(problems)
    logger.warning(
        "skipped %d item(s) of %s with problems, e.g. %s: %s", len(problems), index.root, *problems[0]
    )


def _mask_values(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.bincount(mask.ravel(), minlength=256))


def _check_item(item: Item, index: DatasetIndex) -> tuple[list[tuple[str, str]], int]:
    """Problems of one item and its largest mask value."""
    try:
        info = probe_image(item.image, verify=True)
    except ImageReadError as e:
        return [(str(item.image), e.reason)], 0
    problems, max_value = [], 0
    for path in item.masks:
        try:
            mask, fmt = read_mask_with_format(path)
        except ImageReadError as e:
            problems.append((str(path), e.reason))
            continue
        if mask.shape != (info.height, info.width):
            problems.append(
                (
                    str(path),
                    f"mask size {mask.shape[1]}x{mask.shape[0]} does not match image size "
                    f"{info.width}x{info.height} ({item.image.name})",
                )
            )
            continue
        values = _mask_values(mask)
        max_value = max(max_value, int(values[-1]))
        if index.mode in ("binary", "multilabel") and fmt != "jpeg" and len(values[values > 0]) > 1:
            shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
            problems.append((str(path), f"non-binary mask in {index.mode} mode (values {shown})"))
        elif index.mode == Mode.MULTICLASS and index.classes and values[-1] >= len(index.classes):
            problems.append((str(path), f"label value {values[-1]} outside the {len(index.classes)} classes"))
    return problems, max_value


def check_index(index: DatasetIndex, skip_bad: bool = False, num_workers: int | None = None) -> DatasetIndex:
    """Read every image header (with a cheap decode check) and every mask; raise or skip problems.

    Returns ``index`` itself, with bad items removed and recorded in ``index.skipped`` when ``skip_bad``.
    """
    results = _map(lambda it: _check_item(it, index), index.items, num_workers)
    problems = [p for item_problems, _ in results for p in item_problems]
    resolve_problems(index, problems, skip_bad)
    if index.task == Task.SEGMENTATION and index.mode == Mode.MULTICLASS and not index.classes:
        index.classes = _multiclass_names(index, max((m for _, m in results), default=0))
    return index


def _map(fn, items: list[Item], num_workers: int | None) -> list:
    """``[fn(item) for item in items]``, on threads when more than one worker (PIL/zlib release the GIL)."""
    workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _multiclass_names(index: DatasetIndex, top: int) -> list[str]:
    """``background, class_1..class_M`` for masks whose largest label value is M."""
    logger.info("multi-class masks of %s hold labels 0..%d", index.root, top)
    return ["background"] + [f"class_{k}" for k in range(1, max(top, 1) + 1)]


def classes_from_max_label(index: DatasetIndex, num_workers: int | None) -> list[str]:
    """Multi-class names from the largest label value of all masks (when check_index did not run)."""
    values = _map(lambda it: int(read_mask_with_format(it.masks[0])[0].max()), index.items, num_workers)
    return _multiclass_names(index, max(values, default=0))

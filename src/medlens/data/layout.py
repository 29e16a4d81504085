"""Data set discovery: a folder of images (+ masks or labels) -> :class:`DatasetIndex`, with checks.

Layouts understood:

* segmentation: ``root/images/*`` and ``root/masks/*`` (or several mask folders for multi-label data),
  matched by file stem; mask names may carry a suffix such as ``_segmentation`` or ``_mask``. An optional CSV
  (``labels.csv``, ``metadata.csv`` or ``splits.csv``) with an ``id`` column adds labels and a grouping
  column.
* classification: ``root/images/*`` plus a CSV label column, or one sub-folder per class (``root/<class>/*``).
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from medlens.data.checks import check_index, classes_from_max_label, resolve_problems
from medlens.data.index import DatasetIndex, Item, load_target, merge_indexes
from medlens.data.io import IMAGE_EXTENSIONS, sniff_format
from medlens.data.tables import (
    CSV_NAMES,
    GROUP_COLUMNS,
    ID_COLUMNS,
    assign_groups,
    kermany_patient,
    read_table,
)
from medlens.errors import DatasetError
from medlens.spec import GENERIC_REGION, MODES, Mode, Task

# The index types live in medlens.data.index and the CSV reading in medlens.data.tables; re-exported here as
# the discovery API.
__all__ = [
    "CSV_NAMES",
    "GROUP_COLUMNS",
    "ID_COLUMNS",
    "DatasetIndex",
    "Item",
    "check_index",
    "discover",
    "kermany_patient",
    "list_images",
    "load_target",
    "mask_id",
    "merge_indexes",
    "read_table",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- file discovery
def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (known extension or extension-less DICOM), sorted, no hidden."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS or (not path.suffix and _is_dicom(path)):
            found.append(path)
    return found


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        return sniff_format(f.read(132)) == "dicom"


def _by_stem(paths: list[Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in paths:
        if path.stem in out:
            raise DatasetError(
                f"two files share the id {path.stem!r}: {out[path.stem]} and {path}; rename one"
            )
        out[path.stem] = path
    return out


def mask_id(stem: str, image_ids: set[str] | dict[str, Path]) -> str | None:
    """The image id a mask file stem belongs to, or None.

    The stem itself when it is an image id, else the longest image id that the stem starts with followed by
    "_" or "-" (``ISIC_0000000_segmentation``, ``case1_mask``, ``ISIC_0000000_attribute_globules``).
    """
    if stem in image_ids:
        return stem
    cuts = [i for i, ch in enumerate(stem) if ch in "_-" and i > 0]
    return next((stem[:i] for i in reversed(cuts) if stem[:i] in image_ids), None)


# -------------------------------------------------------------------------------------------------- discovery
def discover(
    root: str | Path,
    task: str = "segmentation",
    mode: str = "binary",
    mask_dirs: list[str] | None = None,
    label_column: str = "label",
    group_column: str | None = None,
    classes: list[str] | None = None,
    skip_bad: bool = False,
    check: bool = True,
    num_workers: int | None = None,
) -> DatasetIndex:
    """Index a data set folder (layouts in the module docstring) and, with ``check``, validate every file.

    ``group_column=None`` picks the first of lesion_id, video_sequence, patient_id, patient in the CSV, else
    the patient parsed from Kermany chest X-ray ids (:func:`kermany_patient`). Problems (missing mask, size
    mismatch, unreadable file, non-binary mask in binary mode, label not in ``classes``) raise DatasetError
    naming the files, or with ``skip_bad=True`` drop those items, listed in ``index.skipped`` with a logged
    warning. ``num_workers`` threads read files in :func:`check_index` (None: up to 4).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data set folder {root} does not exist")
    if task == Task.SEGMENTATION:
        index, problems = _discover_segmentation(root, mode, mask_dirs, label_column, group_column, classes)
    elif task == Task.CLASSIFICATION:
        index, problems = _discover_classification(root, label_column, group_column, classes)
    else:
        raise DatasetError(f"unknown task {task!r} for {root}; expected 'segmentation' or 'classification'")
    resolve_problems(index, problems, skip_bad)
    if check:
        check_index(index, skip_bad=skip_bad, num_workers=num_workers)
    if task == Task.SEGMENTATION and mode == Mode.MULTICLASS and not index.classes:
        index.classes = classes_from_max_label(index, num_workers)
    if not index.items:
        raise DatasetError(f"no usable items left in {root} ({len(index.skipped)} skipped)")
    logger.info("indexed %d %s items in %s (%d skipped)", len(index), task, root, len(index.skipped))
    return index


def _image_folder(root: Path) -> list[Path]:
    folder = root / "images"
    if not folder.is_dir():
        raise DatasetError(f"{root}: no images/ folder")
    images = list_images(folder)
    if not images:
        raise DatasetError(f"{folder}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return images


def _discover_segmentation(root, mode, mask_dirs, label_column, group_column, classes):
    if mode not in MODES:
        raise DatasetError(f"unknown segmentation mode {mode!r} for {root}; expected one of {MODES}")
    mask_dirs = list(mask_dirs or ["masks"])
    if len(mask_dirs) > 1 and mode != Mode.MULTILABEL:
        raise DatasetError(f"{root}: {len(mask_dirs)} mask folders {mask_dirs} need mode='multilabel'")
    images = _by_stem(_image_folder(root))
    masks_by_dir = [_mask_folder(root / d, images) for d in mask_dirs]
    table = read_table(root)
    items, problems = [], []
    for item_id, image in images.items():
        paths = [found.get(item_id) for found in masks_by_dir]
        missing = [d for d, p in zip(mask_dirs, paths, strict=True) if p is None]
        if missing:
            problems.append((str(image), f"missing mask in {', '.join(missing)}/"))
            continue
        label = table.rows.get(item_id, {}).get(label_column) or None
        items.append(Item(item_id, image, paths, label))
    assign_groups(items, table, group_column)
    index = DatasetIndex(root, "segmentation", items, mode, [], mask_dirs)
    index.classes = _segmentation_classes(root, mode, mask_dirs, classes, items)
    return index, problems


def _mask_folder(folder: Path, images: dict[str, Path]) -> dict[str, Path]:
    """Mask files of ``folder`` keyed by the image id they belong to (:func:`mask_id`); orphans logged."""
    if not folder.is_dir():
        raise DatasetError(f"mask folder {folder} does not exist")
    masks = list_images(folder)
    if not masks:
        raise DatasetError(f"mask folder {folder} is empty")
    found: dict[str, Path] = {}
    orphans = []
    for path in masks:
        key = mask_id(path.stem, images)
        if key is None:
            orphans.append(path)
        elif key in found:
            raise DatasetError(f"two masks belong to image {key!r}: {found[key]} and {path}; keep one")
        else:
            found[key] = path
    if orphans:
        logger.warning("%d masks in %s have no image (e.g. %s)", len(orphans), folder, orphans[0].name)
    return found


def _segmentation_classes(root, mode, mask_dirs, classes, items) -> list[str]:
    if mode == Mode.BINARY:
        if classes and len(classes) not in (1, 2):
            raise DatasetError(f"{root}: binary mode takes 1 or 2 class names, got {classes}")
        if classes:
            return ["background", classes[0]] if len(classes) == 1 else list(classes)
        labels = {item.label for item in items if item.label}
        return ["background", labels.pop() if len(labels) == 1 else GENERIC_REGION]
    if mode == Mode.MULTILABEL:
        if classes and len(classes) != len(mask_dirs):
            raise DatasetError(
                f"{root}: {len(classes)} class names for {len(mask_dirs)} mask folders {mask_dirs}"
            )
        return list(classes) if classes else [re.sub(r"^masks?[_-]", "", d) or d for d in mask_dirs]
    if classes:
        return list(classes)
    return _classes_file(root)


def _classes_file(root: Path) -> list[str]:
    """Multi-class names from ``root/classes.csv`` (columns ``value,name``); [] when absent."""
    path = root / "classes.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    try:
        names = {int(r["value"]): r["name"].strip() for r in rows}
    except (KeyError, ValueError, AttributeError) as e:
        raise DatasetError(f"{path}: expected columns 'value,name' with integer values ({e})") from e
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{path}: values must be 0..K-1 without gaps, got {sorted(names)}")
    return [names[v] for v in range(len(names))]


def _discover_classification(root, label_column, group_column, classes):
    table = read_table(root)
    if (root / "images").is_dir():
        if table.path is None:
            raise DatasetError(
                f"{root}: images/ needs labels.csv (or metadata.csv) with a {label_column!r} column"
            )
        if label_column not in table.columns:
            raise DatasetError(
                f"{table.path}: label column {label_column!r} not found (columns: {table.columns})"
            )
        items = [
            Item(i, p, [], table.rows.get(i, {}).get(label_column) or None)
            for i, p in _by_stem(_image_folder(root)).items()
        ]
    else:
        items = _class_folder_items(root)
    assign_groups(items, table, group_column)
    found = sorted({item.label for item in items if item.label is not None})
    index = DatasetIndex(root, "classification", items, "multiclass", list(classes) if classes else found)
    problems = []
    for item in items:
        if item.label is None:
            problems.append((str(item.image), f"no label for id {item.id!r} in {table.path}"))
        elif item.label not in index.classes:
            problems.append(
                (str(item.image), f"label {item.label!r} of id {item.id!r} is not in classes {index.classes}")
            )
    return index, problems


def _class_folder_items(root: Path) -> list[Item]:
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    per_class = {d.name: list_images(d) for d in folders}
    per_class = {name: files for name, files in per_class.items() if files}
    if not per_class:
        raise DatasetError(f"{root}: no images/ folder and no class sub-folders with images")
    stems = [p.stem for files in per_class.values() for p in files]
    unique = len(set(stems)) == len(stems)
    return [
        Item(p.stem if unique else f"{name}/{p.stem}", p, [], name)
        for name, files in per_class.items()
        for p in files
    ]

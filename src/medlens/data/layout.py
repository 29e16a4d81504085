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
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medlens.data.io import IMAGE_EXTENSIONS, probe_image, read_mask_with_format, sniff_format
from medlens.data.partial import PartialLabels
from medlens.errors import DatasetError, ImageReadError
from medlens.spec import MODES

logger = logging.getLogger(__name__)

CSV_NAMES = ("labels.csv", "metadata.csv", "splits.csv")
ID_COLUMNS = ("id", "image_id", "image", "filename", "file")
GROUP_COLUMNS = ("lesion_id", "video_sequence", "patient_id", "patient")
_MAX_SHOWN_PROBLEMS = 20


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

    def get(self, item_id: str) -> Item:
        """The item with this id; DatasetError when absent."""
        key = (id(self.items), len(self.items))
        if self.__dict__.get("_by_id_key") != key:  # rebuilt whenever the item list changes
            self.__dict__["_by_id"] = {item.id: item for item in self.items}
            self.__dict__["_by_id_key"] = key
        by_id = self.__dict__["_by_id"]
        if item_id not in by_id:
            raise DatasetError(f"id {item_id!r} is not in the data set {self.root}")
        return by_id[item_id]

    def subset(self, ids: list[str]) -> DatasetIndex:
        """A copy holding only ``ids`` (in that order)."""
        return DatasetIndex(
            self.root,
            self.task,
            [self.get(i) for i in ids],
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
        counts: dict[str, int] = dict.fromkeys(self.classes, 0) if self.task == "classification" else {}
        for item in self.items:
            if item.label is not None:
                counts[item.label] = counts.get(item.label, 0) + 1
        return counts


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


def kermany_patient(item_id: str) -> str | None:
    """Patient of a Kermany et al. paediatric chest X-ray file id, or None when the id does not follow it.

    Rule: ``person<N>_<bacteria|virus>_<k>[_<j>]`` -> ``person<N>``; ``[NORMAL<n>-]IM-<NNNN>-<k>[-<j>]`` ->
    ``[NORMAL<n>-]IM-<NNNN>`` (the IM number is the patient, the trailing numbers count images of that
    patient).
    """
    m = re.fullmatch(r"(person\d+)_(?:bacteria|virus)_\d+(?:_\d+)?", item_id, flags=re.IGNORECASE)
    if m:
        return m.group(1)
    m = re.fullmatch(r"((?:NORMAL\d*-)?IM-\d+)-\d+(?:-\d+)?", item_id, flags=re.IGNORECASE)
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------------------- CSV tables
@dataclass
class _Table:
    path: Path | None = None
    rows: dict[str, dict[str, str]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)


def read_table(root: Path) -> _Table:
    """The first of labels.csv / metadata.csv / splits.csv in ``root``, rows keyed by id."""
    path = next((root / n for n in CSV_NAMES if (root / n).is_file()), None)
    if path is None:
        return _Table()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        id_col = next((c for c in ID_COLUMNS if c in columns), None)
        if id_col is None:
            raise DatasetError(
                f"{path}: no id column (expected one of {', '.join(ID_COLUMNS)}; found {columns})"
            )
        rows: dict[str, dict[str, str]] = {}
        for raw in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            key = row[id_col]
            if Path(key).suffix.lower() in IMAGE_EXTENSIONS:
                key = Path(key).stem
            if key in rows:
                raise DatasetError(f"{path}: id {key!r} appears twice")
            rows[key] = row
    return _Table(path, rows, columns)


def _group_column(table: _Table, group_column: str | None) -> str | None:
    if group_column is not None:
        if group_column not in table.columns:
            where = table.path or "the data set (no labels.csv / metadata.csv)"
            raise DatasetError(f"{where}: group column {group_column!r} not found (columns: {table.columns})")
        return group_column
    return next((c for c in GROUP_COLUMNS if c in table.columns), None)


def _assign_groups(items: list[Item], table: _Table, group_column: str | None) -> None:
    column = _group_column(table, group_column)
    if column is not None:
        for item in items:
            value = table.rows.get(item.id, {}).get(column, "")
            item.group = value or None
        return
    patients = [kermany_patient(item.id) for item in items]
    if items and all(patients):
        logger.info("grouping %d items by the patient in Kermany-style chest X-ray ids", len(items))
        for item, patient in zip(items, patients, strict=True):
            item.group = patient


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
    if task == "segmentation":
        index, problems = _discover_segmentation(root, mode, mask_dirs, label_column, group_column, classes)
    elif task == "classification":
        index, problems = _discover_classification(root, label_column, group_column, classes)
    else:
        raise DatasetError(f"unknown task {task!r} for {root}; expected 'segmentation' or 'classification'")
    _resolve(index, problems, skip_bad)
    if check:
        check_index(index, skip_bad=skip_bad, num_workers=num_workers)
    if task == "segmentation" and mode == "multiclass" and not index.classes:
        index.classes = _classes_from_max_label(index, num_workers)
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
    if len(mask_dirs) > 1 and mode != "multilabel":
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
    _assign_groups(items, table, group_column)
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
    if mode == "binary":
        if classes and len(classes) not in (1, 2):
            raise DatasetError(f"{root}: binary mode takes 1 or 2 class names, got {classes}")
        if classes:
            return ["background", classes[0]] if len(classes) == 1 else list(classes)
        labels = {item.label for item in items if item.label}
        return ["background", labels.pop() if len(labels) == 1 else "foreground"]
    if mode == "multilabel":
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
    _assign_groups(items, table, group_column)
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


# ----------------------------------------------------------------------------------------------------- checks
def _resolve(index: DatasetIndex, problems: list[tuple[str, str]], skip_bad: bool) -> None:
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
        elif index.mode == "multiclass" and index.classes and values[-1] >= len(index.classes):
            problems.append((str(path), f"label value {values[-1]} outside the {len(index.classes)} classes"))
    return problems, max_value


def check_index(index: DatasetIndex, skip_bad: bool = False, num_workers: int | None = None) -> DatasetIndex:
    """Read every image header (with a cheap decode check) and every mask; raise or skip problems.

    Returns ``index`` itself, with bad items removed and recorded in ``index.skipped`` when ``skip_bad``.
    """
    results = _map(lambda it: _check_item(it, index), index.items, num_workers)
    problems = [p for item_problems, _ in results for p in item_problems]
    _resolve(index, problems, skip_bad)
    if index.task == "segmentation" and index.mode == "multiclass" and not index.classes:
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


def _classes_from_max_label(index: DatasetIndex, num_workers: int | None) -> list[str]:
    """Multi-class names from the largest label value of all masks (when check_index did not run)."""
    values = _map(lambda it: int(read_mask_with_format(it.masks[0])[0].max()), index.items, num_workers)
    return _multiclass_names(index, max(values, default=0))


def load_target(item: Item, index: DatasetIndex) -> np.ndarray:
    """The segmentation target of ``item`` at the image's size.

    binary: (H, W) uint8 0/1 (non-zero is foreground; lossy JPEG masks are thresholded at 128);
    multiclass: (H, W) uint8 labels; multilabel: (H, W, K) uint8 0/1, one channel per mask folder. An item of
    a partially labelled source gets target codes (:class:`~medlens.data.partial.PartialLabels`).
    """
    if index.task != "segmentation":
        raise DatasetError(
            f"{item.image}: load_target is for segmentation items; use index.class_index(item)"
        )
    if item.source in index.partial:
        return index.partial[item.source].encode(read_mask_with_format(item.masks[0])[0], item.masks[0])
    planes = []
    for path in item.masks:
        mask, fmt = read_mask_with_format(path)
        planes.append(
            mask if index.mode == "multiclass" else (mask > (127 if fmt == "jpeg" else 0)).astype(np.uint8)
        )
    return np.stack(planes, axis=-1) if index.mode == "multilabel" else planes[0]


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

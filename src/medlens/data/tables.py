"""The optional CSV beside a data set's images (``labels.csv``, ``metadata.csv`` or ``splits.csv``): labels
and the grouping column (lesion, video sequence, patient) that keeps related images on one side of a split."""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from medlens.data.index import Item
from medlens.data.io import IMAGE_EXTENSIONS
from medlens.errors import DatasetError

logger = logging.getLogger(__name__)

CSV_NAMES = ("labels.csv", "metadata.csv", "splits.csv")
ID_COLUMNS = ("id", "image_id", "image", "filename", "file")
GROUP_COLUMNS = ("lesion_id", "video_sequence", "patient_id", "patient")


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


def assign_groups(items: list[Item], table: _Table, group_column: str | None) -> None:
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

"""Reading evaluation data in batches and writing per-item tables (shared by the task evaluations)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import ImageReadError

logger = logging.getLogger(__name__)


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + max(1, size)]


def read_batch(
    items: Sequence, skip_bad: bool, skipped: list[tuple[str, str]]
) -> list[tuple[Any, np.ndarray]]:
    """``(item, HWC uint8 image)`` pairs; unreadable images raise, or with skip_bad are recorded, dropped."""
    from medlens.data.io import read_image

    out = []
    for item in items:
        try:
            out.append((item, read_image(item.image).array))
        except ImageReadError as exc:
            if not skip_bad:
                raise
            logger.warning("skipping %s: %s", item.image, exc.reason)
            skipped.append((str(item.image), exc.reason))
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if isinstance(v, float) and np.isnan(v) else v for k, v in row.items()})
    return path

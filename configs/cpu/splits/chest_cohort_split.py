"""Write the cohort split of the chest-xray-cls bundle: patients in the order of the numbers in their ids.

Kermany file names number the patients of each series (``IM-0115-0001`` and ``NORMAL2-IM-0372-0001`` for
normal films, ``person1007_bacteria_2938`` for pneumonia); the numbers follow the order of collection. A
random patient split puts every period on every side, so its validation says nothing about a new cohort. Here
the earliest 15 % of each series' patients are validation (epoch selection, temperature, decision
threshold), the latest 15 % are the test split that no choice sees, and the patients between them train. A
patient stays on one side.

    python configs/cpu/splits/chest_cohort_split.py ../shared/datasets/chestxray_pneumonia \
        configs/cpu/splits/chest-xray-cohort.json
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from medlens.data.layout import kermany_patient


def series_and_patient(item_id: str) -> tuple[str, int]:
    """(series, patient number) of a Kermany id: ``NORMAL2-IM-0372`` -> ("NORMAL2-IM", 372)."""
    patient = kermany_patient(item_id)
    if patient is None:
        raise ValueError(f"{item_id}: not a Kermany file name")
    match = re.fullmatch(r"(.*?)-?(\d+)", patient)
    return match.group(1), int(match.group(2))


def cohort_split(ids: list[str], fraction: float = 0.15) -> dict[str, list[str]]:
    """``{"train", "val", "test"}``: per series, the earliest patients holding ``fraction`` of the images are
    val, the latest holding ``fraction`` are test."""
    by_patient: dict[tuple[str, int], list[str]] = defaultdict(list)
    for item_id in ids:
        by_patient[series_and_patient(item_id)].append(item_id)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for series in sorted({s for s, _ in by_patient}):
        patients = sorted(p for s, p in by_patient if s == series)
        total = sum(len(by_patient[series, p]) for p in patients)
        seen = 0
        for p in patients:
            images = by_patient[series, p]
            side = "val" if seen < fraction * total else "test" if seen >= (1 - fraction) * total else "train"
            split[side].extend(images)
            seen += len(images)
    return {side: sorted(v) for side, v in split.items()}


def main(root: str, out: str) -> None:
    with open(Path(root) / "labels.csv", newline="") as fh:
        ids = [row["id"] for row in csv.DictReader(fh)]
    split = cohort_split(ids)
    Path(out).write_text(json.dumps(split, indent=1) + "\n")
    print(", ".join(f"{k} {len(v)}" for k, v in split.items()))


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""Write the chest classifiers' comparison sets as folders ``medlens evaluate BUNDLE FOLDER`` reads
(symlinks).

- ``kermany-cohort-test``: the 781 children's films of Kermany's cohort test split
  (``chest-xray-cohort.json``), which neither the shipped two-class model nor the three-class one trained on:
  paired comparisons of the two;
- ``adult-test``: the adult films (Shenzhen normal / tuberculosis, JSRT normal) of the three-class split's
  test side (``runs/chest3-split.json``); ``adult-normal-test``: its normal films only (the two-class model
  has no tuberculosis class, so the paired comparison of "adults called pneumonia" runs on these).

    python configs/cpu/splits/chest_test_sets.py ../shared/datasets runs/chest3 runs/chest3-split.json runs
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

COHORT = Path(__file__).with_name("chest-xray-cohort.json")


def _write(dst: Path, rows: list[dict[str, str]], images: Path, columns: list[str]) -> None:
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for r in rows:
        image = next(images.glob(r["id"] + ".*")).resolve()
        link = dst / "images" / image.name
        if not link.exists():
            link.symlink_to(image)
    with (dst / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows([r[c] for c in columns] for r in rows)
    counts = {label: sum(r["label"] == label for r in rows) for label in sorted({r["label"] for r in rows})}
    print(f"{dst}: {len(rows)} films {counts}")


def main(shared: Path, chest3: Path, split_file: Path, dst: Path) -> None:
    kermany = shared / "chestxray_pneumonia"
    cohort_test = set(json.loads(COHORT.read_text())["test"])
    with (kermany / "labels.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["id"] in cohort_test]
    _write(dst / "kermany-cohort-test", rows, kermany / "images", ["id", "label"])
    test = set(json.loads(split_file.read_text())["test"])
    with (chest3 / "labels.csv").open() as fh:
        adults = [r for r in csv.DictReader(fh) if r["id"] in test and r["population"] == "adults"]
    _write(dst / "adult-test", adults, chest3 / "images", ["id", "label", "source"])
    normal = [r for r in adults if r["label"] == "normal"]
    _write(dst / "adult-normal-test", normal, chest3 / "images", ["id", "label", "source"])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))

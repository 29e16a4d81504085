"""Write the split of the three-class chest classifier (``configs/cpu/chest-3class.yaml``).

Kermany's films keep the shipped chest-xray-cls's cohort split (``chest-xray-cohort.json``: earliest patients
validate, latest test), so the new model and the shipped one are compared on the same children's test films
that neither trained on. Shenzhen's and JSRT's adults (one film a patient) are split at random, seeded and
stratified by collection and label: 70 % train, 15 % validation, 15 % test.

    .venv/bin/python configs/cpu/splits/chest_three_classes.py ../shared/datasets runs/chest3
    python configs/cpu/splits/chest_three_split.py runs/chest3 configs/cpu/splits/chest-xray-cohort.json \
        runs/chest3-split.json
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path


def main(folder: Path, kermany_split: Path, out: Path, seed: int = 0) -> None:
    cohort = json.loads(kermany_split.read_text())
    split: dict[str, list[str]] = {side: [f"kermany-{i}" for i in ids] for side, ids in cohort.items()}
    with (folder / "labels.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["source"] != "chestxray_pneumonia"]
    rng = random.Random(seed)
    for key in sorted({(r["source"], r["label"]) for r in rows}):
        ids = sorted(r["id"] for r in rows if (r["source"], r["label"]) == key)
        rng.shuffle(ids)
        n_val = n_test = round(0.15 * len(ids))
        split["val"] += ids[:n_val]
        split["test"] += ids[n_val : n_val + n_test]
        split["train"] += ids[n_val + n_test :]
    out.write_text(json.dumps({side: sorted(ids) for side, ids in split.items()}, indent=1) + "\n")
    print({side: len(ids) for side, ids in split.items()}, "->", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))

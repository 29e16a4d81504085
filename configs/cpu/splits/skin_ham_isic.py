"""Write the split of skin-cls trained on HAM10000 and ISIC 2017's ``fit`` half (``data.extra_roots``).

HAM10000 keeps the shipped bundle's split (``models/skin-cls/split.json``), so the new model and the shipped
one are compared on the same HAM10000 test lesions; the ISIC 2017 ``fit`` half (one image a lesion) goes four
fifths to training and one fifth to validation, seeded and stratified by label, so that model selection and
the fitted decision rules see both archives. ISIC 2017's ``external`` half stays out of every choice: it is
the external set of the comparison. Given the split of a bundle trained this way, it writes that split again.

    python configs/cpu/splits/isic2017_external.py ../shared/datasets/isic2017_seg runs/isic2017
    python configs/cpu/splits/skin_ham_isic.py models/skin-cls/split.json runs/isic2017/fit \
        runs/skin-ham-isic.json
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path


def main(ham_split: Path, isic_fit: Path, out: Path, val_share: float = 0.2, seed: int = 0) -> None:
    with (isic_fit / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    isic = {r["id"] for r in rows}  # a split that has them already (this model's own) gives the same result
    given = json.loads(ham_split.read_text())
    split = {side: [i for i in ids if i not in isic] for side, ids in given.items()}
    rng = random.Random(seed)
    for label in sorted({r["label"] for r in rows}):
        ids = sorted(r["id"] for r in rows if r["label"] == label)
        rng.shuffle(ids)
        n_val = round(val_share * len(ids))
        split["val"] += ids[:n_val]
        split["train"] += ids[n_val:]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({side: sorted(ids) for side, ids in split.items()}, indent=1) + "\n")
    print({side: len(ids) for side, ids in split.items()}, "->", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))

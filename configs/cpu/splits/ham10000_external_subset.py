"""Write the external set of the skin-seg bundle: one image per lesion for 600 HAM10000 lesions (symlinks).

HAM10000's lesion masks come from another collection than the ISIC 2017 images skin-seg learnt from. Scoring
all 8501 images (HD95 included) had not finished after 13 minutes on one core beside two trainings, so the
external figure uses a seeded sample of lesions, one image each (a lesion photographed several times would
otherwise count several times):

    python configs/cpu/splits/ham10000_external_subset.py ../shared/datasets/ham10000 runs/ham10000-600
    medlens evaluate models/skin-seg runs/ham10000-600 --out eval/skin-seg-ham10000 --record external:ham10000
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path


def main(src: Path, dst: Path, lesions: int = 600, seed: int = 0) -> None:
    with (src / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    by_lesion: dict[str, list[str]] = {}
    for row in rows:
        by_lesion.setdefault(row["lesion_id"], []).append(row["id"])
    order = sorted(by_lesion)
    random.Random(seed).shuffle(order)
    images = {p.stem: p for p in (src / "images").iterdir()}
    masks = {p.stem: p for p in (src / "masks").iterdir()}
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for lesion in order[:lesions]:
        image_id = sorted(by_lesion[lesion])[0]
        for sub, table in (("images", images), ("masks", masks)):
            path = table[image_id].resolve()
            (dst / sub / path.name).symlink_to(path)
    print(f"{lesions} of {len(by_lesion)} lesions -> {dst}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

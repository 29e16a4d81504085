"""Write ISIC 2017's diagnosed images as skin-cls's external set, in HAM10000's class names (symlinks).

ISIC 2017 (2150 images with a diagnosis: melanoma, nevus, seborrheic keratosis) is another archive than
HAM10000's, from other clinics and years, so it shows what the classifier and its malignant flag do off their
own collection. Its labels are renamed to HAM10000's codes (melanoma -> mel, nevus -> nv,
seborrheic_keratosis -> bkl) and the images are split, seeded and stratified by label, into two halves:

- ``fit/``: pooled with the validation split when the decision rules are fitted (``decision_roots``), or
  trained on beside HAM10000 (``data.extra_roots`` with ``data.classes`` set to HAM10000's seven codes); each
  image is its own ``lesion_id`` (the archive gives none);
- ``external/``: never seen by any choice; the external figures of the card.

    python configs/cpu/splits/isic2017_external.py ../shared/datasets/isic2017_seg runs/isic2017
    medlens evaluate models/skin-cls runs/isic2017/external --out eval/skin-isic --record external:isic2017

ISIC 2017 has no lesion ids; its ids are ISIC_00000xx-ISIC_0015xxx, HAM10000's ISIC_0024306 onwards, so the
two share no image. The source resized its images to 256x256 without keeping their aspect; the classifier
resizes them to its own 3:4 input, which restores the usual 4:3 dermoscopy aspect.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

HAM_CODES = {"melanoma": "mel", "nevus": "nv", "seborrheic_keratosis": "bkl"}


def main(src: Path, dst: Path, seed: int = 0) -> None:
    with (src / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    images = {p.stem: p for p in (src / "images").iterdir()}
    halves: dict[str, list[dict]] = {"fit": [], "external": []}
    rng = random.Random(seed)
    for label in sorted(HAM_CODES):
        ids = sorted(r["id"] for r in rows if r["label"] == label)
        rng.shuffle(ids)
        for k, image_id in enumerate(ids):
            row = {"id": image_id, "label": HAM_CODES[label], "lesion_id": image_id}  # one image a lesion
            halves["fit" if k % 2 == 0 else "external"].append(row)
    for name, items in halves.items():
        (dst / name / "images").mkdir(parents=True, exist_ok=True)
        with (dst / name / "labels.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["id", "label", "lesion_id"])
            writer.writeheader()
            writer.writerows(sorted(items, key=lambda r: r["id"]))
        for item in items:
            path = images[item["id"]].resolve()
            link = dst / name / "images" / path.name
            if not link.exists():
                link.symlink_to(path)
        counts = {c: sum(r["label"] == c for r in items) for c in sorted(HAM_CODES.values())}
        print(f"{name}: {len(items)} images {counts} -> {dst / name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""Write JSRT's films with a lung nodule as an external set of adult films without pneumonia or tuberculosis.

The chest classifiers never train on these 154 films (``chest_three_classes.py`` leaves them out): adults of a
Japanese hospital, PA, each with a solitary nodule, none with pneumonia or tuberculosis. Labelled ``normal``
here in the sense of the classifiers' classes ("neither pneumonia nor tuberculosis"), so that ``medlens
evaluate`` counts how many adult films of a hospital the model never saw it calls pneumonia or tuberculosis
(the chest issue's first target), for the shipped two-class model and the three-class one alike:

    python configs/cpu/splits/jsrt_nodule_films.py ../shared/datasets/cxr_lungs_jsrt runs/jsrt-nodule
    medlens evaluate models/chest-xray-cls runs/jsrt-nodule --out eval/chest-jsrt-old
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def main(src: Path, dst: Path) -> None:
    with (src / "labels.csv").open() as fh:
        ids = [r["id"] for r in csv.DictReader(fh) if r["nodule"] == "1"]
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        image = next((src / "images").glob(image_id + ".*")).resolve()
        link = dst / "images" / image.name
        if not link.exists():
            link.symlink_to(image)
    with (dst / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "label"])
        writer.writerows([i, "normal"] for i in sorted(ids))
    print(f"{len(ids)} nodule films -> {dst}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

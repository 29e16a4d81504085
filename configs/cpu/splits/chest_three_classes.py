"""Write the data of a chest classifier for children and adults: normal / pneumonia / tuberculosis (symlinks).

Three collections become one folder with one ``labels.csv`` (the next chest classifier's recipe,
``configs/cpu/chest-3class.yaml``):

- Kermany et al. (``chestxray_pneumonia``, children, Guangzhou): normal and pneumonia, the patient from the
  file name;
- Shenzhen (``cxr_lungs_shenzhen``, adults): normal and tuberculosis, one film per patient;
- JSRT (``cxr_lungs_jsrt``, adults, Japan): its films without a lung nodule as normal (films with a nodule
  show neither pneumonia nor tuberculosis, and are left out rather than called normal).

Ids are prefixed by their collection; ``patient_id`` keeps a patient's films on one side of a split and
``population`` / ``source`` say where each class was learnt from (the card and the UI say it beside a result):

    .venv/bin/python configs/cpu/splits/chest_three_classes.py ../shared/datasets runs/chest3
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from medlens.data.tables import kermany_patient  # the trainer's own patient rule for Kermany ids

SHORT = {"chestxray_pneumonia": "kermany", "cxr_lungs_shenzhen": "shenzhen", "cxr_lungs_jsrt": "jsrt"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def main(shared: Path, dst: Path) -> None:
    out: list[dict[str, str]] = []
    for row in _rows(shared / "chestxray_pneumonia" / "labels.csv"):
        patient = kermany_patient(row["id"]) or row["id"]
        out.append({"src": "chestxray_pneumonia", "id": row["id"], "label": row["label"],
                    "patient_id": patient, "population": "children"})  # fmt: skip
    for row in _rows(shared / "cxr_lungs_shenzhen" / "labels.csv"):
        label = "tuberculosis" if row["tb"] == "1" else "normal"
        out.append({"src": "cxr_lungs_shenzhen", "id": row["id"], "label": label, "patient_id": row["id"],
                    "population": "adults"})  # fmt: skip
    for row in _rows(shared / "cxr_lungs_jsrt" / "labels.csv"):
        if row["nodule"] == "0":
            out.append({"src": "cxr_lungs_jsrt", "id": row["id"], "label": "normal", "patient_id": row["id"],
                        "population": "adults"})  # fmt: skip
    (dst / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for r in out:
        image = next((shared / r["src"] / "images").glob(r["id"] + ".*")).resolve()
        new_id = f"{SHORT[r['src']]}-{r['id']}"
        link = dst / "images" / (new_id + image.suffix)
        if not link.exists():
            link.symlink_to(image)
        rows.append({"id": new_id, "label": r["label"], "patient_id": f"{r['src']}:{r['patient_id']}",
                     "population": r["population"], "source": r["src"]})  # fmt: skip
    with (dst / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r["source"], r["label"])] = counts.get((r["source"], r["label"]), 0) + 1
    shown = ", ".join(f"{SHORT[s]} {label} {n}" for (s, label), n in sorted(counts.items()))
    print(f"{len(rows)} films -> {dst}: {shown}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

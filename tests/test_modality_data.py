"""The modality classifier's data script (configs/cpu/splits/modality.py) on a tiny fake copy of the shared
datasets tree: classes, sources, symlinks and generated PNGs, groups kept whole by its split, the per-source
report."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SPLITS = Path(__file__).resolve().parents[1] / "configs" / "cpu" / "splits"


def _write_table(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _collection(root: Path, name: str, table: str, rows: list[dict], ext: str = ".png", masks: bool = True):
    rng = np.random.default_rng(len(name))
    (root / name / "images").mkdir(parents=True)
    if masks:
        (root / name / "masks").mkdir()
    for row in rows:
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
            root / name / "images" / f"{row['id']}{ext}"
        )
        if masks:
            Image.fromarray(np.zeros((24, 32), np.uint8)).save(root / name / "masks" / f"{row['id']}.png")
    if table:
        _write_table(root / name / table, rows)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """A shared/datasets tree with a handful of images per collection, in the real layouts."""
    root = tmp_path_factory.mktemp("shared")
    _collection(
        root,
        "ham10000",
        "labels.csv",
        [{"id": f"ISIC_{k:07d}", "label": "nv", "lesion_id": f"HAM_{k // 2}"} for k in range(8)],
    )
    _collection(
        root,
        "isic2017_seg",
        "labels.csv",
        [{"id": f"ISIC_1{k:06d}", "label": "nevus"} for k in range(6)],
        ext=".jpg",
    )
    _collection(
        root,
        "kvasir_seg",
        "metadata.csv",
        [{"id": f"cju{k}", "label": "polyp"} for k in range(6)],
        ext=".jpg",
    )
    _collection(
        root,
        "cvc_clinicdb",
        "metadata.csv",
        [{"id": str(k), "label": "polyp", "video_sequence": str(k % 3)} for k in range(9)],
        ext=".jpg",
    )
    _collection(
        root,
        "chestxray_pneumonia",
        "labels.csv",
        [{"id": f"IM-{k // 2:04d}-000{k % 2 + 1}", "label": "normal"} for k in range(6)],
        ext=".jpeg",
        masks=False,
    )
    _collection(root, "cxr_lungs_shenzhen", "labels.csv", [{"id": f"CHNCXR_{k:04d}_0"} for k in range(5)])
    _collection(root, "cxr_lungs_jsrt", "labels.csv", [{"id": f"JPCNN{k:03d}"} for k in range(5)])
    _collection(root, "drive", "", [{"id": f"{k:02d}_test"} for k in range(1, 5)])
    return root


@pytest.fixture(scope="module")
def script():
    import sys

    sys.path.insert(0, str(SPLITS))
    try:
        return importlib.import_module("modality")
    finally:
        sys.path.remove(str(SPLITS))


@pytest.fixture(scope="module")
def built(script, shared, tmp_path_factory) -> tuple[Path, list[dict]]:
    dst = tmp_path_factory.mktemp("modality")
    return dst, script.main(shared, dst, per_class=40, seed=0)


def _read(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_every_class_from_its_collections_within_the_cap(built, shared):
    dst, rows = built
    assert _read(dst / "labels.csv") == rows
    assert list(rows[0]) == ["id", "label", "group", "source", "origin"]
    by_label: dict[str, set[str]] = {}
    for row in rows:
        by_label.setdefault(row["label"], set()).add(row["source"])
    assert by_label["dermoscopy"] == {"ham10000", "isic2017_seg"}
    assert by_label["endoscopy"] == {"kvasir_seg", "cvc_clinicdb"}
    assert by_label["chest_xray"] == {"chestxray_pneumonia", "cxr_lungs_shenzhen", "cxr_lungs_jsrt"}
    assert by_label["fundus"] == {"drive", "skimage"}
    assert {"skimage", "skimage-lfw", "masks"} <= by_label["other"]
    assert {s for s in by_label["other"] if s.startswith("synthetic-")} == {
        f"synthetic-{k}" for k in ("uniform", "noise", "gradient", "text", "shapes", "phantom", "pattern")
    }
    counts = {label: sum(r["label"] == label for r in rows) for label in by_label}
    assert all(0 < n <= 40 for n in counts.values()), counts
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))


def test_shared_files_are_linked_and_generated_ones_written(built, shared):
    dst, rows = built
    for row in rows:
        (path,) = (dst / "images").glob(row["id"] + ".*")
        if row["origin"] in ("file", "mask") and row["source"] not in ("skimage", "skimage-lfw"):
            assert path.is_symlink() and path.resolve().is_relative_to(shared.resolve()), row
        else:
            assert not path.is_symlink() and path.suffix == ".png", row
            with Image.open(path) as image:
                assert image.mode == "RGB" and min(image.size) >= 64, row
    names = {r["id"] for r in rows}
    assert "skimage-retina" in names and "skimage-microaneurysms" not in names
    assert next(r for r in rows if r["id"] == "skimage-retina")["label"] == "fundus"
    kermany = [r for r in rows if r["source"] == "chestxray_pneumonia"]
    assert {r["group"] for r in kermany} <= {f"chestxray_pneumonia:IM-{k:04d}" for k in range(3)}


def test_copies_share_their_photographs_group_and_the_split_keeps_groups_whole(built):
    dst, rows = built
    drive = [r for r in rows if r["group"] == "drive:01_test"]
    assert {r["origin"] for r in drive} >= {"file", "copy"}  # the photograph and its augmented copies
    split = json.loads((dst / "split.json").read_text())
    side_of = {i: side for side, ids in split.items() for i in ids}
    assert sorted(side_of) == sorted(r["id"] for r in rows)  # every image once
    sides: dict[str, set[str]] = {}
    for row in rows:
        sides.setdefault(row["group"], set()).add(side_of[row["id"]])
    assert all(len(s) == 1 for s in sides.values())
    for source in ("ham10000", "cvc_clinicdb", "synthetic-noise"):  # three groups or more: held-out images
        assert {side_of[r["id"]] for r in rows if r["source"] == source} == {"train", "val", "test"}, source


def test_the_trainer_reads_the_folder(built):
    from medlens.data.layout import discover

    dst, rows = built
    index = discover(dst, task="classification", label_column="label", group_column="group")
    assert len(index.items) == len(rows)
    assert sorted({i.label for i in index.items}) == [
        "chest_xray",
        "dermoscopy",
        "endoscopy",
        "fundus",
        "other",
    ]


def test_per_source_report(built, script, tmp_path):
    dst, rows = built
    report = tmp_path / "eval"
    report.mkdir()
    picked = [r for r in rows if r["source"] in ("kvasir_seg", "drive")]
    wrong = {r["id"] for r in picked if r["source"] == "drive"}
    _write_table(report / "predictions.csv",
                 [{"id": r["id"], "label": r["label"], "pred": "other" if r["id"] in wrong else r["label"]}
                  for r in picked])  # fmt: skip
    table = {t["source"]: t for t in script.per_source(report, dst)}
    assert table["kvasir_seg"]["accuracy"] == 1.0 and table["kvasir_seg"]["most_frequent_error"] == ""
    assert table["drive"]["accuracy"] == 0.0
    assert table["drive"]["most_frequent_error"] == f"other ({len(wrong)})"

"""Data set discovery and checks on synthetic folders and on a few real images."""

from __future__ import annotations

import csv
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.data.layout import (
    DatasetIndex,
    check_index,
    discover,
    kermany_patient,
    load_target,
    mask_id,
    merge_indexes,
)
from medlens.data.splits import make_splits
from medlens.errors import DatasetError


def _write_pair(
    root: Path, item_id: str, mask: np.ndarray, image_size: tuple[int, int] | None = None
) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = image_size or mask.shape
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "images" / f"{item_id}.png")
    Image.fromarray(mask).save(root / "masks" / f"{item_id}.png")


def _disc(size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- segmentation
def test_discover_synthetic_segmentation(synthetic_seg: Path) -> None:
    index = discover(synthetic_seg)
    assert index.task == "segmentation" and index.mode == "binary" and len(index) == 12
    assert index.mask_dirs == ["masks"] and index.skipped == []
    assert index.classes == ["background", "foreground"]  # two CSV labels -> generic name
    first = index.get("case000")
    assert first.image.name == "case000.png" and first.masks[0].parent.name == "masks"
    assert first.label in {"large", "small"} and first.group == "p0"  # patient_id picked automatically
    assert index.get("case001").group == "p0" and index.get("case002").group == "p1"
    target = load_target(first, index)
    assert target.shape == (48, 48) and set(np.unique(target)) == {0, 1}
    sub = index.subset(["case003", "case001"])
    assert sub.ids == ["case003", "case001"] and len(index) == 12
    with pytest.raises(DatasetError, match="nope"):
        index.get("nope")


def test_mask_suffixes_and_binary_class_name_from_csv(tmp_path: Path) -> None:
    root = tmp_path / "isic"
    for i in range(3):
        _write_pair(root, f"ISIC_{i:07d}", _disc())
        (root / "masks" / f"ISIC_{i:07d}.png").rename(root / "masks" / f"ISIC_{i:07d}_segmentation.png")
    (root / "metadata.csv").write_text("id,label\n" + "".join(f"ISIC_{i:07d}.jpg,lesion\n" for i in range(3)))
    index = discover(root)
    assert len(index) == 3 and index.items[0].masks[0].name == "ISIC_0000000_segmentation.png"
    assert index.classes == ["background", "lesion"]
    ids = {"a", "a_1", "b"}
    assert mask_id("a_1_mask", ids) == "a_1" and mask_id("a_mask", ids) == "a" and mask_id("b-gt", ids) == "b"
    assert mask_id("a", ids) == "a" and mask_id("c_mask", ids) is None and mask_id("ab", ids) is None
    assert discover(root, classes=["polyp"]).classes == ["background", "polyp"]


def test_empty_folders_and_missing_layout(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with pytest.raises(DatasetError, match=r"images: no images found"):
        discover(root)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / "a.png")
    with pytest.raises(DatasetError, match=r"mask folder .*masks is empty"):
        discover(root)
    with pytest.raises(DatasetError, match="does not exist"):
        discover(tmp_path / "absent")
    with pytest.raises(DatasetError, match="no images/ folder"):
        discover(tmp_path)
    with pytest.raises(DatasetError, match="unknown task"):
        discover(root, task="detection")


def test_bad_items_raise_with_file_names_or_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for i in range(5):
        _write_pair(root, f"ok{i}", _disc())
    _write_pair(root, "wrong_size", _disc(32), image_size=(40, 32))
    three = _disc()
    three[:4, :4] = 128
    _write_pair(root, "three_values", three)
    _write_pair(root, "no_mask", _disc())
    (root / "masks" / "no_mask.png").unlink()
    (root / "images" / "text.png").write_text("not an image")
    Image.fromarray(_disc()).save(root / "masks" / "text.png")

    with pytest.raises(DatasetError) as err:
        discover(root)
    assert "no_mask.png: missing mask in masks/" in str(err.value)

    with pytest.raises(DatasetError) as err:
        check_index(_index_without_missing(root))
    message = str(err.value)
    assert "3 problem(s)" in message
    assert "wrong_size.png: mask size 32x32 does not match image size 32x40" in message
    assert "three_values.png: non-binary mask in binary mode (values 0, 128, 255)" in message
    assert "text.png: unknown file type" in message

    index = discover(root, skip_bad=True, num_workers=2)
    assert sorted(index.ids) == [f"ok{i}" for i in range(5)]
    assert len(index.skipped) == 4
    assert {Path(f).stem for f, _ in index.skipped} == {"no_mask", "wrong_size", "three_values", "text"}


def _index_without_missing(root: Path) -> DatasetIndex:
    index = discover(root, skip_bad=True, check=False)
    index.skipped.clear()
    return index


def test_truncated_image_is_found_by_check(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _write_pair(root, "a", _disc())
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / "b.jpg")
    data = (root / "images" / "b.jpg").read_bytes()
    (root / "images" / "b.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(_disc()).save(root / "masks" / "b.png")
    with pytest.raises(DatasetError, match=r"b\.jpg: corrupt or (truncated|unsupported) JPEG"):
        discover(root)
    assert discover(root, check=False).ids == ["a", "b"]


def test_jpeg_masks_are_thresholded_not_refused(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _write_pair(root, "a", _disc())
    Image.fromarray(_disc()).save(root / "masks" / "a.jpg", quality=70)
    (root / "masks" / "a.png").unlink()
    index = discover(root)
    target = load_target(index.items[0], index)
    assert set(np.unique(target)) == {0, 1}
    assert abs(int(target.sum()) - int((_disc() > 0).sum())) < 20


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _write_pair(root, "a", _disc())
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "images" / "a.jpg")
    with pytest.raises(DatasetError, match="two files share the id 'a'"):
        discover(root)


def test_multiclass_classes_from_max_label_and_from_argument(tmp_path: Path) -> None:
    root = tmp_path / "mc"
    for i in range(3):
        labels = np.zeros((24, 24), np.uint8)
        labels[:8] = 1
        labels[8:16, :5] = 2 + (i == 2)
        _write_pair(root, f"m{i}", labels)
    index = discover(root, mode="multiclass")
    assert index.classes == ["background", "class_1", "class_2", "class_3"]
    np.testing.assert_array_equal(np.unique(load_target(index.items[2], index)), [0, 1, 3])
    assert discover(root, mode="multiclass", check=False).classes == index.classes
    with pytest.raises(DatasetError, match=r"m2\.png: label value 3 outside the 3 classes"):
        discover(root, mode="multiclass", classes=["background", "lung", "heart"])
    (root / "classes.csv").write_text("value,name\n0,bg\n1,lung\n2,heart\n3,other\n")
    assert discover(root, mode="multiclass").classes == ["bg", "lung", "heart", "other"]
    with pytest.raises(DatasetError, match="unknown segmentation mode"):
        discover(root, mode="instances")


def test_multilabel_mask_folders(tmp_path: Path) -> None:
    root = tmp_path / "ml"
    for i in range(2):
        _write_pair(root, f"x{i}", _disc())
    (root / "masks").rename(root / "masks_globules")
    (root / "masks_streaks").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks_streaks" / f"x{i}_streaks.png")
    with pytest.raises(DatasetError, match="need mode='multilabel'"):
        discover(root, mask_dirs=["masks_globules", "masks_streaks"])
    index = discover(root, mode="multilabel", mask_dirs=["masks_globules", "masks_streaks"])
    assert index.classes == ["globules", "streaks"]
    target = load_target(index.items[0], index)
    assert target.shape == (32, 32, 2) and target[..., 0].max() == 1 and target[..., 1].max() == 0
    (root / "masks_streaks" / "x1_streaks.png").unlink()
    with pytest.raises(DatasetError, match=r"x1\.png: missing mask in masks_streaks/"):
        discover(root, mode="multilabel", mask_dirs=["masks_globules", "masks_streaks"])


# -------------------------------------------------------------------------------------------- classification
def test_classification_class_folders(synthetic_cls: Path) -> None:
    index = discover(synthetic_cls, task="classification")
    assert index.mode == "multiclass" and index.classes == ["benign", "malignant"]
    assert len(index) == 16 and index.label_counts() == {"benign": 8, "malignant": 8}
    item = index.get("malignant_003")
    assert item.label == "malignant" and item.masks == [] and index.class_index(item) == 1
    with pytest.raises(DatasetError, match="load_target is for segmentation"):
        load_target(item, index)


def test_classification_csv_and_label_not_in_classes(tmp_path: Path) -> None:
    root = tmp_path / "c"
    (root / "images").mkdir(parents=True)
    rows = ["image_id,dx,lesion_id"]
    for i, dx in enumerate(["nv", "mel", "nv", "bcc"]):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / "images" / f"im{i}.jpg")
        rows.append(f"im{i},{dx},L{i // 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match="label column 'label' not found"):
        discover(root, task="classification")
    index = discover(root, task="classification", label_column="dx")
    assert index.classes == ["bcc", "mel", "nv"] and [it.group for it in index.items] == [
        "L0",
        "L0",
        "L1",
        "L1",
    ]
    with pytest.raises(
        DatasetError, match=r"im3\.jpg: label 'bcc' of id 'im3' is not in classes \['nv', 'mel'\]"
    ):
        discover(root, task="classification", label_column="dx", classes=["nv", "mel"])
    index = discover(root, task="classification", label_column="dx", classes=["nv", "mel"], skip_bad=True)
    assert index.ids == ["im0", "im1", "im2"] and index.classes == ["nv", "mel"] and len(index.skipped) == 1
    with pytest.raises(DatasetError, match="group column 'site' not found"):
        discover(root, task="classification", label_column="dx", group_column="site")


def test_kermany_patient_rule() -> None:
    assert kermany_patient("person1_bacteria_1") == "person1"
    assert kermany_patient("person1480_virus_2569") == "person1480"
    assert kermany_patient("person26_virus_60_1") == "person26"
    assert kermany_patient("IM-0115-0001") == "IM-0115"
    assert kermany_patient("IM-0117-0001-0002") == "IM-0117"
    assert kermany_patient("NORMAL2-IM-1427-0001") == "NORMAL2-IM-1427"
    assert kermany_patient("ISIC_0024307") is None and kermany_patient("person1") is None


def test_chest_xray_ids_give_patient_groups(tmp_path: Path) -> None:
    root = tmp_path / "cxr"
    names = {
        "normal": ["IM-0115-0001", "IM-0115-0002", "NORMAL2-IM-1427-0001"],
        "pneumonia": ["person1_bacteria_1", "person1_virus_6", "person3_bacteria_10"],
    }
    for label, ids in names.items():
        (root / label).mkdir(parents=True)
        for item_id in ids:
            Image.fromarray(np.full((16, 16), 100, np.uint8)).save(root / label / f"{item_id}.jpeg")
    index = discover(root, task="classification")
    groups = {item.id: item.group for item in index.items}
    assert groups["IM-0115-0002"] == "IM-0115" and groups["person1_virus_6"] == "person1"
    assert len(set(groups.values())) == 4


def test_merge_indexes(synthetic_seg: Path, tmp_path: Path) -> None:
    shutil.copytree(synthetic_seg, tmp_path / "seg2")
    a, b = discover(synthetic_seg), discover(tmp_path / "seg2")
    merged = merge_indexes([a, b])
    assert len(merged) == 24 and len(set(merged.ids)) == 24 and "seg2/case000" in merged.ids
    with pytest.raises(DatasetError, match="cannot merge"):
        merge_indexes([a, discover(synthetic_seg, classes=["background", "disc"])])


# ----------------------------------------------------------------------------------------------- real data
def test_real_kvasir_copy(shared_datasets: Path, tmp_path: Path) -> None:
    src = shared_datasets / "kvasir_seg"
    ids = sorted(p.stem for p in (src / "images").iterdir())[:5]
    root = tmp_path / "kvasir"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for item_id in ids:
        shutil.copy(src / "images" / f"{item_id}.jpg", root / "images")
        shutil.copy(src / "masks" / f"{item_id}.png", root / "masks")
    with open(src / "metadata.csv") as f:
        rows = [r for r in csv.reader(f)]
    (root / "metadata.csv").write_text(
        "\n".join(",".join(r) for r in rows if r[0] in ids or r[0] == "id") + "\n"
    )
    index = discover(root)
    assert index.ids == ids and index.classes == ["background", "polyp"]
    target = load_target(index.items[0], index)
    assert set(np.unique(target)) == {0, 1} and 0.0 < target.mean() < 0.9


def test_real_ham10000_groups_by_lesion(shared_datasets: Path, tmp_path: Path) -> None:
    src = shared_datasets / "ham10000"
    with open(src / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    by_lesion: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_lesion[row["lesion_id"]].append(row)
    multi = [r for rs in by_lesion.values() if len(rs) >= 2 for r in rs][:8]
    single = [rs[0] for rs in by_lesion.values() if len(rs) == 1][:4]
    chosen = multi + single
    root = tmp_path / "ham"
    (root / "images").mkdir(parents=True)
    for row in chosen:
        shutil.copy(src / "images" / f"{row['id']}.jpg", root / "images")
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    index = discover(root, task="classification")
    assert len(index) == len(chosen)
    assert {it.id: it.group for it in index.items} == {r["id"]: r["lesion_id"] for r in chosen}
    splits = make_splits(index, val_fraction=0.3, seed=1)
    side = {i: s for s, ids in splits.items() for i in ids}
    for item in index.items:
        same_lesion = [other.id for other in index.items if other.group == item.group]
        assert {side[i] for i in same_lesion} == {side[item.id]}

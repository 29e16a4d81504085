"""Splits, fingerprint, plan and the in-memory cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medlens.data.cache import build_cache, load_sample, resize_image, resize_mask
from medlens.data.fingerprint import (
    IMAGENET_MEAN,
    Plan,
    choose_batch_size,
    choose_input_size,
    choose_pos_weight,
    class_weights_inverse_sqrt,
    fingerprint,
    load_plan,
    make_plan,
    plan_dataset,
    save_plan,
)
from medlens.data.layout import DatasetIndex, Item, discover
from medlens.data.splits import check_splits, load_splits, make_splits, save_splits, split_summary
from medlens.errors import ConfigError, DatasetError
from tests.conftest import make_synthetic_segmentation


def _index(n_groups: int = 120, seed: int = 0, labels: bool = True, groups: bool = True) -> DatasetIndex:
    """An in-memory index (files are never read by make_splits): groups of 1-5 items, 6 % rare class."""
    rng = np.random.default_rng(seed)
    items = []
    for g in range(n_groups):
        label = "rare" if rng.random() < 0.06 else ("b" if rng.random() < 0.3 else "a")
        for k in range(int(rng.integers(1, 6))):
            items.append(
                Item(
                    f"g{g}_{k}",
                    Path(f"/x/g{g}_{k}.png"),
                    [],
                    label if labels else None,
                    f"G{g}" if groups else None,
                )
            )
    return DatasetIndex(Path("/x"), "classification", items, "multiclass", ["a", "b", "rare"])


# -------------------------------------------------------------------------------------------- splits
def test_splits_keep_groups_stratify_and_match_fractions() -> None:
    index = _index()
    splits = make_splits(index, val_fraction=0.2, test_fraction=0.1, seed=3)
    ids = [i for side in splits.values() for i in side]
    assert sorted(ids) == sorted(index.ids)  # a partition
    group_side = {}
    for side, side_ids in splits.items():
        for item_id in side_ids:
            group = index.get(item_id).group
            assert group_side.setdefault(group, side) == side, f"group {group} crosses sides"
    n = len(index)
    assert abs(len(splits["val"]) / n - 0.2) < 0.03 and abs(len(splits["test"]) / n - 0.1) < 0.03
    summary = split_summary(splits, index)
    total_rare = sum(s.get("rare", 0) for s in summary.values())
    assert total_rare >= 10
    for side, share in [("train", 0.7), ("val", 0.2), ("test", 0.1)]:
        assert summary[side].get("rare", 0) >= 1, f"rare class missing from {side}"
        assert abs(summary[side].get("rare", 0) - share * total_rare) <= max(3, 0.25 * total_rare)


def test_large_groups_reach_the_validation_side() -> None:
    """Like Kvasir-SEG (single frames) + CVC-ClinicDB (videos of ~20 frames): not all videos go to train."""
    items = [Item(f"single{i}", Path(f"/x/s{i}.png"), [], None, f"s{i}") for i in range(900)]
    items += [
        Item(f"v{v}_{k}", Path(f"/x/v{v}_{k}.png"), [], None, f"video{v}")
        for v in range(24)
        for k in range(22)
    ]
    index = DatasetIndex(Path("/x"), "segmentation", items, "binary", ["background", "foreground"])
    val = make_splits(index, val_fraction=0.15, seed=0)["val"]
    video_share = sum(i.startswith("v") for i in val) / len(val)
    assert 0.2 < video_share < 0.55  # about the 37 % that video frames make of the data


def test_splits_are_deterministic_for_a_seed() -> None:
    index = _index()
    assert make_splits(index, seed=7) == make_splits(index, seed=7)
    assert make_splits(index, seed=7) != make_splits(index, seed=8)
    assert make_splits(index, test_fraction=0.0)["test"] == []


def test_splits_without_labels_or_groups() -> None:
    no_labels = _index(labels=False)
    splits = make_splits(no_labels, val_fraction=0.25)
    assert abs(len(splits["val"]) / len(no_labels) - 0.25) < 0.03
    no_groups = _index(labels=False, groups=False)
    splits = make_splits(no_groups, val_fraction=0.15)
    assert abs(len(splits["val"]) - 0.15 * len(no_groups)) <= 1


def test_split_errors_and_json_round_trip(tmp_path: Path) -> None:
    index = _index(n_groups=30)
    with pytest.raises(ConfigError, match="must be >= 0"):
        make_splits(index, val_fraction=0.7, test_fraction=0.4)
    one_group = DatasetIndex(
        Path("/x"),
        "classification",
        [Item(f"i{k}", Path("/x/i.png"), [], "a", "P") for k in range(4)],
        "multiclass",
        ["a"],
    )
    with pytest.raises(DatasetError, match="too few for a non-empty val split"):
        make_splits(one_group)
    splits = make_splits(index, 0.2, 0.1)
    path = save_splits(splits, tmp_path / "run" / "split.json")
    assert load_splits(path) == splits
    check_splits(splits, index, path)
    with pytest.raises(DatasetError, match="not in"):
        check_splits({"train": ["zzz"], "val": [], "test": []}, index, path)
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["b"], "test": []}))
    with pytest.raises(DatasetError, match=r"split\.json: id 'b' is in both train and val"):
        load_splits(path)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read split file"):
        load_splits(path)


# -------------------------------------------------------------------------------- fingerprint + plan
def test_fingerprint_and_plan_on_colour_segmentation(synthetic_seg: Path) -> None:
    index = discover(synthetic_seg)
    fp = fingerprint(index)
    assert fp["n_items"] == 12 and fp["n_sampled"] == 12 and fp["channels"] == 3
    assert fp["size"]["height"]["median"] == 48 and fp["modality"] == "color-photo"
    assert fp["grey_fraction"] == 0.0 and len(fp["intensity"]["mean"]) == 3
    assert fp["intensity"]["mean"][0] > fp["intensity"]["mean"][2]  # the synthetic red channel is brightest
    fg = fp["foreground"]["fraction"]["foreground"]
    assert 0.02 < fg["median"] < 0.5 and fp["foreground"]["empty_fraction"] == 0.0
    assert fp["class_counts"] == index.label_counts()
    json.dumps(fp)  # JSON-safe

    plan = make_plan(fp, "segmentation", "binary")
    assert plan.input_size == (64, 64)  # 48 rounds down to 32, raised to the minimum 64
    assert plan.in_channels == 3 and plan.num_classes == 1 and plan.mean == IMAGENET_MEAN
    assert plan.loss == "dice_ce" and plan.class_weights is None
    assert plan.batch_size == 6  # at most half of the 12 items
    assert plan.augment["vflip"] == 0.5 and plan.augment["rotate_deg"] == 180.0 and plan.augment["hue"] > 0
    assert "input 64x64" in plan.describe()


def test_plan_on_grey_data_uses_one_channel_and_own_statistics(tmp_path: Path) -> None:
    root = make_synthetic_segmentation(tmp_path / "grey", n=6, size=40, rgb=False)
    fp = fingerprint(discover(root), max_items=4)
    assert fp["n_sampled"] == 4 and fp["modality"] == "xray-like" and fp["grey_fraction"] == 1.0
    plan = make_plan(fp, "segmentation")
    assert plan.in_channels == 1 and len(plan.mean) == 1 and 0.1 < plan.mean[0] < 0.6
    assert plan.augment["vflip"] == 0.0 and plan.augment["hue"] == 0.0


def test_plan_rules() -> None:
    def fp(h: float, w: float) -> dict:
        return {"size": {"height": {"median": h}, "width": {"median": w}}}

    assert choose_input_size(fp(1000, 1100), "segmentation")[0] == (512, 512)
    assert choose_input_size(fp(1000, 1100), "classification")[0] == (384, 384)
    assert choose_input_size(fp(150, 200), "segmentation")[0] == (160, 160)  # sqrt(150 * 200) = 173 -> 160
    assert choose_input_size(fp(30, 50), "segmentation")[0] == (64, 64)
    assert choose_input_size(fp(300, 1200), "segmentation")[0] == (128, 512)  # aspect 4 is kept
    assert choose_batch_size((352, 352), "segmentation", 1000)[0] == 16
    assert choose_batch_size((512, 512), "segmentation", 1000)[0] == 7
    assert choose_batch_size((1024, 1024), "segmentation", 1000)[0] == 2
    weights = class_weights_inverse_sqrt([900, 100])
    assert weights[1] / weights[0] == pytest.approx(3.0, rel=1e-3)
    assert (900 * weights[0] + 100 * weights[1]) / 1000 == pytest.approx(1.0, rel=1e-3)
    small = {"foreground": {"fraction": {"vessel": {"median": 0.01}}}}
    assert choose_pos_weight(small)[0] == pytest.approx(9.95, abs=0.01)
    assert choose_pos_weight({"foreground": {"fraction": {"x": {"median": 0.3}}}})[0] is None


def test_classification_plan_has_inverse_sqrt_class_weights(synthetic_cls: Path, tmp_path: Path) -> None:
    for path in sorted((synthetic_cls / "malignant").iterdir())[2:]:
        path.unlink()  # 8 benign, 2 malignant
    plan = plan_dataset(synthetic_cls, task="classification", out=tmp_path / "plan")
    assert plan.task == "classification" and plan.mode == "multiclass" and plan.loss == "ce"
    assert plan.classes == ["benign", "malignant"] and plan.num_classes == 2
    assert plan.class_weights[1] == pytest.approx(2 * plan.class_weights[0], rel=1e-3)
    assert plan.augment["scale"] == [0.8, 1.2]
    assert (tmp_path / "plan" / "fingerprint.json").is_file()
    loaded = load_plan(tmp_path / "plan" / "plan.json")
    assert loaded == plan and isinstance(loaded.input_size, tuple)
    assert Plan.from_dict({**plan.to_dict(), "future_key": 1}) == plan


def test_plan_file_errors(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text('{"task": "segmentation"}')
    with pytest.raises(ConfigError, match=r"plan\.json"):
        load_plan(tmp_path / "plan.json")
    with pytest.raises(ConfigError, match="unknown task"):
        make_plan({}, "detection")
    plan = make_plan(
        {
            "size": {"height": {"median": 64}, "width": {"median": 64}},
            "n_items": 10,
            "modality": "color-photo",
            "intensity": {"mean": [0.5] * 3, "std": [0.2] * 3},
            "classes": ["background", "a", "b"],
        },
        "segmentation",
        "multiclass",
    )
    assert plan.num_classes == 3
    save_plan(plan, tmp_path / "p2.json")
    assert load_plan(tmp_path / "p2.json") == plan


# --------------------------------------------------------------------------------------------- cache
def test_build_cache_segmentation(synthetic_seg: Path) -> None:
    index = discover(synthetic_seg)
    ids = index.ids[:5]
    data = build_cache(index, ids, (32, 32), in_channels=3)
    assert data.images.shape == (5, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.targets.shape == (5, 1, 32, 32) and data.targets.dtype == torch.uint8
    assert set(data.targets.unique().tolist()) == {0, 1} and data.ids == ids and len(data) == 5
    threaded = build_cache(index, ids, (32, 32), in_channels=3, num_workers=2)
    assert torch.equal(threaded.images, data.images) and torch.equal(threaded.targets, data.targets)
    grey = build_cache(index, ids[:2], (24, 40), in_channels=1)
    assert grey.images.shape == (2, 1, 24, 40) and grey.targets.shape == (2, 1, 24, 40)
    empty = build_cache(index, [], (32, 32), in_channels=3)
    assert empty.images.shape == (0, 3, 32, 32) and empty.targets.shape == (0, 1, 32, 32)
    with pytest.raises(DatasetError, match="not in the data set"):
        build_cache(index, ["missing"], (32, 32), 3)


def test_build_cache_classification_multiclass_and_multilabel(synthetic_cls: Path, tmp_path: Path) -> None:
    index = discover(synthetic_cls, task="classification")
    data = build_cache(index, ["benign_000", "malignant_001"], (32, 32), 3)
    assert data.targets.dtype == torch.int64 and data.targets.tolist() == [0, 1]

    root = tmp_path / "mc"
    for name in ("images", "masks", "masks_a", "masks_b"):
        (root / name).mkdir(parents=True)
    labels = np.zeros((40, 40), np.uint8)
    labels[:20] = 2
    labels[20:, :10] = 1
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(root / "images" / f"m{i}.png")
        Image.fromarray(labels).save(root / "masks" / f"m{i}.png")
        Image.fromarray((labels > 0).astype(np.uint8) * 255).save(root / "masks_a" / f"m{i}.png")
        Image.fromarray((labels == 2).astype(np.uint8) * 255).save(root / "masks_b" / f"m{i}.png")
    mc = discover(root, mode="multiclass")
    data = build_cache(mc, mc.ids, (20, 20), 3)
    assert data.targets.shape == (2, 20, 20) and set(data.targets.unique().tolist()) == {0, 1, 2}
    ml = discover(root, mode="multilabel", mask_dirs=["masks_a", "masks_b"])
    assert ml.classes == ["a", "b"]
    image, target = load_sample(ml.items[0], ml, (20, 20), 3)
    assert image.shape == (3, 20, 20) and target.shape == (2, 20, 20)
    assert target[1, :10].all() and not target[1, 10:].any()
    assert build_cache(ml, ml.ids, (20, 20), 3).targets.shape == (2, 2, 20, 20)


def test_resize_is_antialiased_for_images_and_nearest_for_masks() -> None:
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    small = resize_image(np.repeat(checker[..., None], 3, axis=-1), (16, 16))
    assert small.shape == (16, 16, 3) and abs(float(small.mean()) - 127.5) < 3 and small.std() < 3
    assert resize_image(checker[..., None], (16, 16)).shape == (16, 16, 1)
    labels = np.random.default_rng(0).integers(0, 4, (64, 64)).astype(np.uint8)
    assert set(np.unique(resize_mask(labels, (16, 16)))) <= {0, 1, 2, 3}
    assert resize_mask(np.stack([labels, labels], -1), (8, 8)).shape == (8, 8, 2)

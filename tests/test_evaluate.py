"""evaluate(): segmentation and classification reports, scoring at the mask size, runtimes agree, bad data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens import cli
from medlens.data.io import read_image, read_mask
from medlens.errors import DatasetError
from medlens.evaluation.evaluate import evaluate
from medlens.evaluation.metrics import dice
from medlens.inference.predictor import SegmentationPredictor

SEG_KEYS = ("dice", "iou", "sensitivity", "specificity", "precision", "pixel_accuracy", "hd95")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_segmentation_report(seg_bundle: Path, synthetic_seg: Path, tmp_path: Path):
    out = tmp_path / "report"
    metrics = evaluate(seg_bundle, synthetic_seg, out, batch_size=5)
    saved = json.loads((out / "metrics.json").read_text())
    for key in SEG_KEYS:
        for suffix in ("_mean", "_ci_low", "_ci_high"):
            assert f"{key}{suffix}" in saved
    assert saved["n_images"] == metrics["n_images"] == 12
    assert saved["dice_ci_low"] <= saved["dice_mean"] <= saved["dice_ci_high"]
    rows = _rows(out / "per_image.csv")
    assert len(rows) == 12 and {"id", "dice", "hd95", "image"} <= set(rows[0])
    assert np.mean([float(r["dice"]) for r in rows]) == pytest.approx(saved["dice_mean"])
    for name in ("worst_cases.png", "best_cases.png"):
        assert (out / name).stat().st_size > 0
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert len(overlays) == 8 and overlays[0].startswith("best1_")
    worst = min(rows, key=lambda r: float(r["dice"]))
    assert (out / "overlays" / f"worst1_{worst['id']}.png").is_file()
    # one image scored by hand: predicted at the model's input size, compared at the mask's own size
    first = rows[0]
    image = read_image(synthetic_seg / "images" / f"{first['id']}.png").array
    pred = SegmentationPredictor(seg_bundle).predict(image)
    target = read_mask(synthetic_seg / "masks" / f"{first['id']}.png") > 0
    assert pred.shape == target.shape == (48, 48)
    assert float(first["dice"]) == pytest.approx(dice(pred > 0, target))


def test_onnx_and_torch_give_the_same_metrics(seg_bundle: Path, tmp_path: Path):
    from tests.conftest import make_synthetic_segmentation

    data = make_synthetic_segmentation(tmp_path / "small", n=4, size=40)
    by_torch = evaluate(seg_bundle, data, tmp_path / "torch", n_cases=0)
    by_onnx = evaluate(seg_bundle, data, tmp_path / "onnx", runtime="onnx", n_cases=0)
    assert not (tmp_path / "onnx" / "worst_cases.png").exists()
    assert by_onnx["runtime"] == "onnx"
    for key in SEG_KEYS:
        assert by_onnx[f"{key}_mean"] == pytest.approx(by_torch[f"{key}_mean"], abs=1e-4)


def test_classification_report(cls_bundle: Path, synthetic_cls: Path, tmp_path: Path):
    out = tmp_path / "cls-report"
    metrics = evaluate(cls_bundle, synthetic_cls, out, tta=True)
    saved = json.loads((out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "balanced_accuracy",
        "auc_macro",
        "ece",
        "brier",
        "per_class",
        "confusion_matrix",
    ):
        assert key in saved
    assert saved["n_images"] == metrics["n_images"] == 16 and saved["tta"] is True
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 16 and {"prob_benign", "prob_malignant", "label", "pred"} <= set(rows[0])
    assert np.mean([r["label"] == r["pred"] for r in rows]) == pytest.approx(saved["accuracy"])
    assert np.asarray(saved["confusion_matrix"]).sum() == 16
    for name in ("confusion_matrix.png", "roc.png", "reliability.png"):
        assert (out / name).stat().st_size > 0


def _csv_classification_set(root: Path, labels: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    lines = ["id,label,age,site"]
    for i, label in enumerate(labels):
        Image.fromarray(np.full((36, 36, 3), 40 * i, np.uint8)).save(root / "images" / f"im{i}.png")
        lines.append(f"im{i},{label},{30 + i},back")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_labels_csv_layout_and_unknown_classes(cls_bundle: Path, tmp_path: Path):
    good = _csv_classification_set(tmp_path / "good", ["benign", "malignant", "benign"])
    assert evaluate(cls_bundle, good, tmp_path / "r1")["n_images"] == 3
    bad = _csv_classification_set(tmp_path / "bad", ["benign", "melanoma", "nevus"])
    with pytest.raises(DatasetError, match=r"\['melanoma', 'nevus'\]"):
        evaluate(cls_bundle, bad, tmp_path / "r2")


def test_label_column_and_mask_dirs_are_honoured_or_refused(
    cls_bundle: Path, seg_bundle: Path, tmp_path: Path
) -> None:
    from tests.conftest import make_synthetic_segmentation

    data = _csv_classification_set(tmp_path / "cls", ["melanoma", "melanoma", "nevus"])
    table = (data / "labels.csv").read_text().replace("id,label,", "id,label,grade,", 1).splitlines()
    rows = [table[0]] + [f"{r.split(',')[0]},x,{g},{','.join(r.split(',')[2:])}" for r, g in
                         zip(table[1:], ["malignant", "malignant", "benign"], strict=True)]  # fmt: skip
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    argv = ["evaluate", str(cls_bundle), str(data), "--label-column", "grade", "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 0
    assert sorted(r["label"] for r in _rows(tmp_path / "r" / "predictions.csv")) == [
        "benign",
        *["malignant"] * 2,
    ]
    seg = make_synthetic_segmentation(tmp_path / "seg", n=3, size=32)
    (seg / "masks").rename(seg / "outlines")
    argv = ["evaluate", str(seg_bundle), str(seg), "--mask-dirs", "outlines", "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 0 and len(_rows(tmp_path / "s" / "per_image.csv")) == 3
    with pytest.raises(DatasetError, match="--split reads the model's own data"):
        evaluate(cls_bundle, None, tmp_path / "t", split="val", label_column="grade")


def test_bad_images_fail_or_are_skipped(seg_bundle: Path, tmp_path: Path):
    from tests.conftest import make_synthetic_segmentation

    data = make_synthetic_segmentation(tmp_path / "data", n=3, size=32)
    (data / "images" / "case001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match="case001"):
        evaluate(seg_bundle, data, tmp_path / "strict")
    metrics = evaluate(seg_bundle, data, tmp_path / "lenient", skip_bad=True, n_cases=0)
    assert metrics["n_images"] == 2
    assert any("case001" in s["file"] for s in metrics["skipped"])
    shutil.rmtree(data / "masks")
    with pytest.raises(DatasetError):
        evaluate(seg_bundle, data, tmp_path / "no-masks")


def test_real_colonoscopy_frames_are_scored_at_their_own_size(
    seg_bundle: Path, shared_datasets: Path, tmp_path
):
    source = shared_datasets / "cvc_clinicdb"
    data = tmp_path / "cvc"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for i in ("1", "2", "3"):
        shutil.copy(source / "images" / f"{i}.jpg", data / "images")
        shutil.copy(source / "masks" / f"{i}.png", data / "masks")
    metrics = evaluate(seg_bundle, data, tmp_path / "report", n_cases=1)
    rows = _rows(tmp_path / "report" / "per_image.csv")
    assert metrics["n_images"] == 3 and len(rows) == 3
    assert {(r["height"], r["width"]) for r in rows} == {("288", "384")}
    assert all(0 <= float(r["dice"]) <= 1 and float(r["target_fraction"]) > 0 for r in rows)


def test_own_split_is_scored_per_source_and_recorded_in_the_bundle(tmp_path: Path):
    """``medlens evaluate BUNDLE --split test --record test``: figures per data folder, kept in the bundle."""
    from medlens import cli
    from medlens.config import load_config
    from medlens.inference.bundle import Bundle
    from medlens.inference.packaging import make_bundle
    from medlens.training.trainer import train
    from tests.conftest import make_synthetic_segmentation

    a = make_synthetic_segmentation(tmp_path / "site_a", n=16, seed=1)
    b = make_synthetic_segmentation(tmp_path / "site_b", n=16, seed=2)
    overrides = [
        f"data.root={a}",
        f"data.extra_roots=[{b}]",
        "data.test_fraction=0.25",
        "data.val_fraction=0.25",
        f"out_dir={tmp_path / 'runs'}",
        "data.input_size=[32,32]",
        "model.encoder=resnet18",
        "batch_size=4",
        "epochs=1",
        "device=cpu",
    ]
    cfg = load_config(None, overrides)
    bundle = make_bundle(train(cfg), tmp_path / "models" / "two-sites")
    out = tmp_path / "eval"
    argv = ["evaluate", str(bundle), "--split", "test", "--out", str(out), "--record", "test"]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    test_ids = json.loads((bundle / "split.json").read_text())["test"]
    assert metrics["n_images"] == len(test_ids) and metrics["data"] == "split test"
    assert set(metrics["by_source"]) == {"site_a", "site_b"}
    assert sum(s["n_images"] for s in metrics["by_source"].values()) == len(test_ids)
    loaded = Bundle.load(bundle)
    loaded.verify()  # the card, plots and bundle.json were re-hashed
    assert loaded.evaluations["test"]["dice_mean"] == pytest.approx(metrics["dice_mean"])
    assert (bundle / "plots" / "test_dice_distribution.png").is_file()
    card = (bundle / "README.md").read_text()
    assert "## Evaluation" in card and "| dice, site_a |" in card and "| | test |" in card
    with pytest.raises(DatasetError, match="not both"):
        evaluate(bundle, a, out, split="test")
    reseeded = load_config(None, [*overrides, "data.split_seed=7", "run_name=other"])
    other = make_bundle(train(reseeded), tmp_path / "models" / "other")  # another split of the same data
    evaluate(other, None, tmp_path / "eval2", split="test", split_of=bundle)  # scored on the first's test ids
    assert {r["id"] for r in _rows(tmp_path / "eval2" / "per_image.csv")} == set(test_ids)

    # flip TTA by default only where validation shows that it helps, recorded in the bundle and followed
    argv = ["evaluate", str(bundle), "--split", "val", "--choose-tta", "--out", str(tmp_path / "tta")]
    assert cli.main(argv) == 0
    scores = [
        json.loads((tmp_path / "tta" / f"{k}-tta" / "metrics.json").read_text()) for k in ("without", "with")
    ]
    mean_dice = [np.mean([s["dice_mean"] for s in m["by_source"].values()]) for m in scores]
    choice = json.loads((bundle / "bundle.json").read_text())["tta_choice"]
    assert choice["tta"] == bool(mean_dice[1] > mean_dice[0]) and choice["with"] == pytest.approx(
        mean_dice[1]
    )
    assert Bundle.load(bundle).spec.tta is choice["tta"]
    assert (
        "Flip test-time augmentation by default: " + ("on" if choice["tta"] else "off")
        in (bundle / "README.md").read_text()
    )
    assert cli.main(["evaluate", str(bundle), str(a), "--choose-tta", "--out", str(tmp_path / "x")]) == 2
    argv = ["evaluate", str(bundle), "--split", "test", "--choose-tta", "--out", str(tmp_path / "x")]
    assert cli.main(argv) == 2  # the test split chooses nothing


def test_tta_runs_as_recorded_unless_asked(seg_bundle: Path, synthetic_seg: Path, tmp_path: Path) -> None:
    import dataclasses

    from medlens.inference.bundle import Bundle
    from medlens.inference.packaging import read_bundle_meta, write_bundle_meta
    from medlens.pipelines.batch import predict_paths

    seg_bundle = Path(
        shutil.copytree(seg_bundle, tmp_path / "models" / "tiny-seg")
    )  # the module's stays as is
    spec = Bundle.load(seg_bundle).spec
    assert spec.tta is None and spec.runs_tta(None) and not spec.runs_tta(False)
    off = dataclasses.replace(spec, tta=False)
    assert not off.runs_tta(None) and off.runs_tta(True)
    meta = read_bundle_meta(seg_bundle)
    meta["spec"]["tta"] = False
    write_bundle_meta(seg_bundle, meta)
    images = synthetic_seg / "images"
    for asked, ran in ((None, False), (True, True)):
        summary = predict_paths(seg_bundle, images, tmp_path / f"pred-{asked}", tta=asked)
        rows = _rows(summary)
        assert all((r["uncertainty"] != "") == ran for r in rows), (asked, rows[0])

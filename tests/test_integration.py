"""End to end through the command line: train -> bundle -> predict -> evaluate -> export, on tiny data.

Synthetic data always; a few real images from ``../shared/datasets`` where that folder is present (the
real-data tests skip, saying why, where it is absent).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.cli import main

TINY_SEG = ["--arch", "unet", "--encoder", "resnet18", "--input-size", "32", "--batch-size", "4"]
TINY_CLS = ["--arch", "resnet18", "--input-size", "32", "--batch-size", "4"]


def _train(data: Path, runs: Path, name: str, *extra: str) -> Path:
    rc = main(
        ["train", str(data), "--epochs", "1", "--device", "cpu", "--out", str(runs), "--name", name, *extra]
    )
    assert rc == 0
    return runs / name


def _copy_subset(src: Path, dst: Path, ids: list[str], subdirs: tuple[str, ...]) -> None:
    for sub in subdirs:
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for i in ids:
            match = next((src / sub).glob(f"{i}.*"))
            shutil.copy(match, dst / sub / match.name)


def _copy_labelled(src: Path, dst: Path, per_class: dict[str, int], label_column: str = "label") -> list[str]:
    """Copy the first ``per_class[label]`` images of each label, with their CSV rows (all columns kept)."""
    with (src / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    chosen, counts = [], dict.fromkeys(per_class, 0)
    for row in rows:
        label = row[label_column]
        if label in counts and counts[label] < per_class[label]:
            counts[label] += 1
            chosen.append(row)
    _copy_subset(src, dst, [r["id"] for r in chosen], ("images",))
    with (dst / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return [r["id"] for r in chosen]


def test_segmentation_cli_end_to_end(synthetic_seg: Path, tmp_path: Path) -> None:
    run = _train(synthetic_seg, tmp_path / "runs", "seg", *TINY_SEG)
    for name in (
        "config.yaml",
        "plan.json",
        "split.json",
        "metrics.csv",
        "model_spec.json",
        "val_metrics.json",
    ):
        assert (run / name).is_file(), name
    bundle = tmp_path / "models" / "seg"
    assert main(["bundle", str(run), "--out", str(bundle)]) == 0
    assert (bundle / "bundle.json").is_file() and (bundle / "README.md").is_file()

    out = tmp_path / "pred"
    images = sorted((synthetic_seg / "images").iterdir())[:3]
    assert main(["predict", str(bundle), *map(str, images), "--out", str(out), "--fill-holes"]) == 0
    for image in images:
        mask = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
        assert mask.shape == np.asarray(Image.open(image)).shape[:2]
        report = json.loads((out / f"{image.stem}.json").read_text())
        assert 0.0 <= report["area_fraction"] <= 1.0

    ev = tmp_path / "eval"
    assert main(["evaluate", str(bundle), str(synthetic_seg), "--out", str(ev)]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n_images"] == 12
    for key in ("dice_mean", "iou_mean", "sensitivity_mean", "specificity_mean", "hd95_mean"):
        assert key in metrics
    assert 0.0 <= metrics["dice_mean"] <= 1.0

    assert main(["export", str(bundle), "--format", "onnx"]) == 0
    assert (bundle / "model.onnx").is_file()
    ev_onnx = tmp_path / "eval-onnx"
    assert (
        main(["evaluate", str(bundle), str(synthetic_seg), "--out", str(ev_onnx), "--runtime", "onnx"]) == 0
    )
    onnx_metrics = json.loads((ev_onnx / "metrics.json").read_text())
    assert onnx_metrics["dice_mean"] == pytest.approx(metrics["dice_mean"], abs=1e-3)


def test_bad_dataset_names_the_file(
    synthetic_seg: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (synthetic_seg / "images" / "case000.png").write_text("not an image")
    rc = main(["train", str(synthetic_seg), "--epochs", "1", "--out", str(tmp_path / "runs"), *TINY_SEG])
    assert rc == 2
    err = capsys.readouterr().err
    assert "case000.png" in err and "Traceback" not in err
    # --skip-bad trains on the rest and says how many it skipped
    run = _train(synthetic_seg, tmp_path / "runs", "skip", *TINY_SEG, "--skip-bad")
    assert (run / "checkpoints" / "best.pt").is_file()


def test_real_kvasir_train_predict_evaluate(shared_datasets: Path, tmp_path: Path) -> None:
    src = shared_datasets / "kvasir_seg"
    ids = sorted(p.stem for p in (src / "images").iterdir())[:8]
    data = tmp_path / "kvasir"
    _copy_subset(src, data, ids, ("images", "masks"))
    run = _train(data, tmp_path / "runs", "kvasir", *TINY_SEG, "--input-size", "64")
    ev = tmp_path / "eval"
    assert main(["evaluate", str(run), str(data), "--out", str(ev)]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n_images"] == 8
    rows = list(csv.DictReader((ev / "per_image.csv").open()))
    assert len(rows) == 8
    # scored at each mask's own (native, varying) size, not at the 64x64 input size
    assert all(int(r["height"]) > 64 and int(r["width"]) > 64 for r in rows)
    assert (ev / "worst_cases.png").is_file() and (ev / "best_cases.png").is_file()
    assert len(list((ev / "overlays").glob("*.png"))) == 8


def test_real_ham10000_classification(shared_datasets: Path, tmp_path: Path) -> None:
    data = tmp_path / "ham"
    _copy_labelled(shared_datasets / "ham10000", data, {"nv": 6, "mel": 6, "bkl": 6})
    run = _train(data, tmp_path / "runs", "ham", "--task", "classification", *TINY_CLS)
    spec = json.loads((run / "model_spec.json").read_text())
    assert spec["classes"] == ["bkl", "mel", "nv"] and spec["temperature"] > 0
    ev = tmp_path / "eval"
    # labels.csv keeps its extra columns (lesion_id, dx_type, age, ...): they are ignored
    assert main(["evaluate", str(run), str(data), "--out", str(ev)]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "auc_macro", "ece", "n_images"):
        assert key in metrics
    assert metrics["n_images"] == 18
    assert (ev / "confusion_matrix.png").is_file() and (ev / "reliability.png").is_file()


def test_real_chest_xray_classification(shared_datasets: Path, tmp_path: Path) -> None:
    data = tmp_path / "cxr"
    _copy_labelled(shared_datasets / "chestxray_pneumonia", data, {"normal": 8, "pneumonia": 8})
    run = _train(
        data,
        tmp_path / "runs",
        "cxr",
        "--task",
        "classification",
        *TINY_CLS,
        "--set",
        "target_sensitivity=0.95",
        "positive_class=pneumonia",
    )
    spec = json.loads((run / "model_spec.json").read_text())
    assert spec["classes"] == ["normal", "pneumonia"]
    assert spec["decision"]["positive_class"] == "pneumonia" and 0.0 <= spec["decision"]["threshold"] <= 1.0
    # patients never cross the split: ids carry the patient (person12_bacteria_45 -> person12)
    split = json.loads((run / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["val"])
    ev = tmp_path / "eval"
    assert main(["evaluate", str(run), str(data), "--out", str(ev)]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n_images"] == 16 and "sensitivity_at_specificity" in metrics


def test_shipped_chest_pipeline_on_a_real_film(shared_datasets: Path, tmp_path: Path) -> None:
    """The shipped chest-xray pipeline (bundles chest-anatomy, chest-xray-cls) on a JSRT film of the anatomy
    model's test split: both lungs by the patient's side, the heart, a CTR near the reference masks' one with
    its lines drawn, and the same through `medlens predict chest-xray`."""
    from medlens.evaluation.anatomy import ctr_of
    from medlens.pipelines.pipeline import Pipeline, load_pipeline_configs

    models = Path(__file__).resolve().parents[1] / "models"
    split = json.loads((models / "chest-anatomy" / "split.json").read_text())
    film = next(i for i in split["test"] if i.startswith("JPC"))  # a JSRT film (heart and lungs annotated)
    jsrt = shared_datasets / "cxr_lungs_jsrt"
    image = np.asarray(Image.open(jsrt / "images" / f"{film}.png").convert("RGB"))
    reference = np.asarray(Image.open(jsrt / "masks_multiclass" / f"{film}.png"))
    pipe = Pipeline.from_config(load_pipeline_configs(models)["chest-xray"], models)
    classes = pipe.segmenter.classes
    assert classes == ["background", "left_lung", "right_lung", "heart"]

    a = pipe.analyze(image, gradcam=False)
    assert set(np.unique(a.mask)) == {0, 1, 2, 3}
    right_x = np.nonzero(a.mask == classes.index("right_lung"))[1].mean()
    left_x = np.nonzero(a.mask == classes.index("left_lung"))[1].mean()
    assert right_x < image.shape[1] / 2 < left_x  # PA film: the patient's right lung on the image's left
    for k in (1, 2, 3):  # each structure overlaps its reference outline well
        dice = 2 * ((a.mask == k) & (reference == k)).sum() / ((a.mask == k).sum() + (reference == k).sum())
        assert dice > 0.8, (classes[k], dice)
    f = a.features
    assert f["lung_asymmetry_flag"] is False and 0.6 < f["lung_area_ratio"] <= 1.0
    assert abs(f["cardiothoracic_ratio"] - ctr_of(reference, classes)) < 0.05
    row, x0, x1 = f["cardiothoracic_lines"]["heart"]
    heart_line = next(e for e in a.colour_key if e.name == "heart width (CTR)")
    assert tuple(a.overlay[row, (x0 + x1) // 2]) == heart_line.rgb  # the heart diameter is drawn

    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / f"{film}.png")
    rc = main(["predict", "chest-xray", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
               "--models-dir", str(models)])  # fmt: skip
    assert rc == 0
    with (tmp_path / "out" / "summary.csv").open() as fh:
        summary = next(csv.DictReader(fh))
    assert summary["status"] == "ok" and float(summary["feature_cardiothoracic_ratio"]) > 0
    assert summary["recommendation"] and "findings" in summary
    assert 0.0 <= float(summary["gradcam_inside_region"]) <= 1.0  # where the model looked, in the CSV

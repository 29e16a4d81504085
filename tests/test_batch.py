"""predict_paths(): plain segmentation / classification outputs, bad files reported, pipeline mode."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.errors import UnknownNameError
from medlens.pipelines.batch import collect_inputs, predict_paths
from tests.helpers_inference import make_tiny_bundle


@pytest.fixture(scope="module")
def cls_bundle(tiny_models: Path) -> Path:
    """conftest's ``cls_bundle`` plus an ONNX export, for the onnx runtime (``seg_bundle`` is conftest's)."""
    return make_tiny_bundle(tiny_models, "classification", onnx=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three readable images (one grey, one in a sub-folder), one corrupt file and one non-image file."""
    folder = tmp_path_factory.mktemp("batch") / "inputs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(folder / "b.jpg")
    Image.fromarray(rng.integers(0, 256, (36, 28, 3), dtype=np.uint8)).save(folder / "sub" / "a.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _summary(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_collect_inputs_is_recursive_sorted_and_collision_free(inputs: Path):
    found = collect_inputs([inputs, inputs / "a.png"])
    assert [stem for _, stem in found] == ["a", "b", "broken", "sub__a", "a_2"]


def test_plain_segmentation_writes_masks_overlays_and_json(seg_bundle: Path, inputs: Path, tmp_path: Path):
    summary = predict_paths(
        seg_bundle, [inputs], tmp_path, batch_size=2, tta=True, fill_holes=True, largest_component=True
    )
    rows = {r["id"]: r for r in _summary(summary)}
    assert set(rows) == {"a", "b", "broken", "sub__a"}
    assert rows["broken"]["status"] == "error" and rows["broken"]["source"].endswith("broken.png")
    assert "PNG" in rows["broken"]["error"]  # the reason is reported
    for stem, shape in (("a", (40, 50)), ("b", (30, 30)), ("sub__a", (36, 28))):
        assert rows[stem]["status"] == "ok"
        mask = np.asarray(Image.open(tmp_path / f"{stem}_mask.png"))
        assert mask.shape == shape and set(np.unique(mask)) <= {0, 255}
        overlay = np.asarray(Image.open(tmp_path / f"{stem}_overlay.png"))
        assert overlay.shape == (*shape, 3)
        info = json.loads((tmp_path / f"{stem}.json").read_text())
        assert info["image_size"] == list(shape) and info["model"] == "tiny-seg"
        assert info["area_fraction"] == pytest.approx((mask > 0).mean())
        assert info["n_components"] == len(info["components"]) <= 1  # largest component kept
        assert info["uncertainty"] is not None and info["postprocess"]["fill_holes"] is True
        assert info["mask_values"] == {"0": "background", "255": "lesion"}  # what the mask PNG shows
    assert not (tmp_path / "broken_mask.png").exists()


def test_a_two_class_softmax_segmenter_writes_the_binary_mask_pipelines_and_the_api_write(
    inputs: Path, tmp_path: Path
):
    """One definition of a binary mask (`drawing.binary_segmenter`): background and one class make a 0/255
    mask whatever the segmenter's mode, in plain prediction as in an `Analysis`."""
    from medlens.pipelines.analysis import Analysis

    classes = ["background", "lesion"]
    softmax = make_tiny_bundle(tmp_path, "segmentation", name="tiny-softmax", mode="multiclass",
                               num_classes=2, classes=classes)  # fmt: skip
    predict_paths(softmax, [inputs / "a.png"], tmp_path / "out")
    mask = np.asarray(Image.open(tmp_path / "out" / "a_mask.png"))
    info = json.loads((tmp_path / "out" / "a.json").read_text())
    assert set(np.unique(mask)) == {0, 255} and info["mask_values"] == {"0": "background", "255": "lesion"}
    analysis = Analysis(id=None, pipeline="p", image_size=mask.shape, mask=(mask > 0).astype(np.uint8),
                        overlay=None, area_fraction=None, components=[], label=None, probabilities={},
                        uncertainty=None, out_of_scope=False, features={}, recommendation="", notice="",
                        gradcam=None, timings_ms={}, mask_classes=classes)  # fmt: skip
    np.testing.assert_array_equal(analysis.mask_image(), mask)
    assert {str(k): v for k, v in analysis.mask_values.items()} == info["mask_values"]


def test_plain_multiclass_segmentation_measures_each_structure(inputs: Path, tmp_path: Path):
    classes = ["background", "left_lung", "right_lung", "heart"]
    chest = make_tiny_bundle(tmp_path, "segmentation", name="tiny-chest", encoder="mobilenet_v2",
                             mode="multiclass", num_classes=4, classes=classes)  # fmt: skip
    predict_paths(chest, [inputs / "a.png"], tmp_path / "out")
    info = json.loads((tmp_path / "out" / "a.json").read_text())
    mask = np.asarray(Image.open(tmp_path / "out" / "a_mask.png"))
    assert list(info["per_class"]) == classes[1:] and info["n_components"] == len(info["components"])
    for k, name in enumerate(classes[1:], 1):
        assert info["per_class"][name]["area_fraction"] == pytest.approx((mask == k).mean())
        mine = [c for c in info["components"] if c["structure"] == name]  # each structure's own components
        assert len(mine) == info["per_class"][name]["n_components"]
        assert sum(c["area_px"] for c in mine) == (mask == k).sum()


def test_plain_classification_and_onnx_runtime(cls_bundle: Path, inputs: Path, tmp_path: Path):
    summary = predict_paths(cls_bundle, [inputs / "a.png", inputs / "b.jpg"], tmp_path, runtime="onnx")
    rows = _summary(summary)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    info = json.loads((tmp_path / "a.json").read_text())
    assert info["label"] in ("benign", "malignant")
    assert sum(info["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert float(rows[0]["confidence"]) == pytest.approx(max(info["probabilities"].values()))


def test_a_transparent_input_is_said_in_the_json_the_summary_and_the_log(
    seg_bundle: Path, cls_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    rgba = np.dstack([np.full((20, 20, 3), 90, np.uint8), np.full((20, 20), 255, np.uint8)])
    rgba[:5, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "see-through.png")
    with caplog.at_level("WARNING", logger="medlens.pipelines.batch"):
        for model, out in ((seg_bundle, tmp_path / "seg"), (cls_bundle, tmp_path / "cls")):
            row = _summary(predict_paths(model, [tmp_path / "see-through.png"], out))[0]
            info = json.loads((out / "see-through.json").read_text())
            assert row["status"] == "ok" and info["input_notes"] == [row["input_notes"]]
            assert "transparent (25% of its pixels)" in row["input_notes"]
    assert "see-through.png: the image is partly transparent" in caplog.text


def test_missing_input_is_reported_not_fatal(seg_bundle: Path, inputs: Path, tmp_path: Path):
    rows = _summary(predict_paths(seg_bundle, [inputs / "a.png", inputs / "gone.png"], tmp_path))
    assert [(r["id"], r["status"]) for r in rows] == [("a", "ok"), ("gone", "error")]
    assert "not found" in rows[1]["error"]


def test_pipeline_mode_by_name_and_yaml(seg_bundle: Path, cls_bundle: Path, inputs: Path, tmp_path: Path):
    models = seg_bundle.parent
    (models / "pipelines").mkdir(exist_ok=True)
    yaml_path = models / "pipelines" / "tiny.yaml"
    yaml_path.write_text(
        "name: tiny\nsegmenter:\n  bundle: tiny-seg\nclassifier:\n  bundle: tiny-cls\n  gradcam: true\n"
        "features: [area, lungs]\n"
        "advice:\n  findings:\n"
        "    - {name: any_image, when: {}, severity: low, say: Low note.}\n"
        "    - {name: lungs, when: {feature_gte: {lung_fraction_total: 0}}, severity: high, say: High.}\n"
    )
    summary = predict_paths("tiny", [inputs / "a.png", inputs / "broken.png"], tmp_path, models_dir=models)
    rows = _summary(summary)
    assert [r["status"] for r in rows] == ["ok", "error"]
    info = json.loads((tmp_path / "a.json").read_text())
    # scalar features are CSV columns, with the JSON's values
    assert float(rows[0]["feature_right_lung_fraction"]) == pytest.approx(
        info["features"]["right_lung_fraction"]
    )
    assert rows[0]["feature_lung_asymmetry_flag"] == str(info["features"]["lung_asymmetry_flag"])
    # the reading, every finding (most severe first) and where the model looked, as in the JSON
    assert rows[0]["recommendation"] == info["recommendation"]
    assert rows[0]["findings"] == " | ".join(f"{f['severity']}: {f['text']}" for f in info["findings"])
    assert rows[0]["findings"].endswith("high: High. | low: Low note.")  # most severe first, in one cell
    assert rows[0]["input_notes"] == "" and info["input_notes"] == []  # an opaque image read as it is
    share = info["gradcam_inside_region"]
    assert rows[0]["gradcam_inside_region"] == ("" if share is None else str(share))
    assert info["pipeline"] == "tiny" and info["id"] == "a" and info["source"].endswith("a.png")
    assert (tmp_path / "a_mask.png").is_file() and (tmp_path / "a_overlay.png").is_file()
    if not info["out_of_scope"]:
        assert (tmp_path / "a_gradcam.png").is_file()
    again = predict_paths(yaml_path, [inputs / "b.jpg"], tmp_path / "by-yaml", models_dir=models)
    assert _summary(again)[0]["status"] == "ok"
    with pytest.raises(UnknownNameError, match="tiny"):
        predict_paths("no-such-pipeline", [inputs / "a.png"], tmp_path / "x", models_dir=models)

"""Pipelines end to end with tiny random-weight bundles, on real images, plus YAML validation and plumbing."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from medlens.data.io import ImageRecord, read_image
from medlens.errors import BundleError, ConfigError
from medlens.pipelines.pipeline import (
    Pipeline,
    PipelineConfig,
    enhance_contrast,
    load_pipeline_configs,
    load_pipelines,
    shipped_pipeline_files,
)
from medlens.spec import GuideMode
from tests.helpers_inference import CHEST_CLASSES, SKIN_CLASSES, make_pipeline_bundles, make_tiny_bundle

SMALL_CLS = {"arch": "resnet10t"}
STAGES = {"preprocess", "modality", "segment", "features", "classify", "gradcam", "advice", "total"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """The bundles the shipped pipelines name, tiny and random (no modality bundle: no modality check)."""
    return make_pipeline_bundles(tmp_path_factory.mktemp("pipelines"))


@pytest.fixture(scope="module")
def pipelines(models_dir) -> dict[str, Pipeline]:
    return load_pipelines(models_dir)


def real_image(shared: Path, dataset: str, name: str) -> np.ndarray:
    return np.asarray(Image.open(shared / dataset / "images" / name).convert("RGB"))


def fix_segmentation(pipe: Pipeline, monkeypatch, mask: np.ndarray) -> None:
    """Make the pipeline's segmenter predict label ``mask`` for any image (probability 0.95 on each pixel's
    label, the rest spread over the other classes)."""
    k = pipe.segmenter.spec.num_classes
    if k > 1:
        prob = np.full((k, *mask.shape), 0.05 / (k - 1), np.float32)
        for c in range(k):
            prob[c][mask == c] = 0.95
    else:
        prob = np.where(mask > 0, 0.95, 0.05).astype(np.float32)
    tta = [(prob, prob * 0, 0.01)]
    monkeypatch.setattr(pipe.segmenter, "predict_proba", lambda images, sizes=None: [prob for _ in images])
    monkeypatch.setattr(pipe.segmenter, "predict_batch_with_uncertainty", lambda images: tta * len(images))


def check_structure(a, pipe: Pipeline, shape: tuple[int, int]) -> dict:
    assert a.pipeline == pipe.name and a.image_size == shape
    assert a.notice.startswith("Research tool, not a diagnosis.")
    assert a.recommendation
    assert set(a.timings_ms) == STAGES and a.timings_ms["total"] >= a.timings_ms["preprocess"] >= 0
    d = a.to_dict()
    text = json.dumps(d)  # JSON-safe, no arrays
    assert "notice" in d and d["has_mask"] == (a.mask is not None) and len(text) < 50_000
    if a.mask is not None:
        assert a.mask.shape == shape and a.mask.dtype == np.uint8
        keyed = len(a.colour_key) > 1  # the colour key goes in a strip under the image, never over it
        assert a.overlay.shape[1:] == (shape[1], 3) and (a.overlay.shape[0] > shape[0]) == keyed
        assert Image.open(io.BytesIO(a.mask_png())).size == (shape[1], shape[0])
    if a.gradcam is not None:
        assert a.gradcam.shape == (*shape, 3) and a.gradcam.dtype == np.uint8
    return d


def test_shipped_pipelines_are_valid_and_name_the_bundles():
    configs = load_pipeline_configs("/nonexistent-models")
    assert set(configs) == {"skin", "polyp", "chest-xray"}
    assert len(shipped_pipeline_files()) == 3
    skin, polyp, chest = configs["skin"], configs["polyp"], configs["chest-xray"]
    assert (skin.segmenter.bundle, skin.classifier.bundle) == ("skin-seg", "skin-cls")
    assert polyp.segmenter.bundle == "polyp-seg" and polyp.classifier is None
    assert (chest.segmenter.bundle, chest.classifier.bundle) == ("chest-anatomy", "chest-xray-cls")
    assert chest.features == ["lungs", "cardiothoracic_ratio"]
    assert skin.scope.expect == "colour" and chest.scope.expect == "grayscale"
    for cfg in configs.values():
        assert cfg.advice.notice.startswith("Research tool, not a diagnosis.")
    assert "endoscopist" in polyp.advice.rules[1].say


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"colour": "red"}, "unknown key.*colour"),
        ({"segmenter": {"bundle": "x", "postprocess": {"fill": True}}}, "postprocess.*fill"),
        ({"classifier": {"bundle": "y", "guided": "zoom"}}, "guided"),
        ({"features": ["area", "roundness"]}, "roundness"),
        ({"segmenter": None, "classifier": None}, "segmenter', a 'classifier'"),
        ({"segmenter": None, "features": ["area"]}, "features"),
        ({"scope": {"expect": "sepia"}}, "expect"),
        ({"advice": {"rules": [{"when": {"label_is": "x"}, "say": "y"}]}}, "label_is"),
        ({"name": ""}, "name"),
    ],
)
def test_yaml_schema_errors_name_the_file(tmp_path, patch, match):
    raw = yaml.safe_load(shipped_pipeline_files()[-1].read_text())  # skin.yaml
    raw.update(patch)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=match) as err:
        PipelineConfig.from_yaml(path)
    assert "bad.yaml" in str(err.value)


def test_missing_bundles_are_skipped_and_user_pipelines_load(tmp_path, models_dir, caplog):
    partial = tmp_path / "models"
    shutil.copytree(models_dir / "polyp-seg", partial / "polyp-seg")
    (partial / "pipelines").mkdir()
    (partial / "pipelines" / "broken.yaml").write_text("name: broken\nsegmenter: {bundle: polyp-seg, x: 1}\n")
    (partial / "pipelines" / "frames.yaml").write_text(
        "name: frames\ntitle: Frames\nsegmenter: {bundle: polyp-seg}\nfeatures: [count]\n"
    )
    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.pipeline"):
        loaded = load_pipelines(partial)
    assert set(loaded) == {"polyp", "frames"}
    assert "skin-seg" in caplog.text and "broken.yaml" in caplog.text
    with pytest.raises(BundleError, match="skin-seg"):
        Pipeline.from_yaml(shipped_pipeline_files()[-1], models_dir=partial)


def test_skin_pipeline_end_to_end_on_dermoscopy(pipelines, shared_datasets):
    pipe = pipelines["skin"]
    img = real_image(shared_datasets, "ham10000", "ISIC_0024307.jpg")
    a = pipe.analyze(img, gradcam=True, tta=True)
    d = check_structure(a, pipe, img.shape[:2])
    assert a.mask is not None and set(np.unique(a.mask)) <= {0, 1}
    assert set(a.probabilities) == set(SKIN_CLASSES)
    assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert a.uncertainty is not None and 0.0 <= a.uncertainty <= 0.5
    assert {"asymmetry", "compactness", "colour_count", "diameter_px"} <= set(a.features)
    assert a.timings_ms["segment"] > 0 and a.timings_ms["classify"] > 0
    if a.out_of_scope:  # random weights may find nothing or be unsure: then no class is given
        assert a.label is None and a.scope_reason and "Out of scope" in a.recommendation
    else:
        assert a.label in SKIN_CLASSES and d["probability"] == a.probabilities[a.label]
        assert a.gradcam is not None


def test_chest_xray_sent_to_skin_pipeline_is_out_of_scope(pipelines, shared_datasets):
    pipe = pipelines["skin"]
    xray = real_image(shared_datasets, "chestxray_pneumonia", "IM-0115-0001.jpeg")
    a = pipe.analyze(xray)
    check_structure(a, pipe, xray.shape[:2])
    assert a.out_of_scope and a.label is None
    assert "grayscale" in a.scope_reason and "dermoscopy" in a.scope_reason
    assert a.recommendation.startswith("Out of scope for the Skin lesion")
    assert a.timings_ms["segment"] == 0 and a.mask is None and a.gradcam is None  # models not run


def test_polyp_pipeline_end_to_end_on_colonoscopy(pipelines, shared_datasets):
    pipe = pipelines["polyp"]
    img = real_image(shared_datasets, "kvasir_seg", "cju2htabevq9108015qjei0x7.jpg")
    a = pipe.analyze(img, gradcam=True)
    check_structure(a, pipe, img.shape[:2])
    assert not a.out_of_scope and a.probabilities == {}
    assert a.features["count"] == len(a.components)
    assert a.area_fractions == {} and not any("structure" in c for c in a.components)  # binary: as before
    assert a.uncertainty == a.segmentation_uncertainty is not None
    assert a.gradcam is not None  # Grad-CAM of the segmenter (no classifier)
    expected = "Polyp-like region found" if a.components else "No polyp-like region found"
    assert expected in a.recommendation


def test_chest_pipeline_with_spacing_and_known_anatomy(pipelines, shared_datasets, monkeypatch):
    pipe = pipelines["chest-xray"]
    rec = read_image(shared_datasets / "chestxray_pneumonia" / "images" / "IM-0115-0001.jpeg")
    h, w = rec.array.shape[:2]
    labels = np.zeros((h, w), np.uint8)
    labels[40:180, 30:100] = CHEST_CLASSES.index("right_lung")  # the patient's right is the image's left (PA)
    labels[40:170, 125:195] = CHEST_CLASSES.index("left_lung")
    labels[120:175, 100:125] = CHEST_CLASSES.index("heart")
    labels[10:14, 10:14] = CHEST_CLASSES.index("left_lung")  # a speck of "left lung": not the largest piece
    fix_segmentation(pipe, monkeypatch, labels)
    a = pipe.analyze(ImageRecord(rec.array, (0.5, 0.5), "png"), tta=False, gradcam=False)
    check_structure(a, pipe, (h, w))
    assert set(np.unique(a.mask)) == {0, 1, 2, 3} and a.mask[10:14, 10:14].max() == 0
    f = a.features
    assert f["right_lung_area_mm2"] == pytest.approx(140 * 70 * 0.25)
    assert f["left_lung_area_mm2"] == pytest.approx(130 * 70 * 0.25)
    assert f["lung_area_ratio"] == pytest.approx(130 / 140, abs=1e-4) and f["lung_asymmetry_flag"] is False
    # heart 25 px wide (columns 100-124) over a thorax 165 px wide (right lung column 30 to left lung 194)
    assert f["cardiothoracic_ratio"] == pytest.approx(25 / 165, abs=1e-4)
    heart_row, h0, h1 = f["cardiothoracic_lines"]["heart"]
    assert (h0, h1) == (100, 124) and f["cardiothoracic_lines"]["thorax"][1:] == [30, 194]
    key = {e.name: e for e in a.colour_key}  # the heart diameter is drawn in the colour its key entry names
    assert tuple(a.overlay[heart_row, 110]) == key["heart width (CTR)"].rgb
    assert a.mask_classes == CHEST_CLASSES
    assert a.uncertainty is None and set(a.probabilities) == {"normal", "pneumonia"}
    # each structure measured on its own: the heart touches both lungs, yet three components, not one
    assert a.area_fractions == pytest.approx(
        {"left_lung": 130 * 70 / (h * w), "right_lung": 140 * 70 / (h * w), "heart": 55 * 25 / (h * w)}
    )
    assert a.area_fraction == pytest.approx(sum(a.area_fractions.values()))
    assert [(c["structure"], c["area_px"]) for c in a.components] == [
        ("left_lung", 130 * 70), ("right_lung", 140 * 70), ("heart", 55 * 25)
    ]  # fmt: skip
    row = a.csv_row()
    assert row["area_fraction_heart"] == a.area_fractions["heart"] and row["area_fraction"] == a.area_fraction


def test_no_region_where_one_is_required_is_out_of_scope(pipelines, shared_datasets, monkeypatch):
    pipe = pipelines["chest-xray"]
    xray = real_image(shared_datasets, "chestxray_pneumonia", "IM-0115-0001.jpeg")
    fix_segmentation(pipe, monkeypatch, np.zeros(xray.shape[:2], np.uint8))
    a = pipe.analyze(xray)
    assert a.out_of_scope and a.label is None and "no region" in a.scope_reason
    assert a.probabilities  # the classifier still ran and is reported
    assert a.notice.startswith("Research tool")


def test_unsure_classifier_is_out_of_scope(pipelines, monkeypatch):
    pipe = pipelines["skin"]
    img = np.zeros((48, 48, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 190, 140, 120
    disc = (np.add.outer((np.arange(48) - 24) ** 2, (np.arange(48) - 24) ** 2) < 150).astype(np.uint8)
    fix_segmentation(pipe, monkeypatch, disc)
    per_view = np.array(
        [
            [0.25, 0.1, 0.1, 0.1, 0.15, 0.1, 0.2],
            [0.05, 0.1, 0.1, 0.05, 0.1, 0.5, 0.1],  # the flips disagree on "nv" (index 5)
            [0.15, 0.1, 0.1, 0.1, 0.1, 0.3, 0.15],
        ],
        np.float32,
    )
    monkeypatch.setattr(pipe.classifier, "predict_views", lambda images, masks, tta: (per_view[None], None))
    a = pipe.analyze(img, gradcam=False)
    assert a.out_of_scope and "unsure" in a.scope_reason and a.label is None
    assert a.probabilities["nv"] == pytest.approx(0.3)
    assert a.uncertainty == pytest.approx(np.std([0.1, 0.5, 0.3]))


def test_guided_classifier_crop_and_channel(tmp_path, models_dir, shared_datasets, monkeypatch):
    local = tmp_path / "models"
    shutil.copytree(models_dir / "skin-seg", local / "skin-seg")
    guide = {"bundle": "skin-seg", "mode": "channel"}
    make_tiny_bundle(
        tmp_path, "classification", name="skin-cls", **SMALL_CLS, classes=SKIN_CLASSES, num_classes=7,
        in_channels=4, guide=guide,
    )  # fmt: skip
    cfg = PipelineConfig.from_yaml(shipped_pipeline_files()[-1])  # skin.yaml: guided left to the bundle
    cfg.scope.min_probability = None
    pipe = Pipeline.from_config(cfg, local)
    assert pipe.guide_mode == "channel"
    img = real_image(shared_datasets, "ham10000", "ISIC_0024307.jpg")
    disc = np.zeros(img.shape[:2], np.uint8)
    disc[40:110, 60:140] = 1
    fix_segmentation(pipe, monkeypatch, disc)
    a = pipe.analyze(img, gradcam=False)
    assert not a.out_of_scope and a.label in SKIN_CLASSES and a.uncertainty is not None
    with pytest.raises(ConfigError, match="trained with 'channel'"):
        cfg.classifier.guided = GuideMode.CROP
        Pipeline.from_config(cfg, local)


def test_guided_crop_maps_gradcam_back_onto_the_image(models_dir, shared_datasets, monkeypatch):
    cfg = PipelineConfig.from_yaml(shipped_pipeline_files()[-1])
    cfg.classifier.guided = GuideMode.CROP
    cfg.scope.min_probability = None
    pipe = Pipeline.from_config(cfg, models_dir)
    img = real_image(shared_datasets, "ham10000", "ISIC_0024307.jpg")
    box = np.zeros(img.shape[:2], np.uint8)
    box[60:90, 80:120] = 1  # crop: side 60, rows 45..105, cols 70..130
    fix_segmentation(pipe, monkeypatch, box)
    a = pipe.analyze(img, tta=False)
    outside = np.abs(a.gradcam.astype(int) - (img // 2 + np.array([0, 0, 128]) // 2).astype(int))
    assert outside[:40].max() <= 2 and outside[:, :60].max() <= 2  # cam = 0 (jet blue) outside the crop


def test_clahe_and_input_validation(pipelines):
    rng = np.random.default_rng(0)
    flat = (100 + rng.integers(0, 20, (64, 64, 3))).astype(np.uint8)
    out = enhance_contrast(flat)
    assert out.shape == flat.shape and out.dtype == np.uint8 and out.std() > flat.std()
    assert enhance_contrast(flat[..., :1]).shape == (64, 64, 1)
    a = pipelines["polyp"].analyze(flat, clahe=True, gradcam=False, tta=False)
    assert a.timings_ms["gradcam"] == 0 and a.gradcam is None and a.uncertainty is None
    with pytest.raises(ValueError, match="uint8"):
        pipelines["polyp"].analyze(flat.astype(np.float32))
    info = pipelines["skin"].info()
    assert info["classes"] == SKIN_CLASSES and info["segmenter"] == "skin-seg"
    json.dumps(info)


def test_what_reading_did_to_the_image_is_in_the_result(pipelines):
    """An RGBA array is laid on white, said in the result (JSON, CSV); a record's notes and size travel."""
    pipe = pipelines["polyp"]
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 3] = 200, 90, 255
    rgba[:, :16, 3] = 0  # a see-through border, a quarter of the image
    a = pipe.analyze(rgba, gradcam=False, tta=False)
    assert a.input_notes == [
        "the image is partly transparent (25% of its pixels): it was laid on a white background "
        "(transparency flattened) before the analysis"
    ]
    assert a.to_dict()["input_notes"] == a.input_notes and a.csv_row()["input_notes"] == a.input_notes[0]
    assert a.original_size is None and pipe.analyze(rgba[..., :3], gradcam=False).input_notes == []
    reduced = ImageRecord(
        rgba[..., :3].copy(), None, "jpeg", notes=["decoded reduced"], original_size=(96, 128)
    )
    b = pipe.analyze(reduced, gradcam=False, tta=False)
    assert b.input_notes == ["decoded reduced"] and b.to_dict()["original_size"] == [96, 128]
    assert b.image_size == (48, 64)


def test_dicom_input_spacing_and_seg_export(pipelines, tmp_path, monkeypatch):
    from medlens.data.io import read_dicom
    from medlens.pipelines.dicom_seg import dicom_seg_bytes, read_dicom_seg_mask
    from tests.test_dicom_seg import make_source

    pipe = pipelines["chest-xray"]
    record = read_dicom(make_source(tmp_path / "cxr.dcm", rgb=False))  # 64 x 64 MONOCHROME2, 0.2 mm pixels
    lungs = np.zeros((64, 64), np.uint8)
    lungs[10:50, 6:28], lungs[10:50, 36:58] = 2, 1  # right lung (image left), left lung
    fix_segmentation(pipe, monkeypatch, lungs)
    a = pipe.analyze(record, gradcam=False, tta=False)
    assert a.features["right_lung_area_mm2"] == pytest.approx(40 * 22 * 0.04)
    assert a.features["lung_area_ratio"] == pytest.approx(1.0)
    assert a.features["cardiothoracic_ratio"] is None  # no heart found: no ratio, rather than a wrong one
    seg = dicom_seg_bytes(a.mask, record.dicom, segment=pipe.structure, classes=pipe.segmenter.classes)
    for number in (1, 2, 3):  # one segment per class: left lung, right lung, heart (empty here)
        read = read_dicom_seg_mask(seg, record.dicom.SOPInstanceUID, segment_number=number)
        np.testing.assert_array_equal(read, lungs == number)

"""Predictors: pre-processing as in training, resizing back, TTA, calibration, decisions, ONNX parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.data.cache import resize_image as cache_resize
from medlens.errors import BundleError, MedlensError, UnknownNameError
from medlens.inference.bundle import load_model_source
from medlens.inference.decisions import apply_decision, probs_to_mask
from medlens.inference.guided import GuidedInputs, guide_inputs
from medlens.inference.predictor import ClassificationPredictor, SegmentationPredictor, create_predictor
from medlens.inference.preprocess import ensure_channels, preprocess
from medlens.spec import GuideMode, ModelSpec
from tests.helpers_inference import make_tiny_run


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
        rng.integers(0, 256, (32, 32, 1), dtype=np.uint8),
    ]


def test_ensure_channels_conversions():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 100
    assert ensure_channels(rgb, 1).shape == (2, 2, 1)
    assert ensure_channels(rgb, 1)[0, 0, 0] == round(0.299 * 100)
    grey = np.full((2, 2), 7, np.uint8)
    assert ensure_channels(grey, 3).tolist() == [[[7, 7, 7]] * 2] * 2
    rgba = np.zeros((2, 2, 4), np.uint8)
    assert ensure_channels(rgba, 3).shape == (2, 2, 3)
    with pytest.raises(MedlensError, match="uint8"):
        ensure_channels(np.zeros((2, 2, 3), np.float32), 3)


def test_a_transparent_rgba_array_is_flattened_on_white_as_the_pipelines_do(
    seg_bundle: Path, caplog: pytest.LogCaptureFixture
):
    """A predictor called directly flattens transparency with the readers' and the pipelines' function
    (`flatten_alpha`, on white) instead of dropping the alpha channel, and logs its note (no pixel values)."""
    from medlens.data.io import flatten_alpha
    from medlens.pipelines.stages import as_image

    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., :3] = (200, 30, 60)
    rgba[..., 3] = 255
    rgba[:, :8, 3] = 0  # a transparent band: white once flattened, (200, 30, 60) if alpha were dropped
    rgba[:, 8:12, 3] = 128  # half transparent
    flat, note = flatten_alpha(rgba)
    with caplog.at_level("WARNING", logger="medlens.inference.preprocess"):
        out = ensure_channels(rgba, 3)
    assert np.array_equal(out, flat) and np.array_equal(out, as_image(rgba).array)
    assert (out[:, :8] == 255).all() and out[0, 10].tolist() == [227, 142, 157]
    assert out[0, 20].tolist() == [200, 30, 60]  # opaque pixels unchanged
    assert [r.getMessage() for r in caplog.records] == [f"RGBA input: {note}"]
    assert "partly transparent (38% of its pixels)" in note
    predictor = SegmentationPredictor(seg_bundle)
    assert np.array_equal(predictor.predict_proba([rgba])[0], predictor.predict_proba([flat])[0])
    caplog.clear()
    with caplog.at_level("WARNING", logger="medlens.inference.preprocess"):
        opaque = rgba.copy()
        opaque[..., 3] = 255
        assert np.array_equal(ensure_channels(opaque, 3), rgba[..., :3])
    assert not caplog.records  # nothing to say of an opaque image


def test_preprocess_matches_the_training_cache_and_normalises():
    spec = ModelSpec(task="segmentation", arch="unet", in_channels=3, num_classes=1, input_size=(16, 24),
                     mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.1])  # fmt: skip
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    x = preprocess([img, np.full((10, 10, 3), 255, np.uint8)], spec)
    assert x.shape == (2, 3, 16, 24) and x.dtype == torch.float32
    cached = cache_resize(img, (16, 24)).astype(np.float32) / 255.0
    expected = (cached - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(x[1, 2].numpy(), (1.0 - 0.3) / 0.1, rtol=1e-5)


def test_segmentation_probabilities_come_back_at_each_image_size(seg_bundle: Path, images):
    predictor = SegmentationPredictor(seg_bundle, batch_size=2)
    probs = predictor.predict_proba(images)
    assert [p.shape for p in probs] == [(48, 64), (20, 30), (32, 32)]
    assert all(p.dtype == np.float32 and p.min() >= 0 and p.max() <= 1 for p in probs)
    one_by_one = [predictor.predict_proba([img])[0] for img in images]
    for a, b in zip(probs, one_by_one, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    mask = predictor.predict(images[0])
    assert mask.shape == (48, 64) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, probs[0] >= 0.5)
    sized = predictor.predict_proba(images[:1], sizes=[(10, 12)])[0]
    assert sized.shape == (10, 12)


def test_probabilities_equal_the_model_output_resized(seg_bundle: Path, images):
    predictor = SegmentationPredictor(seg_bundle)
    model, spec = load_model_source(seg_bundle)
    with torch.inference_mode():
        logits = model(preprocess(images[:1], spec))
    expected = torch.nn.functional.interpolate(
        logits.sigmoid(), size=(48, 64), mode="bilinear", antialias=True
    )
    np.testing.assert_allclose(predictor.predict_proba(images[:1])[0], expected[0, 0].numpy(), atol=1e-5)


def test_threshold_comes_from_the_spec(tmp_path: Path, images):
    run = make_tiny_run(tmp_path, "segmentation", threshold=0.0)
    assert SegmentationPredictor(run).predict(images[0]).all()
    spec = json.loads((run / "model_spec.json").read_text())
    spec["threshold"] = 1.01
    (run / "model_spec.json").write_text(json.dumps(spec))
    assert not SegmentationPredictor(run).predict(images[0]).any()


def test_flip_tta_averages_the_flipped_views(seg_bundle: Path, images):
    predictor = SegmentationPredictor(seg_bundle, tta=True)
    model, spec = load_model_source(seg_bundle)
    x = preprocess(images[2:], spec)
    with torch.inference_mode():
        views = [model(x).sigmoid(), model(x.flip(3)).sigmoid().flip(3), model(x.flip(2)).sigmoid().flip(2)]
    expected = torch.stack(views).mean(0)[0, 0].numpy()  # the image is already 32x32: no resizing
    np.testing.assert_allclose(predictor.predict_proba(images[2:])[0], expected, atol=1e-5)
    prob, std, uncertainty = SegmentationPredictor(seg_bundle).predict_with_uncertainty(images[2])
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    np.testing.assert_allclose(std, torch.stack(views).std(0, correction=0)[0, 0].numpy(), atol=1e-5)
    assert isinstance(uncertainty, float) and 0 < uncertainty < 0.5


def test_multiclass_and_multilabel_masks():
    prob = np.zeros((3, 2, 2), np.float32)
    prob[2, 0, 0] = prob[1, 1, 1] = 1.0
    assert probs_to_mask(prob, "multiclass").tolist() == [[2, 0], [0, 1]]
    multi = probs_to_mask(prob, "multilabel", 0.5)
    assert multi.shape == (2, 2, 3) and multi[0, 0].tolist() == [0, 0, 1]


def test_classification_temperature_and_decision(tmp_path: Path, images):
    run = make_tiny_run(tmp_path, "classification", temperature=2.0)
    predictor = ClassificationPredictor(run, tta=False)
    probs = predictor.predict_proba(images)
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1.0, atol=1e-6)
    model, spec = load_model_source(run)
    with torch.inference_mode():
        expected = (model(preprocess(images, spec)) / 2.0).softmax(1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert predictor.predict_label(images) == [predictor.classes[i] for i in probs.argmax(1)]
    saved = json.loads((run / "model_spec.json").read_text())
    saved["decision"] = {"positive_class": "malignant", "threshold": 0.0}
    (run / "model_spec.json").write_text(json.dumps(saved))
    assert ClassificationPredictor(run).predict_label(images) == ["malignant"] * 3
    _, uncertainty = predictor.predict_with_uncertainty(images)
    assert uncertainty.shape == (3,) and ((uncertainty >= 0) & (uncertainty <= 1)).all()


def test_apply_decision_rules():
    probs = np.array([[0.7, 0.3], [0.9, 0.1], [0.2, 0.8]])
    classes = ["normal", "pneumonia"]
    assert apply_decision(probs, classes, None).tolist() == [0, 0, 1]
    assert apply_decision(probs, classes, 0.25).tolist() == [1, 0, 1]
    rule = {"positive_class": "normal", "threshold": 0.8}
    assert apply_decision(probs, classes, rule).tolist() == [1, 0, 1]
    trained = {"positive_class": "pneumonia", "threshold": 0.05, "target_sensitivity": 0.95}
    assert apply_decision(probs, classes, trained).tolist() == [1, 1, 1]
    with pytest.raises(MedlensError, match="threshold"):
        apply_decision(probs, classes, {"positive_class": "absent", "threshold": 0.5})


def test_onnx_runtime_matches_torch(seg_bundle: Path, cls_bundle: Path, images):
    from medlens.inference.export import onnx_cache_dir

    assert not (cls_bundle / "model.onnx").exists()
    for cls, bundle in ((SegmentationPredictor, seg_bundle), (ClassificationPredictor, cls_bundle)):
        torch_pred = cls(bundle, tta=True)
        onnx_pred = cls(bundle, runtime="onnx", tta=True)
        if bundle == cls_bundle:  # exported on first use into the cache, never beside the bundle
            assert not (bundle / "model.onnx").exists()
            assert onnx_pred.runner.path == onnx_cache_dir(bundle) / "model.onnx"
        else:  # the bundle's own export (`medlens export`) is used
            assert onnx_pred.runner.path == bundle / "model.onnx"
        a, b = torch_pred.predict_proba(images), onnx_pred.predict_proba(images)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-4)
    seg_onnx = SegmentationPredictor(seg_bundle, runtime="onnx")
    assert seg_onnx.model is not None  # the torch model stays available (Grad-CAM)


def test_bundles_export_into_the_cache_keyed_by_the_weights(cls_bundle: Path, tmp_path: Path, monkeypatch):
    from medlens.inference import export
    from medlens.inference.bundle import sha256_file

    copy = Path(shutil.copytree(cls_bundle, tmp_path / "ro", ignore=shutil.ignore_patterns("model.onnx")))
    monkeypatch.setenv("MEDLENS_HOME", str(tmp_path / "home"))
    path = export.ensure_onnx(copy)
    sha = sha256_file(copy / "model.safetensors")
    assert path == tmp_path / "home" / "cache" / "onnx" / sha / "model.onnx" and path.is_file()
    assert not (copy / "model.onnx").exists()
    assert export.ensure_onnx(copy) == path  # reused, not exported again


def test_bad_runtime_and_wrong_task(seg_bundle: Path, cls_bundle: Path):
    with pytest.raises(UnknownNameError, match="tensorrt"):
        SegmentationPredictor(seg_bundle, runtime="tensorrt")
    with pytest.raises(MedlensError, match="classification model"):
        SegmentationPredictor(cls_bundle)
    assert isinstance(create_predictor(cls_bundle), ClassificationPredictor)


def test_guided_classifier_builds_its_inputs_from_the_guide_bundle(seg_bundle: Path, tmp_path: Path, images):
    guide = {"bundle": str(seg_bundle), "mode": "channel"}
    run = make_tiny_run(tmp_path, "classification", in_channels=4, guide=guide)
    predictor = ClassificationPredictor(run)
    guided = predictor.guided_inputs(images)
    assert [g.shape for g in guided] == [(32, 32, 4)] * 3
    expected_mask = SegmentationPredictor(seg_bundle).predict(images[2])  # 32x32 already: no resizing
    np.testing.assert_array_equal(guided[2][..., 3], expected_mask * 255)
    np.testing.assert_array_equal(guided[2][..., :3], np.repeat(images[2], 3, axis=2))
    assert predictor.predict_proba(guided).shape == (3, 2)
    spec = json.loads((run / "model_spec.json").read_text())
    spec["guide"]["bundle"] = "moved/elsewhere"
    (run / "model_spec.json").write_text(json.dumps(spec))
    with pytest.raises(BundleError, match="moved/elsewhere"):
        ClassificationPredictor(run).guided_inputs(images)


def test_a_crop_guided_classifier_crops_the_raw_images_it_is_given(seg_bundle: Path, tmp_path: Path, images):
    """Every entry point guides raw images itself: a caller that forgets the guide still gets the crops."""
    guide = {"bundle": str(seg_bundle), "mode": "crop", "margin": 0.0}
    predictor = ClassificationPredictor(make_tiny_run(tmp_path, "classification", guide=guide))
    rgb = [ensure_channels(i, 3) for i in images]
    crops = guide_inputs(rgb, SegmentationPredictor(seg_bundle), GuideMode.CROP, (32, 32), margin=0.0)
    expected = predictor.predict_proba(crops)  # inputs already guided (GuidedInputs) pass as they are
    assert isinstance(crops, GuidedInputs)
    np.testing.assert_array_equal(predictor.predict_proba(images), expected)
    np.testing.assert_array_equal(predictor.predict_proba(predictor.guided_inputs(images)), expected)
    assert predictor.predict_label(images) == predictor.decide(expected)
    assert predictor.predict(images[0]) == predictor.decide(expected[:1])[0]
    # a caller's own masks (a pipeline's segmentation) guide instead of the guide bundle's
    masks = [np.zeros(i.shape[:2], np.uint8) for i in images]
    for m in masks:
        m[2:10, 3:9] = 1
    own = guide_inputs(rgb, None, GuideMode.CROP, (32, 32), masks=masks, margin=0.0)
    assert own[0].shape == (32, 32, 3)
    np.testing.assert_array_equal(predictor.predict_proba(images, masks), predictor.predict_proba(own))
    views, feats = predictor.predict_views(images, masks, tta=True)
    assert views.shape == (3, len(predictor.flips), 2) and feats is None
    np.testing.assert_allclose(views[:, 0], predictor.predict_proba(own), atol=1e-6)
    assert predictor.guide_crop(masks[0]) == (2, 2, 8)  # where the crop's heat map goes back


def test_a_guide_without_a_segmentation_bundle_needs_the_masks(tmp_path: Path, images):
    predictor = ClassificationPredictor(make_tiny_run(tmp_path, "classification"))
    plain = predictor.predict_proba(images)
    predictor.given_guide = GuideMode.CROP  # a pipeline YAML guiding a bundle that records no guide
    with pytest.raises(MedlensError, match="pass the images' masks"):
        predictor.predict_proba(images)
    whole = [np.ones(i.shape[:2], np.uint8) for i in images]  # the crop of a full mask is the image
    assert predictor.predict_proba(images, whole).shape == plain.shape


# ---------------------------------------------------------------------------------- test-time flips
def test_trained_flips_come_from_the_augmentation():
    from medlens.spec import trained_flips

    assert trained_flips({"hflip": 0.5, "vflip": 0.0}) == ["hflip"]
    assert trained_flips({"hflip": 0, "vflip": 0}) == []
    assert trained_flips({}) == []
    spec = ModelSpec.from_dict({**_spec_dict(), "tta_flips": ["vflip"]})
    assert spec.flip_dims == ((), (2,))
    assert ModelSpec.from_dict(_spec_dict()).flip_dims == ((), (3,), (2,))  # unrecorded: both, as before
    with pytest.raises(BundleError, match="unknown test-time flip 'rotate90'"):
        ModelSpec.from_dict({**_spec_dict(), "tta_flips": ["rotate90"]})


def _spec_dict() -> dict:
    from tests.helpers_inference import tiny_spec

    return tiny_spec("segmentation")


def test_a_model_trained_without_flips_is_not_run_flipped(tmp_path: Path, images):
    """A side-aware model (left / right lung by label) averaged over a mirrored view would swap its labels."""
    run = make_tiny_run(tmp_path, "segmentation", tta_flips=[])
    plain, tta = SegmentationPredictor(run), SegmentationPredictor(run, tta=True)
    assert tta.flips == ((),)
    for a, b in zip(plain.predict_proba(images), tta.predict_proba(images), strict=True):
        np.testing.assert_array_equal(a, b)
    _, std, uncertainty = tta.predict_with_uncertainty(images[0])
    assert uncertainty is None and not std.any()  # one view: no spread to report


def test_specs_without_the_record_take_the_flips_of_their_training_config(tmp_path: Path):
    import yaml

    from medlens.inference.bundle import Bundle, read_spec
    from medlens.inference.packaging import make_bundle

    run = make_tiny_run(tmp_path, "segmentation")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["augment"] = {"hflip": 0.5, "vflip": 0.0}  # a chest film is never upside down
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert read_spec(run).flip_dims == ((), (3,))
    bundle = make_bundle(run, tmp_path / "models" / "chest")
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["spec"]["tta_flips"] == ["hflip"]  # recorded when bundled
    del meta["spec"]["tta_flips"]  # as in bundles made before the record
    (bundle / "bundle.json").write_text(json.dumps(meta))
    assert Bundle.load(bundle).spec.flip_dims == ((), (3,))
    assert SegmentationPredictor(bundle, tta=True).flips == ((), (3,))


def test_guided_classifier_crops_with_its_trained_margin(seg_bundle: Path, tmp_path: Path, images):
    crops = {}
    for margin in (0.25, 0.0):
        guide = {"bundle": str(seg_bundle), "mode": "crop", "margin": margin}
        run = make_tiny_run(tmp_path / str(margin), "classification", guide=guide)
        predictor = ClassificationPredictor(run)
        assert predictor.guide_margin == margin
        crops[margin] = predictor.guided_inputs(images)
    rgb = [ensure_channels(i, 3) for i in images]  # the tiny classifier takes colour images
    expected = guide_inputs(rgb, SegmentationPredictor(seg_bundle), GuideMode.CROP, (32, 32), margin=0.0)
    for got, want in zip(crops[0.0], expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(a, b) for a, b in zip(crops[0.0], crops[0.25], strict=True))

"""Grad-CAM from the ONNX graph's ``features`` output equals MONAI's backpropagated Grad-CAM; other heads and
old single-output graphs fall back to torch; exports made on first use go to the cache, never the bundle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from medlens.inference.bundle import Bundle, load_model_source
from medlens.inference.explain import gradcam, linear_head_weights
from medlens.inference.export import ensure_onnx, export_onnx, onnx_cache_dir
from medlens.inference.predictor import ClassificationPredictor, SegmentationPredictor
from tests.helpers_inference import make_tiny_bundle

# Largest |ONNX CAM - MONAI Grad-CAM| on maps scaled to 0..1 (measured: at most 2.6e-5 at 224 px).
CAM_ATOL = 1e-4


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


@pytest.mark.parametrize("arch", ["mobilenetv2_100", "tf_efficientnet_lite0", "resnet18"])
def test_onnx_cam_equals_monai_gradcam(arch: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDLENS_HOME", str(tmp_path / "home"))
    bundle = make_tiny_bundle(tmp_path, "classification", name=f"cam-{arch}", arch=arch, input_size=96,
                              num_classes=3, classes=["a", "b", "c"])  # fmt: skip
    before = _tree_digest(bundle)
    predictor = ClassificationPredictor(bundle, runtime="onnx")
    assert _tree_digest(bundle) == before  # exported into the cache, not into the bundle
    assert predictor.runner.path.parent == onnx_cache_dir(bundle)
    assert predictor.has_features
    model, _ = load_model_source(bundle)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(2)]
    probs, feats = predictor.predict_proba_with_features(images)
    np.testing.assert_allclose(probs, ClassificationPredictor(bundle).predict_proba(images), atol=1e-4)
    for i, image in enumerate(images):
        x = predictor.preprocess([image])
        for k in range(3):
            ours = predictor.cam(feats[i], k)
            reference = gradcam(model, x, class_index=k)
            assert ours.shape == reference.shape == (96, 96)
            np.testing.assert_allclose(ours, reference, atol=CAM_ATOL)


def test_linear_head_weights_only_for_pooled_linear_heads() -> None:
    import timm

    resnet = timm.create_model("resnet18", pretrained=False, num_classes=4)
    weights = linear_head_weights(resnet, 3, (64, 64))
    assert weights is not None and weights.shape == (4, 512)
    assert np.array_equal(weights, resnet.fc.weight.detach().numpy())
    convnext = timm.create_model("convnext_atto", pretrained=False, num_classes=4)  # LayerNorm after pooling
    assert linear_head_weights(convnext, 3, (64, 64)) is None


def test_graphs_without_features_fall_back_to_torch_gradcam(tmp_path: Path, monkeypatch) -> None:
    from medlens.pipelines.pipeline import Pipeline, PipelineConfig

    monkeypatch.setenv("MEDLENS_HOME", str(tmp_path / "home"))
    bundle = make_tiny_bundle(tmp_path, "classification", name="cnx", arch="convnext_atto", input_size=64)
    predictor = ClassificationPredictor(bundle, runtime="onnx")
    assert not predictor.has_features
    outputs = [o.name for o in onnx.load(str(ensure_onnx(bundle))).graph.output]
    assert outputs == ["logits"]
    config = PipelineConfig.from_dict({"name": "t", "classifier": {"bundle": "cnx", "gradcam": True},
                                       "scope": {"expect": "any"}})  # fmt: skip
    result = Pipeline(config, None, predictor).analyze(np.full((40, 50, 3), 90, np.uint8))
    assert result.gradcam is not None and result.gradcam.shape == (40, 50, 3)


def test_old_single_output_export_in_the_bundle_still_works(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDLENS_HOME", str(tmp_path / "home"))
    bundle = make_tiny_bundle(tmp_path, "classification")
    model, _ = load_model_source(bundle)
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(bundle / "model.onnx"), dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
    predictor = ClassificationPredictor(bundle, runtime="onnx")
    assert predictor.runner.path == bundle / "model.onnx" and not predictor.has_features
    probs, feats = predictor.predict_proba_with_features([np.zeros((32, 32, 3), np.uint8)])
    assert probs.shape == (1, 2) and feats is None
    assert not (tmp_path / "home" / "cache").exists()


def test_export_records_features_and_parity(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path, "classification")
    result = export_onnx(bundle, out=tmp_path / "x.onnx")
    assert result["features"] and result["max_abs_diff"] < 1e-3
    proto = onnx.load(str(result["path"]))
    assert [o.name for o in proto.graph.output] == ["logits", "features"]
    assert {"medlens_cam", "medlens_spec", "medlens_export_format"} <= {p.key for p in proto.metadata_props}
    assert "model.onnx" not in Bundle.load(bundle).files  # exported elsewhere: the bundle is unchanged


def test_onnx_predicting_leaves_the_bundle_untouched_and_reuses_the_cache(tmp_path: Path, monkeypatch):
    from medlens.pipelines.batch import predict_paths

    monkeypatch.setenv("MEDLENS_HOME", str(tmp_path / "home"))
    bundle = make_tiny_bundle(tmp_path, "segmentation")
    before = _tree_digest(bundle)
    images = tmp_path / "in"
    images.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(images / f"{i}.png")
    predict_paths(bundle, images, tmp_path / "out", runtime="onnx")
    assert _tree_digest(bundle) == before
    cached = onnx_cache_dir(bundle) / "model.onnx"
    assert cached.is_file() and onnx_cache_dir(bundle).parent == tmp_path / "home" / "cache" / "onnx"
    mtime = cached.stat().st_mtime_ns
    assert SegmentationPredictor(bundle, runtime="onnx").runner.path == cached
    assert cached.stat().st_mtime_ns == mtime  # reused, not exported again

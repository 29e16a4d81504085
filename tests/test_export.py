"""ONNX export: dynamic batch, parity with torch, metadata, bundle registration, tolerance failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from medlens.errors import BundleError
from medlens.inference.bundle import Bundle, load_model_source
from medlens.inference.export import export_onnx
from tests.helpers_inference import make_tiny_bundle, make_tiny_run


def _ort_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_segmentation_bundle_export_has_dynamic_batch_and_matches_torch(tmp_path: Path):
    bundle = make_tiny_bundle(tmp_path, "segmentation", onnx=True)  # export_onnx(bundle), shared per session
    onnx_path = bundle / "model.onnx"
    model, spec = load_model_source(bundle)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.inference_mode():
            expected = model(x).numpy()
        got = _ort_logits(onnx_path, x)
        assert got.shape == (batch, 1, 32, 32)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    proto = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["medlens_spec"]) == spec.to_dict()
    assert "model.onnx" in Bundle.load(bundle).files  # the bundle lists (and hashes) its export
    Bundle.load(bundle).verify()


def test_classifier_exports_with_parity_report(tmp_path: Path):
    bundle = make_tiny_bundle(tmp_path, "classification")
    result = export_onnx(bundle)
    assert result["path"] == bundle / "model.onnx" and result["path"].is_file()
    assert result["n_checked"] == 4 and 0 <= result["max_abs_diff"] < 1e-3
    assert "model.onnx" in Bundle.load(bundle).files
    model, _ = load_model_source(bundle)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.inference_mode():
            np.testing.assert_allclose(_ort_logits(result["path"], x), model(x).numpy(), atol=1e-4)


def test_run_export_to_a_chosen_path_and_tolerance_failure(tmp_path: Path):
    run = make_tiny_run(tmp_path, "classification")
    out = tmp_path / "exports" / "cls.onnx"
    unchecked = export_onnx(run, out=out, check=False)
    assert unchecked == {"path": out, "max_abs_diff": None, "n_checked": 0, "features": True}
    assert out.is_file() and not (run / "model.onnx").exists()
    with pytest.raises(BundleError, match="differs from torch"):
        export_onnx(run, out=tmp_path / "strict.onnx", atol=-1.0)  # any difference fails
    assert not (tmp_path / "strict.onnx").exists()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_dynamo_exporter_also_works(tmp_path: Path):
    run = make_tiny_run(tmp_path, "classification")
    result = export_onnx(run, out=tmp_path / "dynamo.onnx", dynamo=True)
    assert result["max_abs_diff"] < 1e-3 and result["n_checked"] == 4

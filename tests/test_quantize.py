"""int8 static quantisation: calibrated on the training split, scored on the held-out split, used only when
accepted; nothing is written into the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from medlens.evaluation.int8 import quantize_model
from medlens.inference.export import onnx_cache_dir
from medlens.inference.predictor import ClassificationPredictor, SegmentationPredictor
from medlens.inference.quantize import INT8_FILE, int8_path
from tests.helpers_inference import CLS_CLASSES, make_tiny_bundle

IDS = ("a", "b", "c", "d")  # the tiny runs' split.json: train a, b, c; val d


def _data(root: Path, task: str) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    if task == "segmentation":
        (root / "masks").mkdir()
    for i in IDS:
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        if task == "segmentation":
            mask = np.zeros((40, 40), np.uint8)
            mask[10:30, 12:28] = 255
            Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    if task == "classification":
        rows = [f"{i},{CLS_CLASSES[n % 2]}" for n, i in enumerate(IDS)]
        (root / "labels.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize(("task", "predictor"), [("segmentation", SegmentationPredictor),
                                                 ("classification", ClassificationPredictor)])  # fmt: skip
def test_int8_is_scored_on_the_held_out_split_and_used_only_when_accepted(
    tmp_path, monkeypatch, task, predictor
):
    monkeypatch.setenv("MEDLENS_HOME", str(tmp_path / "home"))
    bundle = make_tiny_bundle(tmp_path, task)
    data = _data(tmp_path / "data", task)
    files = sorted(p.name for p in bundle.iterdir())
    assert int8_path(bundle) is None
    assert predictor(bundle, runtime="onnx", precision="int8").precision == "fp32"  # none yet: float32

    rejected = quantize_model(bundle, data=[data], n_calibration=3, tolerance=-1.0)
    assert not rejected["accepted"] and int8_path(bundle) is None
    assert rejected["split"] == "val" and rejected["n_images"] == 1 and rejected["n_calibration"] == 3
    assert rejected["metric"] == ("dice" if task == "segmentation" else "accuracy")
    assert predictor(bundle, runtime="onnx", precision="int8").precision == "fp32"

    accepted = quantize_model(bundle, data=[data], n_calibration=2, tolerance=1.0)
    path = onnx_cache_dir(bundle) / INT8_FILE
    assert accepted["accepted"] and int8_path(bundle) == path
    assert json.loads((path.parent / "int8.json").read_text())["accepted"] is True
    proto = onnx.load(str(path))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert "medlens_spec" in {p.key for p in proto.metadata_props}
    int8 = predictor(bundle, runtime="onnx", precision="int8")
    assert int8.precision == "int8" and int8.runner.path == path
    assert sorted(p.name for p in bundle.iterdir()) == files  # the bundle is never written to
    image = np.asarray(Image.open(data / "images" / "d.png"))
    fp32 = predictor(bundle, runtime="onnx")
    if task == "classification":
        assert int8.has_features  # the CAM output survives quantisation
        np.testing.assert_allclose(int8.predict_proba([image]), fp32.predict_proba([image]), atol=0.1)
    else:
        assert int8.predict_proba([image])[0].shape == (40, 40)


def test_score_leaves_out_partially_labelled_films(tmp_path: Path):
    """A partially labelled source's masks hold merged-class codes, not the model's labels: not scored."""
    from types import SimpleNamespace

    from medlens.data.index import Item
    from medlens.evaluation.int8 import score

    data = _data(tmp_path / "data", "classification")
    items = [
        Item(i, data / "images" / f"{i}.png", [], CLS_CLASSES[0], None, "partial" if i in "ab" else "full")
        for i in IDS
    ]
    seen: list[int] = []

    def predict_label(images):
        seen.append(len(images))
        return [CLS_CLASSES[0]] * len(images)

    predictor = SimpleNamespace(
        spec=SimpleNamespace(mode=SimpleNamespace(value="multiclass"), classes=CLS_CLASSES),
        task="classification", guided_inputs=lambda images: images, predict_label=predict_label,
    )  # fmt: skip
    assert score(predictor, items, SimpleNamespace(partial={"partial": object()})) == 1.0
    assert seen == [2]  # c and d only

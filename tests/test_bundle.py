"""Bundles: run folder -> bundle -> load, format version checks, integrity, model card, listing."""

from __future__ import annotations

import importlib
import importlib.abc
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from medlens.errors import BundleError
from medlens.folders import BundleFolder, RunFolder
from medlens.inference.bundle import (
    BUNDLE_FORMAT_VERSION,
    Bundle,
    is_bundle,
    list_bundles,
    load_model_source,
    read_spec,
)
from medlens.inference.card import write_model_card
from medlens.inference.packaging import make_bundle
from medlens.inference.predictor import SegmentationPredictor
from medlens.spec import ModelSpec
from tests.helpers_inference import make_tiny_run


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("bundle"), "segmentation")


@pytest.fixture(scope="module")
def seg_bundle(seg_run: Path) -> Path:
    return make_bundle(seg_run, seg_run.parent.parent / "models" / "skin-unet")


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [
        rng.integers(0, 256, (40, 52, 3), dtype=np.uint8),
        rng.integers(0, 256, (24, 24, 3), dtype=np.uint8),
    ]


def test_bundle_layout_and_metadata(seg_run: Path, seg_bundle: Path):
    meta = json.loads((seg_bundle / "bundle.json").read_text())
    assert meta["format_version"] == BUNDLE_FORMAT_VERSION == 2
    assert meta["name"] == "skin-unet"
    run_spec = json.loads((seg_run / "model_spec.json").read_text())
    assert meta["spec"] == ModelSpec.from_dict(run_spec).to_dict()
    assert meta["metrics"]["dice_ci_low"] == 0.4
    assert meta["training"]["split_sizes"] == {"train": 3, "val": 1, "test": 0}
    assert meta["training"]["epochs_trained"] == 2 and meta["training"]["data_roots"] == ["data/tiny"]
    assert meta["training"]["config"]["model"]["encoder"] == "resnet18"
    for rel in ("model.safetensors", "README.md", "config.yaml", "curves.png", "val_metrics.json"):
        assert (seg_bundle / rel).is_file() and rel in meta["files"]
    Bundle.load(seg_bundle).verify()


def test_folder_layouts_name_the_files_of_runs_and_bundles(seg_run: Path, seg_bundle: Path):
    run, bundle = RunFolder(seg_run), BundleFolder(seg_bundle)
    assert run.is_run() and bundle.is_bundle() and not RunFolder(seg_bundle).is_run()
    assert run.best == seg_run / "checkpoints" / "best.pt" and bundle.meta == seg_bundle / "bundle.json"
    for path in (run.spec, run.config, run.split, run.metrics_csv, bundle.weights, bundle.card, bundle.split):
        assert path.is_file(), path
    copied = [rel for rel in RunFolder.COPIED if (seg_run / rel).is_file()]
    assert copied and all((seg_bundle / rel).is_file() for rel in copied)


def test_weights_are_fp16_but_norm_statistics_stay_fp32(seg_bundle: Path):
    with safe_open(str(seg_bundle / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        conv = next(k for k in keys if k.endswith("conv1.weight"))
        var = next(k for k in keys if k.endswith("running_var"))
        assert f.get_tensor(conv).dtype == torch.float16
        assert f.get_tensor(var).dtype == torch.float32
    state = Bundle.load(seg_bundle).state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_round_trip_gives_the_run_outputs_within_fp16_tolerance(seg_run: Path, seg_bundle: Path):
    images = _images()
    from_run = SegmentationPredictor(seg_run).predict_proba(images)
    from_bundle = SegmentationPredictor(seg_bundle).predict_proba(images)
    for a, b in zip(from_run, from_bundle, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=2e-2)
    assert (
        max(float(np.abs(a - b).max()) for a, b in zip(from_run, from_bundle, strict=True)) > 0
    )  # fp16 used


def test_fp32_bundle_is_exact(seg_run: Path, tmp_path: Path):
    bundle = make_bundle(seg_run, tmp_path / "exact", fp16=False)
    x = torch.randn(2, 3, 32, 32)
    run_model, _ = load_model_source(seg_run)
    with torch.inference_mode():
        torch.testing.assert_close(Bundle.load(bundle).build_model()(x), run_model(x), rtol=0, atol=0)


def test_model_card_has_metrics_with_ci_and_reproduction(seg_bundle: Path, seg_run: Path, tmp_path: Path):
    card = (seg_bundle / "README.md").read_text()
    assert "# skin-unet" in card
    assert "| dice_mean | 0.5000 | 0.4000 – 0.6000 |" in card
    for section in ("## Intended use", "## Data", "## Limitations", "## Reproduce"):
        assert section in card
    assert "medlens train --config config.yaml" in card and "encoder: resnet18" in card
    custom = make_bundle(seg_run, tmp_path / "custom", card={"Intended use": "Only for the tests."})
    text = (custom / "README.md").read_text()
    assert "Only for the tests." in text and "not a medical device" not in text
    meta = json.loads((seg_bundle / "bundle.json").read_text())
    write_model_card(tmp_path / "card.md", meta, card="Trained on a laptop.")
    assert "## Notes\n\nTrained on a laptop." in (tmp_path / "card.md").read_text()


@pytest.mark.parametrize("version", [99, None, "1"])
def test_unknown_or_missing_format_version_is_refused(seg_bundle: Path, tmp_path: Path, version):
    copy = Path(shutil.copytree(seg_bundle, tmp_path / "b"))
    meta = json.loads((copy / "bundle.json").read_text())
    if version is None:
        del meta["format_version"]
    else:
        meta["format_version"] = version
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format_version") as err:
        Bundle.load(copy)
    assert str(copy / "bundle.json") in str(err.value)


def test_missing_files_and_tampering_are_reported(seg_bundle: Path, tmp_path: Path):
    with pytest.raises(BundleError, match=r"bundle\.json is missing"):
        Bundle.load(tmp_path)
    copy = Path(shutil.copytree(seg_bundle, tmp_path / "b"))
    (copy / "curves.png").unlink()
    with pytest.raises(BundleError, match=r"curves\.png"):
        Bundle.load(copy).verify()
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Bundle.load(copy).build_model()
    weights.unlink()
    with pytest.raises(BundleError, match=r"model\.safetensors is missing"):
        Bundle.load(copy)


def test_list_bundles_is_lazy_and_skips_broken(seg_bundle: Path, tmp_path: Path):
    models = tmp_path / "models"
    shutil.copytree(seg_bundle, models / "b-second")
    shutil.copytree(seg_bundle, models / "a-first")
    (models / "broken").mkdir()
    (models / "broken" / "bundle.json").write_text('{"format_version": 7}')
    (models / "not-a-bundle").mkdir()
    (models / "a-first" / "model.safetensors").write_bytes(b"garbage")  # only build_model reads weights
    found = list_bundles(models)
    assert [b.path.name for b in found] == ["a-first", "b-second"]
    assert found[0].spec.arch == "unet"
    with pytest.raises(BundleError, match="a-first"):
        found[0].build_model()
    assert list_bundles(tmp_path / "absent") == []


def test_load_model_source_accepts_run_bundle_and_checkpoint(seg_run: Path, seg_bundle: Path, tmp_path: Path):
    for source in (seg_run, seg_bundle, seg_run / "checkpoints" / "best.pt", Bundle.load(seg_bundle)):
        model, spec = load_model_source(source)
        assert spec.task == "segmentation" and not model.training
        assert read_spec(source) == spec
    with pytest.raises(BundleError, match="neither a bundle"):
        load_model_source(tmp_path)


def test_wrapper_prefixes_are_stripped(seg_run: Path, tmp_path: Path):
    run = Path(shutil.copytree(seg_run, tmp_path / "ddp"))
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["model"] = {f"module._orig_mod.{k}": v for k, v in ckpt["model"].items()}
    torch.save(ckpt, run / "checkpoints" / "best.pt")
    model, _ = load_model_source(run)
    reference, _ = load_model_source(seg_run)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x))


def test_make_bundle_refuses_foreign_folders_and_replaces_old_bundles(
    seg_run: Path, seg_bundle, tmp_path: Path
):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a bundle"):
        make_bundle(seg_run, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    target = Path(shutil.copytree(seg_bundle, tmp_path / "again"))
    (target / "model.onnx").write_bytes(b"stale export")
    make_bundle(seg_run, target, name="renamed")
    assert not (target / "model.onnx").exists()
    assert Bundle.load(target).name == "renamed"
    with pytest.raises(BundleError, match="not a medlens run folder"):
        make_bundle(tmp_path / "foreign", tmp_path / "x")


class _BlockTraining(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "medlens.training" or name.startswith("medlens.training."):
            raise ImportError(f"{name} must not be imported to load a bundle")
        return None


def test_loading_a_bundle_needs_no_training_code(seg_bundle: Path):
    """Re-import medlens afresh (third-party libraries stay cached) with medlens.training blocked."""
    ours = lambda name: name == "medlens" or name.startswith("medlens.")  # noqa: E731
    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    blocker = _BlockTraining()
    for name in saved:
        del sys.modules[name]
    sys.meta_path.insert(0, blocker)
    try:
        fresh = importlib.import_module("medlens.inference.bundle")
        fresh.Bundle.load(seg_bundle).build_model()
        assert not [m for m in sys.modules if m.startswith("medlens.training")]
    finally:
        sys.meta_path.remove(blocker)
        for name in [k for k in sys.modules if ours(k)]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_format_1_bundles_still_load_and_predict_alike(seg_bundle: Path, tmp_path: Path):
    """A bundle written before format 2 (no evaluations, spec without mask_dirs/label_column/groups)."""
    old = Path(shutil.copytree(seg_bundle, tmp_path / "old"))
    meta = json.loads((old / "bundle.json").read_text())
    meta["format_version"] = 1
    meta.pop("evaluations")
    for key in ("mask_dirs", "label_column", "groups"):
        meta["spec"].pop(key)
    (old / "bundle.json").write_text(json.dumps(meta))
    loaded = Bundle.load(old)
    assert loaded.format_version == 1 and loaded.evaluations == {} and loaded.spec.groups is None
    image = _images()[0]
    np.testing.assert_array_equal(
        SegmentationPredictor(old).predict(image), SegmentationPredictor(seg_bundle).predict(image)
    )
    meta["spec"]["colour"] = "red"
    (old / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"unknown model spec field\(s\) \['colour'\]"):
        Bundle.load(old)


SHIPPED = sorted(p for p in (Path(__file__).resolve().parents[1] / "models").iterdir() if is_bundle(p))


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_bundle_loads_verifies_and_predicts(folder: Path) -> None:
    """The bundles in models/ (format 1 or 2) load with this medlens, match their sha256 and predict."""
    from medlens.inference.predictor import create_predictor

    bundle = Bundle.load(folder)
    bundle.verify()
    assert bundle.format_version in (1, 2) and (folder / "README.md").is_file()
    predictor = create_predictor(bundle)
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    if bundle.spec.is_segmentation:
        mask = predictor.predict(image)
        assert mask.shape == (96, 128) and mask.dtype == np.uint8
    else:
        probs = predictor.predict_proba(predictor.guided_inputs([image]))
        assert probs.shape == (1, bundle.spec.num_classes) and np.allclose(probs.sum(1), 1, atol=1e-4)


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_spec_is_written_back_as_it_was_read(folder: Path) -> None:
    """The typed spec (decision rule and class groups included) writes the JSON of bundle.json unchanged."""
    spec = json.loads((folder / "bundle.json").read_text())["spec"]
    written = json.loads(json.dumps(ModelSpec.from_dict(spec).to_dict()))
    assert {k: written[k] for k in spec} == spec

"""The chest pipeline end to end (tiny bundles, anatomy fixed): every finding beside the reading, where the
model looked (Grad-CAM inside the lungs and heart), the overlay with its colour key, the population note."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from medlens.inference.runtime import TorchRunner
from medlens.pipelines.overlay import draw_overlay
from medlens.pipelines.pipeline import Pipeline, load_pipelines
from tests.helpers_inference import make_tiny_bundle
from tests.test_pipeline import CHEST_CLASSES, SMALL_CLS, fix_segmentation

SIZE = 256
RIGHT, LEFT, HEART = (CHEST_CLASSES.index(c) for c in ("right_lung", "left_lung", "heart"))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chest-findings")
    make_tiny_bundle(
        root, "segmentation", name="chest-anatomy", encoder="mobilenet_v2", mode="multiclass",
        num_classes=len(CHEST_CLASSES), classes=CHEST_CLASSES,
    )  # fmt: skip
    make_tiny_bundle(
        root, "classification", name="chest-xray-cls", **SMALL_CLS, classes=["normal", "pneumonia"]
    )
    return root / "models"


@pytest.fixture()
def chest(models_dir) -> Pipeline:
    return load_pipelines(models_dir)["chest-xray"]


def _anatomy(small_left: bool = False, wide_heart: bool = False) -> np.ndarray:
    """A PA-like label map at SIZE: the patient's right lung on the image left, the left lung on the right."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[60:220, 40:110] = RIGHT
    mask[60 : 120 if small_left else 220, 146:216] = LEFT
    if wide_heart:
        mask[150:215, 95:200] = HEART  # 106 px wide over a 177 px chest: CTR 0.6
    else:
        mask[160:215, 110:146] = HEART
    return mask


def _film(signal: tuple[slice, slice] | None) -> np.ndarray:
    """A flat grey film, bright only at ``signal``."""
    film = np.full((SIZE, SIZE), 60, np.uint8)
    if signal is not None:
        film[signal] = 255
    return film


def _bright_spot_classifier() -> nn.Sequential:
    """Class 1 ("pneumonia") fires on bright pixels, class 0 ("normal") on their absence; Grad-CAM of class 1
    lies where the bright pixels are (tests/test_explain.py's toy detector, for 3 channels)."""
    model = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.ReLU(), nn.Conv2d(1, 2, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))  # fmt: skip
    with torch.no_grad():
        model[0].weight.fill_(1 / 27)
        model[0].bias.fill_(-0.5)
        model[2].weight.copy_(torch.tensor([1.0, 0.5]).view(2, 1, 1, 1))
        model[2].bias.zero_()
        model[5].weight.copy_(torch.tensor([[-40.0, -40.0], [40.0, 40.0]]))
        model[5].bias.zero_()
    return model


def _use_model(pipe: Pipeline, model: nn.Module, monkeypatch) -> None:
    monkeypatch.setattr(pipe.classifier, "_model", model)
    monkeypatch.setattr(pipe.classifier, "runner", TorchRunner(model))


def test_evidence_in_a_corner_marks_the_reading_unreliable(chest, monkeypatch):
    fix_segmentation(chest, monkeypatch, _anatomy())
    _use_model(chest, _bright_spot_classifier(), monkeypatch)
    corner = chest.analyze(_film((slice(4, 40), slice(4, 40))), tta=False)  # a burned-in marker, say
    assert corner.label == "pneumonia" and not corner.out_of_scope
    assert corner.gradcam_inside_region is not None and corner.gradcam_inside_region < 0.1
    assert corner.findings[0].source == "evidence_outside_lungs" and corner.findings[0].severity == "high"
    assert "looked outside the lungs" in corner.findings[0].text
    assert corner.to_dict()["gradcam_inside_region"] == pytest.approx(corner.gradcam_inside_region)
    row = corner.csv_row()
    assert row["findings"].startswith("high: The model looked outside the lungs")
    assert row["gradcam_inside_region"] == corner.gradcam_inside_region
    lung = chest.analyze(_film((slice(100, 150), slice(50, 100))), tta=False)  # inside the right lung
    assert lung.label == "pneumonia" and lung.gradcam_inside_region > 0.6
    assert "evidence_outside_lungs" not in [f.source for f in lung.findings]
    assert lung.recommendation.startswith("Pattern consistent with pneumonia")
    assert chest.analyze(_film(None), gradcam=False, tta=False).gradcam_inside_region is None


def test_a_film_with_two_findings_shows_both_most_severe_first(chest, monkeypatch):
    fix_segmentation(chest, monkeypatch, _anatomy(small_left=True, wide_heart=True))
    monkeypatch.setattr(chest.config.scope, "min_probability", None)  # random weights: do not judge them
    a = chest.analyze(_film(None), gradcam=False, tta=False)
    assert a.features["lung_area_ratio"] < 0.5 and a.features["cardiothoracic_ratio"] >= 0.5
    assert a.recommendation and not a.out_of_scope  # the reading, from the first rule that holds
    assert [(f.source, f.severity) for f in a.findings] == [
        ("one_lung_small", "high"),
        ("ctr_above_adult_limit", "moderate"),
    ]
    d = a.to_dict()
    assert d["findings"][0] == {"text": a.findings[0].text, "severity": "high", "source": "one_lung_small"}
    assert a.csv_row()["findings"].count(" | ") == 1


def _block_of(image: np.ndarray, rgb: tuple[int, int, int], side: int) -> bool:
    """Whether ``image`` holds a ``side`` x ``side`` block of colour ``rgb``."""
    same = (image == np.array(rgb, np.uint8)).all(axis=2)
    return bool(ndimage.binary_erosion(same, np.ones((side, side), bool)).any())


def test_the_overlay_carries_lines_and_a_colour_key_in_distinct_colours(chest, monkeypatch):
    fix_segmentation(chest, monkeypatch, _anatomy())
    a = chest.analyze(_film(None), gradcam=False, tta=False)
    names = [e.name for e in a.colour_key]
    assert names == ["left lung", "right lung", "heart", "heart width (CTR)", "chest width (CTR)"]
    colours = [e.colour for e in a.colour_key]
    assert len(set(colours)) == len(colours)  # the heart line no longer shares the right lung's colour
    assert all(_block_of(a.overlay, e.rgb, 8) for e in a.colour_key)  # each swatch of the key is drawn
    same, _ = draw_overlay(_film(None), a.mask, a.mask_classes, a.features)
    np.testing.assert_array_equal(a.overlay, same)  # one drawing: the UI redraws it with this function
    assert a.to_dict()["colour_key"][0] == {"name": "left lung", "colour": colours[0], "kind": "region"}


def test_each_class_says_what_it_was_learnt_from(chest, monkeypatch):
    info = chest.info()
    assert set(info["learnt_from"]) == {"normal", "pneumonia"}  # tuberculosis: not a class of this bundle
    assert "children" in info["learnt_from"]["pneumonia"] and "Guangzhou" in info["learnt_from"]["pneumonia"]
    assert "Shenzhen" in chest.config.classifier.learnt_from["tuberculosis"]
    assert chest.config.class_names["tuberculosis"] == "Tuberculosis"
    monkeypatch.setattr(chest.config.scope, "min_probability", None)  # random weights: do not judge them
    a = chest.analyze(_film(None), gradcam=False, tta=False)
    assert a.learnt_from == info["learnt_from"] and a.to_dict()["learnt_from"] == info["learnt_from"]
    monkeypatch.setattr(chest.config.scope, "min_probability", 1.0)  # refused: no provenance is given
    assert chest.analyze(_film(None), gradcam=False, tta=False).learnt_from == {}


def test_the_ui_shows_the_overlay_the_api_serves(chest, monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    from medlens.app import render
    from medlens.app.service import AnalysisService
    from medlens.app.store import HistoryStore
    from medlens.app.ui_handlers import UiHandlers
    from tests.helpers_app import png_bytes

    fix_segmentation(chest, monkeypatch, _anatomy(small_left=True))
    monkeypatch.setattr(chest.config.scope, "min_probability", None)  # random weights: do not judge them
    service = AnalysisService({"chest-xray": chest}, HistoryStore(tmp_path / "home"), workers=1)
    try:
        record = service.analyze_bytes(png_bytes(_film(None)), "chest-xray", tta=False)
        served = render.load_png(service.file_path(record["id"], "overlay"))
        shown = UiHandlers(service, max_file_size=10**7).overlay(record["id"], 0.45)
        assert shown.shape[:2] == (SIZE, SIZE) and served.shape[0] > SIZE  # the PNG has a key strip under it
        np.testing.assert_array_equal(shown, served[: shown.shape[0]])  # the CTR lines included
        assert "heart width (CTR)" in render.key_html(record["result"])  # the key, beside the picture
        assert record["result"]["colour_key"][3]["name"] == "heart width (CTR)"
        view = service.to_view(record)
        assert view["segmentation"]["colour_key"] == record["result"]["colour_key"]
        assert view["segmentation"]["classes"] == CHEST_CLASSES
        assert [f["source"] for f in view["findings"]][-1] == "one_lung_small"
        assert set(view["classification"]["learnt_from"]) == {"normal", "pneumonia"}
        text = render.advice_markdown(record)
        assert "One lung field is under half" in text and "Learnt from" in text and "Guangzhou" in text
    finally:
        service.close()

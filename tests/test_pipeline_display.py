"""What the pipelines hand to people: class names, class groups (malignant probability), the TTA setting,
readable feature rows and the Grad-CAM display (full resolution, field of view, colour bar)."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.errors import BundleError, ConfigError
from medlens.pipelines.analysis import UNCERTAINTY_NO_MODEL_RAN, UNCERTAINTY_NOT_MEASURED
from medlens.pipelines.config import DEFAULT_TTA, PipelineConfig
from medlens.pipelines.describe import NO_SPACING, describe_features
from medlens.pipelines.groups import group_fields, group_scores
from medlens.pipelines.heatmap import colour_bar_stops, field_of_view, heatmap_overlay, jet
from medlens.pipelines.names import display_name, readable, region_names
from medlens.pipelines.pipeline import load_pipelines
from medlens.spec import ClassGroup
from tests.helpers_inference import make_tiny_bundle

SKIN = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
MALIGNANT = ClassGroup("malignant", ("mel", "bcc", "akiec"), 0.2, target_sensitivity=0.9, sensitivity=0.91,
                       specificity=0.6)  # fmt: skip


@pytest.fixture(scope="module")
def skin(tmp_path_factory):
    root = tmp_path_factory.mktemp("display")
    make_tiny_bundle(root, "segmentation", name="skin-seg", encoder="mobilenet_v2")
    make_tiny_bundle(root, "classification", name="skin-cls", arch="resnet10t", classes=SKIN, num_classes=7)
    return load_pipelines(root / "models")["skin"]


def test_group_scores_sum_the_members_and_flag_at_the_fitted_threshold():
    probs = {"mel": 0.1, "bcc": 0.05, "akiec": 0.1, "nv": 0.75}
    (score,) = group_scores(probs, [MALIGNANT])
    assert score["probability"] == pytest.approx(0.25) and score["flagged"] is True
    assert score["threshold"] == 0.2 and score["sensitivity"] == 0.91
    assert group_fields([score]) == {"malignant_probability": 0.25, "malignant_flagged": True}
    assert group_scores({**probs, "mel": 0.0}, [MALIGNANT])[0]["flagged"] is False
    assert group_scores(probs, None) == []
    with pytest.raises(BundleError, match="'malignant' names \\['mel'\\]"):
        group_scores({"bcc": 0.5, "akiec": 0.5}, [MALIGNANT])


def test_display_names_show_the_full_name_with_the_code():
    names = {"mel": "Melanoma", "normal": "Normal"}
    assert display_name("mel", names) == "Melanoma (mel)"
    assert display_name("normal", names) == "Normal" and display_name("nv", names) == "nv"
    assert display_name(None, names) is None
    with pytest.raises(ConfigError, match="class_names"):
        PipelineConfig.from_dict(
            {"name": "x", "classifier": {"bundle": "b"}, "class_names": ["mel"]}, "x.yaml"
        )


def test_skin_pipeline_reports_malignant_probability_names_and_tta(skin, monkeypatch):
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    assert DEFAULT_TTA is None and skin.info()["class_names"]["mel"] == "Melanoma"
    plain = skin.analyze(image, gradcam=False)  # nothing recorded in these bundles: TTA on
    assert plain.tta is True and plain.groups == [] and "malignant_probability" not in plain.to_dict()
    for model in (skin.segmenter, skin.classifier):  # validation chose no TTA for either: it does not run
        monkeypatch.setattr(model.spec, "tta", False)
    assert skin.analyze(image, gradcam=False).tta is False and skin.analyze(image, tta=True).tta is True
    monkeypatch.setattr(skin.classifier.spec, "groups", [MALIGNANT])
    a = skin.analyze(image, gradcam=False, tta=False)
    d = a.to_dict()
    expected = sum(a.probabilities[c] for c in ("mel", "bcc", "akiec"))
    assert d["malignant_probability"] == pytest.approx(expected, abs=1e-5) and d["tta"] is False
    assert a.uncertainty is None and d["class_names"]["akiec"].startswith("Actinic keratosis")
    if a.out_of_scope:
        assert d["malignant_flagged"] is None and a.label_name is None
    else:
        assert d["malignant_flagged"] == (expected >= 0.2)
        assert d["label_name"] == f"{d['class_names'][a.label]} ({a.label})"


def test_tta_is_reported_only_when_a_flip_ran_and_a_missing_uncertainty_says_so(skin, monkeypatch):
    image = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    for model in (skin.segmenter, skin.classifier):  # trained under no flip (the chest models): none to run
        monkeypatch.setattr(model.spec, "tta_flips", [])
    a = skin.analyze(image, gradcam=False, tta=True)
    assert a.tta is False and a.uncertainty is None and a.segmentation_uncertainty is None
    assert a.to_dict()["uncertainty_note"] == a.csv_row()["uncertainty_note"] == UNCERTAINTY_NOT_MEASURED
    monkeypatch.setattr(skin.segmenter.spec, "tta_flips", ["hflip"])  # the segmenter's flip runs: TTA used
    assert skin.analyze(image, gradcam=False, tta=True).tta is True
    grey = np.full((96, 128, 3), 90, np.uint8)  # refused by the colour check before any model runs
    refused = skin.analyze(grey, gradcam=False, tta=True)
    assert refused.out_of_scope and refused.tta is False
    note = refused.to_dict()["uncertainty_note"]  # no model ran at all: not "not run on flipped copies"
    assert note == refused.csv_row()["uncertainty_note"] == UNCERTAINTY_NO_MODEL_RAN


def test_people_read_names_and_json_fields_keep_the_identifiers(skin, monkeypatch):
    assert readable("chest_xray") == "chest X-ray" and readable("left_lung") == "left lung"
    assert region_names(["background", "foreground", "heart"], "skin_lesion") == [
        "background",
        "skin lesion",
        "heart",
    ]
    monkeypatch.setattr(skin.segmenter.spec, "classes", ["background", "foreground"])  # a data set's generic
    prob = np.zeros((96, 128), np.float32)
    prob[30:60, 40:90] = 0.9
    monkeypatch.setattr(skin.segmenter, "predict_proba", lambda images: [prob for _ in images])
    a = skin.analyze(np.random.default_rng(2).integers(0, 255, (96, 128, 3), dtype=np.uint8), tta=False)
    assert a.mask_classes == ["background", "foreground"] and a.mask_names == ["background", "skin lesion"]
    assert [e.name for e in a.colour_key] == ["skin lesion"]  # the overlay's key and the JSON's names
    rows = describe_features({"class_area_fractions": {"left_lung": 0.2}, "odd_key": 1})
    assert rows[0]["value"] == "left lung: 20.0%" and rows[1]["name"] == "odd key"


def test_feature_rows_have_names_units_and_say_why_mm_is_blank():
    rows = describe_features({"area_fraction": 0.1234, "area_mm2": None, "count": 2,
                              "locations": [{"centroid_xy": [0.1, 0.1], "label": "upper-left"},
                                            {"centroid_xy": [0.5, 0.5], "label": "centre"}],
                              "size_fractions": [0.05, 0.01], "mystery_value": 3.0})  # fmt: skip
    by_key = {r["key"]: r for r in rows}
    assert by_key["area_fraction"] == {"key": "area_fraction", "name": "Area", "value": "12.3%",
                                       "unit": "% of the image", "explanation": by_key["area_fraction"]
                                       ["explanation"]}  # fmt: skip
    assert by_key["area_mm2"]["value"] == "—" and by_key["area_mm2"]["explanation"] == NO_SPACING
    assert "pixel size is unknown" in NO_SPACING
    assert by_key["locations"]["value"] == "1: upper-left; 2: centre"
    assert by_key["size_fractions"]["value"] == "5.0%, 1.0%" and by_key["count"]["value"] == "2"
    assert by_key["mystery_value"]["name"] == "mystery value"


def _endoscope_frame(size: int = 200) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.42 * size) ** 2
    image = np.zeros((size, size, 3), np.uint8)
    image[inside] = (180, 90, 80)
    return image


def test_field_of_view_leaves_out_the_black_border():
    image = _endoscope_frame()
    fov = field_of_view(image)
    assert not fov[0, 0] and not fov[5, 100] and fov[100, 100]
    assert field_of_view(np.zeros((50, 50, 3), np.uint8)).all()  # all dark: no border to trust


def test_heatmap_is_smooth_at_full_resolution_and_absent_outside_the_field_of_view():
    image = _endoscope_frame(280)
    cam = np.zeros((7, 7), np.float32)
    cam[0, 0] = 1.0  # the strongest "evidence" lies in the black border
    cam[3, 4] = 0.6
    out = heatmap_overlay(image, cam)
    assert out.shape == (280, 280, 3)
    assert (out[:10, :10] == image[:10, :10]).all()  # the border is drawn unchanged
    inside = out[60:220, 60:220].astype(np.int16)
    assert np.abs(np.diff(inside, axis=1)).max() <= 30  # a 7x7 map up-sampled by nearest would step ~150
    assert np.abs(np.diff(inside, axis=0)).max() <= 30


def test_colour_bar_stops_repeat_the_heatmap_colours():
    stops = colour_bar_stops(5)
    assert len(stops) == 5 and stops[0] == "#{:02x}{:02x}{:02x}".format(*jet(np.array(0.0)))
    assert stops[-1] == "#{:02x}{:02x}{:02x}".format(*jet(np.array(1.0)))
    assert jet(np.array(0.0))[2] > 100 and jet(np.array(1.0))[0] > 100  # blue (low) to red (high)

"""The modality check in front of every pipeline, and ``pipeline=auto`` in the pipelines, batch prediction
and the CLI.

The pipelines' bundles are tiny and random, the modality bundle included; its classifier's verdicts come from
a rule instead (`tests.helpers_modality`), so that these tests check what the pipelines do with a verdict,
not what a random network sees. The trained bundle's own figures are in its model card. The REST API and the
UI: ``tests/test_app_auto.py``.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from medlens.cli.commands import EXIT_UNREADABLE_INPUT
from medlens.errors import ConfigError
from medlens.pipelines.advice import DEFAULT_NOTICE
from medlens.pipelines.config import PipelineConfig, load_pipeline_configs
from medlens.pipelines.names import readable
from medlens.pipelines.pipeline import load_pipelines
from medlens.pipelines.routing import AUTO, ModalityRouter
from tests.helpers_inference import MODALITY_CLASSES, make_pipeline_bundles
from tests.helpers_modality import KNOWN, REAL_CLASSIFY, key, marked, rule_based_classifier


@pytest.fixture(scope="module", autouse=True)
def _rule_based_classifier():
    with rule_based_classifier():
        yield


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return make_pipeline_bundles(tmp_path_factory.mktemp("modality"), modality=True)


@pytest.fixture(scope="module")
def pipelines(models_dir):
    return load_pipelines(models_dir)


# ------------------------------------------------------------------------------------------------- config
def test_shipped_pipelines_name_the_modality_they_take():
    configs = load_pipeline_configs("/nonexistent")
    checks = {name: (cfg.modality, cfg.modality_check.label, cfg.modality_check.bundle)
              for name, cfg in configs.items()}  # fmt: skip
    assert checks == {
        "skin": ("dermoscopy", "dermoscopy", "modality"),
        "polyp": ("colonoscopy", "endoscopy", "modality"),
        "chest-xray": ("chest X-ray", "chest_xray", "modality"),
    }


def test_modality_section_forms_and_errors():
    base = {"name": "p", "segmenter": {"bundle": "s"}}
    old = PipelineConfig.from_dict({**base, "modality": "dermoscopy"}, "old.yaml")
    assert old.modality == "dermoscopy" and old.modality_check is None  # the older form: a name, no check
    short = PipelineConfig.from_dict({**base, "modality": {"label": "fundus"}}, "new.yaml")
    assert (short.modality, short.modality_check.label, short.modality_check.bundle) == (
        "fundus", "fundus", "modality"
    )  # fmt: skip
    assert short.scope.modality_name == "fundus"
    for bad, words in (
        ({"label": "fundus", "bundel": "m"}, "unknown key"),
        ({"name": "eye", "bundle": "m"}, "modality.label"),
        ({"label": ""}, "non-empty"),
        (["fundus"], "a word or a mapping"),
    ):
        with pytest.raises(ConfigError, match=words) as err:
            PipelineConfig.from_dict({**base, "modality": bad}, "bad.yaml")
        assert "bad.yaml" in str(err.value)


# ------------------------------------------------------------------------------------------------- pipelines
def test_pipelines_share_one_classifier_and_know_who_takes_what(pipelines):
    gates = {name: p.modality_gate for name, p in pipelines.items()}
    assert all(g is not None for g in gates.values())
    assert len({id(g.classifier) for g in gates.values()}) == 1
    routes = {"dermoscopy": "skin", "endoscopy": "polyp", "chest_xray": "chest-xray"}
    assert all(g.routes == routes for g in gates.values())
    info = pipelines["polyp"].info()
    assert info["modality_label"] == "endoscopy" and info["modality_check"] == "modality"


def test_the_tiny_modality_bundle_gives_a_verdict_per_image(pipelines):
    classifier = pipelines["skin"].modality_gate.classifier
    seen = REAL_CLASSIFY(classifier, [marked("dermoscopy"), marked("chest_xray", size=40), marked("other")])
    assert len(seen) == 3 and all(s.label in MODALITY_CLASSES for s in seen)
    assert all(sum(s.probabilities.values()) == pytest.approx(1.0, abs=1e-4) for s in seen)
    assert REAL_CLASSIFY(classifier, []) == []


@pytest.mark.parametrize(
    ("pipeline", "label", "words"),
    [
        ("skin", "endoscopy", ["looks like a colonoscopy (endoscopy) frame", "use the polyp pipeline"]),
        ("polyp", "dermoscopy", ["looks like a dermoscopy image", "use the skin pipeline"]),
        ("chest-xray", "endoscopy", ["colonoscopy (endoscopy) frame", "use the polyp pipeline"]),
        ("skin", "chest_xray", ["looks like a chest X-ray", "use the chest-xray pipeline"]),
        ("polyp", "fundus", ["looks like a retinal fundus photograph", "no medlens pipeline takes it"]),
        ("chest-xray", "other", ["does not look like a medical image", "no medlens pipeline takes it"]),
    ],
)
def test_an_image_of_another_modality_is_refused_naming_what_fits(pipelines, pipeline, label, words):
    a = pipelines[pipeline].analyze(marked(label), tta=False)
    assert a.out_of_scope and a.label is None and a.mask is None and a.probabilities == {}
    for w in words:
        assert w in a.scope_reason
    assert f"modality check: {readable(label)}, 0.92" in a.scope_reason and "chest_xray" not in a.scope_reason
    assert a.recommendation.startswith(f"Out of scope for the {pipelines[pipeline].title} pipeline: this")
    scope = [f for f in a.findings if f.source == "scope"]  # the refusal is a finding too, the first
    assert a.findings[0] == scope[0] and scope[0].severity == "high" and a.scope_reasons[0] in scope[0].text
    assert a.modality["label"] == label and a.modality["probability"] == pytest.approx(0.92)
    assert a.notice == DEFAULT_NOTICE and a.learnt_from == {}  # not the pipeline's notice nor its provenance
    assert a.timings_ms["segment"] == 0 and a.timings_ms["classify"] == 0  # no model ran after the check
    assert a.to_dict()["modality"]["pipeline"] == {"dermoscopy": "skin", "endoscopy": "polyp"}.get(
        label, "chest-xray" if label == "chest_xray" else None
    )


def test_every_reason_an_image_is_refused_is_kept(pipelines):
    """A grey chest film sent to the skin pipeline fails the modality check and the colour check: both."""
    a = pipelines["skin"].analyze(marked("chest_xray", grey=True), tta=False)
    assert len(a.scope_reasons) == 2
    assert "looks like a chest X-ray" in a.scope_reasons[0] and "looks grayscale" in a.scope_reasons[1]
    assert a.scope_reason == "; and ".join(a.scope_reasons) and a.scope_reason in a.recommendation
    assert [f.text for f in a.findings if f.source == "scope"] == [
        f"Out of scope: {r}." for r in a.scope_reasons
    ]
    assert a.to_dict()["scope_reasons"] == a.scope_reasons
    assert a.csv_row()["scope_reasons"] == " | ".join(a.scope_reasons)


def test_scope_off_runs_every_stage_and_still_records_the_checks(pipelines):
    """What the inference benchmark times: the modality check runs, and refuses nothing."""
    a = pipelines["polyp"].analyze(marked("fundus"), tta=False, gradcam=True, scope=False)
    assert a.mask is not None and a.gradcam is not None and a.timings_ms["segment"] > 0
    assert a.out_of_scope and "retinal fundus photograph" in a.scope_reasons[0]
    batch = pipelines["polyp"].analyze_batch([marked("fundus")], tta=False, scope=False)
    assert batch[0].mask is not None and batch[0].out_of_scope


def test_the_right_modality_goes_on_and_the_older_checks_still_apply(pipelines):
    skin = pipelines["skin"]
    a = skin.analyze(marked("dermoscopy"), tta=False)
    assert a.modality["label"] == "dermoscopy" and a.mask is not None
    assert not a.out_of_scope or "modality check" not in a.scope_reason  # random weights may still be unsure
    grey = skin.analyze(marked("dermoscopy", grey=True), tta=False)  # passes the check, fails colour vs grey
    assert grey.out_of_scope and "grayscale" in grey.scope_reason and grey.modality["label"] == "dermoscopy"
    xray = pipelines["chest-xray"].analyze(marked("chest_xray", size=96), tta=False)
    assert xray.modality["label"] == "chest_xray" and xray.mask is not None


def test_a_batch_gives_what_single_images_give(pipelines):
    skin = pipelines["skin"]
    images = [marked("dermoscopy"), marked("endoscopy"), marked("dermoscopy", grey=True), marked("other")]
    batch = skin.analyze_batch(images, tta=False)
    for image, b in zip(images, batch, strict=True):
        a = skin.analyze(image, tta=False)
        assert (a.out_of_scope, a.scope_reason, a.modality) == (b.out_of_scope, b.scope_reason, b.modality)


def test_a_missing_modality_bundle_means_no_check_logged_once(models_dir, tmp_path, caplog, capsys):
    from medlens import cli

    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder, ignore=shutil.ignore_patterns("modality"))
    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.modality"):
        loaded = load_pipelines(folder)
    assert set(loaded) == {"skin", "polyp", "chest-xray"}
    assert all(p.modality_gate is None for p in loaded.values())
    warnings = [r for r in caplog.records if "without the modality check" in r.getMessage()]
    assert len(warnings) == 1 and "'modality' not found" in warnings[0].getMessage()
    a = loaded["skin"].analyze(marked("endoscopy"), tta=False)
    assert (
        a.modality is None
        and a.timings_ms["modality"] == 0
        and "modality check" not in (a.scope_reason or "")
    )
    assert ModalityRouter.from_pipelines(loaded) is None
    assert cli.main(["models", str(folder)]) == 0
    assert "ready, no modality check (modality missing)" in capsys.readouterr().out


def test_a_label_the_modality_bundle_lacks_is_a_config_error(models_dir, tmp_path, caplog):
    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder)
    (folder / "pipelines").mkdir()
    raw = yaml.safe_load(Path(load_pipeline_configs(folder)["polyp"].source).read_text())
    raw.update(name="ultrasound", modality={"name": "ultrasound", "label": "ultrasound"})
    (folder / "pipelines" / "ultrasound.yaml").write_text(yaml.safe_dump(raw))
    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.pipeline"):
        loaded = load_pipelines(folder)
    assert (
        "ultrasound" not in loaded and "'ultrasound' is not a class of the modality classifier" in caplog.text
    )


# ------------------------------------------------------------------------------------------------- auto
def _real_images(shared: Path) -> dict[str, tuple[str, np.ndarray]]:
    """One image of each collection, registered with the rule as its modality."""
    picks = {
        "ham10000": ("dermoscopy", "ISIC_0024307.jpg"), "isic2017_seg": ("dermoscopy", "ISIC_0000000.jpg"),
        "kvasir_seg": ("endoscopy", "cju0qkwl35piu0993l0dewei2.jpg"), "cvc_clinicdb": ("endoscopy", "1.jpg"),
        "chestxray_pneumonia": ("chest_xray", "IM-0115-0001.jpeg"),
        "cxr_lungs_shenzhen": ("chest_xray", "CHNCXR_0001_0.png"),
        "cxr_lungs_jsrt": ("chest_xray", "JPCLN001.png"),
        "drive": ("fundus", "01_test.png"),
    }  # fmt: skip
    out = {}
    for collection, (label, name) in picks.items():
        image = np.asarray(Image.open(shared / collection / "images" / name).convert("RGB"))
        KNOWN[key(image)] = label
        out[collection] = (label, image)
    return out


def test_auto_sends_each_collection_to_its_pipeline(pipelines, shared_datasets):
    router = ModalityRouter.from_pipelines(pipelines)
    assert router.routes == {"dermoscopy": "skin", "endoscopy": "polyp", "chest_xray": "chest-xray"}
    real = _real_images(shared_datasets)
    results = router.analyze_batch(pipelines, [image for _, image in real.values()], tta=False)
    expected = {"dermoscopy": "skin", "endoscopy": "polyp", "chest_xray": "chest-xray", "fundus": AUTO}
    for (collection, (label, _)), a in zip(real.items(), results, strict=True):
        assert a.pipeline == expected[label], collection
        assert a.modality["label"] == label and a.timings_ms["modality"] > 0
        if a.pipeline != AUTO:  # the pipeline's own checks pass: its images have the colour it expects
            assert a.mask is not None and "grayscale" not in (a.scope_reason or ""), collection
            assert "colour (mean chroma" not in (a.scope_reason or ""), collection


def test_auto_refuses_uniform_noise_and_images_no_pipeline_takes(pipelines):
    router = ModalityRouter.from_pipelines(pipelines)
    noise = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    noise[0, 0] = 0
    images = [np.full((40, 60, 3), 128, np.uint8), noise, marked("fundus"), marked("endoscopy")]
    results = router.analyze_batch(pipelines, images, tta=False)
    assert [a.pipeline for a in results] == [AUTO, AUTO, AUTO, "polyp"]
    for a, image in zip(results[:3], images, strict=False):
        assert a.out_of_scope and a.label is None and a.probabilities == {} and a.mask is None
        assert a.image_size == image.shape[:2] and a.recommendation.startswith("Out of scope: this")
        assert "no medlens pipeline takes it" in a.scope_reason and a.notice.startswith("Research tool")
    assert "does not look like a medical image" in results[0].scope_reason
    assert "retinal fundus photograph" in results[2].scope_reason
    routes = {
        "chest_xray": "chest-xray",
        "dermoscopy": "skin",
        "endoscopy": "polyp",
        "fundus": None,
        "other": None,
    }
    assert router.info() == {"bundle": "modality", "routes": routes}


def _inputs(folder: Path) -> Path:
    folder.mkdir()
    for label in ("dermoscopy", "endoscopy", "chest_xray", "fundus", "other"):
        Image.fromarray(marked(label)).save(folder / f"{label}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_predict_auto_writes_each_image_by_its_pipeline(models_dir, tmp_path):
    from medlens import cli

    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["predict", "auto", str(inputs), "--out", str(out), "--models-dir", str(models_dir), "--no-tta"]
    assert cli.main(argv) == EXIT_UNREADABLE_INPUT  # broken.png: every readable image still written
    with (out / "summary.csv").open() as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert {k: rows[k]["pipeline"] for k in ("dermoscopy", "endoscopy", "chest_xray", "fundus", "other")} == {
        "dermoscopy": "skin", "endoscopy": "polyp", "chest_xray": "chest-xray", "fundus": AUTO, "other": AUTO
    }  # fmt: skip
    assert rows["fundus"]["modality"] == "fundus" and rows["fundus"]["out_of_scope"] == "True"
    assert rows["fundus"]["findings"].startswith("high: Out of scope: this looks like a retinal fundus")
    assert rows["fundus"]["recommendation"].startswith("Out of scope: this looks like a retinal fundus")
    assert {"gradcam_inside_region", "findings", "recommendation"} <= set(rows["endoscopy"])
    assert rows["broken"]["status"] == "error"
    refused = json.loads((out / "fundus.json").read_text())
    assert refused["pipeline"] == AUTO and "retinal fundus photograph" in refused["scope_reason"]
    assert (out / "endoscopy_mask.png").is_file() and not (out / "fundus_mask.png").exists()


def test_predict_auto_without_the_modality_bundle_says_so(models_dir, tmp_path, capsys):
    from medlens import cli

    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder, ignore=shutil.ignore_patterns("modality"))
    inputs = _inputs(tmp_path / "in")
    argv = ["predict", "auto", str(inputs), "--out", str(tmp_path / "out"), "--models-dir", str(folder)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "'auto' needs the modality classifier" in err and "skin" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()

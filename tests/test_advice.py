"""Advice rules (first match wins, default), the mandatory notice and the out-of-scope checks."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.errors import ConfigError
from medlens.pipelines.advice import (
    DEFAULT_NOTICE,
    AdviceConfig,
    AdviceContext,
    ScopeConfig,
    check_confidence,
    check_modality,
    check_region,
    ensure_notice,
    image_chroma,
)

RULES = {
    "notice": "Research tool, not a diagnosis. Talk to a doctor.",
    "default": "Nothing of concern recognised.",
    "rules": [
        {"when": {"label_in": ["mel", "bcc", "akiec"], "prob_gte": 0.3}, "say": "High concern."},
        {"when": {"class_prob_gte": {"mel": 0.2}}, "say": "Some melanoma probability."},
        {"when": {"uncertainty_gte": 0.2}, "say": "Unsure."},
        {"when": {"feature_gte": {"diameter_mm": 6.0}, "feature_lt": {"asymmetry": 0.5}}, "say": "Large."},
        {"when": {"region_found": False}, "say": "Nothing found."},
        {"when": {"label_not_in": ["nv"], "prob_lt": 0.5}, "say": "Other, low probability."},
    ],
}


@pytest.fixture()
def cfg() -> AdviceConfig:
    return AdviceConfig.from_dict(RULES, "skin.yaml")


def test_first_matching_rule_wins(cfg):
    ctx = AdviceContext(label="mel", probability=0.35, probabilities={"mel": 0.35}, uncertainty=0.5)
    assert cfg.advise(ctx) == "High concern."  # also matches later rules: the first wins
    assert cfg.advise(AdviceContext(label="mel", probability=0.25, probabilities={"mel": 0.25})) == (
        "Some melanoma probability."
    )
    assert cfg.advise(
        AdviceContext(label="nv", probability=0.9, probabilities={"mel": 0.05}, uncertainty=0.25)
    ) == ("Unsure.")


def test_feature_conditions_all_must_hold_and_missing_values_never_match(cfg):
    base = {"label": "nv", "probability": 0.9, "probabilities": {"mel": 0.01}, "uncertainty": 0.01}
    assert cfg.advise(AdviceContext(**base, features={"diameter_mm": 7.0, "asymmetry": 0.1})) == "Large."
    assert cfg.advise(AdviceContext(**base, features={"diameter_mm": 7.0, "asymmetry": 0.9})) == cfg.default
    assert cfg.advise(AdviceContext(**base, features={"diameter_mm": None, "asymmetry": 0.1})) == cfg.default
    assert cfg.advise(AdviceContext(**base, features={})) == cfg.default
    assert cfg.advise(AdviceContext(**base, region_found=False)) == "Nothing found."
    assert cfg.advise(AdviceContext(label="bkl", probability=0.4)) == "Other, low probability."
    assert cfg.advise(AdviceContext()) == "Nothing of concern recognised."  # no classifier, no features


def test_notice_is_mandatory():
    assert AdviceConfig.from_dict({}).notice == DEFAULT_NOTICE
    assert AdviceConfig.from_dict({"notice": ""}).notice == DEFAULT_NOTICE
    custom = ensure_notice("For demonstration only.")
    assert custom.startswith("Research tool, not a diagnosis.") and custom.endswith("For demonstration only.")
    assert AdviceConfig.from_dict(RULES).notice == RULES["notice"]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"rules": [{"when": {"label_is": "mel"}, "say": "x"}]}, "unknown condition 'label_is'"),
        ({"rules": [{"when": {"prob_gte": "high"}, "say": "x"}]}, "bad value"),
        ({"rules": [{"when": {"label_in": "mel"}, "say": "x"}]}, "bad value"),
        ({"rules": [{"when": {}, "text": "x"}]}, "'when'"),
        ({"rules": "x"}, "must be a list"),
        ({"notes": "x"}, "unknown key"),
    ],
)
def test_bad_rules_raise_config_error_naming_the_file(bad, match):
    with pytest.raises(ConfigError, match=match) as err:
        AdviceConfig.from_dict(bad, "my.yaml")
    assert "my.yaml" in str(err.value)


def test_modality_check_by_chroma():
    grey = np.repeat(np.random.default_rng(0).integers(0, 255, (32, 32, 1), dtype=np.uint8), 3, axis=2)
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 0], colour[..., 1], colour[..., 2] = 180, 120, 100  # skin-like
    assert image_chroma(grey) == 0.0 and image_chroma(grey[..., :1]) == 0.0
    assert image_chroma(colour) == pytest.approx(80.0)
    skin = ScopeConfig(expect="colour", modality_name="dermoscopy")
    xray = ScopeConfig(expect="grayscale")
    assert "grayscale" in check_modality(grey, skin) and "dermoscopy" in check_modality(grey, skin)
    assert check_modality(colour, skin) is None
    assert "colour" in check_modality(colour, xray) and check_modality(grey, xray) is None
    assert check_modality(grey, ScopeConfig()) is None


def test_confidence_and_region_checks():
    scope = ScopeConfig(
        min_probability=0.5, max_uncertainty=0.1, require_region=True, min_region_fraction=0.01
    )
    assert check_confidence(0.4, 0.2, scope) is not None  # low probability and high uncertainty
    assert check_confidence(0.4, 0.05, scope) is None  # low probability but stable under TTA
    assert check_confidence(0.6, 0.3, scope) is None
    assert check_confidence(0.4, None, scope) is not None  # no TTA: the floor alone decides
    assert check_confidence(0.1, 0.5, ScopeConfig()) is None  # no floor configured
    assert check_region(0.0, scope) is not None and check_region(0.005, scope) is not None
    assert check_region(0.2, scope) is None and check_region(0.0, ScopeConfig()) is None


def test_scope_config_validation():
    assert ScopeConfig.from_dict({"expect": "grayscale", "chroma_threshold": 5}).chroma_threshold == 5
    with pytest.raises(ConfigError, match="unknown key"):
        ScopeConfig.from_dict({"expected": "colour"}, "x.yaml")
    with pytest.raises(ConfigError, match="expect"):
        ScopeConfig.from_dict({"expect": "rgb"}, "x.yaml")
    with pytest.raises(ConfigError, match="min_probability"):
        ScopeConfig.from_dict({"min_probability": "low"}, "x.yaml")


FINDINGS = {
    **RULES,
    "findings": [
        {"name": "wide", "when": {"feature_gte": {"diameter_mm": 6}}, "severity": "moderate", "say": "Wide."},
        {"name": "odd_shape", "when": {"feature_gte": {"asymmetry": 0.3}}, "severity": "low", "say": "Odd."},
        {"name": "looked_away", "when": {"gradcam_inside_lt": 0.5}, "severity": "high", "say": "Elsewhere."},
    ],
}


def test_every_finding_that_holds_is_listed_most_severe_first():
    cfg = AdviceConfig.from_dict(FINDINGS, "skin.yaml")
    ctx = AdviceContext(label="mel", probability=0.35, features={"diameter_mm": 7.0, "asymmetry": 0.4},
                        gradcam_inside=0.2)  # fmt: skip
    assert cfg.advise(ctx) == "High concern."  # the reading: still the first rule that holds
    assert [(f.source, f.severity, f.text) for f in cfg.find(ctx)] == [
        ("looked_away", "high", "Elsewhere."),
        ("wide", "moderate", "Wide."),
        ("odd_shape", "low", "Odd."),
    ]
    assert [f.source for f in cfg.find(AdviceContext(features={"asymmetry": 0.4}, gradcam_inside=0.9))] == [
        "odd_shape"
    ]
    assert cfg.find(AdviceContext()) == []  # unknown values never make a finding
    reasons = ["the image looks grayscale", "the classifier is unsure"]
    scope = cfg.find(AdviceContext(features={"diameter_mm": 9.0}), scope_reasons=reasons)
    # a refused image: its refusal only, one finding per reason
    assert [(f.source, f.severity) for f in scope] == [("scope", "high"), ("scope", "high")]
    assert [f.text for f in scope] == [
        "Out of scope: the image looks grayscale.",
        "Out of scope: the classifier is unsure.",
    ]


def test_advice_with_rules_only_still_loads_and_findings_are_validated():
    old = AdviceConfig.from_dict(RULES, "old.yaml")  # a YAML written before findings existed
    assert old.findings == [] and old.find(AdviceContext(features={"diameter_mm": 9.0})) == []
    named = AdviceConfig.from_dict(
        {"findings": [{"when": {"region_found": True}, "severity": "low", "say": "x"}]}
    )
    assert named.findings[0].name == "finding0"
    for bad, match in (
        ({"findings": [{"when": {}, "say": "x"}]}, "severity"),
        ({"findings": [{"when": {}, "say": "x", "severity": "urgent"}]}, "severity"),
        ({"findings": [{"when": {"gradcam_inside_lt": "most"}, "say": "x", "severity": "low"}]}, "bad value"),
        ({"findings": [{"name": "a", "when": {}, "say": "x", "severity": "low"}] * 2}, "must differ"),
        ({"findings": {"a": 1}}, "must be a list"),
    ):
        with pytest.raises(ConfigError, match=match):
            AdviceConfig.from_dict(bad, "my.yaml")


def test_shipped_chest_advice_shows_a_childs_film_findings_beside_the_reading():
    """The issue's film: pneumonia, CTR .677, lung area ratio .17 (asymmetry flag): the reading no longer
    hides the two measured findings."""
    from medlens.pipelines.config import load_pipeline_configs

    advice = load_pipeline_configs("/nonexistent-models")["chest-xray"].advice
    features = {"cardiothoracic_ratio": 0.677, "lung_area_ratio": 0.17, "lung_asymmetry_flag": True,
                "lung_fraction_total": 0.3}  # fmt: skip
    ctx = AdviceContext(label="pneumonia", probability=0.9, uncertainty=0.01, features=features)
    assert advice.advise(ctx).startswith("Pattern consistent with pneumonia")
    assert [(f.source, f.severity) for f in advice.find(ctx)] == [
        ("one_lung_small", "high"),
        ("ctr_above_adult_limit", "moderate"),
    ]
    ctx.gradcam_inside = 0.2  # most of the evidence outside the lungs and heart
    found = advice.find(ctx)
    assert [f.source for f in found] == ["evidence_outside_lungs", "one_lung_small", "ctr_above_adult_limit"]
    assert "looked outside the lungs" in found[0].text and "unreliable" in found[0].text
    failed = {"cardiothoracic_ratio": None, "cardiothoracic_ratio_failed": 1.08, "lung_fraction_total": 0.3}
    ctx = AdviceContext(label="pneumonia", probability=0.9, uncertainty=0.01, features=failed)
    assert [f.source for f in advice.find(ctx)] == ["ctr_not_measured"]  # an impossible ratio is no finding
    tb = AdviceContext(label="tuberculosis", probability=0.8, uncertainty=0.01, features={})
    assert "tuberculosis" in advice.advise(tb)

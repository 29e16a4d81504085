"""Decision rules fitted on validation: prior-corrected arg-max and summed-group flags."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.errors import BundleError, ConfigError
from medlens.evaluation.classification_metrics import balanced_accuracy
from medlens.inference.decisions import apply_decision
from medlens.spec import ClassGroup, Decision, ModelSpec, ThresholdDecision
from medlens.training.decisions import fit_group_flags, fit_prior_decision, prior_weights
from medlens.training.validation import classification_report, classification_test_report

CLASSES = ["nv", "mel", "bcc"]


def _imbalanced(seed: int = 0, n: int = 900) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = np.array([700, 150, 50])
    y = rng.choice(3, size=n, p=counts / counts.sum())
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.5
    logits[:, 0] += 1.0  # a model biased towards the frequent class
    return logits, y, counts


def test_prior_decision_raises_balanced_accuracy_and_is_applied_by_predictors() -> None:
    logits, y, counts = _imbalanced()
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    decision = fit_prior_decision(probs, y, counts)
    assert 0 < decision.prior_power <= 1.5 and decision.fitted_on == "val"
    pred = apply_decision(probs, CLASSES, decision)
    assert balanced_accuracy(y, pred) > balanced_accuracy(y, probs.argmax(1)) + 0.03
    np.testing.assert_allclose(prior_weights(counts, 0.0), 1.0)
    assert prior_weights(counts, 1.0)[2] > prior_weights(counts, 1.0)[1] > prior_weights(counts, 1.0)[0]


def test_group_flag_reaches_its_sensitivity_on_validation() -> None:
    logits, y, _ = _imbalanced(1)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    (flag,) = fit_group_flags(probs, y, CLASSES, {"malignant": ["mel", "bcc"]}, 0.9)
    assert flag.name == "malignant" and flag.sensitivity >= 0.9 and 0 < flag.threshold < 1
    with pytest.raises(ConfigError, match="are not classes"):
        fit_group_flags(probs, y, CLASSES, {"malignant": ["melanoma"]}, 0.9)


def test_report_fits_on_validation_and_test_report_reuses_the_rules() -> None:
    val_logits, val_y, counts = _imbalanced(2)
    update, metrics = classification_report(val_logits, val_y, CLASSES, True, None, None, counts,
                                            {"malignant": ["mel", "bcc"]}, 0.9)  # fmt: skip
    assert update["decision"].fitted_on == "val" and update["groups"][0].threshold > 0
    assert metrics["decision"]["balanced_accuracy"] > metrics["balanced_accuracy"]
    scaled = np.exp(val_logits / update["temperature"])  # calibrated first, as the report does
    at_rule = apply_decision(scaled / scaled.sum(1, keepdims=True), CLASSES, update["decision"])
    matrix = np.array(metrics["decision"]["confusion_matrix"])  # rows: true class, at the rule
    assert matrix.sum() == len(val_y) and matrix.trace() == (at_rule == val_y).sum()
    assert matrix[:, 0].sum() == (at_rule == 0).sum() != np.array(metrics["confusion_matrix"])[:, 0].sum()
    test_logits, test_y, _ = _imbalanced(3)
    spec = ModelSpec(task="classification", arch="resnet18", in_channels=3, num_classes=3, input_size=(8, 8),
                     mode="multiclass", classes=CLASSES, **update)  # fmt: skip
    test = classification_test_report(test_logits, test_y, CLASSES, spec)
    assert test["decision"]["class_weights"] == list(update["decision"].class_weights)
    assert test["groups"][0]["threshold"] == update["groups"][0].threshold
    assert 0.8 < test["groups"][0]["sensitivity"] <= 1.0 and set(test["decision"]["recall"]) == set(CLASSES)


def test_decision_and_group_forms_are_read_typed_and_written_back_unchanged() -> None:
    forms = [0.3, {"positive_class": "mel", "threshold": 0.2},
             {"positive_class": "mel", "threshold": 0.2, "target_sensitivity": 0.9, "fitted_on": "val + b"},
             {"class_weights": [1.0, 2.0, 0.5], "prior_power": 0.5, "fitted_on": "val"},
             {"class_weights": [1, 1, 1]}]  # fmt: skip
    rules = [Decision.from_dict(form) for form in forms]
    assert [rule.to_dict() for rule in rules] == forms
    assert [type(r).__name__ for r in rules] == ["ThresholdDecision"] * 3 + ["PriorDecision"] * 2
    assert rules[0].class_index(CLASSES) == rules[1].class_index(CLASSES) == 1 and rules[3].prior_power == 0.5
    group = {"name": "malignant", "classes": ["mel", "bcc"], "threshold": 0.3}
    spec = ModelSpec(task="classification", arch="resnet18", in_channels=3, num_classes=3, input_size=(8, 8),
                     mode="multiclass", classes=CLASSES, decision=forms[2], groups=[group])  # fmt: skip
    assert isinstance(spec.decision, ThresholdDecision) and spec.groups == [ClassGroup.from_dict(group)]
    assert spec.to_dict()["decision"] == forms[2] and spec.to_dict()["groups"] == [group]
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(BundleError, match=r"lacks \['positive_class'\]"):
        Decision.from_dict({"threshold": 0.5})
    with pytest.raises(BundleError, match=r"unknown key\(s\) \['tau'\]"):
        Decision.from_dict({"class_weights": [1.0], "tau": 1.0})
    with pytest.raises(BundleError, match="class group"):
        ClassGroup.from_dict({"name": "malignant"})
    with pytest.raises(BundleError, match="invalid model spec"):
        ModelSpec.from_dict({**spec.to_dict(), "decision": "argmax"})

"""Calibration: hand-computed ECE/Brier, temperature scaling on an over-confident model, thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.errors import MedlensError
from medlens.evaluation.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
    threshold_for_sensitivity,
)


def test_ece_two_bins_hand_computed() -> None:
    probs = np.array([[0.4, 0.3, 0.3], [0.45, 0.35, 0.2], [0.9, 0.05, 0.05], [0.1, 0.7, 0.2]])
    y = np.array([0, 1, 0, 2])
    # bin (0, .5]: conf .40 (right), .45 (wrong) -> |0.5 - 0.425| = 0.075
    # bin (.5, 1]: conf .90 (right), .70 (wrong) -> |0.5 - 0.800| = 0.300;  ECE = 0.5 * 0.075 + 0.5 * 0.3
    assert expected_calibration_error(probs, y, n_bins=2) == pytest.approx(0.1875)
    curve = reliability_curve(probs, y, n_bins=2)
    assert curve.counts.tolist() == [2, 2]
    assert curve.confidence == pytest.approx([0.425, 0.8])
    assert curve.accuracy == pytest.approx([0.5, 0.5])
    assert curve.edges == pytest.approx([0, 0.5, 1])


def test_ece_bin_edges_and_binary_vector() -> None:
    # 0.5 exactly belongs to the first of two bins (bins are (lo, hi]); a (N,) vector is p(class 1)
    curve = reliability_curve(np.array([0.5, 1.0]), np.array([1, 1]), n_bins=2)
    assert curve.counts.tolist() == [1, 1]
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0
    empty_bins = reliability_curve(np.array([[0.2, 0.8]]), np.array([1]), n_bins=10)
    assert np.isnan(empty_bins.accuracy[0]) and empty_bins.counts.sum() == 1


def test_brier_score_hand_computed() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    # (0.09 + 0.04 + 0.01) and (0.25 + 0.25 + 1.0)
    assert brier_score(probs, np.array([0, 2])) == pytest.approx((0.14 + 1.5) / 2)
    assert brier_score(np.eye(3), np.arange(3)) == 0.0


def _overconfident(n: int = 4000, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(n, k))
    p = apply_temperature(logits, 1.0).astype(np.float64)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(1)  # sample labels from the calibrated model
    return 4.0 * logits, y


def test_temperature_scaling_fixes_an_overconfident_model() -> None:
    logits, y = _overconfident()
    before = expected_calibration_error(apply_temperature(logits, 1.0), y)
    t = fit_temperature(logits, y)
    after = expected_calibration_error(apply_temperature(logits, t), y)
    assert 3.6 < t < 4.6
    assert before > 0.1
    assert after < before / 5
    # argmax (accuracy) does not change
    assert (apply_temperature(logits, t).argmax(1) == logits.argmax(1)).all()
    # tensors work as well, and a calibrated model keeps T ~ 1
    assert fit_temperature(torch.from_numpy(logits / 4), torch.from_numpy(y)) == pytest.approx(1.0, abs=0.15)


def test_fit_temperature_degenerate_and_bad_input() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    with pytest.raises(MedlensError):
        fit_temperature(np.zeros((4, 3)), np.zeros(5, dtype=int))


def test_apply_temperature_numpy_and_torch() -> None:
    logits = np.array([[2.0, 0.0, -1.0]])
    p = apply_temperature(logits, 2.0)
    expected = np.exp([1.0, 0.0, -0.5]) / np.exp([1.0, 0.0, -0.5]).sum()
    assert p == pytest.approx(expected[None], rel=1e-5)
    pt = apply_temperature(torch.tensor(logits), 2.0)
    assert torch.is_tensor(pt) and np.allclose(pt.numpy(), expected[None])
    with pytest.raises(MedlensError):
        apply_temperature(logits, 0.0)


def test_threshold_for_sensitivity_hand_computed() -> None:
    p = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.5, 0.2, 0.1])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    assert threshold_for_sensitivity(p, y, 0.75) == pytest.approx(0.7)  # 3 of 4 positives >= 0.7
    assert threshold_for_sensitivity(p, y, 0.76) == pytest.approx(0.3)  # needs all 4
    assert threshold_for_sensitivity(p, y, 1.0) == pytest.approx(0.3)
    with pytest.raises(MedlensError, match="no positive"):
        threshold_for_sensitivity(p, np.zeros(8), 0.9)
    with pytest.raises(MedlensError):
        threshold_for_sensitivity(p, y, 1.5)


def test_threshold_reaches_target_with_best_specificity() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=500)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
    for target in (0.8, 0.9, 0.95, 0.99):
        t = threshold_for_sensitivity(p, y, target)
        sens = ((p >= t) & (y == 1)).sum() / (y == 1).sum()
        assert sens >= target
        # any larger threshold would miss the target
        larger = np.nextafter(t, 1.0)
        assert ((p >= larger) & (y == 1)).sum() / (y == 1).sum() < target
    # the exact-fraction case: 20 positives at 0.95 needs 19 of them, not 20
    p20, y20 = np.linspace(0.05, 1.0, 20), np.ones(20)
    assert threshold_for_sensitivity(p20, y20, 0.95) == pytest.approx(0.1)

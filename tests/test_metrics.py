"""Metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from medlens.errors import MedlensError
from medlens.evaluation.classification_metrics import classification_metrics, sensitivity_at_specificity
from medlens.evaluation.metrics import (
    SEGMENTATION_METRICS,
    SegmentationMetricAccumulator,
    bootstrap_ci,
    dice,
    hd95,
    iou,
    pixel_accuracy,
    precision,
    segmentation_scores,
    segmentation_scores_multiclass,
    sensitivity,
    specificity,
)
from medlens.jsonable import to_jsonable

# tp = 2 at (0,0) and (1,1); fp = 1 at (0,1); fn = 1 at (1,0); tn = 5
PRED = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
TARGET = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)


def test_binary_metrics_match_hand_computed_values() -> None:
    assert dice(PRED, TARGET) == pytest.approx(4 / 6)
    assert iou(PRED, TARGET) == pytest.approx(2 / 4)
    assert sensitivity(PRED, TARGET) == pytest.approx(2 / 3)
    assert specificity(PRED, TARGET) == pytest.approx(5 / 6)
    assert precision(PRED, TARGET) == pytest.approx(2 / 3)
    assert pixel_accuracy(PRED, TARGET) == pytest.approx(7 / 9)
    # asymmetric case: precision and sensitivity swap with the arguments
    small = np.zeros((3, 3), bool)
    small[0, 0] = True
    assert precision(small, TARGET) == 1.0
    assert sensitivity(small, TARGET) == pytest.approx(1 / 3)
    assert sensitivity(TARGET, small) == 1.0
    assert precision(TARGET, small) == pytest.approx(1 / 3)


def test_empty_mask_conventions() -> None:
    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    some = np.zeros((4, 4), bool)
    some[1, 1] = True
    for fn in (dice, iou, sensitivity, precision, specificity, pixel_accuracy):
        assert fn(empty, empty) == 1.0, fn.__name__
    assert dice(empty, some) == 0.0 and dice(some, empty) == 0.0
    assert precision(empty, some) == 0.0  # predicting nothing is not rewarded
    assert sensitivity(some, empty) == 0.0
    assert specificity(some, full) == 1.0  # no negatives to misclassify
    assert hd95(empty, empty) == 0.0
    assert math.isnan(hd95(empty, some)) and math.isnan(hd95(some, empty))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(MedlensError, match="does not match"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


def _squares(gap_rows: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((20, 10), bool)
    b = np.zeros((20, 10), bool)
    a[0:4, 2:6] = True
    b[gap_rows : gap_rows + 4, 2:6] = True
    return a, b


def test_hd95_two_squares_offset_by_known_distance() -> None:
    # 4x4 squares whose rows differ by 10: each edge pixel's nearest edge pixel of the other square is
    # straight below/above; distances are {10 x4, 9 x2, 8 x2, 7 x4}, so the 95th percentile is 10.
    a, b = _squares(10)
    assert hd95(a, b) == pytest.approx(10.0)
    assert hd95(b, a) == pytest.approx(10.0)
    assert hd95(a, b, spacing=(0.5, 2.0)) == pytest.approx(5.0)  # row spacing 0.5 mm
    assert hd95(a, b, spacing=3.0) == pytest.approx(30.0)
    assert hd95(a, a) == 0.0


def test_hd95_ignores_a_single_outlier_pixel() -> None:
    # 40 edge pixels of a 11x11 square coincide; one far pixel is < 5 % of the edge points
    a = np.zeros((64, 64), bool)
    a[10:21, 10:21] = True
    b = a.copy()
    b[60, 60] = True
    assert hd95(a, b) < 1.0 < math.dist((20, 20), (60, 60))


def test_segmentation_scores_keys_and_values() -> None:
    scores = segmentation_scores(PRED, TARGET)
    assert tuple(scores) == SEGMENTATION_METRICS
    assert all(isinstance(v, float) for v in scores.values())
    assert scores["dice"] == pytest.approx(4 / 6)
    # directed distances are [0, 1, 0] each way; linear 95th percentile of sorted [0, 0, 1] is 0 + 0.9 * 1
    assert scores["hd95"] == pytest.approx(0.9, abs=1e-6)


def test_multiclass_scores_per_class_and_foreground_mean() -> None:
    target = np.array([[0, 1, 1], [0, 2, 2], [0, 0, 2]])
    pred = np.array([[0, 1, 0], [0, 2, 2], [0, 2, 2]])
    out = segmentation_scores_multiclass(pred, target, 3, class_names=["bg", "heart", "lung"])
    assert out["per_class"]["heart"]["dice"] == pytest.approx(2 * 1 / (1 + 2))
    assert out["per_class"]["lung"]["dice"] == pytest.approx(2 * 3 / (4 + 3))
    assert out["per_class"]["bg"]["dice"] == pytest.approx(2 * 3 / (4 + 4))
    assert out["dice"] == pytest.approx((2 / 3 + 6 / 7) / 2)  # background left out
    assert out["iou"] == pytest.approx((1 / 2 + 3 / 4) / 2)
    with pytest.raises(MedlensError):
        segmentation_scores_multiclass(pred, target, 3, class_names=["a", "b"])


def test_bootstrap_ci_properties() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(0.8, 0.1, size=200)
    low, high = bootstrap_ci(values, n_boot=500, seed=3)
    assert low < values.mean() < high
    assert (low, high) == bootstrap_ci(values, n_boot=500, seed=3)  # deterministic
    # standard error of the mean is 0.1 / sqrt(200) ~ 0.007, so a 95 % CI is ~ 0.028 wide
    assert 0.015 < high - low < 0.045
    wide = bootstrap_ci(values[:20], n_boot=500, seed=3)
    assert wide[1] - wide[0] > high - low
    assert bootstrap_ci([0.5, 0.5, np.nan], n_boot=50) == (0.5, 0.5)  # nan ignored
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan], n_boot=10))


def test_accumulator_summary_and_csv(tmp_path) -> None:
    acc = SegmentationMetricAccumulator(n_boot=200)
    empty = np.zeros((3, 3), bool)
    acc.update(PRED, TARGET, image_id="a")
    acc.update(TARGET, TARGET, image_id="b")
    acc.update(empty, TARGET, image_id="c")  # hd95 nan
    summary = acc.summary()
    assert summary["n_images"] == 3
    assert summary["dice_mean"] == pytest.approx((4 / 6 + 1 + 0) / 3)
    assert summary["dice_median"] == pytest.approx(4 / 6)
    assert summary["dice_std"] == pytest.approx(np.std([4 / 6, 1, 0], ddof=1))
    assert summary["dice_ci_low"] <= summary["dice_mean"] <= summary["dice_ci_high"]
    assert summary["hd95_mean"] == pytest.approx(0.45, abs=1e-6)  # mean of 0.9 and 0.0, nan skipped
    assert summary["hd95_n_undefined"] == 1
    assert [r["id"] for r in acc.ranked("dice")] == ["c", "a", "b"]
    path = acc.to_csv(tmp_path / "per_image.csv")
    lines = path.read_text().splitlines()
    assert lines[0].split(",")[:3] == ["id", "dice", "iou"] and len(lines) == 4
    json.dumps(to_jsonable(summary), allow_nan=False)


def test_accumulator_multiclass_columns() -> None:
    acc = SegmentationMetricAccumulator(num_classes=3, class_names=["bg", "heart", "lung"], n_boot=50)
    labels = np.array([[0, 1, 1], [0, 2, 2], [0, 0, 2]])
    row = acc.update(labels, labels)
    assert row["dice"] == 1.0 and row["dice_heart"] == 1.0 and row["hd95_lung"] == 0.0
    assert "dice_bg" not in row
    assert acc.summary()["dice_lung_mean"] == 1.0


def _probs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    logits = rng.normal(size=(n, k))
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def test_classification_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=120)
    probs = _probs(rng, 120, 4)
    probs[np.arange(120), y] += 0.3  # make it better than chance
    probs /= probs.sum(1, keepdims=True)
    classes = ["akiec", "bcc", "mel", "nv"]
    out = classification_metrics(y, probs, classes, n_boot=200)
    pred = probs.argmax(1)
    assert out["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert out["auc_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert out["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    p, r, f, s = precision_recall_fscore_support(y, pred, zero_division=0)
    for c, name in enumerate(classes):
        got = out["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (p[c], r[c], f[c], s[c])
        )
        assert got["auc"] == pytest.approx(roc_auc_score(y == c, probs[:, c]))
    assert out["accuracy_ci_low"] < out["accuracy"] < out["accuracy_ci_high"]
    assert out["balanced_accuracy_ci_low"] < out["balanced_accuracy"] < out["balanced_accuracy_ci_high"]
    assert out["n_images"] == 120 and 0 <= out["ece"] <= 1 and 0 <= out["brier"] <= 2
    assert "sensitivity_at_specificity" not in out
    text = json.dumps(to_jsonable(out), allow_nan=False)
    assert '"nv"' in text


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_classification_metrics_with_an_absent_class() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=60)  # class 2 never occurs
    probs = _probs(rng, 60, 3)
    out = classification_metrics(y, probs, ["a", "b", "c"], n_boot=100)
    assert math.isnan(out["per_class"]["c"]["auc"])
    expected = np.mean([roc_auc_score(y == c, probs[:, c]) for c in (0, 1)])
    assert out["auc_macro"] == pytest.approx(expected)
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert to_jsonable(out)["per_class"]["c"]["auc"] is None


def test_binary_classification_auc_and_sensitivity_at_specificity() -> None:
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.75, 0.35, 0.6, 0.7, 0.8, 0.9])
    probs = np.stack([1 - p, p], 1)
    out = classification_metrics(y, probs, ["normal", "pneumonia"], specificity_target=0.8, n_boot=100)
    assert out["auc"] == pytest.approx(roc_auc_score(y, p))
    # specificity >= 0.8 allows one false positive (0.75): threshold 0.6 -> sensitivity 4/5;
    # specificity 1.0 needs a threshold above 0.75 -> sensitivity 2/5
    assert out["sensitivity_at_specificity"] == pytest.approx(0.8)
    assert sensitivity_at_specificity(y, p, 1.0) == pytest.approx(0.4)
    assert out["specificity_target"] == 0.8


def test_classification_metrics_bad_input() -> None:
    with pytest.raises(MedlensError, match="do not match"):
        classification_metrics(np.array([0, 1]), np.ones((3, 2)) / 2, ["a", "b"])
    with pytest.raises(MedlensError, match="class indices"):
        classification_metrics(np.array([0, 2]), np.ones((2, 2)) / 2, ["a", "b"])


def test_to_jsonable_converts_numpy_and_nan() -> None:
    obj = {
        "a": np.float32(0.5),
        "b": np.int64(3),
        1: [np.nan, np.inf],
        "c": np.arange(2),
        "d": (np.bool_(True),),
    }
    assert to_jsonable(obj) == {"a": 0.5, "b": 3, "1": [None, None], "c": [0, 1], "d": [True]}


def test_real_mask_scores(shared_datasets) -> None:
    path = sorted((shared_datasets / "isic2017_seg" / "masks").glob("*.png"))[0]
    mask = np.asarray(Image.open(path)) > 0
    shifted = np.roll(mask, 5, axis=1)
    scores = segmentation_scores(shifted, mask)
    assert 0.5 < scores["dice"] < 1.0
    assert scores["iou"] == pytest.approx(scores["dice"] / (2 - scores["dice"]))  # Dice-IoU identity
    assert 0 < scores["hd95"] <= 5.0 + 1e-6
    assert segmentation_scores(mask, mask)["dice"] == 1.0

"""``medlens compare``: two report folders of ``medlens evaluate`` on the same images give each figure of both
models (equal to the reports' own) and the paired difference with its bootstrap CI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medlens import cli
from medlens.errors import DatasetError
from medlens.evaluation.compare import compare_reports
from medlens.evaluation.evaluate import evaluate
from tests.conftest import make_synthetic_segmentation
from tests.helpers_inference import make_tiny_bundle

FLAG = [{"name": "bad", "classes": ["malignant"], "threshold": 0.5}]


def _check_pair(row: dict, new: float, old: float) -> None:
    assert row["new"] == pytest.approx(new) and row["old"] == pytest.approx(old)
    assert row["difference"] == pytest.approx(new - old)
    assert row["ci_low"] - 1e-9 <= row["difference"] <= row["ci_high"] + 1e-9


def test_segmentation_reports_are_paired_per_image_and_per_source(tmp_path: Path) -> None:
    data = make_synthetic_segmentation(tmp_path / "seg", n=10, size=40)
    a = make_tiny_bundle(tmp_path / "a", "segmentation", name="a", seed=0)
    b = make_tiny_bundle(tmp_path / "b", "segmentation", name="b", seed=1)
    ma, mb = (evaluate(m, data, tmp_path / f"eval-{m.name}") for m in (a, b))
    result = compare_reports(tmp_path / "eval-a", tmp_path / "eval-b")
    _check_pair(result["dice"], ma["dice_mean"], mb["dice_mean"])
    assert result["dice"]["n_images"] == 10
    same = compare_reports(tmp_path / "eval-a", tmp_path / "eval-a")["dice"]
    assert same["difference"] == 0 and same["ci_low"] == same["ci_high"] == 0


def test_classification_reports_compare_rule_recalls_and_flags(
    synthetic_cls: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a = make_tiny_bundle(tmp_path / "a", "classification", name="a", seed=0, groups=FLAG)
    b = make_tiny_bundle(tmp_path / "b", "classification", name="b", seed=3, groups=FLAG)
    ma, mb = (evaluate(m, synthetic_cls, tmp_path / f"eval-{m.name}") for m in (a, b))
    argv = ["compare", str(tmp_path / "eval-a"), str(tmp_path / "eval-b"), "--out", str(tmp_path / "c.json")]
    assert cli.main(argv) == 0
    assert "| balanced accuracy |" in capsys.readouterr().out
    result = json.loads((tmp_path / "c.json").read_text())
    _check_pair(result["balanced accuracy"], ma["balanced_accuracy"], mb["balanced_accuracy"])
    for c in ("benign", "malignant"):
        _check_pair(result[f"recall of {c}"], ma["per_class"][c]["recall"], mb["per_class"][c]["recall"])
    (ga,), (gb,) = ma["groups"], mb["groups"]
    _check_pair(result["bad flag sensitivity"], ga["sensitivity"], gb["sensitivity"])
    _check_pair(result["bad flag specificity"], ga["specificity"], gb["specificity"])


def test_reports_that_cannot_be_paired_are_refused(synthetic_cls: Path, tmp_path: Path) -> None:
    seg = make_tiny_bundle(tmp_path / "s", "segmentation", name="s")
    cls = make_tiny_bundle(tmp_path / "c", "classification", name="c")
    evaluate(seg, make_synthetic_segmentation(tmp_path / "seg", n=6), tmp_path / "eval-seg")
    evaluate(seg, make_synthetic_segmentation(tmp_path / "other", n=6, seed=5), tmp_path / "eval-other")
    evaluate(cls, synthetic_cls, tmp_path / "eval-cls")
    with pytest.raises(DatasetError, match="a segmentation and a classification report"):
        compare_reports(tmp_path / "eval-seg", tmp_path / "eval-cls")
    table = tmp_path / "eval-other" / "per_image.csv"
    rows = table.read_text().splitlines()
    table.write_text("\n".join([rows[0], *[r.replace("case", "kase", 1) for r in rows[1:]]]) + "\n")
    with pytest.raises(DatasetError, match="share no scored image"):
        compare_reports(tmp_path / "eval-seg", tmp_path / "eval-other")
    # the same ids on other images (another folder): refused, not paired
    evaluate(seg, make_synthetic_segmentation(tmp_path / "third", n=6, seed=9), tmp_path / "eval-third")
    with pytest.raises(DatasetError, match="another reference in each report"):
        compare_reports(tmp_path / "eval-seg", tmp_path / "eval-third")
    (tmp_path / "eval-third" / "metrics.json").write_text("{broken")
    with pytest.raises(DatasetError, match="not a readable report"):
        compare_reports(tmp_path / "eval-seg", tmp_path / "eval-third")
    (tmp_path / "eval-other" / "metrics.json").write_text('{"task": "segmentation"}')
    (tmp_path / "eval-other" / "per_image.csv").write_text("id,iou\ncase000,0.5\n")
    with pytest.raises(DatasetError, match=r"column\(s\) \['dice'\] missing"):
        compare_reports(tmp_path / "eval-seg", tmp_path / "eval-other")
    with pytest.raises(DatasetError, match=r"no metrics\.json"):
        compare_reports(tmp_path, tmp_path / "eval-seg")

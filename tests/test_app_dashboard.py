"""Dashboard helpers: plots found in bundles of both formats, metric names in words, splits side by side."""

from __future__ import annotations

from medlens.app import dashboard


def test_bundle_plots_of_format_2_and_format_1(tmp_path):
    new = tmp_path / "new"
    (new / "plots").mkdir(parents=True)
    for name in ("test_confusion_matrix.png", "test_roc.png", "test_reliability.png"):
        (new / "plots" / name).write_bytes(b"png")
    (new / "curves.png").write_bytes(b"png")
    (new / "notes.txt").write_text("not a plot")
    old = tmp_path / "old"
    old.mkdir()
    (old / "confusion_matrix.png").write_bytes(b"png")
    assert list(dashboard.bundle_plots(new)) == [
        "test_confusion_matrix.png", "test_reliability.png", "test_roc.png", "curves.png"
    ]  # fmt: skip
    assert list(dashboard.bundle_plots(old)) == ["confusion_matrix.png"]
    assert dashboard.plot_title("test_dice_distribution.png") == "Dice distribution (test)"
    assert dashboard.plot_title("confusion_matrix.png") == "Confusion matrix"
    assert dashboard.plot_title("val_something_new.png") == "Something new (val)"
    assert dashboard.plot_title("test_bland_altman_ctr.png") == "CTR agreement (Bland–Altman) (test)"


def test_metric_names_in_words():
    names = {"mel": "Melanoma"}
    assert dashboard.metric_name("dice_mean") == "Dice"
    assert dashboard.metric_name("per_class.mel.recall", names) == "Melanoma recall"
    assert dashboard.metric_name("balanced_accuracy_ci_low") == "balanced accuracy, 95% CI low"
    assert (
        dashboard.metric_name("auc_macro") == "macro AUC"
        and dashboard.metric_name("hd95_mean") == "HD95 (pixels)"
    )
    assert dashboard.metric_name("ece_uncalibrated") == "calibration error (ECE) before calibration"
    assert dashboard.split_name("external:cvc_clinicdb") == "external: cvc_clinicdb"


def test_validation_test_and_external_side_by_side():
    bundle = {
        "metrics": {"dice": 0.8},
        "evaluations": {
            "external:cvc": {"dice_mean": 0.6, "n_images": 50},
            "test": {"dice_mean": 0.75, "dice_ci_low": 0.7, "n_images": 100, "dice_std": 0.1},
            "val": {"dice_mean": 0.8, "n_images": 80},
        },
    }
    frame = dashboard.metrics_frame(bundle)
    assert list(frame.columns) == ["metric", "validation", "test", "external: cvc"]
    rows = {r["metric"]: r for r in frame.to_dict("records")}
    assert rows["Dice"] == {
        "metric": "Dice",
        "validation": "0.800",
        "test": "0.750",
        "external: cvc": "0.600",
    }
    assert rows["images"]["test"] == "100" and rows["Dice, 95% CI low"]["validation"] == "—"
    assert "Dice (SD)" not in rows


def test_format_1_bundles_show_validation_only_and_hide_matrices():
    metrics = {"balanced_accuracy": 0.7, "confusion_matrix": [[1, 2], [3, 4]], "split": "val"}
    bundle = {"metrics": {**metrics, "per_class": {"mel": {"recall": 0.5}}}, "evaluations": {}}
    frame = dashboard.metrics_frame(bundle, {"mel": "Melanoma"})
    assert list(frame.columns) == ["metric", "validation"]
    assert list(frame["metric"]) == ["balanced accuracy", "Melanoma recall"]


def test_a_class_with_no_images_in_a_split_shows_not_measured():
    empty = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "auc": None}  # as evaluate writes it
    external = {"per_class": {"akiec": empty, "nv": {"recall": 0.8, "support": 10}}}
    test = {"per_class": {"akiec": {"recall": 0.5, "support": 4}, "nv": {"recall": 0.9, "support": 12}}}
    frame = dashboard.metrics_frame({"evaluations": {"test": test, "external:isic": external}})
    rows = {r["metric"]: r for r in frame.to_dict("records")}
    assert rows["akiec recall"] == {"metric": "akiec recall", "test": "0.500", "external: isic": "—"}
    assert rows["akiec precision"]["external: isic"] == rows["akiec F1"]["external: isic"] == "—"
    assert rows["akiec images"]["external: isic"] == "0" and rows["nv recall"]["external: isic"] == "0.800"


def test_the_precision_of_a_class_is_blank_only_when_nothing_was_predicted_as_it():
    per_class = {
        "akiec": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},  # no images, predicted twice
        "bcc": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},  # no images, never predicted
        "nv": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3},  # images, never predicted
        "mel": {"precision": 0.75, "recall": 1.0, "f1": 0.857, "support": 3},
    }
    matrix = [[0, 0, 0, 0], [0, 0, 0, 0], [2, 0, 0, 1], [0, 0, 0, 3]]  # rows: true, columns: predicted
    frame = dashboard.metrics_frame(
        {"evaluations": {"test": {"per_class": per_class, "confusion_matrix": matrix}}}
    )
    rows = {r["metric"]: r["test"] for r in frame.to_dict("records")}
    assert rows["akiec precision"] == "0.000" and rows["akiec recall"] == rows["akiec F1"] == "—"
    assert rows["bcc precision"] == rows["bcc recall"] == rows["bcc F1"] == "—"
    assert rows["nv precision"] == "—" and rows["nv recall"] == rows["nv F1"] == "0.000"
    assert rows["mel precision"] == "0.750"


def test_a_classifier_shows_its_shipped_rule_and_flags_first():
    test = {
        "balanced_accuracy": 0.64, "accuracy": 0.8, "n_images": 100,
        "decision": {"rule": {"class_weights": [1, 2]}, "balanced_accuracy": 0.69, "accuracy": 0.75,
                     "recall": {"mel": 0.7, "nv": 0.8}},
        "groups": [{"name": "malignant", "threshold": 0.3, "sensitivity": 0.86, "specificity": 0.72,
                    "auc": 0.9}],
    }  # fmt: skip
    frame = dashboard.metrics_frame({"evaluations": {"test": test}}, {"mel": "Melanoma (mel)"})
    names = list(frame["metric"])
    assert names[:7] == [
        "balanced accuracy at the shipped rule", "accuracy at the shipped rule",
        "Melanoma (mel) recall at the shipped rule", "nv recall at the shipped rule",
        "malignant flag sensitivity", "malignant flag specificity", "malignant flag AUC",
    ]  # fmt: skip
    rows = {r["metric"]: r["test"] for r in frame.to_dict("records")}
    assert rows["balanced accuracy (arg-max)"] == "0.640" and rows["malignant flag specificity"] == "0.720"
    assert "balanced accuracy" not in rows  # never unlabelled beside a rule that decides otherwise

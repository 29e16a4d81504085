"""CLI: fast --help, flags -> config overrides, clear errors (exit 2, no traceback), plan and a tiny train."""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens import cli
from medlens.cli import commands
from medlens.errors import MedlensError

COMMANDS = ("plan", "train", "evaluate", "predict", "bundle", "export", "serve", "models")


def test_help_lists_every_command_without_heavy_imports() -> None:
    script = (
        "import sys\n"
        "from medlens.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'timm', 'gradio', 'fastapi') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert command in proc.stdout
    assert "HEAVY []" in proc.stdout


def test_python_dash_m_medlens_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "medlens", "train", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "--resume RUN" in proc.stdout and "--set KEY=VALUE" in proc.stdout


def test_missing_data_folder_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "nope"
    assert cli.main(["train", str(missing), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {missing}: data folder not found\n"  # one line, no traceback


def test_unknown_config_key_exits_2_listing_valid_keys(
    synthetic_seg: Path, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["train", str(synthetic_seg), "--set", "optim.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: override 'optim.lrr': unknown key 'lrr'") and "lr, weight_decay" in err
    assert "Traceback" not in err


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(MedlensError, match="data folder not found"):
        cli.main(["--verbose", "train", str(tmp_path / "nope")])


def test_resume_needs_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder (no config.yaml)" in capsys.readouterr().err


def test_train_without_data_is_an_error(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train"]) == 2
    assert "no data folder" in capsys.readouterr().err


def test_train_flags_become_overrides() -> None:
    args = cli.build_parser().parse_args(
        [
            "train",
            "data/x",
            "--task",
            "classification",
            "--arch",
            "resnet18",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--input-size",
            "64x48",
            "--lr",
            "0.01",
            "--pretrained",
            "--out",
            "o",
            "--name",
            "n",
            "--skip-bad",
            "--set",
            "mixup=0.2",
            "augment.vflip=0.5",
        ]
    )
    overrides = commands._train_overrides(args)
    assert "data.root=data/x" in overrides and "data.task=classification" in overrides
    assert "data.input_size=[64, 48]" in overrides and "model.pretrained=true" in overrides
    assert "optim.lr=0.01" in overrides and "epochs=3" in overrides and "batch_size=8" in overrides
    assert "data.skip_bad=true" in overrides and overrides[-2:] == ["mixup=0.2", "augment.vflip=0.5"]
    assert "model.encoder" not in " ".join(overrides)  # flags left out stay out
    assert commands._input_size("96") == "[96, 96]"
    with pytest.raises(MedlensError, match="--input-size"):
        commands._input_size("big")


def test_each_command_dispatches_to_its_api_function() -> None:
    parser = cli.build_parser()
    argv = {
        "plan": ["plan", "d"],
        "compare": ["compare", "a", "b"],
        "evaluate": ["evaluate", "m", "d", "--out", "o"],
        "predict": ["predict", "m", "i", "--out", "o"],
        "bundle": ["bundle", "r", "--out", "o"],
        "export": ["export", "b"],
        "serve": ["serve"],
        "models": ["models"],
    }
    for name, args in argv.items():
        ns = parser.parse_args(args)
        assert isinstance(ns, argparse.Namespace) and ns.func is getattr(commands, f"cmd_{name}")


def test_plan_prints_the_plan(synthetic_seg: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["plan", str(synthetic_seg), "--out", str(tmp_path / "p")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["task"] == "segmentation" and plan["num_classes"] == 1
    assert (tmp_path / "p" / "plan.json").is_file()


def test_models_lists_bundles_and_pipeline_readiness(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["models", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"bundles in {tmp_path}:\n  (none)\npipelines:" in out
    assert "missing bundle(s)" in out  # the shipped pipelines name bundles this empty folder lacks


def test_models_shows_a_classifiers_rule_and_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from medlens.inference.packaging import read_bundle_meta, write_bundle_meta
    from tests.helpers_inference import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path, "classification")
    meta = read_bundle_meta(bundle)
    flag = {"name": "bad", "sensitivity": 0.86, "specificity": 0.72}
    meta["evaluations"] = {"test": {"balanced_accuracy": 0.64, "decision": {"balanced_accuracy": 0.69},
                                    "groups": [flag]}}  # fmt: skip
    write_bundle_meta(bundle, meta)
    assert cli.main(["models", str(tmp_path / "models")]) == 0
    assert (
        "test bal. acc. 0.690 at the rule (0.640 arg-max), bad sens 0.860 / spec 0.720"
        in capsys.readouterr().out
    )


def test_models_takes_the_folder_as_an_argument(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["models", str(tmp_path)]) == 0
    assert f"bundles in {tmp_path}:" in capsys.readouterr().out
    assert cli.main(["models", str(tmp_path / "absent")]) == commands.EXIT_BAD_INPUT
    assert "models folder not found" in capsys.readouterr().err


def test_predict_errors_are_clear(tmp_path: Path, seg_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "notes.png").write_text("not an image")
    existing = tmp_path / "README.md"
    existing.write_text("x")
    assert cli.main(["predict", str(seg_bundle), str(bad), "--out", str(existing)]) == commands.EXIT_BAD_INPUT
    assert "exists and is not a folder" in capsys.readouterr().err
    assert (
        cli.main(["predict", str(seg_bundle), str(bad), "--out", str(tmp_path / "o")])
        == commands.EXIT_UNREADABLE_INPUT
    )
    captured = capsys.readouterr()
    assert "0 image(s) predicted in" in captured.out and "1 unreadable (listed there)" in captured.out
    assert f"error: cannot read {bad / 'notes.png'}: unknown file type" in captured.err.splitlines()[-1]


def test_predict_on_a_folder_with_bad_files_keeps_the_good_ones_and_exits_non_zero(
    tmp_path: Path, seg_bundle: Path, capsys: pytest.CaptureFixture
) -> None:
    """Lose nothing: every readable image is predicted and written; each unreadable one is named with its
    reason on stderr (as a single bad input is) and in summary.json, and the exit status says so."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 16), (120, 60, 30)).save(folder / "good.png")
    Image.new("L", (18, 18), 90).save(folder / "sub" / "good2.jpg")
    (folder / "notes.png").write_text("a text file, not an image")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    (folder / "broken.jpg").write_bytes(buf.getvalue()[: buf.tell() // 2])  # header kept, scan data cut
    out = tmp_path / "out"
    assert cli.main(["predict", str(seg_bundle), str(folder), "--out", str(out)]) == (
        commands.EXIT_UNREADABLE_INPUT
    )
    captured = capsys.readouterr()
    for stem in ("good", "sub__good2"):  # the good ones are all there
        assert (out / f"{stem}_mask.png").is_file() and (out / f"{stem}.json").is_file()
    assert "2 image(s) predicted" in captured.out and "2 unreadable" in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, captured.err
    assert errors[0].startswith(f"error: cannot read {folder / 'broken.jpg'}: corrupt or truncated JPEG data")
    assert errors[1] == (
        f"error: cannot read {folder / 'notes.png'}: unknown file type (not PNG, JPEG, TIFF, BMP or DICOM)"
    )
    failed = json.loads((out / "summary.json").read_text())["failed"]
    assert [f["source"] for f in failed] == [str(folder / "broken.jpg"), str(folder / "notes.png")]
    assert failed[1]["error"] == "unknown file type (not PNG, JPEG, TIFF, BMP or DICOM)"
    assert not (out / "notes_mask.png").exists() and not (out / "broken_mask.png").exists()


def test_failures_name_their_cause_and_leave_nothing_behind(
    tmp_path: Path, seg_bundle: Path, capsys: pytest.CaptureFixture
) -> None:
    existing = tmp_path / "report.json"
    existing.write_text("{}")
    argv = ["evaluate", str(seg_bundle), str(tmp_path), "--out", str(existing)]
    assert cli.main(argv) == commands.EXIT_BAD_INPUT
    assert "exists and is not a folder" in capsys.readouterr().err and existing.read_text() == "{}"
    image = tmp_path / "in" / "x.png"
    image.parent.mkdir()
    Image.new("RGB", (16, 16)).save(image)
    out = tmp_path / "never"
    empty_models = tmp_path / "elsewhere"
    empty_models.mkdir()
    argv = ["predict", "skin", str(image), "--out", str(out), "--models-dir", str(empty_models)]
    assert cli.main(argv) == commands.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "not found in" in err and "--models-dir" in err and str(empty_models.resolve()) in err
    assert not out.exists()  # no empty results folder after a failure
    assert cli.main(["predict", str(tmp_path / "nope"), str(image), "--out", str(out)]) == 2
    assert not out.exists()


def test_predict_marks_a_refused_images_probabilities_as_no_reading_as_the_api_does(
    tmp_path: Path, seg_bundle: Path, cls_bundle: Path, capsys: pytest.CaptureFixture
) -> None:
    from medlens.app.views import analysis_view

    strict = tmp_path / "strict.yaml"  # no probability reaches 1.01 and no region covers more than the image
    strict.write_text(
        "name: strict\nsegmenter: {bundle: tiny-seg}\nclassifier: {bundle: tiny-cls}\n"
        "scope: {min_probability: 1.01, require_region: true, min_region_fraction: 1.0}\n"
    )
    image, out = tmp_path / "lesion.png", tmp_path / "out"
    Image.new("RGB", (32, 32), (180, 120, 100)).save(image)
    argv = ["predict", str(strict), str(image), "--out", str(out), "--models-dir", str(seg_bundle.parent)]
    assert cli.main(argv) == 0 and "1 image(s) predicted" in capsys.readouterr().out
    info = json.loads((out / "lesion.json").read_text())
    assert info["out_of_scope"] is True and len(info["scope_reasons"]) == 2 and info["label"] is None
    view = info["classification"]
    assert view["reading"] is False and view["label"] is None
    assert set(view["probabilities"]) == {"benign", "malignant"}  # the raw probabilities, kept
    assert view["probabilities"] == info["probabilities"]
    record = {"id": "x", "created": "2026-01-01T00:00:00+00:00", "pipeline": "strict", "files": {},
              "source_format": "png", "label": None, "probabilities": info["probabilities"],
              "features": info["features"], "result": info}  # fmt: skip
    assert analysis_view(record)["classification"] == view  # the API's words for the same result
    with (out / "summary.csv").open(newline="") as fh:
        row = next(csv.DictReader(fh))
    assert row["reading"] == "False" and row["out_of_scope"] == "True" and row["label"] == ""


def test_benchmark_work_dir_is_created(tmp_path: Path) -> None:
    from benchmarks.common import bench_workdir

    with bench_workdir("x-", str(tmp_path / "new" / "dir"), None) as (work, _):
        assert work.parent == tmp_path / "new" / "dir" and work.is_dir()


def test_export_refuses_an_unknown_format(seg_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["export", str(seg_bundle), "--format", "tflite"]) == commands.EXIT_BAD_INPUT
    assert "medlens exports onnx" in capsys.readouterr().err

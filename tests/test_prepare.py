"""training.prepare and training.runfolder: plan resolution (explicit settings, guide channel, offline
normalisation), the user's own split file, resume reading plan and split back, and the run folder rules."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from medlens.config import load_config
from medlens.data.fingerprint import make_plan
from medlens.errors import ConfigError, DatasetError, MedlensError
from medlens.folders import RunFolder
from medlens.training.prepare import model_spec, prepare_run, resolve_config, resolve_plan
from medlens.training.runfolder import make_run_dir, write_metrics_csv
from tests.conftest import make_synthetic_segmentation

FINGERPRINT = {
    "n_items": 40,
    "size": {"height": {"median": 300}, "width": {"median": 400}},
    "modality": "color-photo",
    "intensity": {"mean": [0.5] * 3, "std": [0.2] * 3},
    "classes": [],
}


def test_explicit_settings_and_guide_channel_resolve_once(tmp_path: Path) -> None:
    plan = make_plan(FINGERPRINT, "classification")
    cfg = load_config(None, ["data.task=classification", "data.input_size=[64,80]", "batch_size=5",
                             "guide_bundle=some/bundle", "guide_mode=channel"])  # fmt: skip
    resolved = resolve_plan(plan, cfg)
    assert resolved.input_size == (64, 80) and resolved.batch_size == 5
    assert resolved.in_channels == 3  # the plan describes the images
    spec = model_spec(cfg, resolved)  # the one place where the guide's mask channel joins them
    assert spec.in_channels == 4 and spec.image_channels == 3 and spec.mean[-1] == 0.0 and spec.std[-1] == 1.0
    back = resolve_config(cfg, resolved, tmp_path / "run")
    assert back.data.in_channels == 3 and model_spec(back, resolve_plan(plan, back)).in_channels == 4
    assert spec.guide.margin == 0.25  # the default crop margin


def test_guide_margin_reaches_the_spec_and_is_checked() -> None:
    plan = make_plan(FINGERPRINT, "classification")
    cfg = load_config(None, ["data.task=classification", "guide_bundle=some/bundle", "guide_margin=0.08"])
    assert model_spec(cfg, resolve_plan(plan, cfg)).guide.margin == 0.08
    with pytest.raises(ConfigError, match="guide_margin"):
        load_config(None, ["guide_margin=2"])


def test_offline_weights_bring_their_normalisation() -> None:
    plan = make_plan(FINGERPRINT, "segmentation")
    lite = load_config(None, ["model.encoder=tu-tf_efficientnet_lite0", "model.pretrained=offline"])
    assert resolve_plan(plan, lite).mean == [0.5, 0.5, 0.5] and resolve_plan(plan, lite).std == [
        0.5,
        0.5,
        0.5,
    ]
    mobilenet = load_config(None, ["model.encoder=mobilenet_v2", "model.pretrained=offline"])
    assert resolve_plan(plan, mobilenet).mean == pytest.approx([0.485, 0.456, 0.406])
    grey = dataclasses.replace(plan, in_channels=1, mean=[0.3], std=[0.2])
    assert resolve_plan(grey, lite).mean == [0.3]  # one channel keeps the data set's statistics


def test_split_file_is_used_and_checked(tmp_path: Path) -> None:
    root = make_synthetic_segmentation(tmp_path / "seg", n=8)
    ids = sorted(p.stem for p in (root / "images").iterdir())
    split = tmp_path / "mine.json"
    split.write_text(json.dumps({"train": ids[:5], "val": ids[5:7], "test": ids[7:]}))
    cfg = load_config(None, [f"data.root={root}", f"data.split_file={split}", "data.input_size=[32,32]"])
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    data = prepare_run(cfg, run, resume=False)
    assert data.splits == {"train": ids[:5], "val": ids[5:7], "test": ids[7:]}
    assert json.loads((tmp_path / "run" / "split.json").read_text())["val"] == ids[5:7]
    split.write_text(json.dumps({"train": ["nobody"], "val": ids[:1], "test": []}))
    with pytest.raises(DatasetError, match="not in"):
        prepare_run(cfg, run, resume=False)
    resumed = prepare_run(cfg, run, resume=True)  # resume reads the run's own plan and split back
    assert resumed.splits["val"] == ids[5:7]


def test_run_folder_rules(tmp_path: Path) -> None:
    cfg = load_config(
        None, [f"data.root={tmp_path / 'kvasir'}", f"out_dir={tmp_path}", "model.encoder=resnet18"]
    )
    folder = make_run_dir(cfg, resume=False)
    run = folder.path
    assert (
        run.parent == tmp_path
        and run.name.startswith("kvasir-unet-resnet18-")
        and (run / "checkpoints").is_dir()
    )
    with pytest.raises(ConfigError, match="run_name"):
        make_run_dir(cfg, resume=True)
    named = dataclasses.replace(cfg, run_name=run.name)
    with pytest.raises(MedlensError, match=r"no checkpoints/last\.pt"):
        make_run_dir(named, resume=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    assert make_run_dir(named, resume=True) == folder and folder.last == run / "checkpoints" / "last.pt"
    with pytest.raises(ConfigError, match="already exists"):
        make_run_dir(named, resume=False)
    write_metrics_csv([{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.4, "val_dice": 0.7}],
                      run / "metrics.csv")  # fmt: skip
    assert (run / "metrics.csv").read_text().splitlines() == [
        "epoch,train_loss,val_dice",
        "1,0.5,",
        "2,0.4,0.7",
    ]

"""``medlens train --from BUNDLE``: a tiny bundle fine-tuned on other synthetic images gets better on them; on
its own data the bundle's split is reused; classes that do not fit its head fail clearly (or get a new head);
the lineage reaches the run folder, the next bundle and its card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens import cli
from medlens.errors import ConfigError
from medlens.evaluation.evaluate import evaluate
from medlens.inference.bundle import Bundle, sha256_file
from medlens.inference.packaging import make_bundle
from tests.conftest import make_synthetic_classification, make_synthetic_segmentation

# Fixed geometry and colour (the tests measure learning), one thread, fp32, no early stop.
COMMON = ["device=cpu", "amp=fp32", "early_stopping_patience=null", "augment.hflip=0", "augment.vflip=0",
          "augment.p_affine=0", "augment.p_color=0"]  # fmt: skip


def _train(argv: list[str], capsys: pytest.CaptureFixture) -> Path:
    assert cli.main(["train", *argv]) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def _inverted(root: Path, out: Path) -> Path:
    """The same kind of data in another 'scanner': every image's intensities inverted."""
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for image in sorted((root / "images").glob("*.png")):
        arr = np.asarray(Image.open(image))
        Image.fromarray((255 - arr).astype(np.uint8)).save(out / "images" / image.name)
        (out / "masks" / image.name).write_bytes((root / "masks" / image.name).read_bytes())
    return out


@pytest.fixture(scope="module")
def seg_start(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained for 6 epochs on bright discs (dataset A)."""
    tmp = tmp_path_factory.mktemp("warm")
    data = make_synthetic_segmentation(tmp / "a", n=16, size=32, seed=0)
    args = ["train", str(data), "--arch", "unet", "--encoder", "resnet18", "--input-size", "32",
            "--epochs", "6", "--batch-size", "4", "--lr", "0.003", "--out", str(tmp / "runs"), "--name", "a",
            "--set", "data.val_fraction=0.25", "data.test_fraction=0.125", *COMMON]  # fmt: skip
    assert cli.main(args) == 0
    return make_bundle(tmp / "runs" / "a", tmp / "models" / "disc-seg")


def test_fine_tuning_on_new_images_improves_on_the_bundle(
    seg_start: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    new = _inverted(make_synthetic_segmentation(tmp_path / "b0", n=16, size=32, seed=1), tmp_path / "b")
    held_out = _inverted(make_synthetic_segmentation(tmp_path / "c0", n=8, size=32, seed=2), tmp_path / "c")
    before = evaluate(seg_start, held_out, tmp_path / "eval-before")["dice_mean"]
    run = _train([str(new), "--from", str(seg_start), "--epochs", "8", "--batch-size", "4", "--lr", "0.003",
                  "--out", str(tmp_path / "runs"), "--name", "ft", "--set", *COMMON], capsys)  # fmt: skip
    after = evaluate(run, held_out, tmp_path / "eval-after")["dice_mean"]
    assert after > before + 0.1, (before, after)
    # the bundle's pre-processing is kept, the weights are not ImageNet's, the split is the new data's own
    spec = json.loads((run / "model_spec.json").read_text())
    assert spec["mean"] == Bundle.load(seg_start).spec.mean and spec["input_size"] == [32, 32]
    config = (run / "config.yaml").read_text()
    assert "pretrained: false" in config and f"from_bundle: {seg_start}" in config
    assert json.loads((run / "lineage.json").read_text())["split_reused"] is False


def test_default_lr_on_new_data_is_a_tenth_of_the_bundles(seg_start: Path, tmp_path: Path) -> None:
    from medlens.training.warmstart import config_from_bundle

    own = config_from_bundle(seg_start, None, [])
    new = config_from_bundle(seg_start, None, [f"data.root={tmp_path}"], freeze_encoder=True)
    assert own.optim.lr == pytest.approx(0.003) and new.optim.lr == pytest.approx(0.0003)
    assert new.freeze_epochs == new.epochs and own.freeze_epochs == 0
    assert own.data.split_file == str(seg_start / "split.json") and new.data.split_file is None
    assert config_from_bundle(seg_start, None, ["optim.lr=0.01", f"data.root={tmp_path}"]).optim.lr == 0.01


def test_new_data_takes_nothing_of_the_bundles_own_data(tmp_path: Path) -> None:
    """The shipped polyp bundle trained on two folders: fine-tuning it on a user's folder trains on that
    folder alone, with a split of its own; without DATA it continues on both folders and its split."""
    from medlens.training.warmstart import config_from_bundle

    bundle = Path(__file__).resolve().parents[1] / "models" / "polyp-seg"
    new = config_from_bundle(bundle, None, [f"data.root={tmp_path}"])
    assert new.data.extra_roots == [] and new.data.split_file is None and new.data.group_column is None
    own = config_from_bundle(bundle, None, [])
    assert [Path(r).name for r in own.data.extra_roots] == ["cvc_clinicdb"]
    assert own.data.split_file == str(bundle / "split.json") and own.model.pretrained is False


def test_how_the_bundle_itself_was_started_does_not_carry_over(cls_start: Path, tmp_path: Path) -> None:
    import shutil

    import yaml

    from medlens.training.warmstart import config_from_bundle

    bundle = Path(shutil.copytree(cls_start, tmp_path / "b"))
    config = yaml.safe_load((bundle / "config.yaml").read_text())
    config.update(new_head=True, freeze_epochs=5, device="cuda", class_groups={"bad": ["malignant"]})
    (bundle / "config.yaml").write_text(yaml.safe_dump(config))
    cfg = config_from_bundle(bundle, None, [])
    assert (cfg.new_head, cfg.freeze_epochs, cfg.device) == (False, 0, "auto")
    assert cfg.class_groups == {"bad": ["malignant"]}  # the same head: its rules stay
    fresh = config_from_bundle(bundle, None, [f"data.root={tmp_path}", "new_head=true"])
    assert fresh.class_groups == {} and fresh.positive_class is None and fresh.data.classes is None


def test_continuing_on_its_own_data_reuses_the_split_and_adds_up_the_epochs(
    seg_start: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = _train(["--from", str(seg_start), "--epochs", "2", "--out", str(tmp_path / "runs"),
                  "--name", "more", "--set", *COMMON], capsys)  # fmt: skip
    assert json.loads((run / "split.json").read_text()) == json.loads((seg_start / "split.json").read_text())
    lineage = json.loads((run / "lineage.json").read_text())
    assert lineage["from"]["weights_sha256"] == sha256_file(seg_start / "model.safetensors")
    assert lineage["epochs_before"] == 6 and lineage["split_reused"] is True

    second = make_bundle(run, tmp_path / "models" / "disc-seg-2")
    recorded = Bundle.load(second).training["lineage"]
    assert recorded["epochs_total"] == 8 and (second / "lineage.json").is_file()
    card = (second / "README.md").read_text()
    assert "6 epochs before + 2 here = 8 in total" in card and "disc-seg" in card

    # a third generation counts every epoch and names its ancestors, oldest first
    third = _train(["--from", str(second), "--epochs", "1", "--out", str(tmp_path / "runs"),
                    "--name", "again", "--set", *COMMON], capsys)  # fmt: skip
    lineage = json.loads((third / "lineage.json").read_text())
    assert lineage["epochs_before"] == 8 and [a["name"] for a in lineage["ancestors"]] == ["disc-seg"]


@pytest.fixture(scope="module")
def cls_start(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("warm-cls")
    data = make_synthetic_classification(tmp / "cls", n_per_class=6, size=32)
    args = ["train", str(data), "--task", "classification", "--arch", "resnet18", "--input-size", "32",
            "--epochs", "1", "--batch-size", "4", "--out", str(tmp / "runs"), "--name", "c",
            "--set", "data.val_fraction=0.25", "calibrate=false", *COMMON]  # fmt: skip
    assert cli.main(args) == 0
    return make_bundle(tmp / "runs" / "c", tmp / "models" / "tiny-cls")


def _relabel(root: Path, out: Path, names: dict[str, str]) -> Path:
    for old, new in names.items():
        (out / new).mkdir(parents=True, exist_ok=True)
        for image in (root / old).glob("*.png"):
            (out / new / image.name).write_bytes(image.read_bytes())
    return out


def test_classes_that_do_not_fit_the_head_fail_clearly_or_get_a_new_head(
    cls_start: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = _relabel(make_synthetic_classification(tmp_path / "src", n_per_class=6, size=32), tmp_path / "new",
                    {"benign": "benign", "malignant": "cyst"})  # fmt: skip
    argv = [str(data), "--from", str(cls_start), "--epochs", "1", "--batch-size", "4",
            "--out", str(tmp_path / "runs"), "--set", "calibrate=false", *COMMON]  # fmt: skip
    assert cli.main(["train", *argv, "--name", "refused"]) == 2
    err = capsys.readouterr().err
    assert "['cyst'] are not among the classes" in err and "--new-head" in err
    with pytest.raises(ConfigError, match="--new-head"):
        cli.main(["--verbose", "train", *argv, "--name", "refused-again"])
    run = _train([*argv, "--new-head", "--name", "new-head"], capsys)
    assert json.loads((run / "model_spec.json").read_text())["classes"] == ["benign", "cyst"]
    assert json.loads((run / "lineage.json").read_text())["from"]["new_head"] is True


def test_a_subset_of_the_classes_keeps_the_head_and_its_order(cls_start: Path) -> None:
    from types import SimpleNamespace

    from medlens.config import load_config
    from medlens.training.warmstart import align_classes

    cfg = load_config(None, ["data.task=classification", f"from_bundle={cls_start}"])
    index = SimpleNamespace(task="classification", mode="multiclass", classes=["malignant"])
    align_classes(index, cfg)  # type: ignore[arg-type]
    assert index.classes == Bundle.load(cls_start).spec.classes == ["benign", "malignant"]


def test_from_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", str(tmp_path), "--new-head"]) == 2
    assert "go with --from" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path), "--from", str(tmp_path / "nope")]) == 2
    assert "bundle not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --resume and --from exclude each other
        cli.main(["train", "--resume", "r", "--from", "b"])


def test_the_guide_and_its_margin_come_from_the_bundle_unless_set(cls_start: Path, tmp_path: Path) -> None:
    import shutil

    from medlens.inference.packaging import read_bundle_meta, write_bundle_meta
    from medlens.training.warmstart import config_from_bundle

    bundle = Path(shutil.copytree(cls_start, tmp_path / "b"))
    meta = read_bundle_meta(bundle)
    meta["spec"]["guide"] = {"bundle": "models/some-seg", "mode": "crop", "margin": 0.1}
    write_bundle_meta(bundle, meta)
    cfg = config_from_bundle(bundle, None, [])
    assert (cfg.guide_bundle, cfg.guide_mode, cfg.guide_margin) == ("models/some-seg", "crop", 0.1)
    assert config_from_bundle(bundle, None, ["guide_margin=0.05"]).guide_margin == 0.05  # a tighter crop


def test_the_attention_loss_comes_along_and_says_so(
    cls_start: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bundle trained with cam_penalty passes it on (its recipe), with an INFO line saying how to turn it
    off; turned off, the region it leaves behind draws a warning when the run prepares its data."""
    import logging
    import shutil

    import yaml

    from medlens.training.prepare import warn_idle_region
    from medlens.training.warmstart import config_from_bundle

    bundle = Path(shutil.copytree(cls_start, tmp_path / "b"))
    config = yaml.safe_load((bundle / "config.yaml").read_text())
    config.update(guide_bundle="models/some-seg", cam_penalty=0.3, cam_region=["left_lung", "right_lung"])
    (bundle / "config.yaml").write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.INFO, logger="medlens.training.warmstart"):
        cfg = config_from_bundle(bundle, None, [])
    assert cfg.cam_penalty == 0.3 and cfg.cam_region == ["left_lung", "right_lung"]
    said = [r.getMessage() for r in caplog.records if "cam_penalty" in r.getMessage()]
    assert len(said) == 1 and "cam_penalty=0.3" in said[0] and "--set cam_penalty=0" in said[0]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        off = config_from_bundle(bundle, None, ["cam_penalty=0"])
        assert off.cam_penalty == 0 and not [r for r in caplog.records if "comes along" in r.getMessage()]
        warn_idle_region(cfg)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        warn_idle_region(off)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "cam_region" in warned[0].getMessage()


def test_a_recipe_naming_the_bundles_split_file_reuses_its_split(tmp_path: Path) -> None:
    """The lineage says the split was reused when the run's split file has the bundle's sides, wherever it
    lies (a recipe naming runs/chest3-split.json, as the bundle's own run did), not only at its path."""
    from medlens.training.warmstart import same_split

    sides = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    bundle_split, recipe_split, other = tmp_path / "b.json", tmp_path / "r.json", tmp_path / "o.json"
    bundle_split.write_text(json.dumps(sides))
    recipe_split.write_text(json.dumps(sides, indent=2))
    other.write_text(json.dumps({**sides, "test": ["e"]}))
    assert same_split(str(recipe_split), bundle_split) and same_split(str(bundle_split), bundle_split)
    assert not same_split(str(other), bundle_split)
    assert not same_split(None, bundle_split) and not same_split(str(tmp_path / "none.json"), bundle_split)
    # the same ids on each side, in another order, sides in another order: the same split
    shuffled = tmp_path / "s.json"
    shuffled.write_text(json.dumps({"test": ["d"], "val": ["c"], "train": ["b", "a"]}))
    assert same_split(str(shuffled), bundle_split)
    # no "test" side is an empty one
    bundle_split.write_text(json.dumps({**sides, "test": []}))
    recipe_split.write_text(json.dumps({"train": ["a", "b"], "val": ["c"]}))
    assert same_split(str(recipe_split), bundle_split) and not same_split(str(shuffled), bundle_split)
    # an id moved to another side is another split; a malformed file is none
    recipe_split.write_text(json.dumps({"train": ["a"], "val": ["b", "c"]}))
    assert not same_split(str(recipe_split), bundle_split)
    recipe_split.write_text(json.dumps({"train": ["a"], "val": ["a"]}))
    assert not same_split(str(recipe_split), bundle_split)

"""Config: defaults, YAML + dotted overrides with typing, unknown keys, validation, round trip, presets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from medlens.config import (
    DataConfig,
    TrainConfig,
    config_to_dict,
    load_config,
    save_config,
)
from medlens.data.augment import AugmentConfig
from medlens.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_match_contract() -> None:
    cfg = load_config(None, [])
    assert cfg == TrainConfig()
    assert cfg.data == DataConfig()
    assert isinstance(cfg.augment, AugmentConfig)
    assert (cfg.model.arch, cfg.model.encoder, cfg.model.pretrained) == ("unet", "resnet34", False)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule) == ("adamw", 1e-3, "cosine")
    assert cfg.epochs == 50 and cfg.batch_size is None and cfg.loss is None and cfg.amp == "auto"
    assert cfg.data.extra_roots == [] and cfg.data.input_size is None


def test_yaml_then_overrides_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "data:\n  root: /x\n  input_size: [64, 48]\noptim:\n  lr: 0.01\nepochs: 7\naugment:\n  vflip: 0.5\n"
    )
    cfg = load_config(
        path,
        [
            "optim.lr=3e-4",  # YAML 1.1 reads this as a string; the float field takes it
            "data.input_size=[32,32]",
            "model.pretrained=true",
            "batch_size=4",
            "loss=null",
            "data.extra_roots=[/a, /b]",
            "augment.scale=[0.9, 1.1]",
            "data.group_column=video_sequence",
            "run_name=007",  # a str field keeps the raw text even when YAML reads a number
            "out_dir=/tmp/a: b",  # a colon would make YAML read a mapping
        ],
    )
    assert cfg.data.root == "/x" and cfg.epochs == 7 and cfg.augment.vflip == 0.5
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.data.input_size == [32, 32]
    assert cfg.model.pretrained is True and cfg.batch_size == 4 and cfg.loss is None
    assert cfg.data.extra_roots == ["/a", "/b"] and cfg.augment.scale == (0.9, 1.1)
    assert cfg.data.group_column == "video_sequence"
    assert cfg.run_name == "007" and cfg.out_dir == "/tmp/a: b"


def test_pretrained_accepts_bool_name_or_path() -> None:
    assert load_config(None, ["model.pretrained=offline"]).model.pretrained == "offline"
    assert load_config(None, ["model.pretrained=/w/mnv2.pth"]).model.pretrained == "/w/mnv2.pth"
    assert load_config(None, ["model.pretrained=false"]).model.pretrained is False


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lrr=1", "valid keys: name, lr, weight_decay"),
        ("bogus=1", "unknown key 'bogus'"),
        ("dta.root=x", "unknown key 'dta'"),
        ("epochs.x=1", "is a value, not a section"),
        ("noequals", "expected section.key=value"),
    ],
)
def test_unknown_override_keys_list_valid_ones(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_unknown_yaml_key_names_file_and_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  arch: unet\n  encodr: resnet18\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [])
    message = str(info.value)
    assert str(path) in message and "model.encodr" in message and "arch, encoder, pretrained" in message


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("epochs=many", "epochs: expected int"),
        ("epochs=0", "epochs: 0 is outside"),
        ("data.task=detection", "data.task: unknown value 'detection'"),
        ("optim.schedule=step", "optim.schedule: unknown value"),
        ("amp=fp8", "amp: unknown value 'fp8'"),
        ("data.input_size=[4, 4]", "data.input_size"),
        ("augment.hflip=2", "augment.hflip is a probability"),
        ("guide_mode=mask", "guide_mode: unknown value"),
        ("data.val_fraction=0", "data.val_fraction"),
    ],
)
def test_bad_values_raise(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", [])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml", [])
    (tmp_path / "broken.yaml").write_text("data: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml", [])


def test_square_input_size_and_binary_classification_mode() -> None:
    cfg = load_config(None, ["data.input_size=[48]", "data.task=classification"])
    assert cfg.data.input_size == [48, 48]
    assert cfg.data.mode == "multiclass"  # binary classification is K=2 softmax


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        None, ["data.root=/d", "augment.scale=[0.8, 1.25]", "model.pretrained=offline", "epochs=3"]
    )
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(path, []) == cfg
    plain = config_to_dict(cfg)
    assert plain["augment"]["scale"] == [0.8, 1.25]
    assert yaml.safe_load(path.read_text())["epochs"] == 3


PRESETS = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs" / "cpu").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(REPO)))
def test_presets_load_with_offline_weights_and_a_held_out_test_split(path: Path) -> None:
    from medlens.models.offline import offline_weights_for

    cfg = load_config(path, [])
    roots = [cfg.data.root, *cfg.data.extra_roots, *cfg.data.partial_roots]
    for root in roots:  # the shared data, or a folder that a script of configs/cpu/splits/ derives from it
        derived = root.startswith("runs/") and "configs/cpu/splits/" in path.read_text()
        assert root.startswith("../shared/datasets/") or derived, root
    assert cfg.model.pretrained == "offline"
    offline_weights_for(cfg.model.encoder if cfg.data.task == "segmentation" else cfg.model.arch)
    if cfg.data.split_file and cfg.data.split_file.startswith("runs/"):  # written by a script (not in git)
        scripts = re.findall(r"configs/cpu/splits/\w+\.py", path.read_text())
        assert scripts and all((REPO / s).is_file() for s in scripts), scripts
        writes = [s for s in scripts if Path(cfg.data.split_file).name in (REPO / s).read_text()]
        assert writes, f"no script named in {path.name} says it writes {cfg.data.split_file}"
    elif cfg.data.split_file:  # a fixed split with its own test side
        split = json.loads((REPO / cfg.data.split_file).read_text())
        assert split["test"] and not set(split["test"]) & (set(split["train"]) | set(split["val"]))
    else:
        assert cfg.data.test_fraction > 0, "every preset keeps a test split that no choice sees"


def test_the_gpu_script_trains_every_gpu_preset() -> None:
    script = (REPO / "configs" / "train_all_gpu.sh").read_text()
    named = set(re.findall(r"configs/([\w-]+)\.yaml", script))
    assert named == {p.stem for p in (REPO / "configs").glob("*.yaml")}


def test_polyp_preset_merges_cvc_with_automatic_groups() -> None:
    cfg = load_config(REPO / "configs" / "polyp.yaml", [])
    assert cfg.data.root.endswith("kvasir_seg")
    assert [Path(r).name for r in cfg.data.extra_roots] == ["cvc_clinicdb"]
    assert cfg.data.group_column is None  # auto: CVC's metadata.csv has video_sequence, Kvasir has no groups


def test_legacy_amp_booleans_still_load(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("amp: true\n")
    assert load_config(path).amp == "auto"
    path.write_text("amp: false\n")
    assert load_config(path).amp == "fp32"

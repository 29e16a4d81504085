"""Training configuration: typed dataclasses, YAML load/save and ``section.key=value`` overrides.

Defaults live here and nowhere else. A config file holds any subset of the sections below; command-line
overrides (``--set optim.lr=3e-4``) are parsed with ``yaml.safe_load`` and then checked against the field's
type, so ``data.input_size=[256,256]``, ``model.pretrained=true`` and ``loss=null`` all work. An unknown key
raises a ``ConfigError`` that lists the valid keys of its section.

Relative paths (``data.root``, ``data.extra_roots``, ``out_dir``, ``guide_bundle``, ``from_bundle``) are
relative to the working directory, like every other command-line path.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from medlens.data.augment import AugmentConfig
from medlens.errors import ConfigError
from medlens.spec import DEFAULT_GUIDE_MARGIN, MODES, TASKS, GuideMode, Mode, Task

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "poly", "constant")
AMP_VALUES = ("auto", "bf16", "fp16", "fp32")


@dataclass
class DataConfig:
    """Where the images are and how they are split and sized."""

    root: str = ""
    task: str = "segmentation"
    mode: str = "binary"  # segmentation: binary | multiclass | multilabel; classification: multiclass
    mask_dirs: list[str] | None = None  # None = "masks"
    label_column: str = "label"
    group_column: str | None = None  # None = auto (lesion_id, video_sequence, patient_id, patient)
    classes: list[str] | None = None  # None = from the data
    val_fraction: float = 0.15
    test_fraction: float = 0.0
    split_seed: int = 0
    split_file: str | None = None  # a split.json ({"train", "val", "test"} id lists) to use instead
    skip_bad: bool = False
    input_size: list[int] | None = None  # [H, W]; None = from the plan
    in_channels: int | None = None  # None = from the plan
    extra_roots: list[str] = field(
        default_factory=list
    )  # more folders merged into training (groups kept, prefixed)
    # multi-class segmentation: more folders whose masks label only some classes, {folder: {mask value:
    # [classes it may be]}}, e.g. lung-only masks beside lungs + heart: {0: [background, heart],
    # 1: [left_lung, right_lung]} (binary masks read as 0/1), trained with a marginal loss (data/partial.py).
    partial_roots: dict[str, dict[int, list[str]]] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Network: smp architecture + encoder (segmentation) or a timm name in ``arch`` (classification)."""

    arch: str = "unet"
    encoder: str = "resnet34"
    pretrained: str | bool = False  # False | True (local hub cache) | "offline" (pip-installed ImageNet
    # MobileNetV2) | path to a state dict
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to create_model, e.g. decoder_channels


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (stepped per optimizer step)."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only (Nesterov)
    schedule: str = "cosine"  # cosine | poly | constant
    warmup_epochs: float = 1.0
    final_lr_ratio: float = 0.01  # LR at the last step as a fraction of lr
    poly_power: float = 0.9
    grad_clip: float | None = 5.0  # max global gradient norm; None = off
    backbone_lr_mult: float = 1.0  # backbone LR = lr * backbone_lr_mult (fine-tuning); the head keeps lr


@dataclass
class TrainConfig:
    """Everything a training run needs; saved resolved as ``config.yaml`` in the run folder."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: str | None = None  # None = the plan's loss
    epochs: int = 50
    batch_size: int | None = None  # None = the plan's batch size
    steps_per_epoch: int | None = None  # None = one pass over the training split
    seed: int = 0
    # auto: bf16 autocast on CUDA and on CPUs with fast bf16 (AVX512-BF16 / AMX), else fp32; bf16, fp16 or
    # fp32 force one (fp16 is CUDA only). The run's config.yaml records the precision actually used.
    amp: str | bool = "auto"  # (true / false: the spellings of config.yaml files before "auto")
    channels_last: bool = True
    compile: bool = False
    early_stopping_patience: int | None = 10  # validations without improvement; None / 0 = off
    val_every: int = 1
    num_workers: int = 0  # threads used to decode images while caching
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    out_dir: str = "runs"
    run_name: str | None = None  # None = <data folder>-<arch>-<timestamp>
    max_time_minutes: float | None = None
    # classification
    balanced_sampling: bool = False
    class_weighted_loss: bool = True
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) of cutmix; 0 = off (both on: one of them per batch)
    freeze_epochs: int = 0  # two-stage fine-tuning: head only for this many epochs, then all layers
    calibrate: bool = True  # temperature scaling on the validation logits at the end
    target_sensitivity: float | None = None  # binary: decision threshold reaching it on validation
    positive_class: str | None = None  # binary: the positive class; None = the non-"normal"/"benign" one
    balanced_decision: bool = (
        False  # multi-class: arg-max of p / prior**tau, tau fitted on val (balanced acc.)
    )
    class_groups: dict[str, list[str]] = field(default_factory=dict)  # e.g. {malignant: [mel, bcc, akiec]}:
    # summed probabilities reported beside the classes, each flagged above a threshold fitted on validation
    group_sensitivity: float = 0.9  # ... that reaches this sensitivity for the group's items
    # classification: labelled folders of other collections, never trained on nor used to pick the epoch,
    # whose images join the validation split when calibration and the decision rules are fitted at the end
    # (an operating point fitted on one collection's look does not travel; training/reports.py)
    decision_roots: list[str] = field(default_factory=list)
    # start from every weight of this bundle (medlens train --from; training/warmstart.py), not ImageNet
    from_bundle: str | None = None
    new_head: bool = False  # --from with other classes: a fresh class layer, the rest from the bundle
    guide_bundle: str | None = None  # segmentation bundle for segmentation-guided classification
    guide_mode: GuideMode = GuideMode.CROP  # crop | channel | both | field
    guide_margin: float = DEFAULT_GUIDE_MARGIN  # crop margin per side, a fraction of the region's longer side
    cam_penalty: float = 0.0  # weight of the attention loss (losses.outside_evidence) on the guide's region
    cam_region: list[str] = field(default_factory=list)  # the guide's structures forming it; [] = all of them


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict (lists, not tuples) of a dataclass config, ready for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, Enum):
            return v.value
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


class _Dumper(yaml.SafeDumper):
    """Block-style sections with short lists of numbers/names on one line (``input_size: [256, 256]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(v, (int, float, str, bool)) or v is None for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write ``cfg`` as YAML (sections in declaration order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    path.write_text("# medlens training configuration (resolved)\n" + text)
    return path


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``section.key=value`` overrides; validated."""
    data: dict = config_to_dict(TrainConfig())
    source = str(path) if path else "<defaults>"
    if path:
        _deep_update(data, _read_yaml(Path(path)))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected section.key=value")
        _set_override(data, key.strip(), raw.strip())
    return validate_config(_build(TrainConfig, data, source, ""))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _deep_update(base: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            _deep_update(base[key], value)
        elif isinstance(base.get(key), dict) and value is None:
            continue  # an empty section ("augment:") keeps its defaults
        else:
            base[key] = value  # unknown keys are reported by _build with the valid ones


def _set_override(data: dict, key: str, raw: str) -> None:
    """Set ``data[a][b] = value`` for ``key == "a.b"``, typing ``raw`` by the field it lands on."""
    cls: Any = TrainConfig
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            where = ".".join(parts[:i]) or "top level"
            raise ConfigError(
                f"override {key!r}: unknown key {part!r} ({where}); valid keys: {', '.join(hints)}"
            )
        hint = hints[part]
        if i == len(parts) - 1:
            node[part] = _parse_override(raw, hint, key)
        elif dataclasses.is_dataclass(hint):
            node = node.setdefault(part, {})
            cls = hint
        else:
            raise ConfigError(f"override {key!r}: {part!r} is a value, not a section")


def _parse_override(raw: str, hint: Any, key: str) -> Any:
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    try:
        _coerce(value, hint, key, "override")
        return value
    except ConfigError:
        if str in _union_args(hint):  # e.g. a path containing ": " or a name that YAML reads as a number
            return raw
        raise


def _union_args(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _build(cls: Any, data: Any, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]} ({where}); valid keys: {', '.join(hints)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}", source) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """``value`` converted to ``hint`` (dataclass, Optional/Union, list[X], tuple[X, ...],
    bool/int/float/str)."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, f"{key}.")
    options = _union_args(hint)
    if len(options) > 1:
        if value is None and type(None) in options:
            return None
        for opt in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, opt, key, source)
            except ConfigError:
                continue
        raise _type_error(value, hint, key, source)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(value, hint, key, source)
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, hint, key, source)
        items = [_coerce(v, args[0] if args else Any, key, source) for v in value]
        if origin is tuple and args and args[-1] is not Ellipsis and len(items) != len(args):
            raise _type_error(value, hint, key, source)
        return tuple(items) if origin is tuple else items
    return _scalar(value, hint, key, source)


def _scalar(value: Any, hint: Any, key: str, source: str) -> Any:
    if hint is Any:
        return value
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            valid = ", ".join(e.value for e in hint)
            raise ConfigError(f"{source}: {key}: unknown value {value!r}; valid: {valid}") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str and isinstance(value, str):
        return value
    raise _type_error(value, hint, key, source)


def _type_error(value: Any, hint: Any, key: str, source: str) -> ConfigError:
    name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    return ConfigError(f"{source}: {key}: expected {name}, got {value!r}")


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check choices and ranges (raises ``ConfigError`` naming the key); normalises ``data.input_size``."""
    d, o = cfg.data, cfg.optim
    _choice("data.task", d.task, TASKS)
    _choice("data.mode", d.mode, MODES)
    _choice("optim.name", o.name.lower(), OPTIMIZERS)
    _choice("optim.schedule", o.schedule, SCHEDULES)
    _choice("guide_mode", cfg.guide_mode, tuple(GuideMode))
    cfg.guide_mode = GuideMode(cfg.guide_mode)  # a TrainConfig built in Python may hold the string
    if not 0.0 <= cfg.guide_margin <= 1.0:
        raise ConfigError(f"guide_margin: expected a fraction in [0, 1], got {cfg.guide_margin}")
    if isinstance(cfg.amp, bool):  # config.yaml files written before "auto": true meant auto, false fp32
        cfg.amp = "auto" if cfg.amp else "fp32"
    _choice("amp", cfg.amp, AMP_VALUES)
    if d.input_size is not None:
        size = list(d.input_size) * 2 if len(d.input_size) == 1 else list(d.input_size)
        if len(size) != 2 or min(size) < 8:
            raise ConfigError(f"data.input_size: expected [H, W] of at least 8 pixels, got {d.input_size!r}")
        d.input_size = size
    _range("data.val_fraction", d.val_fraction, 0.0, 0.9, low_open=True)
    _range("data.test_fraction", d.test_fraction, 0.0, 0.9)
    _range("optim.lr", o.lr, 0.0, 10.0, low_open=True)
    _range("label_smoothing", cfg.label_smoothing, 0.0, 0.99)
    _range("mixup", cfg.mixup, 0.0, 100.0)
    _range("cutmix", cfg.cutmix, 0.0, 100.0)
    _range("cam_penalty", cfg.cam_penalty, 0.0, 100.0)
    if cfg.cam_penalty > 0 and (not cfg.guide_bundle or cfg.mixup > 0 or cfg.cutmix > 0):
        raise ConfigError("cam_penalty: needs a guide_bundle (its region), and no mixup or cutmix")
    for key in ("epochs", "val_every"):
        _range(key, getattr(cfg, key), 1, 1_000_000)
    for key, value in (
        ("batch_size", cfg.batch_size),
        ("steps_per_epoch", cfg.steps_per_epoch),
        ("data.in_channels", d.in_channels),
    ):
        if value is not None:
            _range(key, value, 1, 1_000_000)
    _range("group_sensitivity", cfg.group_sensitivity, 0.0, 1.0, low_open=True)
    if cfg.target_sensitivity is not None:
        _range("target_sensitivity", cfg.target_sensitivity, 0.0, 1.0, low_open=True)
    if cfg.max_time_minutes is not None:
        _range("max_time_minutes", cfg.max_time_minutes, 0.0, 1e9, low_open=True)
    if cfg.decision_roots and d.task != Task.CLASSIFICATION:
        raise ConfigError("decision_roots: labelled folders for a classifier's decision rules (data.task)")
    if d.task == Task.CLASSIFICATION and d.mode != Mode.MULTICLASS:
        if d.mode != Mode.BINARY:
            raise ConfigError(f"data.mode: classification supports multiclass (and binary), got {d.mode!r}")
        d.mode = "multiclass"  # binary classification is K=2 softmax, one code path with multiclass
    return cfg


def _choice(key: str, value: Any, valid: tuple) -> None:
    if value not in valid:
        raise ConfigError(f"{key}: unknown value {value!r}; valid: {', '.join(map(str, valid))}")


def _range(key: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    if value < low or value > high or (low_open and value <= low):
        bracket = "(" if low_open else "["
        raise ConfigError(f"{key}: {value!r} is outside {bracket}{low}, {high}]")

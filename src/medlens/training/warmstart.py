"""Starting a run from all of a bundle's weights (``medlens train --from BUNDLE``).

One feature, two uses:

- **Fine-tuning** a shipped model on a user's own images (their clinic's scope or dermatoscope): the bundle
  fixes what its weights need (architecture, input size and channels, normalisation and, unless ``new_head``,
  the classes), the learning rate defaults to a tenth of the bundle's, and ``--freeze-encoder`` trains only
  the decoder / head.
- **Training that adds up**: on the bundle's own data, its ``split.json`` is reused (so its test split stays
  untouched) and the run continues from the shipped weights with a fresh warm-up and decay (a warm restart at
  the recipe's learning rate unless one is given).

Either way the run folder records the lineage in ``lineage.json`` (which bundle, the sha256 of its weights,
the epochs behind it) and the bundle made from the run carries it into ``bundle.json`` and its model card.

smp and timm load ImageNet encoders only; a whole-network start from another trained model (decoder and head
included) with a class-list check is what neither does, hence this module.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens.config import TrainConfig, load_config
from medlens.data.fingerprint import Plan
from medlens.data.index import DatasetIndex
from medlens.data.splits import load_splits
from medlens.errors import ConfigError, DatasetError
from medlens.folders import BundleFolder, RunFolder
from medlens.inference.bundle import Bundle, clean_state_dict, sha256_file
from medlens.jsonable import write_json
from medlens.models.parts import is_segmentation_model
from medlens.models.pretrained import zero_init_new_head
from medlens.spec import Mode, ModelSpec, Task

logger = logging.getLogger(__name__)

FINE_TUNE_LR_SCALE = 0.1  # new data: a tenth of the bundle's learning rate (the usual fine-tuning default)


def config_from_bundle(
    bundle_path: str | Path,
    config_path: str | Path | None,
    overrides: list[str],
    freeze_encoder: bool = False,
) -> TrainConfig:
    """The config of a run that starts from ``bundle_path``'s weights.

    Base: ``config_path`` if given, else the bundle's own training config (its run name, output folder, time
    budget and precision reset).
    Then ``overrides`` (the user's flags and ``--set``), then what the weights fix: architecture, encoder
    and its arguments, input channels, guide; the input size unless the user set one. The bundle's split is
    reused when the data are the bundle's own; the learning rate, unless given, is a tenth of the bundle's on
    new data and the bundle's own on its own data.
    """
    bundle = Bundle.load(bundle_path)
    own_config = BundleFolder(bundle.path).config
    base = Path(config_path) if config_path else (own_config if own_config.is_file() else None)
    # what described the bundle's run, not the recipe: its folder, time budget, device and precision, and
    # how it itself was started (this run's flags say that)
    reset = [] if config_path else ["run_name=null", "out_dir=runs", "max_time_minutes=null", "amp=auto",
                                    "device=auto", "new_head=false", "freeze_epochs=0"]  # fmt: skip
    cfg = load_config(base, [*reset, *overrides, f"from_bundle={bundle.path}", "model.pretrained=false"])
    _fix_to_weights(
        cfg,
        bundle.spec,
        user_size=_given(overrides, "data.input_size"),
        user_margin=_given(overrides, "guide_margin"),
    )
    bundle_cfg = load_config(own_config) if own_config.is_file() else None
    same_data = bundle_cfg is not None and _same_data(cfg, bundle_cfg)
    if not config_path and not same_data:  # new data: nothing of the bundle's own data comes along
        own_data = {"extra_roots": [], "partial_roots": {}, "split_file": None, "group_column": None}
        for key, empty in own_data.items():
            if not _given(overrides, f"data.{key}"):
                setattr(cfg.data, key, empty)
    split = BundleFolder(bundle.path).split
    if same_data and cfg.data.split_file is None and split.is_file():
        cfg.data.split_file = str(split)
        logger.info("--from %s on its own data: reusing its split (%s)", bundle.path, split)
    if not _given(overrides, "optim.lr") and not config_path and not same_data:
        cfg.optim.lr = cfg.optim.lr * FINE_TUNE_LR_SCALE
    if cfg.new_head:  # rules about the bundle's classes do not carry over to a new head's
        for key, empty in (("class_groups", {}), ("positive_class", None)):
            if not _given(overrides, key):
                setattr(cfg, key, empty)
        if not _given(overrides, "data.classes"):
            cfg.data.classes = None
    if freeze_encoder:
        cfg.freeze_epochs = cfg.epochs
    if not config_path and cfg.cam_penalty > 0 and not _given(overrides, "cam_penalty"):
        logger.info("--from %s: its recipe's attention loss comes along (cam_penalty=%s); "
                    "--set cam_penalty=0 turns it off", bundle.path, cfg.cam_penalty)  # fmt: skip
    return cfg


def _given(overrides: list[str], key: str) -> bool:
    return any(item.partition("=")[0].strip() == key for item in overrides)


def _fix_to_weights(cfg: TrainConfig, spec: ModelSpec, user_size: bool, user_margin: bool = False) -> None:
    """Set (or check) the config fields that the bundle's weights determine (the guide's crop margin and the
    input size only when the user did not set them: a network adapts to a tighter crop or a larger input)."""
    if cfg.data.task != spec.task:
        raise ConfigError(f"--from: the bundle is a {spec.task.value} model; data.task is {cfg.data.task!r}")
    if cfg.model.arch != spec.arch:
        logger.info("--from: model.arch=%s (the bundle's) instead of %s", spec.arch, cfg.model.arch)
        cfg.model.arch = spec.arch
    if spec.task == Task.SEGMENTATION and spec.encoder and cfg.model.encoder != spec.encoder:
        logger.info("--from: model.encoder=%s (the bundle's) instead of %s", spec.encoder, cfg.model.encoder)
        cfg.model.encoder = spec.encoder
    cfg.model.kwargs = dict(spec.model_kwargs)
    cfg.data.in_channels = spec.image_channels
    if spec.guide is not None:
        cfg.guide_bundle, cfg.guide_mode = spec.guide.bundle, spec.guide.mode
        if not user_margin:
            cfg.guide_margin = spec.guide.margin
    if not user_size:
        cfg.data.input_size = list(spec.input_size)


def _same_data(cfg: TrainConfig, bundle_cfg: TrainConfig) -> bool:
    """Whether a run trains on the folders the bundle was trained on (compared as resolved paths)."""

    def roots(c: TrainConfig) -> list[Path]:
        return [Path(r).resolve() for r in [c.data.root, *c.data.extra_roots, *c.data.partial_roots]]

    return bool(cfg.data.root) and roots(cfg) == roots(bundle_cfg)


def start_spec(cfg: TrainConfig) -> ModelSpec:
    """The spec of the bundle a run starts from."""
    if not cfg.from_bundle:
        raise ConfigError("from_bundle is not set")
    return Bundle.load(cfg.from_bundle).spec


def align_classes(index: DatasetIndex, cfg: TrainConfig) -> None:
    """Check the data's classes against the bundle's head (in place: a classifier's data take the head's
    class order; a subset of its classes is fine). ConfigError names the classes that do not fit and
    ``--new-head``."""
    if not cfg.from_bundle or cfg.new_head:
        return
    spec = start_spec(cfg)
    if index.task == Task.CLASSIFICATION:
        extra = [c for c in index.classes if c not in spec.classes]
        if extra:
            raise ConfigError(
                f"{cfg.data.root}: classes {extra} are not among the classes of {cfg.from_bundle} "
                f"({', '.join(spec.classes)}); give --new-head to train a new head for "
                f"{', '.join(index.classes)}"
            )
        index.classes = list(spec.classes)
        return
    if index.mode != spec.mode or (spec.mode != Mode.BINARY and list(index.classes) != list(spec.classes)):
        raise ConfigError(
            f"{cfg.data.root}: {index.mode} masks with classes {index.classes} do not fit the head of "
            f"{cfg.from_bundle} ({spec.mode.value}: {', '.join(spec.classes)}); give --new-head to train a "
            "new one"
        )


def plan_for_start(plan: Plan, cfg: TrainConfig) -> Plan:
    """The plan with the bundle's normalisation and input channels (its weights were trained on them)."""
    spec = start_spec(cfg)
    n = spec.image_channels
    return dataclasses.replace(
        plan,
        in_channels=n,
        mean=list(spec.mean[:n]),
        std=list(spec.std[:n]),
        notes=[*plan.notes, f"normalisation and channels of {cfg.from_bundle} (--from)"],
    )


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the layer that maps features to classes: timm's classifier, smp's
    segmentation head."""
    head = model.segmentation_head if is_segmentation_model(model) else model.get_classifier()
    ids = {id(t) for t in [*head.parameters(), *head.buffers()]}
    state = model.state_dict(keep_vars=True)
    return {k for k, v in state.items() if id(v) in ids}


def load_start_weights(model: nn.Module, bundle_path: str | Path, new_head: bool = False) -> None:
    """Load every weight of the bundle into ``model`` (in place); with ``new_head`` the class layer keeps its
    fresh initialisation. ConfigError when the weights do not fit."""
    bundle = Bundle.load(bundle_path)
    state = clean_state_dict(bundle.state_dict())
    head = _head_keys(model) if new_head else set()
    state = {k: v for k, v in state.items() if k not in head}
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state) - head)
    unexpected = sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        raise ConfigError(
            f"--from {bundle_path}: its weights do not fit this network (shape differs: {mismatched[:3]}, "
            f"missing: {missing[:3]}, unexpected: {unexpected[:3]})"
        )
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    if new_head and not is_segmentation_model(model):
        zero_init_new_head(model, loaded=set(state))
    logger.info("--from %s: loaded %d tensors%s", bundle_path, len(state), " (new head)" if new_head else "")


def epochs_behind(bundle: Bundle) -> int:
    """Epochs of training in a bundle's weights, its ancestors' included."""
    lineage = bundle.training.get("lineage") or {}
    if isinstance(lineage.get("epochs_total"), int):
        return int(lineage["epochs_total"])
    return int(bundle.training.get("epochs_trained") or 0)


def same_split(split_file: str | None, bundle_split: Path) -> bool:
    """Whether a run reads the bundle's split: its ``split.json``, or a file with the same ids on each side
    (a recipe that names the split file the bundle was trained on), in any order, a missing side counting as
    an empty one (as :func:`~medlens.data.splits.load_splits` reads them). False when either is missing or
    malformed."""
    if not split_file or not Path(split_file).is_file() or not bundle_split.is_file():
        return False
    try:
        ours, theirs = load_splits(split_file), load_splits(bundle_split)
    except DatasetError:
        return False
    return {side: set(ids) for side, ids in ours.items()} == {side: set(ids) for side, ids in theirs.items()}


def write_lineage(folder: RunFolder, cfg: TrainConfig) -> dict[str, Any]:
    """``lineage.json`` of a run that starts from a bundle: the bundle, its weights' sha256, the epochs behind
    it and its own ancestors (oldest first)."""
    bundle = Bundle.load(cfg.from_bundle)
    parent = bundle.training.get("lineage") or {}
    entry = {
        "bundle": str(cfg.from_bundle),
        "name": bundle.name,
        "created": bundle.created,
        "weights_sha256": sha256_file(bundle.weights_path),
        "epochs": int(bundle.training.get("epochs_trained") or 0),
        "new_head": bool(cfg.new_head),
    }
    lineage = {
        "from": entry,
        "ancestors": [*(parent.get("ancestors") or []), *([parent["from"]] if parent.get("from") else [])],
        "epochs_before": epochs_behind(bundle),
        "split_reused": same_split(cfg.data.split_file, BundleFolder(cfg.from_bundle).split),
    }
    write_json(folder.lineage, lineage)
    return lineage

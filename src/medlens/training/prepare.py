"""Data side of a run (nnU-Net's "plan and preprocess"): discover, fingerprint, plan, split, cache.

Rank 0 runs :func:`prepare_run` and writes ``fingerprint.json``, ``plan.json`` and ``split.json`` into the run
folder (on ``--resume`` it reads them back instead, so the split never changes); every rank then caches its
copy of the train/val images with :func:`cache_split`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medlens.config import TrainConfig
from medlens.data.augment import AugmentConfig
from medlens.data.cache import CachedData, build_cache
from medlens.data.fingerprint import Plan, fingerprint, load_plan, make_plan, save_plan
from medlens.data.index import DatasetIndex
from medlens.data.sources import discover_all
from medlens.data.splits import check_splits, load_splits, make_splits, save_splits
from medlens.errors import ConfigError, DatasetError
from medlens.folders import RunFolder
from medlens.jsonable import write_json
from medlens.spec import Guide, ModelSpec, Task, trained_flips

logger = logging.getLogger(__name__)

GUIDE_CHUNK = 64  # images decoded at once for segmentation-guided inputs (bounds memory on large sets)


@dataclass
class RunData:
    """What training needs from the data: the merged index, the resolved plan and the split."""

    index: DatasetIndex
    plan: Plan
    splits: dict[str, list[str]]
    decision: dict[str, DatasetIndex] = field(default_factory=dict)  # decision_roots, read once


def resolve_plan(plan: Plan, cfg: TrainConfig) -> Plan:
    """The plan with the config's explicit choices applied (input size, channels, batch size, loss). The plan
    describes the images; a guide's mask channel is added by :func:`model_spec` alone."""
    d = cfg.data
    changes: dict = {}
    if d.input_size is not None:
        changes["input_size"] = (int(d.input_size[0]), int(d.input_size[1]))
    if d.in_channels is not None and d.in_channels != plan.in_channels:
        changes["in_channels"] = d.in_channels
        changes["mean"] = _fit(plan.mean, d.in_channels)
        changes["std"] = _fit(plan.std, d.in_channels)
    if cfg.batch_size is not None:
        changes["batch_size"] = cfg.batch_size
    if cfg.loss is not None:
        changes["loss"] = cfg.loss
    weights_norm = _offline_normalisation(cfg)
    if (
        weights_norm
        and changes.get("in_channels", plan.in_channels) == 3
        and weights_norm != (plan.mean, plan.std)
    ):
        changes["mean"], changes["std"] = (
            weights_norm  # the statistics the ImageNet weights were trained with
        )
    if changes:
        changes["notes"] = [*plan.notes, "set by the config: " + ", ".join(sorted(changes))]
    plan = dataclasses.replace(plan, **changes)
    return plan


def _offline_normalisation(cfg: TrainConfig) -> tuple[list[float], list[float]] | None:
    """(mean, std) of the offline ImageNet weights a config starts from, or None."""
    if cfg.model.pretrained != "offline":
        return None
    from medlens.models.offline import offline_weights_for

    weights = offline_weights_for(cfg.model.encoder if cfg.data.task == Task.SEGMENTATION else cfg.model.arch)
    return list(weights.mean), list(weights.std)


def resolve_config(cfg: TrainConfig, plan: Plan, run_dir: Path) -> TrainConfig:
    """A copy of ``cfg`` with the plan's choices filled in, so that config.yaml reproduces the run exactly."""
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data))
    cfg.run_name = run_dir.name
    cfg.data.input_size = [int(s) for s in plan.input_size]
    cfg.data.in_channels = int(plan.in_channels)
    cfg.batch_size = int(plan.batch_size)
    cfg.loss = plan.loss
    cfg.augment = resolve_augment(cfg, plan)
    return cfg


def _fit(values: list[float], n: int) -> list[float]:
    """Per-channel statistics for ``n`` channels (grey <-> RGB)."""
    if len(values) == n:
        return list(values)
    mean = float(np.mean(values))
    return [mean] * n


def resolve_augment(cfg: TrainConfig, plan: Plan) -> AugmentConfig:
    """Augmentation: every setting the config left unset comes from the plan's suggestions (e.g. vertical
    flips for dermoscopy), else the built-in default; settings the config gives are kept as they are."""
    return cfg.augment.filled(plan.augment)


def prepare_run(cfg: TrainConfig, folder: RunFolder, resume: bool) -> RunData:
    """Discover, plan and split (or, on resume, read plan.json and split.json back); writes the JSON files."""
    warn_idle_region(cfg)
    index = discover_all(cfg.data, cfg.num_workers or None)
    if len(index) == 0:
        raise DatasetError(f"{cfg.data.root}: no usable items")
    if cfg.from_bundle:
        from medlens.training.warmstart import align_classes

        align_classes(index, cfg)
    if resume and folder.split.is_file() and folder.plan.is_file():
        plan, splits = load_plan(folder.plan), load_splits(folder.split)
        missing = [i for side in ("train", "val") for i in splits[side] if i not in set(index.ids)]
        if missing:
            raise DatasetError(
                f"{folder.split}: {len(missing)} ids are no longer in the data, e.g. {missing[0]!r}"
            )
        logger.info("resume: reusing %s and %s of %s", folder.PLAN, folder.SPLIT, folder.path)
        return RunData(index, plan, splits, decision_indexes(cfg, plan))
    fp = fingerprint(index, seed=cfg.data.split_seed)
    write_json(folder.fingerprint, fp)
    mode = "multiclass" if cfg.data.task == Task.CLASSIFICATION else cfg.data.mode
    plan = resolve_plan(make_plan(fp, cfg.data.task, mode), cfg)
    if cfg.from_bundle:
        from medlens.training.warmstart import plan_for_start, write_lineage

        plan = plan_for_start(plan, cfg)
        write_lineage(folder, cfg)
    save_plan(plan, folder.plan)
    if cfg.data.split_file:  # the user's own split (e.g. by acquisition period), checked against the data
        splits = load_splits(cfg.data.split_file)
        check_splits(splits, index, cfg.data.split_file)
        unassigned = len(index) - sum(map(len, splits.values()))
        if unassigned:
            logger.info("%s: %d items are on no side and are not used", cfg.data.split_file, unassigned)
    else:
        splits = make_splits(index, cfg.data.val_fraction, cfg.data.test_fraction, seed=cfg.data.split_seed)
    save_splits(splits, folder.split)
    return RunData(index, plan, splits, decision_indexes(cfg, plan))


def decision_indexes(cfg: TrainConfig, plan: Plan) -> dict[str, DatasetIndex]:
    """The ``decision_roots`` folders read before training, so that one missing, unreadable or labelled with
    classes the model does not have fails now rather than after the last epoch."""
    from medlens.data.layout import discover

    indexes = {}
    for root in cfg.decision_roots:
        if not Path(root).is_dir():
            raise DatasetError(f"decision_roots: {root} is not a folder")
        indexes[root] = discover(root, task=cfg.data.task, label_column=cfg.data.label_column,
                                 classes=list(plan.classes), skip_bad=cfg.data.skip_bad,
                                 num_workers=cfg.num_workers or None)  # fmt: skip
    return indexes


def cache_split(run: RunData, side: str, cfg: TrainConfig, device: torch.device) -> CachedData:
    """The ``side`` split as uint8 tensors at the plan's input size: on ``device`` when it is a GPU and the
    cache takes under half of its free memory, else on the CPU. Segmentation-guided inputs when
    ``cfg.guide_bundle``."""
    ids = run.splits[side]
    if not ids:
        raise DatasetError(f"{cfg.data.root}: the {side} split is empty; raise data.val_fraction or add data")
    size = tuple(run.plan.input_size)
    if cfg.guide_bundle:
        cached = _guided_cache(run, ids, cfg, device, regions=side == "train" and cfg.cam_penalty > 0)
    else:
        cached = build_cache(run.index, ids, size, run.plan.in_channels, num_workers=cfg.num_workers)
    tensors = [t for t in (cached.images, cached.targets, cached.regions) if t is not None]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    if device.type == "cuda" and nbytes < 0.5 * torch.cuda.mem_get_info(device)[0]:
        regions = None if cached.regions is None else cached.regions.to(device)
        cached = CachedData(cached.images.to(device), cached.targets.to(device), cached.ids, regions)
    logger.info(
        "cached %s split: %d images at %dx%d (%.1f MB on %s)",
        side,
        len(ids),
        size[0],
        size[1],
        nbytes / 1e6,
        cached.images.device,
    )
    return cached


def _guided_cache(
    run: RunData, ids: list[str], cfg: TrainConfig, device: torch.device, regions: bool = False
) -> CachedData:
    """Images turned into segmentation-guided inputs (crop / mask channel) by the bundle in
    ``cfg.guide_bundle``; with ``regions``, also the guide's region aligned with each input (the
    attention loss's "where to look")."""
    from medlens.data.io import load_image
    from medlens.inference.guided import guide_inputs, guide_regions
    from medlens.inference.predictor import SegmentationPredictor

    if run.index.task != Task.CLASSIFICATION:
        raise ConfigError("guide_bundle: segmentation-guided inputs are for classification runs")
    if not Path(cfg.guide_bundle).exists():
        raise ConfigError(f"guide_bundle: {cfg.guide_bundle} not found")
    seg = SegmentationPredictor(cfg.guide_bundle, device=str(device), num_threads=torch.get_num_threads())
    base_channels = run.plan.in_channels
    size = tuple(run.plan.input_size)
    labels = region_labels(seg.classes, cfg.cam_region) if regions else []
    chunks, region_chunks, items = [], [], run.index.lookup(ids)
    for start in range(0, len(items), GUIDE_CHUNK):
        images = [
            load_image(item.image, channels=base_channels) for item in items[start : start + GUIDE_CHUNK]
        ]
        masks = [seg.predict(image) for image in images]
        arrays = guide_inputs(images, None, cfg.guide_mode, size, masks=masks, margin=cfg.guide_margin)
        chunks.append(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous())
        if regions:
            found = guide_regions(masks, labels, cfg.guide_mode, size, margin=cfg.guide_margin)
            region_chunks.append(torch.from_numpy(found).byte())
    targets = torch.tensor([run.index.class_index(item) for item in items], dtype=torch.int64)
    logger.info("guided inputs (%s) from %s for %d images", cfg.guide_mode, cfg.guide_bundle, len(items))
    found_all = torch.cat(region_chunks) if regions else None
    if found_all is not None:
        check_regions(found_all, cfg.guide_bundle)
    return CachedData(torch.cat(chunks), targets, list(ids), found_all)


def region_labels(classes: list[str], names: list[str]) -> list[int]:
    """The guide's label values of the structures ``names`` (``cam_region``); every structure when empty.
    ConfigError when the guide has no structure (every region would be empty, the loss 0)."""
    if len(classes) < 2:
        raise ConfigError(f"cam_penalty: the guide has no structure to form a region (classes {classes})")
    if not names:
        return list(range(1, len(classes)))
    unknown = sorted(set(names) - set(classes[1:]))
    if unknown:
        raise ConfigError(f"cam_region: {unknown} are not structures of the guide bundle ({classes[1:]})")
    return [classes.index(name) for name in names]


def check_regions(regions: torch.Tensor, guide: str) -> None:
    """The guide's regions ``(N, 1, H, W)`` of the training images: a warning with the count when some are
    empty (those images are left out of the attention loss), ConfigError when all are (the loss would be
    0)."""
    empty = int((regions.flatten(1).amax(1) == 0).sum())
    if empty == len(regions):
        raise ConfigError(f"cam_penalty: {guide} found no region (cam_region) in any of {empty} images")
    if empty:
        logger.warning("cam_penalty: %s found no region in %d of %d training images; they are left out of "
                       "the attention loss", guide, empty, len(regions))  # fmt: skip


def warn_idle_region(cfg: TrainConfig) -> None:
    """A warning when ``cam_region`` is set but ``cam_penalty`` is 0: the region then shapes nothing (e.g. a
    run ``--from`` a bundle trained with the attention loss and ``--set cam_penalty=0``)."""
    if cfg.cam_region and cfg.cam_penalty == 0:
        logger.warning("cam_region %s does nothing: cam_penalty is 0 (no attention loss)", cfg.cam_region)


def model_spec(cfg: TrainConfig, plan: Plan) -> ModelSpec:
    """``model_spec.json``: everything a predictor needs to rebuild and feed the network. The one place where
    a guide's mask channel joins the image's: input channels, and mean 0 / std 1 for the 0..1 mask."""
    seg = plan.task == Task.SEGMENTATION
    extra = cfg.guide_mode.extra_channels if cfg.guide_bundle else 0
    return ModelSpec(
        task=plan.task,
        mode=plan.mode,
        arch=cfg.model.arch,
        encoder=cfg.model.encoder if seg else None,
        model_kwargs=dict(cfg.model.kwargs),
        in_channels=int(plan.in_channels) + extra,
        num_classes=int(plan.num_classes),
        classes=list(plan.classes),
        input_size=(int(plan.input_size[0]), int(plan.input_size[1])),
        mean=[float(m) for m in plan.mean] + [0.0] * extra,
        std=[float(s) for s in plan.std] + [1.0] * extra,
        guide=Guide(str(cfg.guide_bundle), cfg.guide_mode, cfg.guide_margin) if cfg.guide_bundle else None,
        mask_dirs=list(cfg.data.mask_dirs) if seg and cfg.data.mask_dirs else None,
        label_column=None if seg else cfg.data.label_column,
        tta_flips=trained_flips(dataclasses.asdict(cfg.augment)),
    )

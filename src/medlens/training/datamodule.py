"""The trainer's data part (Lightning's DataModule): the cached splits, the index sampler, batch preparation.

Built once the run's data is prepared (:func:`medlens.training.prepare.prepare_run`): the train/val splits are
cached as uint8 tensors at the input size (on the GPU when they fit); each step indexes a batch out of the
cache, converts it to float, augments it (kornia) and normalises it on the training device, so no DataLoader
or per-step image decoding is involved.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from medlens.config import TrainConfig
from medlens.data.augment import GpuAugmenter
from medlens.data.cache import CachedData
from medlens.data.index import DatasetIndex
from medlens.errors import DatasetError
from medlens.spec import ModelSpec, Task
from medlens.training import batches
from medlens.training.distributed import DistInfo
from medlens.training.prepare import RunData, cache_split


class Batch(NamedTuple):
    """A prepared batch: normalised inputs, targets, and the attention loss's regions (or None)."""

    x: torch.Tensor
    y: torch.Tensor
    region: torch.Tensor | None


class DataModule:
    """The run's data on the training device, and the batches drawn from it.

    Args:
        run: the merged index, the resolved plan and the split (rank 0 prepared them).
        cfg: the resolved config. spec: the model spec (normalisation, guide).
        dist: this process's place in a torchrun job. device: the training device.
    """

    def __init__(
        self, run: RunData, cfg: TrainConfig, spec: ModelSpec, dist: DistInfo, device: torch.device
    ) -> None:
        self.run, self.plan, self.cfg, self.dist, self.device = run, run.plan, cfg, dist, device
        self.is_seg = cfg.data.task == Task.SEGMENTATION
        self.train = cache_split(run, "train", cfg, device)
        self.val = cache_split(run, "val", cfg, device)
        n, world = len(self.train.ids), dist.world_size
        self.batch_size = min(int(self.plan.batch_size), n // world)  # per rank
        if self.batch_size < 2:
            raise DatasetError(f"{cfg.data.root}: {n} training images are too few for {world} process(es)")
        self.steps_per_epoch = cfg.steps_per_epoch or max(1, n // (self.batch_size * world))
        weights = None  # class-balanced sampling for classification when asked
        if cfg.balanced_sampling and not self.is_seg:
            weights = batches.balanced_weights(self.train.targets, self.plan.num_classes)
        self.sampler = batches.IndexSampler(
            n, self.batch_size, self.steps_per_epoch, cfg.seed, dist.rank, world, weights
        )
        self.augmenter = GpuAugmenter(cfg.augment, cfg.data.task)
        guided = not self.is_seg and spec.guide is not None and spec.guide.mode.extra_channels
        self.mask_channels = int(spec.guide.mode.extra_channels) if guided else 0
        # a guide's mask channel and the attention loss's region move with the image (no photometric change)
        moved = guided or self.train.regions is not None
        self.mask_augmenter = GpuAugmenter(cfg.augment, Task.SEGMENTATION) if moved else None
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    @property
    def label_sets(self) -> list[tuple[int, ...]]:
        """Merged-class codes of partially labelled sources (data.partial_roots), else []."""
        return self.run.index.label_sets

    def cache(self, side: str) -> CachedData:
        """Another side of the split (``"test"``) cached like the training ones."""
        return cache_split(self.run, side, self.cfg, self.device)

    def cache_index(self, index: DatasetIndex) -> CachedData:
        """Every item of another folder's index (a ``decision_roots`` folder) cached like the splits."""
        return cache_split(RunData(index, self.plan, {"all": list(index.ids)}), "all", self.cfg, self.device)

    def class_counts(self) -> np.ndarray:
        """``(K,)`` training items per class (classification)."""
        return np.bincount(self.train.targets.cpu().numpy(), minlength=self.plan.num_classes)

    def sources(self, data: CachedData, distributed_: bool) -> list[str | None]:
        """The data source of each sample of a split, in the order a (sharded, gathered) pass returns them."""
        info = self.dist if distributed_ else DistInfo()
        order = [i for r in range(info.world_size) for i in range(len(data.ids))[r :: info.world_size]]
        items = self.run.index.lookup(data.ids)
        return [items[i].source for i in order]

    def get_batch(self, data: CachedData, idx: torch.Tensor, augment: bool) -> Batch:
        """Cached samples ``idx`` -> normalised float ``(B, C, H, W)`` on the device, their targets and, when
        the cache has them, their regions ``(B, 1, H, W)`` float 0/1 (moved with the image)."""
        idx = idx.to(data.images.device)
        x = batches.to_float(data.images[idx], self.device)
        y = data.targets[idx]
        y = batches.seg_targets(y, self.plan.mode, self.device) if self.is_seg else y.to(self.device)
        region = None if data.regions is None else data.regions[idx].to(self.device).float()
        if augment:
            x, y, region = self.augment(x, y, region)
        return Batch(batches.normalize(x, self.mean, self.std, self.cfg.channels_last), y, region)

    def augment(
        self, x: torch.Tensor, y: torch.Tensor, region: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """GpuAugmenter on 0..1 images ``(B, C, H, W)``; a guide mask channel (last) and a region move with
        the image."""
        if self.is_seg:
            x, y = self.augmenter(x, y)
            return x, y, region
        moved = self.mask_channels + (region is not None)
        if not moved:
            return self.augmenter(x, None)[0], y, None
        stack = x if region is None else torch.cat([x, region], dim=1)
        image, masks = self.mask_augmenter(stack[:, :-moved], stack[:, -moved:])
        masks = masks.float()
        if region is not None:
            masks, region = masks[:, :-1], masks[:, -1:]
        return torch.cat([image, masks], dim=1), y, region

"""The trainer's set-up hooks (network, sampler, optimizer and schedule, loss, augmentation, freezing) and its
batch preparation: a mixin of :class:`~medlens.training.trainer.Trainer`, kept apart so that the training
loop reads on one screen. A variant overrides one hook (e.g. ``build_loss``)."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import torch

from medlens.errors import DatasetError
from medlens.training import batches, distributed
from medlens.training.optim import create_optimizer
from medlens.training.schedule import create_scheduler

logger = logging.getLogger(__name__)


class SetupMixin:
    """Set-up hooks and batches (see the module docstring)."""

    def build_model(self) -> None:
        """The network (plain: ``self.net``) on the device, NHWC when asked; on a fresh run the pretrained
        weights, or every weight of the bundle it starts from (``--from``)."""
        from medlens.models.factory import create_model

        start = self.cfg.from_bundle if not self.resume else None
        net = create_model(
            self.task,
            arch=self.cfg.model.arch,
            encoder=self.cfg.model.encoder,
            in_channels=self.spec.in_channels,
            num_classes=self.plan.num_classes,
            pretrained=False if self.resume or start else self.cfg.model.pretrained,
            **self.cfg.model.kwargs,
        )
        if start:
            from medlens.training.warmstart import load_start_weights

            load_start_weights(net, start, new_head=self.cfg.new_head)
        self.net = net.to(self.device)
        if self.cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")

    def build_sampler(self) -> None:
        """Per-rank batch size and steps per epoch; class-balanced sampling for classification when asked."""
        n, world = len(self.train_data.ids), self.dist.world_size
        self.batch_size = min(int(self.plan.batch_size), n // world)
        if self.batch_size < 2:
            raise DatasetError(
                f"{self.cfg.data.root}: {n} training images are too few for {world} process(es)"
            )
        self.steps_per_epoch = self.cfg.steps_per_epoch or max(1, n // (self.batch_size * world))
        weights = None
        if self.cfg.balanced_sampling and not self.is_seg:
            weights = batches.balanced_weights(self.train_data.targets, self.plan.num_classes)
        self.sampler = batches.IndexSampler(
            n, self.batch_size, self.steps_per_epoch, self.cfg.seed, self.dist.rank, world, weights
        )

    def build_optimizer(self) -> None:
        """Optimizer (backbone/head groups) and the per-step warm-up + cosine/poly schedule."""
        o = self.cfg.optim
        self.optimizer = create_optimizer(self.net, o)
        warmup = round(o.warmup_epochs * self.steps_per_epoch)
        self.scheduler = create_scheduler(self.optimizer, o.schedule, self.cfg.epochs * self.steps_per_epoch,
                                          warmup, o.final_lr_ratio, o.poly_power)  # fmt: skip

    def build_loss(self) -> None:
        """``create_loss`` with the plan's loss; class weights unless balanced sampling already evens
        classes."""
        from medlens.training.losses import create_loss

        weights = self.plan.class_weights
        kw: dict[str, Any] = {}
        if self.is_seg:
            if self.plan.pos_weight:
                kw["pos_weight"] = self.plan.pos_weight
            if self.label_sets:
                kw.update(label_sets=self.label_sets, num_classes=self.plan.num_classes)
        else:
            if not self.cfg.class_weighted_loss or self.cfg.balanced_sampling:
                weights = None
            kw["label_smoothing"] = self.cfg.label_smoothing
        self.loss_fn = create_loss(self.plan.loss, self.task, self.plan.mode, class_weights=weights, **kw).to(
            self.device
        )

    def build_augmenter(self) -> None:
        from medlens.data.augment import GpuAugmenter

        self.augmenter = GpuAugmenter(self.cfg.augment, self.task)
        self.mean = torch.tensor(self.spec.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(self.spec.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def set_frozen(self, frozen: bool) -> None:
        """Freeze/thaw the backbone and (re)wrap the network (DDP must see the final set of trainable
        weights)."""
        from medlens.models.parts import freeze_backbone

        if frozen or self.frozen:
            freeze_backbone(self.net, frozen)
            state = "frozen: training the head only" if frozen else "unfrozen"
            logger.info("backbone %s (epoch %d)", state, self.epoch + 1)
        self.frozen = frozen
        model = distributed.wrap_model(self.net, self.dist, self.device)
        self.model = torch.compile(model) if self.cfg.compile else model

    def get_batch(self, data: Any, idx: torch.Tensor, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached samples ``idx`` -> normalised float ``(B, C, H, W)`` on the device and their targets."""
        idx = idx.to(data.images.device)
        x = batches.to_float(data.images[idx], self.device)
        y = data.targets[idx]
        y = batches.seg_targets(y, self.plan.mode, self.device) if self.is_seg else y.to(self.device)
        if augment:
            x, y = self.augment(x, y)
        return batches.normalize(x, self.mean, self.std, self.cfg.channels_last), y

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GpuAugmenter on 0..1 images; a guide mask channel moves with the image but gets no photometric
        change."""
        if self.is_seg:
            return self.augmenter(x, y)
        if self.spec.guide is not None and self.spec.guide.mode.extra_channels:
            if not hasattr(self, "guide_augmenter"):
                from medlens.data.augment import GpuAugmenter

                self.guide_augmenter = GpuAugmenter(self.cfg.augment, "segmentation")
            image, mask = self.guide_augmenter(x[:, :-1], x[:, -1:])
            return torch.cat([image, mask.float()], dim=1), y
        return self.augmenter(x, None)[0], y

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

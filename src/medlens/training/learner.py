"""The trainer's model part: the network, its optimizer, learning-rate schedule, loss, mixed precision and
two-stage freezing, and the optimizer step. A variant overrides one builder (e.g. ``build_loss``)."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import nn

from medlens.config import TrainConfig
from medlens.data.fingerprint import Plan
from medlens.errors import ConfigError
from medlens.inference.export import WithFeatures
from medlens.spec import ModelSpec, Task
from medlens.training import distributed
from medlens.training.distributed import DistInfo
from medlens.training.losses import outside_evidence
from medlens.training.optim import amp_dtype, create_optimizer
from medlens.training.schedule import create_scheduler

logger = logging.getLogger(__name__)


class StepResult(NamedTuple):
    """What one optimizer step measured, detached: the loss it minimised, the data loss in it (the
    cross-entropy / segmentation loss, without the attention loss), the logits, and the share of the evidence
    outside the guide's region (None without the attention loss)."""

    loss: torch.Tensor
    data_loss: torch.Tensor
    logits: torch.Tensor
    outside: torch.Tensor | None


class Learner:
    """The network and what updates it.

    Args:
        cfg: the resolved config (``amp`` names the precision used). spec: the model spec (input channels).
        plan: the resolved plan (classes, loss, class weights). steps_per_epoch: optimizer steps per epoch.
        label_sets: merged-class codes of partially labelled sources (the marginal loss), else [].
        resume: the weights come from ``last.pt`` (no pretrained or ``--from`` weights are loaded).

    ``net`` is the plain network; ``model`` the one a step runs (DDP-wrapped and compiled as configured).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        spec: ModelSpec,
        plan: Plan,
        steps_per_epoch: int,
        label_sets: list[tuple[int, ...]],
        dist: DistInfo,
        device: torch.device,
        resume: bool = False,
    ) -> None:
        self.cfg, self.spec, self.plan, self.dist, self.device = cfg, spec, plan, dist, device
        self.steps_per_epoch, self.label_sets, self.resume = steps_per_epoch, label_sets, resume
        self.amp_dtype = amp_dtype(cfg.amp, device)
        self.net = self.build_model()
        self.model: nn.Module = self.net  # wrapped by set_frozen before the first step
        self.frozen = False
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.optimizer, self.scheduler = self.build_optimizer()
        self.loss_fn = self.build_loss()

    # -------------------------------------------------------------------------------------------- builders
    def build_model(self) -> nn.Module:
        """The network on the device, NHWC when asked; on a fresh run the pretrained weights, or every weight
        of the bundle it starts from (``--from``)."""
        from medlens.models.factory import create_model

        cfg = self.cfg
        start = cfg.from_bundle if not self.resume else None
        net = create_model(
            cfg.data.task,
            arch=cfg.model.arch,
            encoder=cfg.model.encoder,
            in_channels=self.spec.in_channels,
            num_classes=self.plan.num_classes,
            pretrained=False if self.resume or start else cfg.model.pretrained,
            **cfg.model.kwargs,
        )
        if start:
            from medlens.training.warmstart import load_start_weights

            load_start_weights(net, start, new_head=cfg.new_head)
        if cfg.cam_penalty > 0:
            from medlens.inference.explain import linear_head_weights

            if linear_head_weights(net, self.spec.in_channels, tuple(self.spec.input_size)) is None:
                raise ConfigError(f"cam_penalty: {cfg.model.arch} is not global pooling and one linear layer")
        net = net.to(self.device)
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        return net

    def build_optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        """Optimizer (backbone/head groups) and the per-step warm-up + cosine/poly schedule."""
        o = self.cfg.optim
        optimizer = create_optimizer(self.net, o)
        warmup = round(o.warmup_epochs * self.steps_per_epoch)
        scheduler = create_scheduler(optimizer, o.schedule, self.cfg.epochs * self.steps_per_epoch, warmup,
                                     o.final_lr_ratio, o.poly_power)  # fmt: skip
        return optimizer, scheduler

    def build_loss(self) -> nn.Module:
        """``create_loss`` with the plan's loss; class weights unless balanced sampling already evens
        classes."""
        from medlens.training.losses import create_loss

        cfg, plan = self.cfg, self.plan
        weights = plan.class_weights
        kw: dict[str, Any] = {}
        if cfg.data.task == Task.SEGMENTATION:
            if plan.pos_weight:
                kw["pos_weight"] = plan.pos_weight
            if self.label_sets:
                kw.update(label_sets=self.label_sets, num_classes=plan.num_classes)
        else:
            if not cfg.class_weighted_loss or cfg.balanced_sampling:
                weights = None
            kw["label_smoothing"] = cfg.label_smoothing
        return create_loss(plan.loss, cfg.data.task, plan.mode, class_weights=weights, **kw).to(self.device)

    # ---------------------------------------------------------------------------------------------- training
    def set_frozen(self, frozen: bool, epoch: int) -> None:
        """Freeze/thaw the backbone (two-stage fine-tuning) and (re)wrap the network: DDP must see the final
        set of trainable weights."""
        from medlens.models.parts import freeze_backbone

        if frozen or self.frozen:
            freeze_backbone(self.net, frozen)
            state = "frozen: training the head only" if frozen else "unfrozen"
            logger.info("backbone %s (epoch %d)", state, epoch + 1)
        self.frozen = frozen
        net = WithFeatures(self.net) if self.cfg.cam_penalty > 0 else self.net
        model = distributed.wrap_model(net, self.dist, self.device)
        self.model = torch.compile(model) if self.cfg.compile else model

    def step(self, x: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None) -> StepResult:
        """Forward, loss, backward, clip, step (optimizer + LR schedule) on a normalised batch
        ``(B, C, H, W)``; with ``cam_penalty``, the attention loss on ``region`` ``(B, 1, H, W)`` joins the
        loss. Returns the detached loss, the data loss in it, the logits and the share of the evidence outside
        the region (None without the attention loss)."""
        outside = None
        with self.autocast():
            out = self.model(x)
        if self.cfg.cam_penalty > 0:
            if region is None:
                raise ConfigError("cam_penalty: the batch carries no regions (a guided classification run?)")
            logits, features = out
            outside = outside_evidence(features, self.net.get_classifier().weight, target, region)
            data_loss = self.loss_fn(logits.float(), target)
            loss = data_loss + self.cfg.cam_penalty * outside
        else:
            logits = out
            loss = data_loss = self.loss_fn(logits.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        detached = None if outside is None else outside.detach()
        return StepResult(loss.detach(), data_loss.detach(), logits.detach(), detached)

    @property
    def lr(self) -> float:
        """The largest learning rate of the parameter groups (the head's)."""
        return max(g["lr"] for g in self.optimizer.param_groups)

    def autocast(self) -> Any:
        """The autocast context of the run's precision (none in fp32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The network's, optimizer's, schedule's and grad scaler's state (checkpoint entries)."""
        return {
            "model": distributed.unwrap_model(self.net).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore the :meth:`state_dict` entries of a checkpoint; a longer run stretches the schedule."""
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scheduler.set_total_steps(self.cfg.epochs * self.steps_per_epoch)
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])

"""Loss functions: one factory, :func:`create_loss`, over segmentation_models_pytorch losses and torch.

Inputs are logits. Targets per task/mode:

- segmentation ``binary``: logits ``(B, 1, H, W)``; target ``(B, 1, H, W)`` or ``(B, H, W)``, float or
  uint8 0/1.
- segmentation ``multiclass``: logits ``(B, K, H, W)``; target ``(B, H, W)`` integer labels (any int dtype).
- segmentation ``multilabel``: logits ``(B, K, H, W)``; target ``(B, K, H, W)`` 0/1, float or uint8.
- classification: logits ``(B, K)``; target ``(B,)`` integer labels or ``(B, K)`` float probabilities (soft
  targets from mixup / cutmix / label smoothing).

``class_weights`` (length ``K``; for binary segmentation ``[background, foreground]``) weight the
cross-entropy / BCE terms and the per-class Dice/Tversky/focal terms.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch import losses as smp_losses
from torch import nn

from medlens.errors import ConfigError, UnknownNameError
from medlens.inference.explain import centred_weights
from medlens.spec import MODES, TASKS, Mode, Task

logger = logging.getLogger(__name__)

SEGMENTATION_LOSSES = ("dice_ce", "dice", "focal", "tversky")
CLASSIFICATION_LOSSES = ("ce", "focal")
# ``pos_weight`` (the plan's foreground weight) is accepted by every segmentation loss so that a trainer can
# always pass it; only the BCE of "dice_ce" and binary "focal" (as alpha) use it.
_SEG_KWARGS = {
    "dice_ce": {"dice_weight", "ce_weight", "ignore_index", "smooth", "log_loss", "pos_weight"},
    "dice": {"ignore_index", "smooth", "log_loss", "pos_weight"},
    "focal": {"gamma", "alpha", "ignore_index", "normalized", "pos_weight"},
    "tversky": {"alpha", "beta", "gamma", "ignore_index", "smooth", "log_loss", "pos_weight"},
}
_CLS_KWARGS = {"ce": {"label_smoothing"}, "focal": {"gamma", "label_smoothing"}}
EMPTY_MAP = 1e-6  # a class activation map whose total is no more than this has no share (outside_evidence)


def create_loss(
    name: str,
    task: str,
    mode: str = "binary",
    class_weights: Sequence[float] | None = None,
    **kw: Any,
) -> nn.Module:
    """Build a loss ``module(logits, target) -> scalar``.

    Segmentation names: ``"dice_ce"`` (BCE + Dice for binary/multi-label, CE + Dice for multi-class; kw
    ``dice_weight``, ``ce_weight``), ``"dice"``, ``"focal"`` (kw ``gamma``, ``alpha``), ``"tversky"`` (kw
    ``alpha`` = false-positive weight, default 0.3, ``beta`` = false-negative weight, default 0.7, ``gamma``).
    ``pos_weight`` (binary / multi-label BCE weight of positives, e.g. the plan's) overrides the one derived
    from ``class_weights`` in ``"dice_ce"``, becomes ``alpha = pw / (1 + pw)`` in binary ``"focal"`` and is
    ignored by ``"dice"`` / ``"tversky"``.
    Classification names: ``"ce"`` (kw ``label_smoothing``), ``"focal"`` (kw ``gamma``, ``label_smoothing``).
    ``ignore_index`` works for segmentation. ``label_sets`` (with ``num_classes``): multi-class targets with
    merged-class codes, :class:`MarginalDiceCELoss`. Wrong names raise UnknownNameError; unknown keyword
    arguments raise ConfigError.
    """
    weights = None if class_weights is None else [float(w) for w in class_weights]
    label_sets = kw.pop("label_sets", None)
    if label_sets:  # partially labelled sources (medlens.data.partial): marginal CE + group Dice
        if (task, mode, name) != ("segmentation", "multiclass", "dice_ce") or "num_classes" not in kw:
            raise ConfigError("label_sets (data.partial_roots) need multi-class dice_ce and num_classes")
        return SegmentationLoss(MarginalDiceCELoss(int(kw.pop("num_classes")), label_sets), mode)
    kw.pop("num_classes", None)
    if task == Task.SEGMENTATION:
        if name not in SEGMENTATION_LOSSES:
            raise UnknownNameError("segmentation loss", name, SEGMENTATION_LOSSES)
        if mode not in MODES:
            raise UnknownNameError("segmentation mode", mode, MODES)
        _check_kwargs(name, kw, _SEG_KWARGS[name])
        return SegmentationLoss(_segmentation_loss(name, mode, weights, kw), mode)
    if task == Task.CLASSIFICATION:
        if name not in CLASSIFICATION_LOSSES:
            raise UnknownNameError("classification loss", name, CLASSIFICATION_LOSSES)
        _check_kwargs(name, kw, _CLS_KWARGS[name])
        smoothing = float(kw.get("label_smoothing", 0.0))
        if name == "ce":
            return SoftTargetCrossEntropy(weights, smoothing)
        return MulticlassFocalLoss(weights, gamma=float(kw.get("gamma", 2.0)), label_smoothing=smoothing)
    raise UnknownNameError("task", task, TASKS)


def _check_kwargs(name: str, kw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ConfigError(f"loss {name!r}: unknown option(s) {unknown}; valid: {sorted(allowed)}")


def _segmentation_loss(name: str, mode: str, weights: list[float] | None, kw: dict[str, Any]) -> nn.Module:
    per_class = (
        None if mode == Mode.BINARY else weights
    )  # smp's Dice/Tversky/focal take class weights for K > 1
    if mode == Mode.BINARY and weights is not None and len(weights) != 2:
        raise ConfigError(
            f"loss {name!r}: binary class_weights must be [background, foreground], got {weights}"
        )
    common = {k: kw[k] for k in ("ignore_index", "smooth", "log_loss") if k in kw}
    if name == "dice":
        return smp_losses.DiceLoss(mode, class_weights=per_class, **common)
    if name == "tversky":
        return smp_losses.TverskyLoss(
            mode,
            class_weights=per_class,
            alpha=float(kw.get("alpha", 0.3)),
            beta=float(kw.get("beta", 0.7)),
            gamma=float(kw.get("gamma", 1.0)),
            **common,
        )
    if name == "focal":
        alpha = kw.get("alpha")
        if alpha is None and mode == Mode.BINARY and kw.get("pos_weight"):
            alpha = float(kw["pos_weight"]) / (1.0 + float(kw["pos_weight"]))
        elif alpha is None and mode == Mode.BINARY and weights is not None:
            alpha = weights[1] / (weights[0] + weights[1])  # focal alpha = weight of the positive class
        return smp_losses.FocalLoss(
            mode,
            alpha=alpha,
            gamma=float(kw.get("gamma", 2.0)),
            ignore_index=kw.get("ignore_index"),
            normalized=bool(kw.get("normalized", False)),
            class_weights=per_class,
        )
    return DiceCELoss(
        mode,
        weights,
        dice_weight=float(kw.get("dice_weight", 1.0)),
        ce_weight=float(kw.get("ce_weight", 1.0)),
        pos_weight=kw.get("pos_weight"),
        **common,
    )


class DiceCELoss(nn.Module):
    """``ce_weight * (BCE or CE) + dice_weight * Dice`` (nnU-Net's default segmentation loss).

    Binary: BCE-with-logits (``pos_weight``, else ``w_fg / w_bg`` from class weights) + soft Dice of the
    foreground.
    Multi-class: softmax cross-entropy (class-weighted) + soft Dice over all K channels. Multi-label:
    per-channel BCE (channel-weighted) + per-channel soft Dice. Dice terms come from ``smp.losses.DiceLoss``.
    """

    def __init__(
        self,
        mode: str,
        class_weights: Sequence[float] | None = None,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        ignore_index: int | None = None,
        smooth: float = 0.0,
        log_loss: bool = False,
        pos_weight: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if mode == Mode.MULTICLASS and pos_weight is not None:
            logger.debug("dice_ce: pos_weight has no meaning for multi-class softmax; ignored")
            pos_weight = None
        self.mode, self.dice_weight, self.ce_weight = mode, dice_weight, ce_weight
        self.ignore_index = ignore_index
        per_class = None if mode == Mode.BINARY else class_weights
        self.dice = smp_losses.DiceLoss(
            mode, class_weights=per_class, ignore_index=ignore_index, smooth=smooth, log_loss=log_loss
        )
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights)
        if pos_weight is None and weights is not None and mode == Mode.BINARY:
            pos_weight = float(weights[1] / weights[0])
        pw = (
            None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32).reshape(1, -1, 1, 1)
        )
        self.register_buffer("pos_weight", pw)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` float ``(B, 1|K, H, W)``; ``target`` as prepared by :class:`SegmentationLoss`."""
        return self.ce_weight * self._ce(logits, target) + self.dice_weight * self.dice(logits, target)

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.class_weights
        if self.mode == Mode.MULTICLASS:
            ignore = -100 if self.ignore_index is None else self.ignore_index
            return F.cross_entropy(logits, target, weight=w, ignore_index=ignore)
        weight = w.reshape(1, -1, 1, 1) if w is not None and self.mode == Mode.MULTILABEL else None
        loss = F.binary_cross_entropy_with_logits(
            logits, target.clamp(0, 1), weight=weight, pos_weight=self.pos_weight, reduction="none"
        )
        if self.ignore_index is None:
            return loss.mean()
        keep = (target != self.ignore_index).to(loss.dtype)
        return (loss * keep).sum() / keep.sum().clamp_min(1.0)


class SegmentationLoss(nn.Module):
    """Cast targets for the wrapped loss: binary/multi-label ``float``, multi-class ``int64 (B, H, W)``."""

    def __init__(self, loss: nn.Module, mode: str) -> None:
        super().__init__()
        self.loss, self.mode = loss, mode

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` float ``(B, C, H, W)``; ``target`` ``(B, 1, H, W)``/``(B, H, W)``/``(B, K, H, W)``."""
        if self.mode == Mode.MULTICLASS:
            if target.ndim == 4 and target.shape[1] == 1:
                target = target[:, 0]
            target = target.long()
        else:
            if self.mode == Mode.BINARY and target.ndim == 3:
                target = target.unsqueeze(1)
            target = target.to(logits.dtype)
        if target.shape[0] != logits.shape[0] or target.shape[-2:] != logits.shape[-2:]:
            raise ConfigError(
                f"loss: target shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)}"
            )
        return self.loss(logits, target)


def _soft_targets(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B,)`` integer labels or ``(B, K)`` probabilities -> ``(B, K)`` float probabilities."""
    if target.ndim == 2 and target.is_floating_point():
        return target.to(dtype)
    return F.one_hot(target.long(), num_classes).to(dtype)


class SoftTargetCrossEntropy(nn.Module):
    """Softmax cross-entropy for hard ``(B,)`` or soft ``(B, K)`` targets; class weights, label smoothing.

    Wraps ``F.cross_entropy``, which takes class-probability targets natively. With hard targets and class
    weights the mean is weighted (divided by the summed weights of the targets), as in torch.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` float ``(B, K)``; ``target`` int ``(B,)`` or float ``(B, K)``."""
        if not (target.ndim == 2 and target.is_floating_point()):
            target = target.long()
        else:
            target = target.to(logits.dtype)
        return F.cross_entropy(
            logits, target, weight=self.class_weights, label_smoothing=self.label_smoothing
        )


class MulticlassFocalLoss(nn.Module):
    """Softmax focal loss ``-sum_k w_k (1 - p_k)^gamma y_k log p_k`` (Lin et al. 2017), ``(B, K)`` logits.

    Hand-written because neither library covers mixup/cutmix: kornia's ``focal_loss`` takes only integer
    targets and divides by ``K`` under ``"mean"``; smp's ``FocalLoss`` is one-vs-rest sigmoid. Accepts
    hard ``(B,)`` or soft ``(B, K)`` targets, per-class weights ``w`` and label smoothing. Reduction is the
    weighted mean ``sum_i loss_i / sum_i sum_k w_k y_ik``, so with ``gamma=0`` and hard targets it equals
    ``F.cross_entropy(logits, target, weight=w)``.
    """

    def __init__(
        self, class_weights: Sequence[float] | None = None, gamma: float = 2.0, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"loss 'focal': gamma must be >= 0, got {gamma}")
        self.gamma, self.label_smoothing = gamma, label_smoothing
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` float ``(B, K)``; ``target`` int ``(B,)`` or float ``(B, K)``."""
        num_classes = logits.shape[1]
        y = _soft_targets(target, num_classes, logits.dtype)
        if self.label_smoothing > 0:
            y = y * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        log_p = F.log_softmax(logits, dim=1)
        w = torch.ones(num_classes, device=logits.device, dtype=logits.dtype)
        if self.class_weights is not None:
            w = self.class_weights.to(logits.dtype)
        focal = (1.0 - log_p.exp()).pow(self.gamma)
        loss = -(w * focal * y * log_p).sum(dim=1)
        return loss.sum() / (y * w).sum().clamp_min(torch.finfo(logits.dtype).eps)


class MarginalDiceCELoss(nn.Module):
    """Cross-entropy + soft Dice for multi-class targets in which some pixels name a *set* of classes.

    Target codes ``k < K`` are single classes; code ``K + j`` means "one of the classes in ``label_sets[j]``"
    (a partially labelled source, :mod:`medlens.data.partial`). The cross-entropy of such a pixel is the
    marginal ``-log sum_{c in set} p_c``; the Dice is computed for every class and every merged set over the
    images whose target defines it (a merged set is defined by fully labelled images too, as a union), and
    averaged over the groups present in the batch. With no merged codes it is CE + multi-class soft Dice.
    Hand-written: smp and MONAI losses take one class per pixel.
    """

    def __init__(
        self,
        num_classes: int,
        label_sets: Sequence[Sequence[int]],
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        from medlens.data.partial import membership

        members = torch.from_numpy(membership(num_classes, [tuple(s) for s in label_sets]))  # (K+M, K)
        groups = members.clone()  # Dice groups: every class, then every merged set (G = K + M)
        size = members.sum(1, keepdim=True)  # (K+M, 1) classes per code
        overlap = members.float() @ groups.float().T  # (K+M, G) shared classes of code and group
        self.register_buffer("members", members)
        self.register_buffer("groups", groups.float())
        self.register_buffer("inside", overlap == size)  # code's classes all in the group
        self.register_buffer("compatible", (overlap == 0) | (overlap == size))  # inside or disjoint
        self.dice_weight, self.ce_weight, self.eps = dice_weight, ce_weight, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` float ``(B, K, H, W)``; ``target`` int64 ``(B, H, W)`` codes."""
        log_p = F.log_softmax(logits.float(), dim=1)
        allowed = self.members[target].permute(0, 3, 1, 2)  # (B, K, H, W)
        ce = -torch.logsumexp(log_p.masked_fill(~allowed, float("-inf")), dim=1).mean()
        q = torch.einsum("bkhw,gk->bghw", log_p.exp(), self.groups)  # probability of each group
        y = self.inside[target].permute(0, 3, 1, 2).float()  # (B, G, H, W) pixel lies in the group
        present = F.one_hot(target.flatten(1), self.members.shape[0]).amax(1).bool()  # (B, K+M)
        known = ~(present[:, :, None] & ~self.compatible[None]).any(1)  # (B, G) image defines the group
        k = known.float()[:, :, None, None]
        inter = (q * y * k).sum(dim=(0, 2, 3))
        card = ((q + y) * k).sum(dim=(0, 2, 3))
        active = (y * k).sum(dim=(0, 2, 3)) > 0
        dice = 1.0 - 2.0 * inter / card.clamp_min(self.eps)
        dice_loss = dice[active].mean() if active.any() else dice.sum() * 0.0
        return self.ce_weight * ce + self.dice_weight * dice_loss


def outside_evidence(
    features: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, region: torch.Tensor
) -> torch.Tensor:
    """The attention loss: the share of a classifier's evidence that lies outside the region where it should
    look (the lungs and heart of a chest film), for a head that is global average pooling then one linear
    layer, whose class activation map is ``W_k . A(p)`` at each position ``p`` of the feature map ``A``.

    Written here because no library of the field has it. In the spirit of "right for the right reasons" (Ross
    et al. 2017) and of guided attention (GAIN, Li et al. 2018), but on the class activation map itself,
    which for such a head is Grad-CAM (medlens.inference.explain) without a second backward pass. Both maps
    are of the **centred** weights ``W_k - mean_j W_j`` (:func:`~medlens.inference.explain.centred_weights`),
    what softmax reads: a vector added to every class's weights changes no probability and changes no term of
    the loss. Two shares, averaged:

    - the map Grad-CAM shows, ``ReLU((W_y - mean_j W_j) . A)`` for the true class ``y``;
    - the evidence the decision uses, ``|(W_k - mean_j W_j) . A|`` over every class ``k``: what tells the
      classes apart, wherever it pushes (the first share sees only where the true class wins).

    A map with nothing in it (total 0) has no share: it is left out of the mean, as is an image whose region
    is empty (the guide found nothing), instead of counting as 0, all inside. The shipped chest-xray-cls v4
    was trained with an earlier form whose first share read the raw map ``ReLU(W_y . A)``: a term common to
    every class, free to softmax, emptied every raw map, an empty map counted as 0, and that share gave
    nothing (configs/cpu/README.md); its second share, the same as here, did the work.

    The total in each share's denominator is a constant to the gradient, so the loss pushes the evidence
    outside down in proportion (an L1 penalty scaled by the image's own total). The price: it also rewards a
    fade of every activation at once, which cross-entropy resists (it needs its logits) but not always: at
    weight 1 it silenced the small network of tests/test_attention_loss.py once in four seeds (at .3, none).
    The exact ratio is scale-invariant but its gradient is weak: with the earlier form, on that test's films
    as they were then, it moved the share (by that form's own measure) from .85 to .62 at weight 3 where this
    form reached .24 at weight .3.

    Args:
        features: ``(B, C, h, w)`` feature map. weight: ``(K, C)`` class weights of the linear head.
        target: ``(B,)`` int64 class indices. region: ``(B, 1, H, W)`` float 0/1 at the input's size.
    Returns:
        Scalar in 0..1: the mean of the shares over the (image, map) pairs with a region and a map that is
        not empty (0 when there is none).
    """
    inside = F.adaptive_avg_pool2d(region.float(), features.shape[-2:])  # (B, 1, h, w): share of each cell
    contrib = torch.einsum("kc,bchw->bkhw", centred_weights(weight.float()), features.float())
    shown = contrib.gather(1, target.view(-1, 1, 1, 1).expand(-1, 1, *contrib.shape[-2:])).relu()
    has_region = region.flatten(1).amax(1) > 0
    shares, counted = [], []
    for cam in (shown, contrib.abs()):
        total = cam.flatten(1).sum(1).detach()
        shares.append((cam * (1.0 - inside)).flatten(1).sum(1) / total.clamp(min=EMPTY_MAP))
        counted.append(has_region & (total > EMPTY_MAP))
    share, count = torch.stack(shares), torch.stack(counted).to(torch.float32)
    return (share * count).sum() / count.sum().clamp(min=1)

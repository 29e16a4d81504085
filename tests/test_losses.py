"""Losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medlens.errors import ConfigError, UnknownNameError
from medlens.training.losses import create_loss


def _disc_mask(size: int = 16) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - 8) ** 2 + (xx - 7) ** 2) <= 16).to(torch.uint8)  # (H, W) 0/1


def _perfect_logits(onehot: torch.Tensor) -> torch.Tensor:
    return (onehot.float() * 2 - 1) * 30.0  # +30 where the class is, -30 elsewhere


@pytest.mark.parametrize("name", ["dice_ce", "dice", "tversky", "focal"])
def test_perfect_binary_prediction_is_near_zero(name: str) -> None:
    mask = _disc_mask()[None, None].repeat(2, 1, 1, 1)  # (B, 1, H, W) uint8
    loss = create_loss(name, "segmentation", "binary")(_perfect_logits(mask), mask)
    assert 0 <= loss.item() < 1e-5


def test_binary_dice_ce_hand_computed_for_a_constant_prediction() -> None:
    mask = _disc_mask().float()[None, None]  # (1, 1, 16, 16)
    n_pos, n = mask.sum().item(), mask.numel()
    logits = torch.zeros_like(mask)  # p = 0.5 everywhere
    dice = 2 * 0.5 * n_pos / (0.5 * n + n_pos)
    expected = math.log(2) + (1 - dice)
    loss = create_loss("dice_ce", "segmentation", "binary")(logits, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # a (B, H, W) target works the same
    assert create_loss("dice_ce", "segmentation", "binary")(logits, mask[:, 0]).item() == pytest.approx(
        expected
    )
    # weights: dice_weight 0 leaves the BCE alone
    bce_only = create_loss("dice_ce", "segmentation", "binary", dice_weight=0.0)(logits, mask)
    assert bce_only.item() == pytest.approx(math.log(2), rel=1e-6)


def test_binary_pos_weight_from_class_weights_and_from_kw() -> None:
    mask = _disc_mask().float()[None, None]
    logits = torch.zeros_like(mask)
    n_pos, n = mask.sum().item(), mask.numel()
    expected = math.log(2) * (3.0 * n_pos + (n - n_pos)) / n  # positives weighted 3x in the BCE mean
    by_weights = create_loss("dice_ce", "segmentation", "binary", class_weights=[0.5, 1.5], dice_weight=0)
    by_kw = create_loss("dice_ce", "segmentation", "binary", pos_weight=3.0, dice_weight=0)
    assert by_weights(logits, mask).item() == pytest.approx(expected, rel=1e-5)
    assert by_kw(logits, mask).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="background, foreground"):
        create_loss("dice_ce", "segmentation", "binary", class_weights=[1.0, 2.0, 3.0])


def test_multiclass_dice_ce_matches_its_definition() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    weights = [0.2, 1.0, 3.0]
    loss = create_loss("dice_ce", "segmentation", "multiclass", class_weights=weights)(
        logits, target.to(torch.uint8)
    )
    probs = logits.softmax(1)
    onehot = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((0, 2, 3))
    dice = 2 * inter / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)))
    w = torch.tensor(weights)
    expected = F.cross_entropy(logits, target, weight=w) + ((1 - dice) * w).sum() / w.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    perfect = _perfect_logits(onehot)
    assert create_loss("dice_ce", "segmentation", "multiclass")(perfect, target).item() < 1e-5


def test_multilabel_and_ignore_index() -> None:
    target = torch.stack([_disc_mask(), 1 - _disc_mask()])[None]  # (1, 2, 16, 16) uint8
    assert create_loss("dice_ce", "segmentation", "multilabel")(_perfect_logits(target), target).item() < 1e-5
    wrong = -_perfect_logits(target)
    assert create_loss("dice", "segmentation", "multilabel")(wrong, target).item() == pytest.approx(
        1.0, abs=1e-4
    )
    # ignored pixels do not count: a wrong prediction only where the label is 255 costs nothing
    labels = torch.randint(0, 3, (1, 8, 8))
    logits = _perfect_logits(F.one_hot(labels, 3).permute(0, 3, 1, 2))
    labels_ignored = labels.clone()
    labels_ignored[0, :2] = 255
    logits[0, :, :2] = -logits[0, :, :2]
    loss = create_loss("dice_ce", "segmentation", "multiclass", ignore_index=255)(logits, labels_ignored)
    assert loss.item() < 1e-5


def test_tversky_hand_computed() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, :2] = 1  # 8 positives
    pred = torch.zeros(1, 1, 4, 4)
    pred[0, 0, 1:3] = 1  # TP 4, FP 4, FN 4
    logits = (pred * 2 - 1) * 30
    loss = create_loss("tversky", "segmentation", "binary", alpha=0.2, beta=0.8)(logits, target)
    assert loss.item() == pytest.approx(1 - 4 / (4 + 0.2 * 4 + 0.8 * 4), abs=1e-5)
    dice = create_loss("dice", "segmentation", "binary")(logits, target)
    assert dice.item() == pytest.approx(1 - 2 * 4 / (8 + 8), abs=1e-5)


def test_segmentation_focal_with_gamma_zero_is_bce() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    focal = create_loss("focal", "segmentation", "binary", gamma=0.0)(logits, target)
    assert focal.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item(), rel=1e-5)
    focal2 = create_loss("focal", "segmentation", "binary", gamma=2.0)(logits, target)
    assert focal2.item() < focal.item()


def test_classification_ce_hard_soft_and_smoothing() -> None:
    torch.manual_seed(2)
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 2])
    ce = create_loss("ce", "classification", "multiclass")
    assert ce(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    soft = F.one_hot(labels, 3).float()
    assert ce(logits, soft).item() == pytest.approx(ce(logits, labels).item(), rel=1e-6)
    # mixup: the loss of mixed targets is the mix of the losses (CE is linear in its target)
    other = torch.tensor([1, 1, 0, 0])
    mixed = 0.3 * soft + 0.7 * F.one_hot(other, 3).float()
    assert ce(logits, mixed).item() == pytest.approx(
        0.3 * ce(logits, labels).item() + 0.7 * ce(logits, other).item(), rel=1e-5
    )
    # label smoothing on uniform logits changes nothing: -log(1/K) whatever the target
    smooth = create_loss("ce", "classification", "multiclass", label_smoothing=0.2)
    assert smooth(torch.zeros(2, 4), torch.tensor([0, 3])).item() == pytest.approx(math.log(4), rel=1e-6)
    weighted = create_loss("ce", "classification", "multiclass", class_weights=[1.0, 2.0, 4.0])
    expected = F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 2.0, 4.0]))
    assert weighted(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    weighted(logits, mixed).backward()
    assert torch.isfinite(logits.grad).all()


def test_classification_focal_hand_computed() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = [0.25, 0.75]
    focal = create_loss("focal", "classification", "multiclass", gamma=2.0)
    expected = 0.25**2 * -math.log(0.75)
    assert focal(logits, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-5)
    assert focal(logits, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(expected, rel=1e-5)
    both = 0.5 * 0.75**2 * -math.log(0.25) + 0.5 * 0.25**2 * -math.log(0.75)
    assert focal(logits, torch.tensor([[0.5, 0.5]])).item() == pytest.approx(both, rel=1e-5)


def test_classification_focal_gamma_zero_equals_weighted_ce() -> None:
    torch.manual_seed(3)
    logits = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 3, 3, 1])
    w = [0.5, 1.0, 2.0, 3.0]
    focal = create_loss("focal", "classification", "multiclass", class_weights=w, gamma=0.0)
    expected = F.cross_entropy(logits, labels, weight=torch.tensor(w))
    assert focal(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    assert create_loss("focal", "classification", "multiclass")(logits, labels).item() < expected.item()


def test_unknown_names_and_options() -> None:
    with pytest.raises(UnknownNameError, match="segmentation loss") as err:
        create_loss("lovasz", "segmentation", "binary")
    assert "dice_ce" in err.value.valid
    with pytest.raises(UnknownNameError, match="classification loss"):
        create_loss("dice_ce", "classification", "multiclass")
    with pytest.raises(UnknownNameError, match="segmentation mode"):
        create_loss("dice_ce", "segmentation", "instance")
    with pytest.raises(UnknownNameError, match="task"):
        create_loss("ce", "detection", "multiclass")
    with pytest.raises(ConfigError, match="unknown option"):
        create_loss("ce", "classification", "multiclass", gamma=2.0)
    with pytest.raises(ConfigError, match="does not fit"):
        create_loss("dice_ce", "segmentation", "binary")(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))


def test_losses_follow_the_module_to_a_device_and_dtype() -> None:
    loss = create_loss("dice_ce", "segmentation", "multiclass", class_weights=[1.0, 2.0]).to(torch.float64)
    value = loss(torch.zeros(1, 2, 4, 4, dtype=torch.float64), torch.zeros(1, 4, 4, dtype=torch.long))
    assert value.dtype == torch.float64
    assert torch.isfinite(value)


def test_marginal_loss_asks_only_what_a_partial_mask_knows() -> None:
    """Codes >= K name a set of classes: any split of the probability inside the set costs the same."""
    loss = create_loss("dice_ce", "segmentation", "multiclass", label_sets=[(1, 2)], num_classes=3)
    target = torch.full((1, 4, 4), 3)  # every pixel "class 1 or class 2"
    on_one = torch.tensor([-5.0, 5.0, -5.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    on_two = torch.tensor([-5.0, -5.0, 5.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    split = torch.tensor([-5.0, 5.0, 5.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    on_background = torch.tensor([5.0, -5.0, -5.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    values = [float(loss(x, target)) for x in (on_one, on_two, split, on_background)]
    assert values[0] == pytest.approx(values[1]) == pytest.approx(values[2], abs=1e-3)
    assert values[3] > values[0] + 5
    exact = torch.randint(0, 3, (2, 8, 8))
    logits = torch.randn(2, 3, 8, 8)
    loss.loss.dice_weight = 0.0  # without merged codes the CE part is torch's cross-entropy
    assert float(loss(logits, exact)) == pytest.approx(float(F.cross_entropy(logits, exact)), rel=1e-5)

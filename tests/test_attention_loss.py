"""The attention loss (``cam_penalty``): the share of a classifier's evidence outside the guide's region."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medlens.training.losses import outside_evidence


def left_half(batch: int, size: int = 8) -> torch.Tensor:
    region = torch.zeros(batch, 1, size, size)
    region[..., : size // 2] = 1.0
    return region


def test_the_share_outside_is_measured_on_the_class_activation_map() -> None:
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # class k reads channel k
    feats = torch.zeros(3, 2, 4, 4)
    feats[0, 0, :, :2] = 1.0  # class 0's evidence in the left half only
    feats[1, 0, :, 2:] = 1.0  # ... in the right half only
    feats[2, 0] = 1.0  # ... everywhere
    target = torch.zeros(3, dtype=torch.int64)
    shares = [outside_evidence(feats[i : i + 1], weight, target[:1], left_half(1)).item() for i in range(3)]
    assert shares == [0.0, 1.0, 0.5]
    # the batch's figure is the mean of its images'
    assert outside_evidence(feats, weight, target, left_half(3)).item() == sum(shares) / 3
    # an image whose guide found nothing has no inside: left out, not counted as all outside
    region = left_half(3)
    region[2] = 0.0
    assert outside_evidence(feats, weight, target, region).item() == sum(shares[:2]) / 2
    assert outside_evidence(feats, weight, target, torch.zeros(3, 1, 8, 8)).item() == 0.0


def test_a_shift_common_to_every_class_changes_nothing() -> None:
    """Softmax ignores a vector added to every class's weights; so does the loss. Its earlier form read the
    true class's raw map, which such a shift could draw inside the region (or empty) for free."""
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.zeros(1, 2, 4, 4)
    feats[0, 0, :, 2:] = 1.0  # class 0 is told apart by the right half: outside
    feats[0, 1, :, :2] = 1.0  # a channel that only the left half lights
    target = torch.zeros(1, dtype=torch.int64)
    shifted = weight - torch.tensor([[1.0, -2.0]])  # the same decisions, class 0's raw map in the left half
    assert torch.einsum("c,chw->hw", shifted[0], feats[0]).relu()[:, 2:].sum() == 0
    # shown: class 0's centred map lies in the right half (share 1); used: every cell alike, half outside
    assert outside_evidence(feats, weight, target, left_half(1)).item() == (1.0 + 0.5) / 2
    assert outside_evidence(feats, shifted, target, left_half(1)).item() == (1.0 + 0.5) / 2
    # any common shift, any features, targets and regions
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 5, 4, 4, generator=g).relu()
    weight = torch.randn(3, 5, generator=g)
    target = torch.randint(0, 3, (6,), generator=g)
    region = (torch.rand(6, 1, 8, 8, generator=g) > 0.5).float()
    loss = outside_evidence(feats, weight, target, region)
    for _ in range(3):
        common = 3.0 * torch.randn(1, 5, generator=g)
        assert torch.allclose(outside_evidence(feats, weight + common, target, region), loss, atol=1e-6)


def test_an_empty_map_is_left_out_not_counted_as_inside() -> None:
    """A map with nothing in it has no share: counted as 0 (all inside), emptying a map would pass for
    looking inside the region."""
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.zeros(2, 2, 4, 4)
    feats[:, 1, :, 2:] = 1.0  # only class 1's channel, in the right half: outside
    target = torch.zeros(2, dtype=torch.int64)  # class 0's centred map is -ch1 / 2: empty after the ReLU
    # the evidence used (all outside) alone counts
    assert outside_evidence(feats[:1], weight, target[:1], left_half(1)).item() == 1.0
    feats[1, 0, :, :2] = 1.0  # the second film: class 0's map in the left half, inside
    assert outside_evidence(feats[1:], weight, target[1:], left_half(1)).item() == (0.0 + 0.5) / 2
    # together: the first film's shown share is left out, the mean is over the three shares there are
    assert outside_evidence(feats, weight, target, left_half(2)).item() == (1.0 + 0.0 + 0.5) / 3
    # nothing at all: no share, the loss is 0
    assert outside_evidence(torch.zeros(2, 2, 4, 4), weight, target, left_half(2)).item() == 0.0


class TinyCam(nn.Module):
    """Convolutions, global average pooling, one linear layer (the head the loss is written for)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                  nn.ReLU(), nn.AvgPool2d(4))  # fmt: skip
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        return self.head(feats.mean((2, 3))), feats


def corner_and_centre(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Films whose class shows twice: faint in the centre (the region), bright in a corner (the easy way).
    Each class has signs of its own (class 1 a light centre and the top-left corner, class 0 a dark centre and
    the bottom-right one): a class told only by the absence of the other's signs has no evidence of its own
    to move, and on such films (this test's until the loss read centred maps) the earlier form met its raw-map
    share by a common term alone (.48 to .22 by its own measure) while the centred evidence went from .84 to
    .90 outside."""
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.1 * torch.randn(n, 1, 32, 32, generator=g)
    x[y == 1, :, 13:19, 13:19] += 0.5  # faint inside
    x[y == 1, :, :8, :8] += 1.5  # bright outside: the easy way
    x[y == 0, :, 13:19, 13:19] -= 0.5
    x[y == 0, :, -8:, -8:] += 1.5
    region = torch.zeros(n, 1, 32, 32)
    region[..., 8:24, 8:24] = 1.0
    return x, y, region


def train_tiny(penalty: float, steps: int = 200) -> float:
    """Outside share of the tiny model on fresh films after ``steps`` of cross-entropy and as many more with
    the attention loss at weight ``penalty`` (as ``medlens train --from`` adds it to a trained model)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = TinyCam()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(2 * steps):
        x, y, region = corner_and_centre(32, g)
        logits, feats = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        if step >= steps:
            loss = loss + penalty * outside_evidence(feats, model.head.weight, y, region)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y, region = corner_and_centre(64, g)
    with torch.no_grad():
        logits, feats = model(x)
        assert (logits.argmax(1) == y).float().mean() > 0.95  # it still reads the films
        return outside_evidence(feats, model.head.weight, y, region).item()


def test_the_attention_loss_moves_the_evidence_into_the_region() -> None:
    """.64 outside without the loss, .20 with it at weight .3 (other seeds, 1 to 3, the films' one more: .73
    and .34, .71 and .05, .54 and 0)."""
    free, guided = train_tiny(0.0), train_tiny(0.3)
    assert free > 0.35 and guided < 0.5 * free, (guided, free)


@pytest.mark.parametrize("mask_channels", [1, 0])
def test_regions_move_with_the_augmented_image(mask_channels: int) -> None:
    """The region rides the same geometric draw as the image (flip, rotation, scale), with a guide mask
    channel (guide_mode channel / both) or without one (crop, the shipped chest classifier's): images drawn
    as their own region, photometric change off, still show it where the region is after augmentation."""
    from medlens.data.augment import AugmentConfig, GpuAugmenter
    from medlens.spec import Task
    from medlens.training.datamodule import DataModule

    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rotate_deg=30.0, scale=(0.8, 1.2), p_affine=1.0, shift=0.1,
                        elastic=0.0, p_color=0.0, blur=0.0)  # fmt: skip
    data = object.__new__(DataModule)  # only the augmentation's parts
    data.is_seg, data.mask_channels = False, mask_channels
    data.augmenter = GpuAugmenter(cfg, Task.CLASSIFICATION)
    data.mask_augmenter = GpuAugmenter(cfg, Task.SEGMENTATION)
    torch.manual_seed(0)
    mask = torch.zeros(8, 1, 48, 48)
    for i in range(8):  # a different off-centre blob per image
        mask[i, :, 4 + i : 20 + 2 * i, 6 + 3 * i : 18 + 3 * i] = 1.0
    x = torch.cat([mask.expand(-1, 3, -1, -1), mask][: 1 + mask_channels], dim=1)
    x, _, region = data.augment(x, torch.zeros(8, dtype=torch.int64), mask.clone())
    assert region is not None and region.shape == (8, 1, 48, 48) and x.shape[1] == 3 + mask_channels
    assert (region != mask).flatten(1).any(1).all()  # every region moved ...
    seen = x[:, :1] > 0.5  # ... and the image with it (bilinear there, nearest for the region: edges differ)
    for i in range(8):
        differ = (seen[i] != region[i].bool()).sum().item()
        assert differ <= 0.1 * region[i].sum().item(), (i, differ, region[i].sum().item())
    if mask_channels:
        assert torch.equal(region, x[:, -1:])  # the mask channel too


def test_training_and_export_share_one_feature_wrapper() -> None:
    """The attention loss reads the feature map through the wrapper the ONNX export uses (one home)."""
    from medlens.inference import export
    from medlens.training import learner

    assert learner.WithFeatures is export.WithFeatures

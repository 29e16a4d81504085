"""The attention loss (``cam_penalty``): the share of a classifier's evidence outside the guide's region."""

from __future__ import annotations

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


def test_a_shift_common_to_every_class_does_not_hide_the_evidence() -> None:
    """Softmax ignores a term common to all classes; moving one out of sight must not pass for looking
    inside the region."""
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.zeros(1, 2, 4, 4)
    feats[0, 0, :, 2:] = 1.0  # class 0 is told apart by the right half: outside
    feats[0, 1, :, :2] = 1.0  # a channel that only the left half lights
    target = torch.zeros(1, dtype=torch.int64)
    honest = outside_evidence(feats, weight, target, left_half(1))
    shifted = weight - torch.tensor([[1.0, -2.0]])  # the same decisions, class 0's map drawn in the left half
    logits = torch.einsum("kc,bc->bk", weight, feats.mean((2, 3)))
    shifted_logits = torch.einsum("kc,bc->bk", shifted, feats.mean((2, 3)))
    assert torch.allclose(
        logits.softmax(1), (shifted_logits - shifted_logits[:, :1] + logits[:, :1]).softmax(1)
    )
    shown = torch.einsum("c,chw->hw", shifted[0], feats[0]).relu()
    assert shown[:, 2:].sum() == 0  # Grad-CAM of class 0 now looks "inside" ...
    # ... and only that half of the loss changes: the decision's evidence (ch0 - ch1, every cell alike, half
    # of them outside) still counts for its share of .5
    assert honest.item() == (1.0 + 0.5) / 2
    assert outside_evidence(feats, shifted, target, left_half(1)).item() == (0.0 + 0.5) / 2


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
    """Films whose class shows twice: faint in the centre (the region), bright in a corner (the easy way)."""
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.1 * torch.randn(n, 1, 32, 32, generator=g)
    x[y == 1, :, 13:19, 13:19] += 0.5  # faint inside
    x[y == 1, :, :8, :8] += 1.5  # bright outside: the easy way
    region = torch.zeros(n, 1, 32, 32)
    region[..., 8:24, 8:24] = 1.0
    return x, y, region


def train_tiny(penalty: float) -> float:
    """Outside share of the tiny model on fresh films after 80 steps of cross-entropy and 80 more with the
    attention loss at weight ``penalty`` (as ``medlens train --from`` adds it to a trained model)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = TinyCam()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(160):
        x, y, region = corner_and_centre(32, g)
        logits, feats = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        if step >= 80:
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
    free, guided = train_tiny(0.0), train_tiny(0.3)
    assert free > 0.35 and guided < 0.5 * free, (guided, free)


def test_regions_move_with_the_augmented_image() -> None:
    """The region rides the same geometric draw as the image and its guide mask channel (flip, rotation,
    scale), without photometric change: after augmentation it still equals the mask channel."""
    from medlens.data.augment import AugmentConfig, GpuAugmenter
    from medlens.spec import Task
    from medlens.training.datamodule import DataModule

    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rotate_deg=30.0, scale=(0.8, 1.2), brightness=0.3)
    data = object.__new__(DataModule)  # only the augmentation's parts
    data.is_seg, data.mask_channels = False, 1
    data.augmenter = GpuAugmenter(cfg, Task.CLASSIFICATION)
    data.mask_augmenter = GpuAugmenter(cfg, Task.SEGMENTATION)
    torch.manual_seed(0)
    mask = torch.zeros(8, 1, 48, 48)
    for i in range(8):  # a different off-centre blob per image
        mask[i, :, 4 + i : 20 + 2 * i, 6 + 3 * i : 18 + 3 * i] = 1.0
    image = torch.rand(8, 3, 48, 48)
    labels = torch.zeros(8, dtype=torch.int64)
    x, _, region = data.augment(torch.cat([image, mask], dim=1), labels, mask.clone())
    assert region is not None and region.shape == (8, 1, 48, 48)
    assert not torch.equal(region, mask)  # it moved ...
    assert torch.equal(region, x[:, -1:])  # ... with the mask channel


def test_training_and_export_share_one_feature_wrapper() -> None:
    """The attention loss reads the feature map through the wrapper the ONNX export uses (one home)."""
    from medlens.inference import export
    from medlens.training import learner

    assert learner.WithFeatures is export.WithFeatures

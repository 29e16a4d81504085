"""Grad-CAM: shape/range on every supported backbone, localisation on a toy CNN, the model left unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from medlens.errors import MedlensError
from medlens.inference.explain import SegmentationScores, find_target_layer, gradcam


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize(
    ("arch", "layer"),
    [
        ("resnet18", "layer4"),
        ("mobilenetv2_100", "bn2"),
        ("efficientnet_b0", "bn2"),
        ("convnext_atto", "stages"),
        ("densenet121", "features"),
    ],
)
def test_gradcam_timm_backbones(arch: str, layer: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, in_chans=3, num_classes=3)
    assert find_target_layer(model) == layer
    model.train()
    cam = gradcam(model, torch.randn(1, 3, 64, 64))
    assert cam.shape == (64, 64) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert cam.max() == pytest.approx(1.0)  # a random network still has a non-constant map
    assert model.training and _hook_count(model) == 0


def test_gradcam_smp_unet_binary_and_multiclass() -> None:
    torch.manual_seed(0)
    binary = smp.create_model("unet", encoder_name="resnet18", encoder_weights=None, in_channels=3, classes=1)
    assert find_target_layer(binary) == "encoder.layer4"
    binary.eval()
    cam = gradcam(binary, torch.randn(1, 3, 64, 64))
    assert cam.shape == (64, 64) and 0.0 <= cam.min() <= cam.max() <= 1.0
    assert not binary.training and _hook_count(binary) == 0
    multi = smp.create_model("unet", encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=3)
    cam = gradcam(multi, torch.randn(1, 1, 48, 48), class_index=2)
    assert cam.shape == (48, 48) and np.isfinite(cam).all()


def test_segmentation_scores_wrapper_means_logits_over_predicted_region() -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    logits = torch.tensor([[[[2.0, -1.0], [4.0, -3.0]]]])  # foreground where > 0: mean (2 + 4) / 2
    assert SegmentationScores(Fixed())(logits).tolist() == [[3.0]]
    two = torch.tensor([[[[1.0, 0.0]], [[0.0, 5.0]]]])  # class 0 wins pixel 0, class 1 pixel 1
    assert SegmentationScores(Fixed())(two).tolist() == [[1.0, 5.0]]
    none = -torch.ones(1, 1, 2, 2)  # nothing predicted: mean over all pixels
    assert SegmentationScores(Fixed())(none).tolist() == [[-1.0]]


def _toy_square_detector() -> nn.Sequential:
    """conv(3x3 mean, bias -0.5) -> relu -> conv 1x1 -> GAP -> linear: class 1 fires on bright regions."""
    model = nn.Sequential(
        nn.Conv2d(1, 1, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(1, 2, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2),
    )
    with torch.no_grad():
        model[0].weight.fill_(1 / 9)
        model[0].bias.fill_(-0.5)
        model[2].weight.copy_(torch.tensor([1.0, 0.5]).view(2, 1, 1, 1))
        model[2].bias.zero_()
        model[5].weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
        model[5].bias.zero_()
    return model


def _square(top: int, left: int, size: int = 32, side: int = 7) -> torch.Tensor:
    x = torch.zeros(1, 1, size, size)
    x[..., top : top + side, left : left + side] = 1.0
    return x


def test_gradcam_localises_a_bright_square_and_follows_it() -> None:
    model = _toy_square_detector()
    assert find_target_layer(model, in_channels=1) == "2"
    for top, left in ((3, 4), (20, 22), (4, 21)):
        cam = gradcam(model, _square(top, left))
        peak = np.unravel_index(cam.argmax(), cam.shape)
        assert top <= peak[0] < top + 7 and left <= peak[1] < left + 7
        assert cam[top + 3, left + 3] > 0.9
        assert cam[(top + 16) % 32, (left + 16) % 32] < 0.05  # the opposite quadrant stays cold


def test_gradcam_leaves_the_model_unchanged() -> None:
    model = _toy_square_detector()
    model.train()
    model[0].weight.requires_grad_(False)
    marker = torch.full_like(model[2].weight, 7.0)
    model[2].weight.grad = marker
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cam = gradcam(model, _square(3, 4), target_layer="1", class_index=1)  # the in-place ReLU
    assert cam.shape == (32, 32) and cam.max() == pytest.approx(1.0)
    assert model.training
    assert model[1].inplace is True
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    assert model[2].weight.grad is marker and model[0].bias.grad is None
    assert _hook_count(model) == 0 and model[1]._is_full_backward_hook is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.inference_mode():  # callers inside inference mode still get a map
        assert gradcam(model, _square(20, 20)).max() == pytest.approx(1.0)


def test_gradcam_bad_input() -> None:
    model = _toy_square_detector()
    with pytest.raises(MedlensError, match="1, C, H, W"):
        gradcam(model, torch.zeros(2, 1, 16, 16))
    with pytest.raises(MedlensError, match="not a module"):
        gradcam(model, torch.zeros(1, 1, 16, 16), target_layer="nope")


def test_a_term_common_to_every_class_changes_no_map() -> None:
    """Grad-CAM explains the centred logit (what softmax reads): adding the same vector to every class's
    weights leaves the probabilities and both paths' maps as they were, although it empties the raw map."""
    from medlens.inference.explain import cam_from_features, linear_head_weights

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_100", pretrained=False, in_chans=3, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        probs = model(x).softmax(1)
    before = gradcam(model, x, class_index=1)
    weights = linear_head_weights(model, 3, (64, 64))
    assert weights is not None
    np.testing.assert_allclose(cam_from_features(feats[0].numpy(), weights, 1, (64, 64)), before, atol=1e-4)
    head = model.get_classifier()
    with torch.no_grad():  # a common term large enough to make class 1's raw map negative everywhere
        head.weight -= 10.0 * head.weight.abs().max() * torch.sign(feats.mean((0, 2, 3)))
        assert (torch.einsum("c,chw->hw", head.weight[1], feats[0]) < 0).all()  # the raw map is empty ...
        assert torch.allclose(model(x).softmax(1), probs, atol=1e-5)  # ... the decision unchanged
    np.testing.assert_allclose(gradcam(model, x, class_index=1), before, atol=1e-4)  # ... and so the map
    shifted = head.weight.detach().numpy()
    np.testing.assert_allclose(cam_from_features(feats[0].numpy(), shifted, 1, (64, 64)), before, atol=1e-4)

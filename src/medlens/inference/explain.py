"""Grad-CAM heat maps (MONAI ``monai.visualize.GradCAM``) for timm classifiers and smp segmentation models.

The target layer defaults to the last spatial feature map of the backbone, found once per model structure by
`medlens.models.parts.gradcam_target_layer_name` (``find_target_layer`` here is the same function): the
outermost module, run once per forward, holding the last feature map before global pooling (``layer4`` of a
ResNet, ``bn2`` of an EfficientNet/MobileNetV2, ``stages`` of a ConvNeXt, ``features`` of a DenseNet).

Segmentation models (anything with an ``encoder`` and a ``segmentation_head``, as in smp) are explained
through a wrapper that returns ``(B, K)`` scores: for each class the mean logit over the pixels predicted as
that class (sigmoid > 0.5 for one output channel, arg-max otherwise; all pixels when none is predicted). The
gradient of that score asks "what in the encoder's last stage made the predicted region this class"; the
target layer is the encoder's last stage. Logits, not probabilities, are averaged so that gradients do not
vanish where the sigmoid/softmax saturates (as in Seg-Grad-CAM, Vinogradova et al. 2020).

The model is left as it was: its train/eval mode, ``requires_grad`` flags, parameter ``.grad`` tensors, hooks
and ``inplace`` flags are restored, since MONAI's ``ModelWithHooks`` keeps no hook handles and zeroes the
gradients.

Grad-CAM without backpropagation (:func:`cam_from_features`): for a classifier whose head is global average
pooling then one linear layer (timm's ResNets, MobileNetV2, EfficientNet(-Lite), ...), the gradient of logit
``k`` with respect to the last feature map ``A`` is ``w_k / (h * w)`` at every position, so Grad-CAM is
``ReLU(sum_c w_kc A_c)`` up to a positive factor that the min-max normalisation removes. The ONNX export
returns ``A`` as a second output (``features``) for such models (:func:`linear_head_weights` checks the
structure numerically), so the pipeline explains a prediction from the classification pass it already ran.
MONAI's backpropagation (:func:`gradcam`) stays the reference path (torch runtime, other heads).

Both explain a classifier's **centred** logit, ``z_k - mean_j z_j`` (:class:`CentredLogits`), the quantity
softmax reads: a term common to every class changes no probability and so changes no map. For networks trained
without the attention loss the two maps nearly agree (the shipped chest classifier v3: share inside lungs and
heart .466 raw, .462 centred, 40 adult films); one trained with it had met the loss's raw-map term by making
every raw map empty while its centred map lay .89 inside (configs/cpu/README); the loss now reads the centred
map too (medlens.training.losses ``outside_evidence``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medlens.errors import MedlensError
from medlens.models.parts import gradcam_target_layer_name

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

#: the last spatial feature layer's name: an alias of the factory's (model, in_channels=None, size=None)
find_target_layer = gradcam_target_layer_name


def _is_segmentation(model: nn.Module) -> bool:
    return hasattr(model, "encoder") and hasattr(model, "segmentation_head")


class SegmentationScores(nn.Module):
    """Wrap a segmentation model so it returns ``(B, K)`` scores: per class, the mean logit over the pixels
    predicted as that class (all pixels when none is). Input ``(B, C, H, W)`` float; the wrapped model must
    return ``(B, K, H, W)`` logits (K = 1 for binary, sigmoid)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if logits.shape[1] == 1:
            masks = (logits > 0).to(logits.dtype)  # sigmoid(l) > 0.5
        else:
            masks = F.one_hot(logits.argmax(dim=1), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        area = masks.flatten(2).sum(-1)
        region_mean = (logits * masks).flatten(2).sum(-1) / area.clamp(min=1)
        return torch.where(area > 0, region_mean, logits.flatten(2).mean(-1))


class CentredLogits(nn.Module):
    """Wrap a classifier so it returns its logits less their mean over the classes, ``(B, K)``: what softmax
    reads. A term added to every class's logit changes no probability, so it must not change the explanation
    either; Grad-CAM of the raw logit shows such a term, and a network can move it anywhere, even empty the
    map (the attention-loss run did, configs/cpu/README). A one-logit (sigmoid) head is returned as it is."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits if logits.shape[1] == 1 else logits - logits.mean(dim=1, keepdim=True)


def centred_weights(weights: ArrayT) -> ArrayT:
    """``(K, C)`` class weights of a linear head less their mean over the classes (the head of
    :class:`CentredLogits`); one row stays as it is. A torch tensor stays one, gradients included (the
    attention loss, medlens.training.losses); anything else becomes a float32 array."""
    if not isinstance(weights, torch.Tensor):
        weights = np.asarray(weights, np.float32)
    return weights if weights.shape[0] == 1 else weights - weights.mean(0, keepdims=True)


@contextmanager
def _preserved(model: nn.Module, layer: nn.Module) -> Iterator[None]:
    """Restore mode, requires_grad, .grad, the target layer's hooks and ``inplace`` flag after Grad-CAM."""
    params = list(model.parameters())
    state = [(p.requires_grad, p.grad) for p in params]
    forward_hooks, backward_hooks = dict(layer._forward_hooks), dict(layer._backward_hooks)
    full_backward = layer._is_full_backward_hook
    inplace = layer.__dict__.get("inplace")
    training = model.training
    try:
        for p in params:
            p.requires_grad_(False)  # gradients flow to the activations through the input; no parameter grads
        yield
    finally:
        model.train(training)
        for p, (requires_grad, grad) in zip(params, state, strict=True):
            p.requires_grad_(requires_grad)
            p.grad = grad
        # MONAI's ModelWithHooks registers hooks without keeping handles: put the hook dicts back as they were
        layer._forward_hooks.clear()
        layer._forward_hooks.update(forward_hooks)
        layer._backward_hooks.clear()
        layer._backward_hooks.update(backward_hooks)
        layer._is_full_backward_hook = full_backward
        if inplace is not None:
            layer.inplace = inplace


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of ``(B, 1, H, W)`` to 0..1 (all-zero where the map is constant).

    MONAI's default post-processing maps (min, max) to (1, 0), i.e. flips the map, so ours replaces it."""
    flat = cam.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    span = (high - low).view(-1, 1, 1, 1)
    return torch.where(span > 0, (cam - low.view(-1, 1, 1, 1)) / span.clamp(min=1e-12), torch.zeros_like(cam))


def _default_class(model: nn.Module, x: torch.Tensor) -> int:
    """Class to explain when none is given: arg-max for classifiers; for segmentation the foreground class
    with the largest predicted area (channel 0 for a binary model)."""
    with torch.no_grad():
        logits = model(x)
    if not _is_segmentation(model):
        return int(logits[0].argmax())
    if logits.shape[1] == 1:
        return 0
    areas = torch.bincount(logits[0].argmax(0).flatten(), minlength=logits.shape[1])[1:]
    return int(areas.argmax()) + 1


def gradcam(
    model: nn.Module, x: torch.Tensor, target_layer: str | None = None, class_index: int | None = None
) -> np.ndarray:
    """Grad-CAM of one image.

    Args:
        model: a classifier returning ``(B, K)`` logits or a segmentation model (smp) returning
            ``(B, K, H, W)`` logits.
        x: ``(1, C, H, W)`` float tensor, normalised as the model expects, on the model's device.
        target_layer: module name (``dict(model.named_modules())`` key); ``None`` = :func:`find_target_layer`.
        class_index: class to explain; ``None`` = the predicted class (see ``_default_class``).

    Returns:
        ``(H, W)`` float32 heat map in 0..1 at the input's size (bilinear up-sampling of the layer's map).
    """
    from monai.visualize import GradCAM

    if x.ndim != 4 or x.shape[0] != 1:
        raise MedlensError(f"Grad-CAM needs a (1, C, H, W) tensor, got shape {tuple(x.shape)}")
    side = min(x.shape[-2:])  # discover on the input's own size (fixed-size models), unless it is tiny
    size = (int(x.shape[-2]), int(x.shape[-1])) if side >= 64 else None
    target_layer = target_layer or find_target_layer(model, in_channels=x.shape[1], size=size)
    modules = dict(model.named_modules())
    if target_layer not in modules:
        raise MedlensError(
            f"Grad-CAM target layer {target_layer!r} is not a module of {type(model).__name__}"
        )
    wrapped = SegmentationScores(model) if _is_segmentation(model) else CentredLogits(model)
    with _preserved(model, modules[target_layer]), torch.inference_mode(False), torch.enable_grad():
        model.eval()
        x = x.detach().clone()
        x = (x if x.is_floating_point() else x.float()).requires_grad_(True)
        index = class_index if class_index is not None else _default_class(model, x)
        cam_fn = GradCAM(
            nn_module=wrapped,
            target_layers="model." + target_layer,
            postprocessing=_normalise,
        )
        cam = cam_fn(x, class_idx=index)
    return cam[0, 0].detach().cpu().numpy().astype(np.float32)


def linear_head_weights(
    model: nn.Module, in_channels: int, size: tuple[int, int], atol: float = 1e-4
) -> np.ndarray | None:
    """The ``(K, C)`` float32 class weights of a classifier whose logits are ``Linear(mean_hw(A))`` of the
    map ``A = model.forward_features(x)`` that Grad-CAM hooks (:func:`find_target_layer`); None for any other
    structure (no timm ``forward_features`` / ``forward_head``, a non-linear head, a norm after pooling...).

    Checked numerically on a random ``(2, in_channels, *size)`` input, in eval mode, without gradients."""
    needed = ("forward_features", "forward_head", "get_classifier")
    if _is_segmentation(model) or not all(hasattr(model, a) for a in needed):
        return None
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        return None
    probe = tuple(size) if min(size) >= 64 else None  # as gradcam() finds it for inputs of this size
    layer = model.get_submodule(find_target_layer(model, in_channels=in_channels, size=probe))
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    training = model.training
    try:
        model.eval()
        x = torch.randn(2, in_channels, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            feats = model.forward_features(x)
            logits = model.forward_head(feats)
            pooled = F.linear(feats.float().mean((2, 3)), head.weight, head.bias) if feats.ndim == 4 else None
    finally:
        handle.remove()
        model.train(training)
    if pooled is None or len(seen) != 1 or not torch.equal(seen[0], feats):
        return None
    tol = atol * max(1.0, float(logits.abs().max()))
    if logits.shape != pooled.shape or not torch.allclose(logits.float(), pooled, atol=tol, rtol=0.0):
        return None
    return head.weight.detach().float().cpu().numpy().copy()


def cam_from_features(
    features: np.ndarray, weights: np.ndarray, class_index: int, size: tuple[int, int]
) -> np.ndarray:
    """Grad-CAM of a pooled linear head from its feature map, without backpropagation.

    Args:
        features: ``(C, h, w)`` float last feature map of one image (the ONNX graph's ``features`` output).
        weights: ``(K, C)`` class weights of the head (:func:`linear_head_weights`).
        class_index: the class to explain.
        size: ``(H, W)`` of the model input.

    Returns:
        ``(H, W)`` float32 map in 0..1: ``ReLU(sum_c w_kc A_c)``, up-sampled bilinearly and min-max scaled as
        :func:`gradcam` does (equal to it within float tolerance, see the tests), with the weights centred
        over the classes as :class:`CentredLogits` centres the logits.
    """
    weight = centred_weights(weights)[class_index]
    acti = np.tensordot(weight, np.asarray(features, np.float32), 1)
    cam = torch.from_numpy(np.maximum(acti, 0.0, dtype=np.float32))[None, None]
    cam = F.interpolate(cam, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)
    return _normalise(cam)[0, 0].numpy().astype(np.float32, copy=False)

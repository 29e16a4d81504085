"""The parts of a medlens network: which parameters are the (pretrained) backbone and which the head, and
which layer holds the last feature map (Grad-CAM's target). Shared by the factory, pretrained loading, the
optimizer and Grad-CAM."""

from __future__ import annotations

import logging
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from medlens.errors import MedlensError, UnknownNameError
from medlens.spec import TASKS

logger = logging.getLogger(__name__)

_GRADCAM_PROBE_SIZE = 128  # default probe side for Grad-CAM layer discovery (stride-32 maps: 4x4)
#: (model type, hash of its module names) -> Grad-CAM target layer name
_GRADCAM_LAYER_CACHE: dict[tuple[type, int], str] = {}


def check_task(task: str) -> str:
    """Return ``task`` if it is ``"segmentation"`` or ``"classification"``; else raise UnknownNameError."""
    if task not in TASKS:
        raise UnknownNameError("task", task, TASKS)
    return task


def is_segmentation_model(model: nn.Module) -> bool:
    """True for smp segmentation models (they have ``.encoder``, ``.decoder`` and ``.segmentation_head``)."""
    return isinstance(model, smp.base.SegmentationModel)


def model_summary(model: nn.Module) -> dict[str, Any]:
    """``{"params", "trainable", "backbone_params", "head_params", "family"}`` with parameter counts."""
    params = list(model.parameters())
    summary: dict[str, Any] = {
        "params": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "family": "smp"
        if is_segmentation_model(model)
        else "timm"
        if hasattr(model, "get_classifier")
        else "other",
    }
    if summary["family"] != "other":
        summary["backbone_params"] = sum(p.numel() for p in backbone_parameters(model))
        summary["head_params"] = sum(p.numel() for p in head_parameters(model))
    return summary


def get_encoder(model: nn.Module) -> nn.Module:
    """The pretrained part: the smp encoder, or the whole timm classifier (head = its classifier layer)."""
    if is_segmentation_model(model):
        return model.encoder
    if hasattr(model, "get_classifier"):
        return model
    raise MedlensError(f"model {type(model).__name__}: not an smp segmentation model or a timm classifier")


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters trained from scratch: smp decoder + segmentation head, or timm's classifier layer."""
    if is_segmentation_model(model):
        encoder_ids = {id(p) for p in model.encoder.parameters()}
        return [p for p in model.parameters() if id(p) not in encoder_ids]
    get_encoder(model)
    return list(model.get_classifier().parameters())


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the (pre-trainable) backbone: every parameter not in :func:`head_parameters`."""
    head_ids = {id(p) for p in head_parameters(model)}
    return [p for p in model.parameters() if id(p) not in head_ids]


def freeze_backbone(model: nn.Module, frozen: bool = True) -> None:
    """Set ``requires_grad = not frozen`` on the backbone (first stage of two-stage fine-tuning)."""
    for p in backbone_parameters(model):
        p.requires_grad_(not frozen)


def gradcam_target_layer_name(
    model: nn.Module, in_channels: int | None = None, size: int | tuple[int, int] | None = None
) -> str:
    """Dotted name of the last spatial feature layer (MONAI Grad-CAM ``target_layers``); cached per structure.

    Found by tracing one forward pass of a zero ``(1, in_channels, *size)`` input (hand-written: neither timm
    nor MONAI exposes this for arbitrary models): the last module to finish, called once per forward, whose
    output is ``(B, C, h, w)`` with ``h * w > 1``, i.e. the outermost module holding the last feature map
    before global pooling (``layer4`` of a ResNet, ``bn2`` of an EfficientNet/MobileNetV2, ``stages`` of a
    ConvNeXt, ``features`` of a DenseNet, ``act4`` after ``bn4`` of an Xception). ``nn.Identity`` modules are
    never chosen; parameter-free modules (a trailing activation) may be. For smp models (anything with an
    ``encoder`` and a ``segmentation_head``) the search runs over the encoder and the name carries the
    ``encoder.`` prefix (its last stage, e.g. ``encoder.layer4``).

    Args:
        in_channels: input channels of the probe; ``None`` = those of the first ``nn.Conv2d`` (else 3).
        size: probe side or ``(H, W)``; ``None`` = timm's ``input_size`` for fixed-size models, else 128
            (stride-32 maps are then 4x4).

    Raises ``MedlensError`` when the probe pass fails or no module yields a spatial 4-D output.
    """
    segmentation = hasattr(model, "encoder") and hasattr(model, "segmentation_head")  # smp, or alike
    root, prefix = (model.encoder, "encoder.") if segmentation else (model, "")
    key = (type(model), hash(tuple(name for name, _ in root.named_modules())))
    if key not in _GRADCAM_LAYER_CACHE:
        _GRADCAM_LAYER_CACHE[key] = prefix + _last_spatial_module(root, in_channels, size)
        logger.debug("Grad-CAM target layer of %s: %s", type(model).__name__, _GRADCAM_LAYER_CACHE[key])
    return _GRADCAM_LAYER_CACHE[key]


def _last_spatial_module(root: nn.Module, in_channels: int | None, size: int | tuple[int, int] | None) -> str:
    """The name (in ``root``) of the last module, called once, that outputs a spatial 4-D tensor."""
    order: list[str] = []
    calls: dict[str, int] = {}
    spatial: set[str] = set()

    def hook(name: str):
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            order.append(name)
            if (
                isinstance(output, torch.Tensor)
                and output.ndim == 4
                and output.shape[-1] * output.shape[-2] > 1
            ):
                spatial.add(name)

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in root.named_modules()
        if name and not isinstance(module, nn.Identity)
    ]
    try:
        _probe_forward(root, in_channels, size)
    finally:
        for handle in handles:
            handle.remove()
    candidates = [name for name in order if name in spatial and calls[name] == 1]
    if not candidates:
        raise MedlensError(f"cannot find a spatial feature layer for Grad-CAM in {type(root).__name__}")
    return candidates[-1]


def gradcam_target_layer(model: nn.Module) -> nn.Module:
    """The module named by :func:`gradcam_target_layer_name` (hook it for activations and gradients)."""
    return model.get_submodule(gradcam_target_layer_name(model))


def _probe_forward(
    module: nn.Module, in_channels: int | None = None, size: int | tuple[int, int] | None = None
) -> None:
    """Run one zero ``(1, C, H, W)`` input through ``module`` in eval mode, without gradients (see
    :func:`gradcam_target_layer_name` for the defaults); `MedlensError` when the module rejects it."""
    if in_channels is None:
        first_conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        in_channels = first_conv.in_channels if first_conv is not None else 3
    if size is None:
        cfg = getattr(module, "pretrained_cfg", None) or {}
        fixed = cfg.get("fixed_input_size")
        size = (int(cfg["input_size"][-2]), int(cfg["input_size"][-1])) if fixed else _GRADCAM_PROBE_SIZE
    height, width = (size, size) if isinstance(size, int) else size
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, in_channels, height, width, device=device, dtype=dtype))
    except Exception as exc:  # a model that rejects the dummy input: say which, keep the cause
        raise MedlensError(f"cannot find a Grad-CAM layer in {type(module).__name__}: {exc}") from exc
    finally:
        module.train(was_training)

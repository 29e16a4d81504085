"""ONNX export of a bundle or run folder, with a parity check against torch on random inputs.

The graph takes ``input`` float32 ``(B, C, H, W)`` (dynamic batch ``B``, fixed ``H, W`` = the spec's input
size, since predictors always resize to it) and returns ``logits`` (``(B, K, H, W)`` or ``(B, K)``). The model
spec is stored in the ONNX metadata (``medlens_spec``), so the file describes itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from medlens.errors import BundleError
from medlens.inference.bundle import (
    ONNX_FILE,
    RUN_CHECKPOINT,
    RUN_SPEC,
    Bundle,
    is_bundle,
    load_model_source,
    source_name,
)
from medlens.spec import ModelSpec

logger = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-3
CHECK_BATCH_SIZES = (1, 3)


def medlens_home() -> Path:
    """``$MEDLENS_HOME`` or ``~/.medlens``."""
    return Path(os.environ.get("MEDLENS_HOME") or Path.home() / ".medlens").expanduser()


def _source_dir(source: str | Path | Bundle) -> Path:
    if isinstance(source, Bundle):
        return source.path
    path = Path(source)
    return path.parent.parent if path.is_file() else path


def _torch_export(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamo: bool) -> None:
    names = {"input_names": ["input"], "output_names": ["logits"], "opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings of the exporters
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=True,
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
                **names,
            )
        else:
            axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
            torch.onnx.export(model, (x,), str(path), dynamo=False, dynamic_axes=axes, **names)


def _export_graph(model: nn.Module, spec: ModelSpec, path: Path, opset: int, dynamo: bool | None) -> None:
    """Export with the TorchScript exporter (about 8x faster than dynamo on these conv nets, and mature for
    them); fall back to the dynamo exporter when it fails (e.g. a torch that no longer ships it)."""
    h, w = spec.input_size
    x = torch.randn(2, spec.in_channels, h, w)
    attempts = [dynamo] if dynamo is not None else [False, True]
    for i, use_dynamo in enumerate(attempts):
        try:
            _torch_export(model, x, path, opset, use_dynamo)
            return
        except Exception as exc:  # exporter failures come in many types
            if i == len(attempts) - 1:
                raise BundleError(f"ONNX export to {path} failed: {exc}") from exc
            logger.warning("TorchScript ONNX export failed (%s); trying the dynamo exporter", exc)


def _add_metadata(path: Path, spec: ModelSpec) -> None:
    import onnx

    import medlens

    proto = onnx.load(str(path))
    for key, value in {
        "medlens_spec": json.dumps(spec.to_dict()),
        "medlens_version": medlens.__version__,
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def check_parity(path: str | Path, model: nn.Module, spec: ModelSpec, seed: int = 0) -> tuple[float, int]:
    """Largest absolute logit difference between ONNX Runtime and torch on random normalised inputs of batch
    sizes :data:`CHECK_BATCH_SIZES`; returns ``(max_abs_diff, n_samples_checked)``."""
    from medlens.inference.runtime import OnnxRunner

    runner = OnnxRunner(path)
    gen = torch.Generator().manual_seed(seed)
    h, w = spec.input_size
    worst, n = 0.0, 0
    for b in CHECK_BATCH_SIZES:
        x = torch.randn(b, spec.in_channels, h, w, generator=gen)
        with torch.inference_mode():
            expected = model(x).float()
        got = runner(x)
        if got.shape != expected.shape:
            raise BundleError(
                f"{path}: ONNX output shape {tuple(got.shape)} != torch {tuple(expected.shape)}"
            )
        worst, n = max(worst, float((got - expected).abs().max())), n + b
    return worst, n


def default_onnx_path(source: str | Path | Bundle) -> Path:
    """``<bundle or run folder>/model.onnx``."""
    return _source_dir(source) / ONNX_FILE


EXPORT_FORMATS = ("onnx",)


def export_onnx(
    bundle_or_run: str | Path | Bundle,
    out: str | Path | None = None,
    opset: int = 17,
    check: bool = True,
    atol: float = DEFAULT_ATOL,
    dynamo: bool | None = None,
) -> dict:
    """Export a bundle / run folder to ONNX and check it against torch.

    Args:
        bundle_or_run: bundle folder, :class:`Bundle`, run folder or checkpoint file.
        out: ONNX file; default ``<bundle or run>/model.onnx`` (a bundle's ``bundle.json`` then lists it).
        opset: ONNX opset.
        check: compare ONNX Runtime with torch on random inputs (batch 1 and 3); BundleError when the largest
            absolute logit difference exceeds ``atol`` (the file is then removed).
        dynamo: None tries the TorchScript exporter then dynamo; True / False forces one.

    Returns:
        ``{"path": Path, "max_abs_diff": float | None, "n_checked": int}``.
    """
    model, spec = load_model_source(bundle_or_run)
    path = Path(out) if out is not None else default_onnx_path(bundle_or_run)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a reader never sees a half-written model.onnx.
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _export_graph(model, spec, tmp, opset, dynamo)
        _add_metadata(tmp, spec)
        diff, n = check_parity(tmp, model, spec) if check else (None, 0)
        if diff is not None and diff > atol:
            raise BundleError(f"ONNX export of {bundle_or_run} differs from torch by {diff:.3g} (> {atol:g})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    bundle = bundle_or_run if isinstance(bundle_or_run, Bundle) else None
    if bundle is None and is_bundle(_source_dir(bundle_or_run)):
        bundle = Bundle.load(_source_dir(bundle_or_run))
    if bundle is not None and path.resolve() == bundle.onnx_path.resolve():
        bundle.register_file(ONNX_FILE)
    logger.info(
        "exported %s to %s (max |diff| %s over %d samples)", source_name(bundle_or_run), path, diff, n
    )
    return {"path": path, "max_abs_diff": diff, "n_checked": n}


def _cache_path(source: str | Path | Bundle) -> Path:
    """A cache file keyed by the weights: a bundle's weights sha256, or a checkpoint's path, size, mtime."""
    if isinstance(source, Bundle) or is_bundle(_source_dir(source)):
        bundle = source if isinstance(source, Bundle) else Bundle.load(_source_dir(source))
        key = (
            bundle.files.get("model.safetensors")
            or hashlib.sha256(bundle.weights_path.read_bytes()).hexdigest()
        )
    else:
        ckpt = _source_dir(source) / RUN_CHECKPOINT
        stat = ckpt.stat()
        key = hashlib.sha256(f"{ckpt.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return medlens_home() / "onnx-cache" / f"{source_name(source)}-{key[:16]}.onnx"


def _is_current(onnx_path: Path, source: str | Path | Bundle) -> bool:
    """A bundle's model.onnx is current (bundles are immutable); a run folder's only if newer than best.pt."""
    if not onnx_path.is_file():
        return False
    directory = _source_dir(source)
    if isinstance(source, Bundle) or is_bundle(directory) or not (directory / RUN_SPEC).is_file():
        return True
    return onnx_path.stat().st_mtime_ns >= (directory / RUN_CHECKPOINT).stat().st_mtime_ns


def ensure_onnx(source: str | Path | Bundle) -> Path:
    """The ONNX file for a predictor: ``<source>/model.onnx`` when present and current, else exported on first
    use into ``<source>/model.onnx`` if that folder is writable, else into ``$MEDLENS_HOME/onnx-cache``."""
    local = default_onnx_path(source)
    if _is_current(local, source):
        return local
    cached = _cache_path(source)
    if cached.is_file():
        return cached
    target = local if os.access(local.parent, os.W_OK) else cached
    try:
        return export_onnx(source, out=target)["path"]
    except PermissionError:
        return export_onnx(source, out=cached)["path"]

"""ONNX export of a bundle or run folder, with a parity check against torch on random inputs.

The graph takes ``input`` float32 ``(B, C, H, W)`` (dynamic batch ``B``, fixed ``H, W`` = the spec's input
size, since predictors always resize to it) and returns ``logits`` (``(B, K, H, W)`` or ``(B, K)``). A
classifier whose head is global average pooling + one linear layer also returns ``features``, its last
feature map ``(B, C', h, w)``, and stores the head's class weights in the metadata (``medlens_cam``), so that
Grad-CAM needs no backpropagation (:func:`medlens.inference.explain.cam_from_features`). The model spec is
stored in the ONNX metadata (``medlens_spec``), so the file describes itself.

Predictors get their graph from :func:`ensure_onnx`: ``<bundle>/model.onnx`` when ``medlens export`` wrote
one, else an export cached under ``$MEDLENS_HOME/cache/onnx/<sha256 of the weights>/``; nothing is written
into a bundle or run folder unless asked (``export_onnx`` without ``out``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medlens.errors import BundleError
from medlens.folders import BundleFolder
from medlens.home import medlens_home
from medlens.inference.bundle import (
    Bundle,
    is_bundle,
    load_model_source,
    sha256_file,
    source_folder,
    source_name,
    weights_file,
)
from medlens.inference.runtime import encode_cam_weights
from medlens.spec import ModelSpec

logger = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-3
CHECK_BATCH_SIZES = (1, 3)
#: graph layout version in the metadata: 2 = ``features`` output for pooled linear heads
EXPORT_FORMAT = "2"


class WithFeatures(nn.Module):
    """A timm classifier returning ``(logits (B, K), features (B, C, h, w))``: also the last feature map, the
    one its head pools, from the same forward: the ONNX graph's ``features`` output, and the attention loss's
    map in training (one forward, so DDP sees the wrapped network run once)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        return self.model.forward_head(features), features


def _torch_export(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamo: bool) -> None:
    outputs = ["logits", "features"] if isinstance(model, WithFeatures) else ["logits"]
    names = {"input_names": ["input"], "output_names": outputs, "opset_version": opset}
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
            axes = {name: {0: "batch"} for name in ["input", *outputs]}
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


def _add_metadata(path: Path, spec: ModelSpec, cam_weights: np.ndarray | None = None) -> None:
    import onnx

    import medlens

    proto = onnx.load(str(path))
    meta = {
        "medlens_spec": json.dumps(spec.to_dict()),
        "medlens_version": medlens.__version__,
        "medlens_export_format": EXPORT_FORMAT,
    }
    if cam_weights is not None:
        meta["medlens_cam"] = encode_cam_weights(cam_weights)
    for key, value in meta.items():
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
            out = model(x)
        expected = [t.float() for t in (out if isinstance(out, tuple) else (out,))]
        got = runner.run(x)
        for e, g in zip(expected, got, strict=True):
            if g.shape != e.shape:
                raise BundleError(f"{path}: ONNX output shape {tuple(g.shape)} != torch {tuple(e.shape)}")
            worst = max(worst, float((g - e).abs().max()))
        n += b
    return worst, n


def default_onnx_path(source: str | Path | Bundle) -> Path:
    """``<bundle or run folder>/model.onnx``."""
    return source_folder(source) / BundleFolder.ONNX


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
    from medlens.inference.explain import linear_head_weights

    model, spec = load_model_source(bundle_or_run)
    cam_weights = None
    if not spec.is_segmentation:
        cam_weights = linear_head_weights(model, spec.in_channels, tuple(spec.input_size))
        model = WithFeatures(model).eval() if cam_weights is not None else model
    path = Path(out) if out is not None else default_onnx_path(bundle_or_run)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a reader never sees a half-written model.onnx.
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _export_graph(model, spec, tmp, opset, dynamo)
        _add_metadata(tmp, spec, cam_weights)
        diff, n = check_parity(tmp, model, spec) if check else (None, 0)
        if diff is not None and diff > atol:
            raise BundleError(f"ONNX export of {bundle_or_run} differs from torch by {diff:.3g} (> {atol:g})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    bundle = bundle_or_run if isinstance(bundle_or_run, Bundle) else None
    if bundle is None and is_bundle(source_folder(bundle_or_run)):
        bundle = Bundle.load(source_folder(bundle_or_run))
    if bundle is not None and path.resolve() == bundle.onnx_path.resolve():
        bundle.register_file(BundleFolder.ONNX)
    logger.info(
        "exported %s to %s (max |diff| %s over %d samples; features output: %s)",
        source_name(bundle_or_run), path, diff, n, cam_weights is not None,
    )  # fmt: skip
    return {"path": path, "max_abs_diff": diff, "n_checked": n, "features": cam_weights is not None}


def weights_sha256(source: str | Path | Bundle) -> str:
    """sha256 of a source's weights (:func:`~medlens.inference.bundle.weights_file`; a bundle's as recorded
    in its ``bundle.json``)."""
    if isinstance(source, Bundle) or is_bundle(source):
        bundle = source if isinstance(source, Bundle) else Bundle.load(source)
        return bundle.files.get(BundleFolder.WEIGHTS) or sha256_file(bundle.weights_path)
    return sha256_file(weights_file(source))


def onnx_cache_dir(source: str | Path | Bundle) -> Path:
    """``$MEDLENS_HOME/cache/onnx/<sha256 of the weights>``: where exports made on first use live."""
    return medlens_home() / "cache" / "onnx" / weights_sha256(source)


def _is_current(onnx_path: Path, source: str | Path | Bundle) -> bool:
    """A bundle's model.onnx is current (bundles are immutable); a run's only if newer than its weights."""
    if not onnx_path.is_file():
        return False
    if isinstance(source, Bundle) or is_bundle(source):
        return True
    return onnx_path.stat().st_mtime_ns >= weights_file(source).stat().st_mtime_ns


def _fits(onnx_path: Path, spec: ModelSpec) -> bool:
    """A cached export of this medlens graph layout, for the spec's input size and channels."""
    import onnx

    try:
        meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
        cached = ModelSpec.from_dict(json.loads(meta["medlens_spec"]))
    except Exception:  # a damaged or foreign file: export again
        return False
    same_graph = (cached.input_size, cached.in_channels) == (spec.input_size, spec.in_channels)
    return same_graph and meta.get("medlens_export_format") == EXPORT_FORMAT


def ensure_onnx(source: str | Path | Bundle) -> Path:
    """The ONNX file for a predictor: ``<source>/model.onnx`` when ``medlens export`` wrote one (and, for a
    run folder, it is newer than the checkpoint), else ``$MEDLENS_HOME/cache/onnx/<sha256>/model.onnx``,
    exported there on first use. The bundle or run folder itself is never written to."""
    from medlens.inference.bundle import read_spec

    local = default_onnx_path(source)
    if _is_current(local, source):
        return local
    cached = onnx_cache_dir(source) / BundleFolder.ONNX
    if cached.is_file() and _fits(cached, read_spec(source)):
        return cached
    return export_onnx(source, out=cached)["path"]

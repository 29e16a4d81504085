"""Runtimes: the forward pass of a model in torch or ONNX Runtime, with the thread count of this process.

Runners are callables ``(B, C, H, W) float32 -> logits``; :meth:`OnnxRunner.run` also returns the graph's
other outputs (``features`` of classifiers exported for Grad-CAM). Both are safe to call from several threads
at once (ONNX Runtime sessions are; torch modules in inference mode are), which the server's pool relies on.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medlens.errors import ConfigError

# Flip dims of the TTA views over (B, C, H, W): identity, horizontal flip, vertical flip; a model's own views
# are those of the flips it was trained under (ModelSpec.flip_dims), identity first.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,))
Flips = tuple[tuple[int, ...], ...]


class TorchRunner:
    """Forward pass of a torch model: float32 ``(B, C, H, W)`` -> float32 logits on CPU."""

    def __init__(self, model: nn.Module, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.model(x).float().cpu()


class OnnxRunner:
    """Forward pass of an ONNX model through ONNX Runtime (CPU, or CUDA when asked and available).

    ``cam_weights``: the ``(K, C)`` class weights stored by the export when the graph also returns
    ``features`` (else None)."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: pipelines run torch (Grad-CAM) and numpy right after
        # each ONNX call, and spinning threads took those cores (benchmarks/inference.py, BENCHMARKS.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.cam_weights: np.ndarray | None = None
        if "features" in self.output_names and "medlens_cam" in meta:
            self.cam_weights = decode_cam_weights(meta["medlens_cam"])

    @property
    def has_features(self) -> bool:
        """Whether :meth:`run` returns the last feature map beside the logits (Grad-CAM without backprop)."""
        return self.cam_weights is not None

    def run(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every output of the graph for ``x`` ``(B, C, H, W)``: ``[logits]`` or ``[logits, features]``."""
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        return [torch.from_numpy(out).float() for out in self.session.run(None, feed)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]


def run_views(
    runner: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    activate: Callable[[torch.Tensor], torch.Tensor],
    tta: bool,
    spatial: bool,
    batched: bool = False,
    flips: Flips = TTA_FLIPS,
) -> torch.Tensor:
    """Activated outputs of every TTA view, stacked ``(V, B, ...)``; ``spatial`` outputs are flipped back.

    ``batched``: run the ``V`` views of ``x`` ``(B, C, H, W)`` as one ``(V * B, C, H, W)`` call instead of
    ``V`` calls (faster in ONNX Runtime, int8 above all; see BENCHMARKS.md). ``flips``: the views, identity
    first (a model's own: ``ModelSpec.flip_dims``)."""
    flips = flips if tta else flips[:1]
    if batched and len(flips) > 1:
        ys = activate(runner(torch.cat([x.flip(d) if d else x for d in flips]))).split(x.shape[0])
    else:
        ys = [activate(runner(x.flip(d) if d else x)) for d in flips]
    return torch.stack([y.flip(d) if d and spatial else y for y, d in zip(ys, flips, strict=True)])


def image_views(image: np.ndarray, tta: bool, flips: Flips = TTA_FLIPS) -> list[np.ndarray]:
    """The ``flips`` views of one HWC image (itself, then e.g. flipped left-right, flipped up-down), for
    callers that keep each view's output apart (the pipeline's classification uncertainty)."""
    hwc_axis = {3: 1, 2: 0}  # (B, C, H, W) flip dim -> (H, W, C) axis
    flips = flips if tta else flips[:1]
    return [np.ascontiguousarray(np.flip(image, [hwc_axis[d] for d in dims])) for dims in flips]


THREADS_VARIABLE = "MEDLENS_NUM_THREADS"  # read here only (threads_from_env)


def threads_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """``$MEDLENS_NUM_THREADS`` of ``environ`` (default ``os.environ``), None when unset; ConfigError naming
    the variable when it is not a positive whole number."""
    raw = (os.environ if environ is None else environ).get(THREADS_VARIABLE, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"{THREADS_VARIABLE} must be a positive whole number of threads, got {raw!r}")
    return int(raw)


def default_threads() -> int:
    """CPU threads for inference: ``$MEDLENS_NUM_THREADS`` when set, else ``os.cpu_count()``."""
    return threads_from_env() or os.cpu_count() or 1


def configure_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads for this process (``threads``, else :func:`default_threads`); returns them.

    torch's thread pool is process-wide, so entry points (the CLI, ``medlens serve`` and the other server
    entry points of :mod:`medlens.app.server`, benchmarks) call this once; predictors and the app factory only
    size their own ONNX Runtime sessions.
    """
    threads = threads or default_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a torchrun rank's ``cuda`` is ``cuda:LOCAL_RANK``.

    ConfigError when CUDA is asked for but not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available; use device=cpu")
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"
    return torch.device(name)


def encode_cam_weights(weights: np.ndarray) -> str:
    """``(K, C)`` class weights -> the ``medlens_cam`` metadata value (JSON, float32 little-endian base64)."""
    data = np.ascontiguousarray(weights, dtype="<f4")
    return json.dumps({"shape": list(data.shape), "float32_b64": base64.b64encode(data.tobytes()).decode()})


def decode_cam_weights(value: str) -> np.ndarray:
    """The ``(K, C)`` float32 class weights stored by :func:`encode_cam_weights`."""
    meta = json.loads(value)
    raw = base64.b64decode(meta["float32_b64"])
    return np.frombuffer(raw, dtype="<f4").reshape(meta["shape"]).astype(np.float32)

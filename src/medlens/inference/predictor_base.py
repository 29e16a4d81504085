"""What every predictor shares: its model source (run folder or bundle) and spec, the runtime that runs the
network (torch or ONNX Runtime, float32 or an accepted int8 graph), replication for another thread, the torch
model loaded lazily, pre-processing and the flip test-time views. The two tasks' predictors are in
:mod:`medlens.inference.predictor`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medlens.errors import MedlensError, UnknownNameError
from medlens.inference.bundle import Bundle, is_bundle, load_model_source, read_spec, source_name
from medlens.inference.preprocess import preprocess
from medlens.inference.runtime import OnnxRunner, TorchRunner, default_threads, resolve_device, run_views
from medlens.spec import PRECISIONS, RUNTIMES, ModelSpec

logger = logging.getLogger(__name__)

Source = str | Path | Bundle


class Predictor:
    """A model source on a runtime; subclasses give the task (``task``) and the activation (``_activate``)."""

    task = ""

    def __init__(
        self,
        source: Source,
        runtime: str = "torch",
        device: str = "cpu",
        tta: bool = False,
        batch_size: int = 8,
        num_threads: int | None = None,
        precision: str = "fp32",
        onnx_path: str | Path | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise UnknownNameError("runtime", runtime, RUNTIMES)
        self.source = source if isinstance(source, Bundle) else Path(source)
        if not isinstance(self.source, Bundle) and is_bundle(self.source):
            self.source = Bundle.load(self.source)
        self.spec: ModelSpec = read_spec(self.source)
        if self.spec.task != self.task:
            raise MedlensError(f"{source}: a {self.spec.task} model cannot serve a {self.task} predictor")
        self.name = source_name(self.source)
        self.runtime, self.device = runtime, str(resolve_device(device))
        self.tta, self.batch_size = tta, batch_size
        self.threads = num_threads or default_threads()
        self._model: nn.Module | None = None
        self.precision = "fp32"
        # TTA views in one call: faster in ONNX Runtime, not in eager torch (BENCHMARKS.md)
        self.batch_views = runtime == "onnx"
        if runtime == "torch":  # torch's threads are the process's: set where the process starts
            self.runner: Callable[[torch.Tensor], torch.Tensor] = TorchRunner(self.model, self.device)
        else:
            self.runner = OnnxRunner(self._onnx_file(precision, onnx_path), self.device, self.threads)
        logger.info(
            "%s predictor %r ready (runtime %s %s, device %s)",
            self.task, self.name, runtime, self.precision, self.device,
        )  # fmt: skip

    def _onnx_file(self, precision: str, onnx_path: str | Path | None) -> Path:
        """The graph to load: ``onnx_path`` as given, the accepted int8 graph, else the float32 export."""
        from medlens.inference.export import ensure_onnx
        from medlens.inference.quantize import int8_path

        if precision not in PRECISIONS:
            raise UnknownNameError("precision", precision, list(PRECISIONS))
        if onnx_path is not None:
            self.precision = precision
            return Path(onnx_path)
        if precision == "int8":
            path = int8_path(self.source)
            if path is not None:
                self.precision = "int8"
                return path
            logger.warning(
                "%s: no accepted int8 graph (make one with `medlens export --int8`): using float32", self.name
            )
        return ensure_onnx(self.source)

    def replicate(self) -> Predictor:
        """A twin for another thread: ONNX Runtime sessions are shared (thread-safe), torch models copied
        (Grad-CAM hooks the model it explains)."""
        twin = copy.copy(self)
        if self.runtime == "torch":
            twin._model = copy.deepcopy(self.model)
            twin.runner = TorchRunner(twin._model, self.device)
        elif self._model is not None:
            twin._model = copy.deepcopy(self._model)
        return twin

    @property
    def model(self) -> nn.Module:
        """The torch model (eval, fp32; on ``device`` with the torch runtime, CPU with ONNX), loaded lazily
        and available with either runtime (Grad-CAM needs it)."""
        if self._model is None:
            model, _ = load_model_source(self.source)
            # NHWC weights: oneDNN convolutions (forward and Grad-CAM's backward) run faster on them.
            self._model = model.to(memory_format=torch.channels_last)
        return self._model

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def flips(self) -> tuple[tuple[int, ...], ...]:
        """Its test-time views (flip dims, identity first): the flips it was trained under."""
        return self.spec.flip_dims

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_size

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """HWC uint8 images -> float32 ``(B, C, H, W)`` model input (see :func:`preprocess`)."""
        return preprocess(images, self.spec)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _views(self, inputs: Sequence[np.ndarray], tta: bool, spatial: bool) -> torch.Tensor:
        """The activated outputs ``(V, B, ...)`` of the model's inputs (already guided, for a guided
        classifier) under each test-time view."""
        x = preprocess(inputs, self.spec)
        return run_views(self.runner, x, self._activate, tta, spatial, self.batch_views, self.flips)

    def _chunks(self, images: Sequence[np.ndarray]) -> list[Sequence[np.ndarray]]:
        images = [images] if isinstance(images, np.ndarray) else list(images)
        step = max(1, self.batch_size)
        return [images[i : i + step] for i in range(0, len(images), step)]


def view_std(views: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Population standard deviation over the TTA views ``(V, ...)`` given their mean ``(...)``; written out
    because ``Tensor.std(0)`` over a short first axis took 8 ms for (3, 1, 1, 256, 256) on one CPU thread,
    50x this."""
    return (views - mean).square_().mean(0).sqrt_()

"""Predictors: images in, probabilities / masks / labels out, from a run folder or a bundle.

Both runtimes (``"torch"`` and ``"onnx"``) share every step but the forward pass:
:func:`medlens.inference.preprocess.preprocess` (the pixels the training cache gave the model), optional
flip test-time augmentation (the identity and the flips the model was trained under, ``spec.flip_dims``;
probabilities averaged), temperature
scaling for classifiers, and resizing probabilities back to each image's own size (bilinear) before
thresholding. Threads: ONNX Runtime sessions get ``num_threads``; torch's process-wide pool is set by the
entry points (:func:`medlens.inference.runtime.configure_threads`).

With ONNX Runtime, ``precision="int8"`` uses the model's statically quantised graph when
:mod:`medlens.inference.quantize` made and accepted one (else float32, with a warning); TTA views run as one
batched call; a classifier exported with its ``features`` output explains its predictions without torch
(:meth:`ClassificationPredictor.predict_proba_with_features`, :meth:`ClassificationPredictor.cam`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medlens.errors import BundleError, MedlensError, UnknownNameError
from medlens.inference.bundle import (
    Bundle,
    is_bundle,
    is_run_folder,
    load_model_source,
    read_spec,
    source_name,
)
from medlens.inference.decisions import apply_decision, probs_to_mask
from medlens.inference.preprocess import ensure_channels, preprocess
from medlens.inference.runtime import (
    OnnxRunner,
    TorchRunner,
    default_threads,
    resolve_device,
    run_views,
)
from medlens.spec import DEFAULT_GUIDE_MARGIN, PRECISIONS, RUNTIMES, Mode, ModelSpec

logger = logging.getLogger(__name__)

Source = str | Path | Bundle


# ---------------------------------------------------------------------------------- base predictor
class _Predictor:
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
        self._guide: SegmentationPredictor | None = None
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

    def replicate(self) -> _Predictor:
        """A twin for another thread: ONNX Runtime sessions are shared (thread-safe), torch models copied
        (Grad-CAM hooks the model it explains)."""
        twin = copy.copy(self)
        if self.runtime == "torch":
            twin._model = copy.deepcopy(self.model)
            twin.runner = TorchRunner(twin._model, self.device)
        elif self._model is not None:
            twin._model = copy.deepcopy(self._model)
        twin._guide = self._guide.replicate() if self._guide is not None else None
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

    def _views(self, images: Sequence[np.ndarray], tta: bool, spatial: bool) -> torch.Tensor:
        return run_views(
            self.runner, self.preprocess(images), self._activate, tta, spatial, self.batch_views, self.flips
        )

    def _chunks(self, images: Sequence[np.ndarray]) -> list[Sequence[np.ndarray]]:
        images = [images] if isinstance(images, np.ndarray) else list(images)
        step = max(1, self.batch_size)
        return [images[i : i + step] for i in range(0, len(images), step)]


def view_std(views: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Population standard deviation over the TTA views ``(V, ...)`` given their mean ``(...)``; written out
    because ``Tensor.std(0)`` over a short first axis took 8 ms for (3, 1, 1, 256, 256) on one CPU thread,
    50x this."""
    return (views - mean).square_().mean(0).sqrt_()


# ---------------------------------------------------------------------------------- segmentation
def resize_probs(prob: torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """``(K, h, w)`` probabilities -> float32 numpy ``(K, H, W)`` at ``size`` (bilinear, antialiased)."""
    if tuple(prob.shape[-2:]) != tuple(size):
        prob = F.interpolate(
            prob[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True
        )[0]
    return prob.clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)


class SegmentationPredictor(_Predictor):
    """Segmentation from a run folder or bundle.

    ``predict_proba`` gives per image ``(H, W)`` (binary) or ``(K, H, W)`` (multi-class / multi-label) float32
    probabilities at the image's own size; ``predict`` the uint8 mask (see :func:`probs_to_mask`).
    """

    task = "segmentation"

    @property
    def mode(self) -> str:
        return self.spec.mode.value

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1) if self.mode == Mode.MULTICLASS else logits.sigmoid()

    def _predict(
        self, images: Sequence[np.ndarray], tta: bool, with_std: bool, sizes: Sequence[Sequence[int]] | None
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        out: list[tuple[np.ndarray, np.ndarray | None]] = []
        for chunk in self._chunks(images):
            views = self._views(chunk, tta, spatial=True)  # (V, B, K, h, w)
            mean = views.mean(0)
            std = view_std(views, mean) if with_std else None
            for i, img in enumerate(chunk):
                size = sizes[len(out)] if sizes is not None else np.asarray(img).shape[:2]
                prob = resize_probs(mean[i], size)
                spread = resize_probs(std[i], size) if std is not None else None
                if self.mode == Mode.BINARY:
                    prob, spread = prob[0], spread[0] if spread is not None else None
                out.append((prob, spread))
        return out

    def predict_proba(
        self, images: Sequence[np.ndarray], sizes: Sequence[Sequence[int]] | None = None
    ) -> list[np.ndarray]:
        """Probabilities per image at its own size (or at ``sizes[i] = (H, W)`` when given), float32."""
        return [p for p, _ in self._predict(images, self.tta, False, sizes)]

    def predict_masks(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 masks per image at its own size (batched)."""
        return [probs_to_mask(p, self.spec.mode, self.spec.threshold) for p in self.predict_proba(images)]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8 label mask (binary 0/1) of one HWC uint8 image, at the image's size."""
        return self.predict_masks([image])[0]

    def predict_batch_with_uncertainty(
        self, images: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray, float | None]]:
        """:meth:`predict_with_uncertainty` for a list of images, batched."""
        out = []
        for prob, std in self._predict(images, True, True, None):
            out.append((prob, std, self._uncertainty(prob, std)))
        return out

    def _uncertainty(self, prob: np.ndarray, std: np.ndarray) -> float | None:
        if len(self.flips) < 2:  # trained under no flip: a single view, no spread to measure
            return None
        fg = prob if prob.ndim == 2 else (1.0 - prob[0] if self.mode == Mode.MULTICLASS else prob.max(axis=0))
        spread = std if std.ndim == 2 else std.max(axis=0)
        region = fg > 0.1
        return float(spread[region].mean() if region.any() else spread.mean())

    def predict_with_uncertainty(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, float | None]:
        """Flip-TTA prediction of one image: ``(prob, tta_std_map, uncertainty)``.

        ``prob`` and ``tta_std_map`` have :meth:`predict_proba`'s shape; ``uncertainty`` is the mean TTA
        standard deviation over the pixels any view could call foreground (mean foreground probability > 0.1),
        or over the whole image when there are none (None for a model trained under no flip: one view).
        TTA runs even if the predictor has ``tta=False``; its views are the flips the model was trained under.
        """
        return self.predict_batch_with_uncertainty([image])[0]


# ---------------------------------------------------------------------------------- classification
class ClassificationPredictor(_Predictor):
    """Classification from a run folder or bundle; probabilities are temperature-calibrated."""

    task = "classification"

    @property
    def temperature(self) -> float:
        return float(self.spec.temperature)

    def _guide_source(self) -> Path:
        """The segmentation bundle of a guided classifier: the spec's path as given, else a sibling folder."""
        raw = Path(self.spec.guide.bundle)
        home = self.source.path if isinstance(self.source, Bundle) else Path(self.source)
        for candidate in (raw, home.parent / raw.name, home.parent / raw):
            if is_bundle(candidate) or is_run_folder(candidate):
                return candidate
        raise BundleError(
            f"{self.name}: the segmentation bundle {raw} that guides this classifier (spec 'guide') was not "
            f"found as given nor beside {home}"
        )

    @property
    def guide_margin(self) -> float:
        """The crop margin the classifier was trained with (the default when it is not guided)."""
        return self.spec.guide.margin if self.spec.guide is not None else DEFAULT_GUIDE_MARGIN

    def guided_inputs(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Raw HWC uint8 images -> the inputs a segmentation-guided classifier was trained on (lesion crop
        and/or mask channel from the spec's ``guide`` bundle, see :mod:`medlens.inference.guided`); images
        pass unchanged when the spec has no ``guide``. Pipelines guide with their own segmentation instead."""
        guide = self.spec.guide
        if guide is None:
            return list(images)
        from medlens.inference.guided import guide_inputs

        if self._guide is None:
            self._guide = SegmentationPredictor(
                self._guide_source(), self.runtime, self.device, num_threads=self.threads
            )
        return guide_inputs(
            [ensure_channels(i, self.spec.image_channels) for i in images],
            self._guide,
            guide.mode,
            self.input_size,
            margin=guide.margin,
        )

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:  # a single-logit binary head: p(positive) = sigmoid
            p = (logits / self.temperature).sigmoid()
            return torch.cat([1 - p, p], dim=1)
        return (logits / self.temperature).softmax(dim=1)

    def _probs(self, images: Sequence[np.ndarray], tta: bool) -> tuple[np.ndarray, np.ndarray]:
        means, stds = [], []
        for chunk in self._chunks(images):
            views = self._views(chunk, tta, spatial=False)  # (V, B, K)
            means.append(views.mean(0))
            stds.append(view_std(views, means[-1]))
        k = len(self.classes) or self.spec.num_classes
        if not means:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.float32)
        return torch.cat(means).numpy(), torch.cat(stds).numpy()

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """float32 ``(N, K)`` calibrated probabilities (flip-TTA averaged when the predictor has ``tta``)."""
        return self._probs(images, self.tta)[0]

    #: explain from the ONNX graph's ``features`` output when it has one (False: torch Grad-CAM)
    onnx_cam = True

    @property
    def has_features(self) -> bool:
        """Whether the runtime returns the last feature map (an ONNX graph exported with ``features``)."""
        return self.onnx_cam and bool(getattr(self.runner, "has_features", False))

    def predict_proba_with_features(
        self, images: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One forward pass per chunk, no TTA (pass the views as images): float32 ``(N, K)`` calibrated
        probabilities and, when :attr:`has_features`, the float32 ``(N, C, h, w)`` last feature maps for
        :meth:`cam` (else None)."""
        if not self.has_features:
            return self.predict_proba(images), None
        probs, feats = [], []
        for chunk in self._chunks(images):
            logits, features = self.runner.run(self.preprocess(chunk))[:2]
            probs.append(self._activate(logits))
            feats.append(features)
        return torch.cat(probs).numpy(), torch.cat(feats).numpy()

    def cam(self, features: np.ndarray, class_index: int) -> np.ndarray:
        """Grad-CAM ``(H, W)`` float32 0..1 at the input size from one image's ``(C, h, w)`` feature map
        (:func:`medlens.inference.explain.cam_from_features`; needs :attr:`has_features`)."""
        from medlens.inference.explain import cam_from_features

        if not self.has_features:
            raise MedlensError(f"{self.name}: the runtime returns no feature map; use explain.gradcam")
        return cam_from_features(features, self.runner.cam_weights, class_index, self.input_size)

    def decide(self, probs: np.ndarray) -> list[str]:
        """Labels from probabilities with the spec's decision rule (see :func:`apply_decision`)."""
        return [self.classes[i] for i in apply_decision(probs, self.classes, self.spec.decision)]

    def predict_label(self, images: Sequence[np.ndarray]) -> list[str]:
        """One label per image, using the spec's decision threshold when it has one."""
        return self.decide(self.predict_proba(images))

    def predict(self, image: np.ndarray) -> str:
        """The label of one HWC uint8 image."""
        return self.predict_label([image])[0]

    def predict_with_uncertainty(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Flip-TTA ``(probs (N, K), uncertainty (N,))``; uncertainty = normalised entropy of the mean
        probabilities (0 = certain, 1 = uniform)."""
        probs = self._probs(images, True)[0]
        k = probs.shape[1]
        entropy = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
        return probs, (entropy / np.log(k) if k > 1 else np.zeros(len(probs))).astype(np.float32)


def create_predictor(
    source: Source,
    runtime: str = "torch",
    device: str = "cpu",
    tta: bool = False,
    batch_size: int = 8,
    **kwargs: object,
) -> SegmentationPredictor | ClassificationPredictor:
    """The predictor matching the model's task (from its spec); ``kwargs`` go to its constructor."""
    spec = read_spec(source if isinstance(source, Bundle) else Path(source))
    cls = SegmentationPredictor if spec.is_segmentation else ClassificationPredictor
    return cls(source, runtime=runtime, device=device, tta=tta, batch_size=batch_size, **kwargs)

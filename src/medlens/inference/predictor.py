"""Predictors: images in, probabilities / masks / labels out, from a run folder or a bundle.

Both runtimes (``"torch"`` and ``"onnx"``) share every step but the forward pass
(:class:`medlens.inference.predictor_base.Predictor`): :func:`medlens.inference.preprocess.preprocess` (the
pixels the training cache gave the model), optional flip test-time augmentation (the identity and the flips
the model was trained under, ``spec.flip_dims``; probabilities averaged), temperature scaling for
classifiers, and resizing probabilities back to each image's own size (bilinear) before thresholding.
Threads: ONNX Runtime sessions get ``num_threads``; torch's process-wide pool is set by the entry points
(:func:`medlens.inference.runtime.configure_threads`).

A segmentation-guided classifier takes raw images and guides them itself
(:meth:`ClassificationPredictor.guided_inputs`): with the masks its caller passes (a pipeline's own
segmentation), else with its guide bundle's.

With ONNX Runtime, ``precision="int8"`` uses the model's statically quantised graph when
:mod:`medlens.inference.quantize` made and accepted one (else float32, with a warning); TTA views run as one
batched call; a classifier exported with its ``features`` output explains its predictions without torch
(:meth:`ClassificationPredictor.predict_views`, :meth:`ClassificationPredictor.explain`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medlens.errors import BundleError, MedlensError
from medlens.inference.bundle import Bundle, is_bundle, is_run_folder, read_spec
from medlens.inference.decisions import apply_decision, probs_to_mask
from medlens.inference.guided import GuidedInputs, crop_box, guide_inputs
from medlens.inference.predictor_base import Predictor, Source, view_std
from medlens.inference.preprocess import ensure_channels, preprocess
from medlens.inference.runtime import image_views
from medlens.spec import DEFAULT_GUIDE_MARGIN, GuideMode, Mode

__all__ = [
    "ClassificationPredictor",
    "Predictor",
    "SegmentationPredictor",
    "create_predictor",
    "resize_probs",
]

logger = logging.getLogger(__name__)

Masks = Sequence[np.ndarray] | None


# ---------------------------------------------------------------------------------- segmentation
def resize_probs(prob: torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """``(K, h, w)`` probabilities -> float32 numpy ``(K, H, W)`` at ``size`` (bilinear, antialiased)."""
    if tuple(prob.shape[-2:]) != tuple(size):
        prob = F.interpolate(
            prob[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True
        )[0]
    return prob.clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)


class SegmentationPredictor(Predictor):
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

    def explain(self, image: np.ndarray) -> np.ndarray:
        """Grad-CAM ``(h, w)`` float32 0..1 of one HWC uint8 image at the input size, by backpropagation in
        torch (:func:`medlens.inference.explain.gradcam`)."""
        from medlens.inference.explain import gradcam

        return gradcam(self.model, self.preprocess([image]))


# ---------------------------------------------------------------------------------- classification
class ClassificationPredictor(Predictor):
    """Classification from a run folder or bundle; probabilities are temperature-calibrated.

    A segmentation-guided classifier (:attr:`guide_mode`) guides the raw images every method here is given,
    as :meth:`guided_inputs` does: with ``masks`` when given, else with its guide bundle's masks. Inputs
    already guided (:class:`~medlens.inference.guided.GuidedInputs`) pass as they are.
    """

    task = "classification"
    #: a guide the spec does not record (a pipeline YAML's ``classifier.guided`` for such a bundle)
    given_guide: GuideMode | None = None
    #: explain from the ONNX graph's ``features`` output when it has one (False: torch Grad-CAM)
    onnx_cam = True
    _guide: SegmentationPredictor | None = None  # the guide bundle's segmenter, loaded on first use

    @property
    def temperature(self) -> float:
        return float(self.spec.temperature)

    def replicate(self) -> ClassificationPredictor:
        twin = super().replicate()
        twin._guide = self._guide.replicate() if self._guide is not None else None
        return twin

    # -- the guide ------------------------------------------------------------------------------------------
    @property
    def guide_mode(self) -> GuideMode | None:
        """How a segmentation guides its inputs: the spec's guide, else :attr:`given_guide` (None: not
        guided)."""
        return self.spec.guide.mode if self.spec.guide is not None else self.given_guide

    @property
    def guide_margin(self) -> float:
        """The crop margin the classifier was trained with (the default when the spec records no guide)."""
        return self.spec.guide.margin if self.spec.guide is not None else DEFAULT_GUIDE_MARGIN

    def _guide_source(self) -> Path:
        """The segmentation bundle of a guided classifier: the spec's path as given, else a sibling folder."""
        if self.spec.guide is None:
            raise MedlensError(
                f"{self.name}: guided ({self.guide_mode.value}) but its spec names no segmentation bundle "
                "to guide with: pass the images' masks"
            )
        raw = Path(self.spec.guide.bundle)
        home = self.source.path if isinstance(self.source, Bundle) else Path(self.source)
        for candidate in (raw, home.parent / raw.name, home.parent / raw):
            if is_bundle(candidate) or is_run_folder(candidate):
                return candidate
        raise BundleError(
            f"{self.name}: the segmentation bundle {raw} that guides this classifier (spec 'guide') was not "
            f"found as given nor beside {home}"
        )

    def guided_inputs(self, images: Sequence[np.ndarray], masks: Masks = None) -> list[np.ndarray]:
        """Raw HWC uint8 images -> the inputs the classifier was trained on: converted to its image's
        channels, then cropped around the region and/or given the mask channel (see
        :mod:`medlens.inference.guided`) by ``masks`` (``(H, W)`` each, non-zero = region; e.g. a pipeline's
        own segmentation) or, without them, by the spec's ``guide`` bundle.

        Images pass unchanged when the classifier is not guided (``masks`` are then ignored), and so do
        inputs already guided (:class:`GuidedInputs`, what this returns for a guided classifier)."""
        if isinstance(images, GuidedInputs):
            return images
        images = [images] if isinstance(images, np.ndarray) else list(images)
        mode = self.guide_mode
        if mode is None:
            return images
        images = [ensure_channels(i, self.spec.in_channels - mode.extra_channels) for i in images]
        if masks is None and self._guide is None:
            self._guide = SegmentationPredictor(
                self._guide_source(), self.runtime, self.device, num_threads=self.threads
            )
        seg = self._guide if masks is None else None
        return guide_inputs(images, seg, mode, self.input_size, masks=masks, margin=self.guide_margin)

    def guide_crop(self, mask: np.ndarray) -> tuple[int, int, int] | None:
        """The square ``(top, left, side)`` its guide crops from an image with ``mask`` (None: the whole
        image is its input), to place a heat map of the input back on the image."""
        mode = self.guide_mode
        return crop_box(mask, self.guide_margin) if mode is not None and mode.crops else None

    def preprocess(self, images: Sequence[np.ndarray], masks: Masks = None) -> torch.Tensor:
        """Raw HWC uint8 images -> float32 ``(B, C, H, W)`` model input, guided (:meth:`guided_inputs`)."""
        return preprocess(self.guided_inputs(images, masks), self.spec)

    # -- probabilities --------------------------------------------------------------------------------------
    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:  # a single-logit binary head: p(positive) = sigmoid
            p = (logits / self.temperature).sigmoid()
            return torch.cat([1 - p, p], dim=1)
        return (logits / self.temperature).softmax(dim=1)

    def _probs(self, inputs: Sequence[np.ndarray], tta: bool) -> tuple[np.ndarray, np.ndarray]:
        means, stds = [], []
        for chunk in self._chunks(inputs):
            views = self._views(chunk, tta, spatial=False)  # (V, B, K)
            means.append(views.mean(0))
            stds.append(view_std(views, means[-1]))
        k = len(self.classes) or self.spec.num_classes
        if not means:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.float32)
        return torch.cat(means).numpy(), torch.cat(stds).numpy()

    def predict_proba(self, images: Sequence[np.ndarray], masks: Masks = None) -> np.ndarray:
        """float32 ``(N, K)`` calibrated probabilities (flip-TTA averaged when the predictor has ``tta``)."""
        return self._probs(self.guided_inputs(images, masks), self.tta)[0]

    @property
    def has_features(self) -> bool:
        """Whether the runtime returns the last feature map (an ONNX graph exported with ``features``)."""
        return self.onnx_cam and bool(getattr(self.runner, "has_features", False))

    def _forward(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.has_features:
            return self._probs(inputs, False)[0], None
        probs, feats = [], []
        for chunk in self._chunks(inputs):
            logits, features = self.runner.run(preprocess(chunk, self.spec))[:2]
            probs.append(self._activate(logits))
            feats.append(features)
        return torch.cat(probs).numpy(), torch.cat(feats).numpy()

    def predict_proba_with_features(
        self, images: Sequence[np.ndarray], masks: Masks = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One forward pass per chunk, no TTA: float32 ``(N, K)`` calibrated probabilities and, when
        :attr:`has_features`, the float32 ``(N, C, h, w)`` last feature maps for :meth:`cam` (else None)."""
        return self._forward(self.guided_inputs(images, masks))

    def predict_views(
        self, images: Sequence[np.ndarray], masks: Masks = None, tta: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Each image's test-time views kept apart (so that their spread can be measured), all in one
        batched pass (chunked by ``batch_size``): float32 ``(N, V, K)`` calibrated probabilities and, when
        :attr:`has_features`, ``(N, V, C, h, w)`` feature maps (else None). ``V``: the identity and the flips
        the model was trained under with ``tta``, else the identity alone."""
        inputs = self.guided_inputs(images, masks)
        views = [view for x in inputs for view in image_views(x, tta, self.flips)]
        if not views:
            return np.zeros((0, 1, len(self.classes)), np.float32), None
        probs, feats = self._forward(views)  # (N * V, K), (N * V, C, h, w) | None
        n = len(inputs)
        return probs.reshape(n, -1, probs.shape[-1]), None if feats is None else feats.reshape(
            n, -1, *feats.shape[1:]
        )

    def decide(self, probs: np.ndarray) -> list[str]:
        """Labels from probabilities with the spec's decision rule (see :func:`apply_decision`)."""
        return [self.classes[i] for i in apply_decision(probs, self.classes, self.spec.decision)]

    def predict_label(self, images: Sequence[np.ndarray], masks: Masks = None) -> list[str]:
        """One label per image, using the spec's decision threshold when it has one."""
        return self.decide(self.predict_proba(images, masks))

    def predict(self, image: np.ndarray, mask: np.ndarray | None = None) -> str:
        """The label of one HWC uint8 image."""
        return self.predict_label([image], None if mask is None else [mask])[0]

    def predict_with_uncertainty(
        self, images: Sequence[np.ndarray], masks: Masks = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Flip-TTA ``(probs (N, K), uncertainty (N,))``; uncertainty = normalised entropy of the mean
        probabilities (0 = certain, 1 = uniform)."""
        probs = self._probs(self.guided_inputs(images, masks), True)[0]
        k = probs.shape[1]
        entropy = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
        return probs, (entropy / np.log(k) if k > 1 else np.zeros(len(probs))).astype(np.float32)

    # -- explanation ----------------------------------------------------------------------------------------
    def cam(self, features: np.ndarray, class_index: int) -> np.ndarray:
        """Grad-CAM ``(H, W)`` float32 0..1 at the input size from one image's ``(C, h, w)`` feature map
        (:func:`medlens.inference.explain.cam_from_features`; needs :attr:`has_features`)."""
        from medlens.inference.explain import cam_from_features

        if not self.has_features:
            raise MedlensError(f"{self.name}: the runtime returns no feature map; use explain.gradcam")
        return cam_from_features(features, self.runner.cam_weights, class_index, self.input_size)

    def explain(
        self,
        image: np.ndarray,
        class_index: int,
        mask: np.ndarray | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        """Grad-CAM of ``class_index`` on one raw image's (guided) input, ``(h, w)`` float32 0..1: from its
        ``features`` (:meth:`predict_views` gave them) without backpropagation, else by backpropagation in
        torch. On a crop-guided classifier the map covers :meth:`guide_crop`, not the whole image."""
        from medlens.inference.explain import gradcam

        if features is not None:
            return self.cam(features, class_index)
        return gradcam(
            self.model, self.preprocess([image], None if mask is None else [mask]), class_index=class_index
        )


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

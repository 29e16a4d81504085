"""Small stage helpers of the analysis pipelines: a stage timer, image intake, CLAHE, finding bundles and a
pipeline's guide mode. Re-exported by `medlens.pipelines.pipeline`; the stages themselves are sequenced in
`medlens.pipelines.analyzer`."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.data.io import ImageRecord, flatten_alpha
from medlens.errors import BundleError, ConfigError, MedlensError
from medlens.inference.bundle import is_bundle, list_bundles
from medlens.spec import GuideMode

if TYPE_CHECKING:
    from medlens.pipelines.config import PipelineConfig

logger = logging.getLogger(__name__)


class StageTimer:
    """Milliseconds per stage of one image (stages that did not run stay 0.0) plus ``total``, their sum; the
    image's share of a batched model call is counted with :meth:`add`."""

    STAGES = ("preprocess", "modality", "segment", "features", "classify", "gradcam", "advice")

    def __init__(self) -> None:
        self.ms = dict.fromkeys(self.STAGES, 0.0)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, (time.perf_counter() - t0) * 1000.0)

    def add(self, stage: str, ms: float) -> None:
        """Count ``ms`` spent elsewhere (a batched model call, shared out) in ``stage``."""
        self.ms[stage] = self.ms.get(stage, 0.0) + ms

    def finish(self) -> dict[str, float]:
        out = {k: round(v, 2) for k, v in self.ms.items()}
        out["total"] = round(sum(self.ms.values()), 2)
        return out


def as_image(image: np.ndarray | ImageRecord) -> ImageRecord:
    """``image`` as an `ImageRecord` whose ``array`` is ``(H, W, C)`` uint8 with C in {1, 3} (an array's has
    no pixel spacing).

    ``(H, W)`` arrays gain a channel axis and RGBA is flattened on white (`flatten_alpha`, which adds its note
    to the record's ``notes``); anything else raises `MedlensError`. A record given is not changed.
    """
    record = image if isinstance(image, ImageRecord) else ImageRecord(image, None, "array")
    arr = np.asarray(record.array)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or 0 in arr.shape:
        raise MedlensError(
            f"expected an (H, W, C) uint8 image with C in 1, 3, 4; got {arr.dtype} {arr.shape}"
        )
    notes = list(record.notes)
    if arr.shape[2] == 4:
        arr, note = flatten_alpha(arr)
        notes += [note] if note else []
    return replace(record, array=np.ascontiguousarray(arr), notes=notes)


def enhance_contrast(image: np.ndarray, clip_limit: float = 0.01) -> np.ndarray:
    """CLAHE (skimage ``equalize_adapthist``) of ``(H, W, C)`` uint8; for RGB on the Lab lightness only."""
    from skimage.color import lab2rgb, rgb2lab
    from skimage.exposure import equalize_adapthist

    if image.shape[2] == 1:
        out = equalize_adapthist(image[..., 0], clip_limit=clip_limit)[..., None]
    else:
        lab = rgb2lab(image)
        lab[..., 0] = equalize_adapthist(lab[..., 0] / 100.0, clip_limit=clip_limit) * 100.0
        out = lab2rgb(lab)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def find_bundle(models_dir: str | Path, name: str) -> Path:
    """``models_dir/<name>`` when it is a bundle, else the bundle under ``models_dir`` named ``name`` in its
    bundle.json; `BundleError` when there is none."""
    models_dir = Path(models_dir)
    if is_bundle(models_dir / name):
        return models_dir / name
    for bundle in list_bundles(models_dir):
        if bundle.name == name:
            return bundle.path
    raise BundleError(
        f"bundle {name!r} not found in {models_dir.resolve()} (looked for {models_dir / name} and for a "
        "bundle of that name there); give --models-dir the folder that holds the bundles, or make it with "
        "`medlens bundle`"
    )


def resolve_guide(config: PipelineConfig, segmenter: Any, classifier: Any) -> GuideMode | None:
    """A pipeline's guide mode: the YAML's ``classifier.guided`` if given, else the classifier spec's
    ``guide`` (None: not guided); `ConfigError` when the two disagree or the classifier cannot be guided."""
    if classifier is None or config.classifier is None:
        return None
    src, cfg = config.source, config.classifier
    guide = classifier.spec.guide
    trained = guide.mode if guide is not None else None
    mode = trained if cfg.guided is None else (cfg.guided or None)
    if trained is not None and mode != trained:
        shown = mode.value if mode else mode
        raise ConfigError(
            f"{src}: classifier.guided is {shown!r} but {cfg.bundle} was trained with {trained.value!r}"
        )
    if mode is None:
        return None
    if segmenter is None:
        raise ConfigError(
            f"{src}: the classifier {cfg.bundle} needs guided inputs ({mode.value}); add a segmenter"
        )
    in_ch = classifier.spec.in_channels
    if not mode.fits(in_ch):
        raise ConfigError(
            f"{src}: guided={mode.value!r} does not fit {cfg.bundle}, which takes {in_ch} input channels"
        )
    trained_with = Path(guide.bundle).name if guide is not None else ""
    if trained_with and trained_with != config.segmenter.bundle:
        logger.warning("%s: %s was trained on masks of %s, not of the pipeline's segmenter %s",
                       src, cfg.bundle, trained_with, config.segmenter.bundle)  # fmt: skip
    return mode

"""The layout of a run folder and of a bundle: the one place where the names of their files are written
(docs/ARCHITECTURE.md, "Run folder" and "Bundle"; nnU-Net keeps its paths the same way).

``RunFolder(path)`` and ``BundleFolder(path)`` only name paths; reading and writing stay with the code that
owns each file (``training`` writes a run folder, ``inference.packaging`` a bundle). A bundle carries copies
of the run's record (config, plan, split, metrics): :class:`RunRecord` names those files for both, so
``medlens evaluate --split`` reads a bundle's split as it reads a run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunRecord:
    """The files a run writes about itself, kept by its bundle too (each a relative name, then its path)."""

    path: Path

    CONFIG = "config.yaml"  # the resolved TrainConfig
    PLAN = "plan.json"
    FINGERPRINT = "fingerprint.json"
    SPLIT = "split.json"  # {"train", "val", "test"} id lists
    VAL_METRICS = "val_metrics.json"
    TEST_METRICS = "test_metrics.json"
    LINEAGE = "lineage.json"  # a run started from a bundle's weights (train --from)
    METRICS_CSV = "metrics.csv"  # one row per epoch
    CURVES = "curves.png"
    PLOTS = "plots"  # a folder of PNGs
    # what a bundle copies from its run folder, when present (provenance for the card and for re-training)
    COPIED = (CONFIG, PLAN, FINGERPRINT, VAL_METRICS, TEST_METRICS, SPLIT, LINEAGE, METRICS_CSV, CURVES)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def plan(self) -> Path:
        return self.path / self.PLAN

    @property
    def fingerprint(self) -> Path:
        return self.path / self.FINGERPRINT

    @property
    def split(self) -> Path:
        return self.path / self.SPLIT

    @property
    def val_metrics(self) -> Path:
        return self.path / self.VAL_METRICS

    @property
    def test_metrics(self) -> Path:
        return self.path / self.TEST_METRICS

    @property
    def lineage(self) -> Path:
        return self.path / self.LINEAGE

    @property
    def metrics_csv(self) -> Path:
        return self.path / self.METRICS_CSV

    @property
    def curves(self) -> Path:
        return self.path / self.CURVES

    @property
    def plots(self) -> Path:
        return self.path / self.PLOTS


@dataclass(frozen=True)
class RunFolder(RunRecord):
    """A training run folder ``runs/<name>/``: the record, the model spec and the checkpoints."""

    SPEC = "model_spec.json"
    CHECKPOINTS = "checkpoints"
    LAST = "checkpoints/last.pt"  # full state: --resume continues from it
    BEST = "checkpoints/best.pt"  # weights + spec of the best validated epoch

    @property
    def spec(self) -> Path:
        return self.path / self.SPEC

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    def is_run(self) -> bool:
        """Whether the folder holds a model spec and a best checkpoint."""
        return self.spec.is_file() and self.best.is_file()


@dataclass(frozen=True)
class BundleFolder(RunRecord):
    """A bundle folder (format 2): ``bundle.json``, the weights, the model card, an optional ONNX graph, and
    the run's record."""

    META = "bundle.json"
    WEIGHTS = "model.safetensors"
    CARD = "README.md"
    ONNX = "model.onnx"

    @property
    def meta(self) -> Path:
        return self.path / self.META

    @property
    def weights(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def card(self) -> Path:
        return self.path / self.CARD

    @property
    def onnx(self) -> Path:
        return self.path / self.ONNX

    def is_bundle(self) -> bool:
        """Whether the folder holds a ``bundle.json``."""
        return self.meta.is_file()

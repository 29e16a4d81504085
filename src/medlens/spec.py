"""The model spec: everything a predictor needs to rebuild a network and feed it, written by training into
``model_spec.json`` and into every bundle's ``bundle.json``.

One typed record (:class:`ModelSpec`) instead of a dict read by string keys; task and mode are enums that
compare equal to their strings (``spec.task == "segmentation"``). :meth:`ModelSpec.from_dict` reads every
spec medlens has written (bundle format 1 lacks ``groups``, ``mask_dirs`` and ``label_column``) and names the
missing or unknown field of a broken one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from medlens.errors import BundleError, UnknownNameError


class Task(StrEnum):
    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"


class Mode(StrEnum):
    BINARY = "binary"  # segmentation: one foreground channel, sigmoid
    MULTICLASS = "multiclass"  # segmentation: K channels, softmax; every classifier
    MULTILABEL = "multilabel"  # segmentation: K channels, sigmoid each


class GuideMode(StrEnum):
    """How a segmentation bundle guides a classifier: crop around the region, add the mask as a channel, both,
    or crop and blank everything outside the (slightly widened) region ("field": the lung fields only)."""

    CROP = "crop"
    CHANNEL = "channel"
    BOTH = "both"
    FIELD = "field"

    @property
    def extra_channels(self) -> int:
        """Input channels the guide adds to the image's (the mask rides as one more channel)."""
        return 1 if self in (GuideMode.CHANNEL, GuideMode.BOTH) else 0

    @property
    def crops(self) -> bool:
        """Whether the classifier sees a crop around the segmented region."""
        return self in (GuideMode.CROP, GuideMode.BOTH, GuideMode.FIELD)


# How a bundle can be run (inference/runtime.py, predictor.py) and which ONNX graph precisions exist: here, in
# the leaf module, so that the CLI's parsers name them without importing torch.
RUNTIMES = ("torch", "onnx")
PRECISIONS = ("fp32", "int8")
TASKS = tuple(t.value for t in Task)
MODES = tuple(m.value for m in Mode)
GUIDE_MODES = tuple(g.value for g in GuideMode)
# The test-time flips a model may be run under, by augmentation name, and the (B, C, H, W) dims they mirror.
FLIP_DIMS: dict[str, tuple[int, ...]] = {"hflip": (3,), "vflip": (2,)}


def trained_flips(augment: dict[str, Any]) -> list[str]:
    """The flips a model was trained under (augmentation probability > 0), from its ``augment`` section:
    the only ones its test-time augmentation may use. A chest film flipped up-down, or left-right for a model
    that names the lungs by side, is another image."""
    return [name for name in FLIP_DIMS if float(augment.get(name) or 0.0) > 0.0]


def parse_enum(kind: type[Enum], value: Any, what: str) -> Any:
    """``kind(value)``, or UnknownNameError listing the valid values."""
    try:
        return kind(value)
    except ValueError:
        raise UnknownNameError(what, str(value), [e.value for e in kind]) from None


def guide_channels(mode: str | None) -> int:
    """Extra input channels of a guided classifier (0 without a guide): the one home of that arithmetic."""
    return 0 if mode is None else parse_enum(GuideMode, mode, "guide mode").extra_channels


@dataclass
class Guide:
    """The segmentation bundle that guides a classifier, and how."""

    bundle: str
    mode: GuideMode = GuideMode.CROP

    def __post_init__(self) -> None:
        self.mode = parse_enum(GuideMode, self.mode, "guide mode")


@dataclass
class ModelSpec:
    """A trained model's description (see the module docstring)."""

    task: Task
    arch: str  # smp architecture (segmentation) or timm model name (classification)
    in_channels: int  # network input channels: the image's plus the guide's (:attr:`image_channels`)
    num_classes: int  # output channels (binary segmentation: 1)
    input_size: tuple[int, int]  # (H, W) the network sees
    mode: Mode = Mode.BINARY
    encoder: str | None = None  # smp encoder (segmentation only)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)  # segmentation: background first
    mean: list[float] = field(default_factory=list)  # per input channel, on 0..1 pixel values
    std: list[float] = field(default_factory=list)
    threshold: float = 0.5  # binary / multi-label segmentation
    temperature: float = 1.0  # classification: calibrated on validation
    decision: dict[str, Any] | None = None  # classification rule fitted on validation (apply_decision)
    groups: list[dict[str, Any]] | None = None  # classification: summed class groups with flag thresholds
    guide: Guide | None = None  # segmentation-guided classification
    mask_dirs: list[str] | None = None  # segmentation: the mask folders it was trained on (None: masks/)
    label_column: str | None = None  # classification: the labels.csv column it was trained on
    tta_flips: list[str] | None = None  # its test-time flips (trained_flips); None: unrecorded
    tta: bool | None = None  # flip TTA by default, as chosen on validation (evaluate --choose-tta); None: on

    def __post_init__(self) -> None:
        self.task = parse_enum(Task, self.task, "task")
        self.mode = parse_enum(Mode, self.mode, "mode")
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.in_channels, self.num_classes = int(self.in_channels), int(self.num_classes)
        if isinstance(self.guide, dict):
            self.guide = Guide(**self.guide)
        if self.tta_flips is not None:
            self.tta_flips = [str(f) for f in self.tta_flips]
            unknown = sorted(set(self.tta_flips) - set(FLIP_DIMS))
            if unknown:
                raise UnknownNameError("test-time flip", unknown[0], list(FLIP_DIMS))

    @property
    def flip_dims(self) -> tuple[tuple[int, ...], ...]:
        """Its test-time views as flip dims over ``(B, C, H, W)``: itself first, then each flip it was trained
        under (both flips when unrecorded, as bundles without the record were run)."""
        names = list(FLIP_DIMS) if self.tta_flips is None else self.tta_flips
        return ((), *(FLIP_DIMS[name] for name in names))

    def runs_tta(self, requested: bool | None) -> bool:
        """Whether flip TTA runs for this model: as ``requested``, else as chosen on validation and recorded
        (on where nothing was recorded)."""
        return bool(requested) if requested is not None else self.tta is not False

    @property
    def image_channels(self) -> int:
        """Channels of the image itself (the network's input minus a guide mask channel)."""
        return self.in_channels - (self.guide.mode.extra_channels if self.guide else 0)

    @property
    def is_segmentation(self) -> bool:
        return self.task is Task.SEGMENTATION

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (enums as their strings)."""
        out = dataclasses.asdict(self)
        out.update(task=self.task.value, mode=self.mode.value, input_size=list(self.input_size))
        if self.guide is not None:
            out["guide"] = {"bundle": self.guide.bundle, "mode": self.guide.mode.value}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: object = "model spec") -> ModelSpec:
        """Read a spec dict of any bundle format; BundleError naming ``source`` when it is incomplete."""
        if isinstance(data, ModelSpec):
            return data
        if not isinstance(data, dict):
            raise BundleError(f"{source}: the model spec is not a mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]  # fmt: skip
        missing = [k for k in required if data.get(k) is None]
        if missing:
            raise BundleError(f"{source}: the model spec lacks {missing}")
        unknown = sorted(set(data) - names)
        if unknown:
            raise BundleError(f"{source}: unknown model spec field(s) {unknown}; known: {sorted(names)}")
        values = {k: v for k, v in data.items() if v is not None or k in ("decision", "groups", "guide")}
        try:
            return cls(**values)
        except (TypeError, ValueError, IndexError) as exc:
            raise BundleError(f"{source}: invalid model spec: {exc}") from exc

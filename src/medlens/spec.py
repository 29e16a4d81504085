"""The model spec: everything a predictor needs to rebuild a network and feed it, written by training into
``model_spec.json`` and into every bundle's ``bundle.json``.

One typed record (:class:`ModelSpec`) instead of a dict read by string keys; task, mode and guide mode are
enums that compare equal to their strings (``spec.task == "segmentation"``); the classification decision rule
(:class:`ThresholdDecision` or :class:`PriorDecision`) and the class groups (:class:`ClassGroup`) are typed
records too. :meth:`ModelSpec.from_dict` reads every spec medlens has written (bundle format 1 lacks
``groups``, ``mask_dirs`` and ``label_column``) and names the missing or unknown field of a broken one;
:meth:`ModelSpec.to_dict` writes the JSON it read back unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, ClassVar

from medlens.errors import BundleError, MedlensError, UnknownNameError


class Task(StrEnum):
    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"


class Mode(StrEnum):
    BINARY = "binary"  # segmentation: one foreground channel, sigmoid
    MULTICLASS = "multiclass"  # segmentation: K channels, softmax; every classifier
    MULTILABEL = "multilabel"  # segmentation: K channels, sigmoid each


DEFAULT_GUIDE_MARGIN = 0.25  # a crop guide's margin per side (inference/guided.py)


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

    def fits(self, in_channels: int) -> bool:
        """Whether a network of ``in_channels`` inputs takes this guide's inputs: an image's channels
        (:data:`IMAGE_CHANNELS`) plus the guide's."""
        return in_channels - self.extra_channels in IMAGE_CHANNELS


# The channels of an image in memory, (H, W, C) uint8: grey or RGB (docs/ARCHITECTURE.md, "Arrays").
IMAGE_CHANNELS = (1, 3)
# How a bundle can be run (inference/runtime.py, predictor.py) and which ONNX graph precisions exist: here, in
# the leaf module, so that the CLI's parsers name them without importing torch.
RUNTIMES = ("torch", "onnx")
PRECISIONS = ("fp32", "int8")
TASKS = tuple(t.value for t in Task)
MODES = tuple(m.value for m in Mode)
GUIDE_MODES = tuple(g.value for g in GuideMode)
# The class a binary segmentation data set's one structure gets when the data does not name it (data.layout);
# pipelines show it by their region's name (pipelines.names.region_names).
GENERIC_REGION = "foreground"
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


@dataclass
class Guide:
    """The segmentation bundle that guides a classifier, and how."""

    bundle: str
    mode: GuideMode = GuideMode.CROP
    # crop margin per side, a fraction of the region's longer side (bundles before it was a field: 0.25)
    margin: float = DEFAULT_GUIDE_MARGIN

    def __post_init__(self) -> None:
        self.mode = parse_enum(GuideMode, self.mode, "guide mode")
        self.margin = float(self.margin)
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"guide margin must lie in [0, 1], got {self.margin}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form; the margin only when not the default, so older bundles are written back as read."""
        out: dict[str, Any] = {"bundle": self.bundle, "mode": self.mode.value}
        if self.margin != DEFAULT_GUIDE_MARGIN:
            out["margin"] = self.margin
        return out


def _record(cls: type, data: object, required: tuple[str, ...], what: str) -> dict[str, Any]:
    """``data`` checked as the JSON form of record ``cls``: a mapping with the ``required`` keys and no others
    than its fields (BundleError naming the ones that are not)."""
    if not isinstance(data, Mapping):
        raise BundleError(f"{what}: expected a mapping, got {data!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [k for k in required if data.get(k) is None]
    unknown = sorted(set(data) - set(names))
    problems = [f"lacks {missing}"] * bool(missing)
    problems += [f"unknown key(s) {unknown}; known: {names}"] * bool(unknown)
    if problems:
        raise BundleError(f"{what} {dict(data)}: {'; '.join(problems)}")
    return dict(data)


def _present(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the optional entries left unset (None), as the JSON medlens has always written."""
    return {k: v for k, v in values.items() if v is not None}


class Decision:
    """A classifier's decision rule, fitted on validation (``medlens.training.decisions``) and applied by
    ``medlens.inference.decisions.apply_decision``: :class:`ThresholdDecision` or :class:`PriorDecision`.

    JSON forms (``bundle.json`` / ``model_spec.json``): a number ``t`` (class 1 when its probability reaches
    ``t``), ``{"positive_class", "threshold", "target_sensitivity"?, "fitted_on"?}`` or ``{"class_weights",
    "prior_power"?, "fitted_on"?}``; :meth:`from_dict` reads each and ``to_dict`` writes it back unchanged.
    """

    fitted_on: str | None

    @staticmethod
    def from_dict(data: object) -> Decision | None:
        """The rule of a JSON form (None stays None; a rule passes as it is); BundleError when malformed."""
        if data is None or isinstance(data, Decision):
            return data
        if isinstance(data, int | float) and not isinstance(data, bool):
            return ThresholdDecision(threshold=data)
        if isinstance(data, Mapping) and "class_weights" in data:
            return PriorDecision(**_record(PriorDecision, data, PriorDecision.REQUIRED, "decision"))
        return ThresholdDecision(**_record(ThresholdDecision, data, ThresholdDecision.REQUIRED, "decision"))

    def to_dict(self) -> dict[str, Any] | float:
        raise NotImplementedError


@dataclass(frozen=True)
class ThresholdDecision(Decision):
    """A binary rule: ``positive_class`` when its probability reaches ``threshold``, else the arg-max of the
    other classes. ``positive_class`` None: class 1 (a rule written as a bare number)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("positive_class", "threshold")
    threshold: float
    positive_class: str | None = None
    target_sensitivity: float | None = None  # the validation sensitivity the threshold was fitted for
    fitted_on: str | None = None  # "val", or "val + <decision_roots>"

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, int | float) or isinstance(self.threshold, bool):
            raise BundleError(f"decision threshold {self.threshold!r} is not a number")

    def class_index(self, classes: Sequence[str]) -> int:
        """Index of the positive class among ``classes`` (MedlensError when it is not one of them)."""
        if self.positive_class is None:
            return 1
        if self.positive_class not in classes:
            raise MedlensError(
                f"decision {self.to_dict()} needs a 'positive_class' among {list(classes)} and a 'threshold' "
                "(or 'class_weights')"
            )
        return list(classes).index(self.positive_class)

    def to_dict(self) -> dict[str, Any] | float:
        """The JSON form: the bare threshold without a positive class, else the mapping."""
        if self.positive_class is None:
            return self.threshold
        return _present({"positive_class": self.positive_class, "threshold": self.threshold,
                         "target_sensitivity": self.target_sensitivity,
                         "fitted_on": self.fitted_on})  # fmt: skip


@dataclass(frozen=True)
class PriorDecision(Decision):
    """A prior-corrected multi-class rule: the arg-max of ``p_k * class_weights[k]``, the weights
    ``prior_k ** -prior_power`` (normalised to a mean of 1)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("class_weights",)
    class_weights: tuple[float, ...]
    prior_power: float | None = None
    fitted_on: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_weights", tuple(self.class_weights))

    def to_dict(self) -> dict[str, Any]:
        return _present({"class_weights": list(self.class_weights), "prior_power": self.prior_power,
                         "fitted_on": self.fitted_on})  # fmt: skip


@dataclass(frozen=True)
class ClassGroup:
    """A named group of classes (e.g. malignant = mel + bcc + akiec), flagged when the sum of its members'
    probabilities reaches ``threshold`` (fitted on validation for ``target_sensitivity``; ``sensitivity`` and
    ``specificity`` as measured there)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("name", "classes", "threshold")
    name: str
    classes: tuple[str, ...]
    threshold: float
    target_sensitivity: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))

    @classmethod
    def from_dict(cls, data: object) -> ClassGroup:
        """A group of its JSON form (a group passes as it is); BundleError when malformed."""
        if isinstance(data, ClassGroup):
            return data
        return cls(**_record(cls, data, cls.REQUIRED, "class group"))

    def to_dict(self) -> dict[str, Any]:
        return _present({"name": self.name, "classes": list(self.classes), "threshold": self.threshold,
                         "target_sensitivity": self.target_sensitivity, "sensitivity": self.sensitivity,
                         "specificity": self.specificity})  # fmt: skip


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
    decision: Decision | None = None  # classification rule fitted on validation (apply_decision)
    groups: list[ClassGroup] | None = None  # classification: summed class groups with flag thresholds
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
        self.decision = Decision.from_dict(self.decision)
        if self.groups is not None:
            self.groups = [ClassGroup.from_dict(g) for g in self.groups]
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
        (on where nothing was recorded); never for a model trained under no flip (it has none to run)."""
        if len(self.flip_dims) < 2:
            return False
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
            out["guide"] = self.guide.to_dict()
        out["decision"] = self.decision.to_dict() if self.decision is not None else None
        out["groups"] = [g.to_dict() for g in self.groups] if self.groups is not None else None
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

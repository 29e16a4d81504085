"""Data fingerprint and training plan (the nnU-Net habit: inspect the data once, write readable choices).

``fingerprint(index)`` measures sizes, channels, intensities, foreground and class balance on a sample;
``make_plan(fp, task, mode)`` turns those facts into a :class:`Plan` through small rule functions, each with
its reason recorded in ``plan.notes`` so that ``plan.describe()`` and ``plan.json`` say why.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.augment import AUGMENT_DEFAULTS
from medlens.data.io import read_image
from medlens.data.layout import DatasetIndex, discover, load_target
from medlens.errors import ConfigError
from medlens.folders import RunRecord
from medlens.jsonable import write_json
from medlens.spec import Mode, Task

logger = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
SIZE_CAP = {"segmentation": 512, "classification": 384}
MIN_SIZE = 64
BASE_BATCH = {"segmentation": (16, 352), "classification": (32, 352)}  # batch size at a square side
_STATS_SIDE = 256  # intensity statistics are taken on images subsampled to about this side


# ------------------------------------------------------------------------------------------------ fingerprint
def _is_grey(arr: np.ndarray) -> bool:
    """True for one channel, or three channels that (almost, allowing JPEG noise) coincide."""
    if arr.shape[-1] == 1:
        return True
    a = arr.astype(np.int16)
    return bool(np.abs(a[..., 0] - a[..., 1]).mean() < 1.0 and np.abs(a[..., 0] - a[..., 2]).mean() < 1.0)


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if not arr.size:
        return {}
    return {
        "median": float(np.median(arr)),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
    }


def _foreground(index: DatasetIndex, target: np.ndarray) -> list[float]:
    """Per-class pixel fraction of one target (binary: [foreground]; multiclass: K; multilabel: K)."""
    if index.mode == Mode.MULTICLASS:
        k = max(len(index.classes), int(target.max()) + 1)
        counts = np.bincount(target.ravel(), minlength=k)  # codes >= K (merged classes) are not counted
        return (counts[: len(index.classes) or k] / target.size).tolist()
    if index.mode == Mode.MULTILABEL:
        return target.reshape(-1, target.shape[-1]).mean(axis=0).tolist()
    return [float(target.mean())]


def fingerprint(index: DatasetIndex, max_items: int = 500, seed: int = 0) -> dict[str, Any]:
    """Facts about the data set measured on up to ``max_items`` seeded random items.

    Keys: task, mode, n_items, n_sampled, classes, size {height, width: {median, min, max, mean}}, channels
    (stored), grey_fraction, intensity {mean, std} per stored channel on a 0..1 scale, modality ("xray-like"
    for grey images, "color-photo" otherwise), class_counts (classification: items per class; segmentation:
    CSV labels), and for segmentation foreground {fraction per class: summary, empty_fraction}.
    """
    rng = np.random.default_rng(seed)
    picks = sorted(
        rng.choice(len(index.items), size=min(max_items, len(index.items)), replace=False).tolist()
    )
    heights, widths, channels, greys, fg, empty = [], [], [], [], [], 0
    s1 = s2 = None
    n_pix = 0
    for pos in picks:
        item = index.items[pos]
        arr = read_image(item.image).array
        heights.append(arr.shape[0])
        widths.append(arr.shape[1])
        channels.append(arr.shape[-1])
        greys.append(_is_grey(arr))
        step = max(1, round(math.sqrt(arr.shape[0] * arr.shape[1]) / _STATS_SIDE))
        sub = arr[::step, ::step].reshape(-1, arr.shape[-1]).astype(np.float64) / 255.0
        sub = sub if sub.shape[1] == 3 else np.repeat(sub, 3, axis=1)
        s1 = sub.sum(0) if s1 is None else s1 + sub.sum(0)
        s2 = (sub**2).sum(0) if s2 is None else s2 + (sub**2).sum(0)
        n_pix += len(sub)
        if index.task == Task.SEGMENTATION:
            fractions = _foreground(index, load_target(item, index))
            fg.append(fractions)
            empty += int(sum(fractions[1:] if index.mode == Mode.MULTICLASS else fractions) == 0)
    mean = s1 / max(n_pix, 1)
    std = np.sqrt(np.maximum(s2 / max(n_pix, 1) - mean**2, 0.0))
    grey_fraction = float(np.mean(greys)) if greys else 0.0
    fp: dict[str, Any] = {
        "task": index.task,
        "mode": index.mode,
        "root": str(index.root),
        "n_items": len(index.items),
        "n_sampled": len(picks),
        "classes": list(index.classes),
        "size": {"height": _summary(heights), "width": _summary(widths)},
        "channels": int(np.bincount(channels).argmax()) if channels else 3,
        "grey_fraction": grey_fraction,
        "intensity": {"mean": [round(float(v), 5) for v in mean], "std": [round(float(v), 5) for v in std]},
        "modality": "xray-like" if grey_fraction >= 0.95 else "color-photo",
        "class_counts": index.label_counts(),
    }
    if index.task == Task.SEGMENTATION:
        per_class = np.asarray(fg, dtype=np.float64).reshape(len(fg), -1)
        names = index.classes if index.mode == Mode.MULTICLASS else index.classes[-per_class.shape[1] :]
        fp["foreground"] = {
            "fraction": {name: _summary(per_class[:, k].tolist()) for k, name in enumerate(names)},
            "empty_fraction": empty / max(len(fg), 1),
        }
    return fp


# ------------------------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """Training choices derived from a fingerprint (``plan.json``)."""

    task: str
    mode: str
    input_size: tuple[int, int]  # (H, W)
    in_channels: int
    num_classes: int  # model output channels: 1 for binary segmentation, else K
    batch_size: int
    mean: list[float]  # per input channel, 0..1 scale
    std: list[float]
    class_weights: list[float] | None
    loss: str
    augment: dict[str, Any]  # AugmentConfig fields
    classes: list[str]
    pos_weight: float | None = None  # binary segmentation: BCE positive weight for very small foreground
    modality: str = ""
    notes: list[str] = field(default_factory=list)  # why each choice was made

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            logger.warning("ignoring unknown plan keys %s", unknown)
        kw = {k: v for k, v in d.items() if k in names}
        kw["input_size"] = tuple(int(v) for v in kw.get("input_size", ()))
        return cls(**kw)

    def describe(self) -> str:
        """A short human-readable summary of the plan and the reasons behind it."""
        h, w = self.input_size
        lines = [
            f"{self.task} ({self.mode}), {len(self.classes)} classes: {', '.join(self.classes)}",
            f"input {h}x{w} x{self.in_channels} ch, batch {self.batch_size}, loss {self.loss}",
            f"normalise mean {[round(v, 3) for v in self.mean]} std {[round(v, 3) for v in self.std]}",
        ]
        if self.class_weights:
            lines.append(f"class weights {[round(v, 3) for v in self.class_weights]}")
        if self.pos_weight:
            lines.append(f"positive weight {self.pos_weight}")
        lines.append("augment " + ", ".join(f"{k}={v}" for k, v in self.augment.items()))
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)


def _round32(x: float) -> int:
    return max(MIN_SIZE, int(x) // 32 * 32)


def choose_input_size(fp: dict[str, Any], task: str) -> tuple[tuple[int, int], str]:
    """Median size rounded down to a multiple of 32, capped (512 seg / 384 cls), at least 64.

    Square (side from the geometric mean of the median height and width) unless the median aspect ratio
    exceeds 1.5, where the aspect is kept and the longer side is capped.
    """
    cap = SIZE_CAP[task]
    h, w = fp["size"]["height"]["median"], fp["size"]["width"]["median"]
    aspect = max(h, w) / max(min(h, w), 1)
    if aspect <= 1.5:
        side = min(cap, _round32(math.sqrt(h * w)))
        return (side, side), f"input {side}x{side}: median image {h:.0f}x{w:.0f} (HxW), square, cap {cap}"
    scale = min(1.0, cap / max(h, w))
    size = (_round32(h * scale), _round32(w * scale))
    return size, f"input {size[0]}x{size[1]}: median {h:.0f}x{w:.0f} is far from square (aspect {aspect:.2f})"


def choose_batch_size(input_size: tuple[int, int], task: str, n_items: int) -> tuple[int, str]:
    """Batch scaled by input area from 16 (seg) / 32 (cls) at 352x352, within [2, 64] and n_items // 2."""
    base, side = BASE_BATCH[task]
    bs = int(base * side * side / (input_size[0] * input_size[1]))
    bs = max(2, min(64, bs, max(2, n_items // 2)))
    return bs, f"batch {bs}: {base} at {side}x{side} scaled by input area"


def choose_channels_and_norm(fp: dict[str, Any]) -> tuple[int, list[float], list[float], str]:
    """1 channel with the data set mean/std for grey data; else 3 channels with ImageNet mean/std.

    Encoders are ImageNet-trained, so colour input keeps ImageNet statistics; grey input has no ImageNet
    counterpart and is normalised by its own statistics (the first conv is adapted to one channel).
    """
    if fp["modality"] == "xray-like":
        mean = float(np.mean(fp["intensity"]["mean"]))
        std = max(float(np.mean(fp["intensity"]["std"])), 1e-3)
        return 1, [round(mean, 4)], [round(std, 4)], "1 channel (grey images), data set mean/std"
    return 3, list(IMAGENET_MEAN), list(IMAGENET_STD), "3 channels (colour images), ImageNet mean/std"


def class_weights_inverse_sqrt(counts: list[int]) -> list[float]:
    """Weights proportional to 1/sqrt(frequency), scaled so that the average weight per item is 1."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    w = 1.0 / np.sqrt(n)
    w *= n.sum() / (w * n).sum()
    return [round(float(v), 4) for v in w]


def choose_pos_weight(fp: dict[str, Any]) -> tuple[float | None, str | None]:
    """BCE positive weight sqrt((1-f)/f), at most 10, when the median binary foreground f is under 5 %."""
    fractions = fp.get("foreground", {}).get("fraction", {})
    if len(fractions) != 1:
        return None, None
    f = next(iter(fractions.values())).get("median", 0.0)
    if f >= 0.05 or f <= 0:
        return None, None
    weight = round(min(10.0, math.sqrt((1 - f) / f)), 2)
    return weight, f"positive weight {weight}: median foreground is {100 * f:.2f} % of the image"


def choose_augment(fp: dict[str, Any], task: str) -> tuple[dict[str, Any], str]:
    """Augmentation (AugmentConfig fields) by modality, starting from the built-in defaults.

    Colour photos (dermoscopy, endoscopy: no fixed up/down) get vertical flips, any rotation and a little hue;
    grey radiograph-like images keep their anatomical orientation (no vertical flip, small rotation), no hue.
    """
    aug: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in AUGMENT_DEFAULTS.items()}
    if fp["modality"] == "xray-like":
        aug.update(rotate_deg=10.0, gamma=0.2, brightness=0.2, contrast=0.2)
        reason = "grey radiograph-like: no vertical flip, rotation 10, gamma, no hue"
    else:
        aug.update(vflip=0.5, rotate_deg=180.0, hue=0.02)
        reason = "colour photo (dermoscopy/endoscopy-like): vertical flip, any rotation, small hue"
    if task == Task.CLASSIFICATION:
        aug["scale"] = [0.8, 1.2]
    return aug, f"augment: {reason}"


def make_plan(fp: dict[str, Any], task: str, mode: str = "binary") -> Plan:
    """Turn a :func:`fingerprint` into a :class:`Plan` (rules: the ``choose_*`` functions of this module)."""
    if task not in SIZE_CAP:
        raise ConfigError(f"unknown task {task!r}; expected one of {sorted(SIZE_CAP)}")
    classes = list(fp.get("classes") or [])
    mode = "multiclass" if task == Task.CLASSIFICATION else mode
    size, size_note = choose_input_size(fp, task)
    batch, batch_note = choose_batch_size(size, task, int(fp["n_items"]))
    channels, mean, std, norm_note = choose_channels_and_norm(fp)
    augment, aug_note = choose_augment(fp, task)
    notes = [size_note, batch_note, norm_note, aug_note]
    class_weights, pos_weight = None, None
    if task == Task.CLASSIFICATION:
        counts = [int(fp.get("class_counts", {}).get(c, 0)) for c in classes]
        class_weights = class_weights_inverse_sqrt(counts) if classes else None
        notes.append(f"class weights 1/sqrt(frequency) from counts {counts}")
        num_classes, loss = len(classes), "ce"
    else:
        num_classes = 1 if mode == Mode.BINARY else len(classes)
        loss = "dice_ce"
        if mode == Mode.BINARY:
            pos_weight, note = choose_pos_weight(fp)
            notes += [note] if note else []
    return Plan(
        task,
        mode,
        size,
        channels,
        num_classes,
        batch,
        mean,
        std,
        class_weights,
        loss,
        augment,
        classes,
        pos_weight,
        fp.get("modality", ""),
        notes,
    )


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write the plan as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, plan.to_dict())
    return path


def load_plan(path: str | Path) -> Plan:
    """Read a plan JSON; ConfigError naming the file when it is unreadable or incomplete."""
    path = Path(path)
    try:
        return Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise ConfigError(f"cannot read plan {path}: {e}") from e


def plan_dataset(
    root: str | Path,
    task: str = "segmentation",
    mode: str = "binary",
    out: str | Path | None = None,
    **discover_kw,
) -> Plan:
    """Discover and check ``root``, fingerprint and plan it; ``out`` (a folder) gets plan/fingerprint.json."""
    index = discover(root, task=task, mode=mode, **discover_kw)
    fp = fingerprint(index)
    plan = make_plan(fp, task, index.mode)
    if out is not None:
        folder = RunRecord(out)  # the names a run folder gives these files
        folder.path.mkdir(parents=True, exist_ok=True)
        write_json(folder.fingerprint, fp)
        save_plan(plan, folder.plan)
    logger.info("plan for %s:\n%s", root, plan.describe())
    return plan

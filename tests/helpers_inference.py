"""Tiny hand-made run folders and bundles with random weights, for inference, pipeline and app tests.

``make_tiny_run(tmp_path, task="segmentation")`` writes a run folder in the documented layout
(model_spec.json, checkpoints/best.pt, config.yaml, val_metrics.json, metrics.csv, split.json, curves.png)
without training; ``make_tiny_bundle`` packages one with :func:`medlens.inference.packaging.make_bundle`;
``make_pipeline_bundles`` makes every bundle the shipped pipelines name.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
import yaml
from PIL import Image

SEG_CLASSES = ["background", "lesion"]
CLS_CLASSES = ["benign", "malignant"]
SKIN_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
CHEST_CLASSES = ["background", "left_lung", "right_lung", "heart"]  # the chest-anatomy bundle's labels
MODALITY_CLASSES = ["chest_xray", "dermoscopy", "endoscopy", "fundus", "other"]


def tiny_spec(task: str = "segmentation", input_size: int = 32, in_channels: int = 3, **overrides) -> dict:
    """A model_spec dict: binary unet/resnet18 segmentation or resnet18 classification at ``input_size``."""
    if task == "segmentation":
        spec = {
            "task": "segmentation",
            "mode": "binary",
            "arch": "unet",
            "encoder": "resnet18",
            "num_classes": 1,
            "classes": list(SEG_CLASSES),
        }
    elif task == "classification":
        spec = {
            "task": "classification",
            "mode": "multiclass",
            "arch": "resnet18",
            "encoder": None,
            "num_classes": len(CLS_CLASSES),
            "classes": list(CLS_CLASSES),
        }
    else:
        raise ValueError(f"unknown task {task!r}")
    spec.update(
        {
            "in_channels": in_channels,
            "input_size": [input_size, input_size],
            "mean": [0.45] * in_channels,
            "std": [0.25] * in_channels,
            "threshold": 0.5,
            "temperature": 1.0,
            "decision": None,
            "guide": None,
        }
    )
    spec.update(overrides)
    return spec


def _randomise_norm_stats(model: torch.nn.Module, seed: int) -> None:
    """Give BatchNorm layers non-trivial running statistics so that outputs are not saturated or constant."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1, generator=gen)
            module.running_var.uniform_(0.5, 2.0, generator=gen)


# Building a network and writing its weights dominate the cost of these helpers: every distinct request is
# made once per test process in a template folder and copied afterwards (tests may change their copies).
_TEMPLATES: dict[str, Path] = {}


def _template_dir() -> Path:
    if "root" not in _TEMPLATES:
        _TEMPLATES["root"] = Path(tempfile.mkdtemp(prefix="medlens-tiny-"))
        atexit.register(shutil.rmtree, _TEMPLATES["root"], ignore_errors=True)
    return _TEMPLATES["root"]


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tiny_checkpoint(task: str, spec: dict, seed: int) -> Path:
    """A cached ``best.pt`` with random weights for ``spec``."""
    from medlens.models.factory import create_model

    key = _key("ckpt", task, spec, seed)
    if key not in _TEMPLATES:
        torch.manual_seed(seed)
        model = create_model(
            task,
            arch=spec["arch"],
            encoder=spec["encoder"] or "resnet34",
            in_channels=spec["in_channels"],
            num_classes=spec["num_classes"],
        )
        _randomise_norm_stats(model.eval(), seed)
        path = _template_dir() / f"{key}.pt"
        torch.save({"model": model.state_dict(), "epoch": 2, "best_score": 0.5, "model_spec": spec}, path)
        _TEMPLATES[key] = path
    return _TEMPLATES[key]


def make_tiny_run(
    tmp_path: Path, task: str = "segmentation", name: str | None = None, seed: int = 0, **spec_overrides
) -> Path:
    """Write a run folder ``tmp_path/runs/<name>`` with random weights; returns its path."""
    spec = tiny_spec(task, **spec_overrides)
    run = Path(tmp_path) / "runs" / (name or f"tiny-{task[:3]}")
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_tiny_checkpoint(task, spec, seed), run / "checkpoints" / "best.pt")
    (run / "model_spec.json").write_text(json.dumps(spec, indent=2))
    config = {
        "data": {"root": "data/tiny", "task": task, "mode": spec["mode"]},
        "model": {"arch": spec["arch"], "encoder": spec["encoder"] or "resnet34", "pretrained": False},
        "epochs": 2,
        "seed": seed,
        "out_dir": str(run.parent),
        "run_name": run.name,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    score = "val_dice" if task == "segmentation" else "val_balanced_accuracy"
    (run / "metrics.csv").write_text(
        f"epoch,lr,train_loss,val_loss,{score}\n1,0.001,0.9,0.8,0.4\n2,0.0005,0.7,0.6,0.5\n"
    )
    metrics = (
        {"dice_mean": 0.5, "dice_ci_low": 0.4, "dice_ci_high": 0.6, "n_images": 4}
        if task == "segmentation"
        else {
            "balanced_accuracy": 0.5,
            "balanced_accuracy_ci_low": 0.3,
            "balanced_accuracy_ci_high": 0.7,
            "n_images": 4,
        }
    )
    (run / "val_metrics.json").write_text(json.dumps(metrics))
    Image.new("RGB", (8, 8), (255, 255, 255)).save(run / "curves.png")
    (run / "split.json").write_text(json.dumps({"train": ["a", "b", "c"], "val": ["d"], "test": []}))
    return run


def make_tiny_bundle(
    tmp_path: Path,
    task: str = "segmentation",
    name: str | None = None,
    fp16: bool = True,
    onnx: bool = False,
    **spec_overrides,
) -> Path:
    """A bundle ``tmp_path/models/<name>`` made from :func:`make_tiny_run` (which stays in ``tmp_path/runs``);
    ``onnx=True`` includes an exported ``model.onnx``. Returns the bundle path."""
    from medlens.inference.packaging import make_bundle

    name = name or ("tiny-seg" if task == "segmentation" else "tiny-cls")
    run = make_tiny_run(tmp_path, task, name=name, **spec_overrides)
    key = _key("bundle", task, name, fp16, onnx, spec_overrides)
    if key not in _TEMPLATES:
        template = make_bundle(run, _template_dir() / key / name, fp16=fp16)
        if onnx:
            from medlens.inference.export import export_onnx

            export_onnx(template)
        _TEMPLATES[key] = template
    target = Path(tmp_path) / "models" / name
    if target.exists():
        shutil.rmtree(target)
    return Path(shutil.copytree(_TEMPLATES[key], target))


def make_pipeline_bundles(root: Path, modality: bool = False) -> Path:
    """The bundle names the shipped pipelines use, as tiny random-weight bundles under ``root/models`` (small
    networks to keep tests fast), and the modality classifier ``modality`` when asked; returns the folder."""
    small = {"arch": "resnet10t"}
    for name in ("skin-seg", "polyp-seg"):
        make_tiny_bundle(root, "segmentation", name=name, encoder="mobilenet_v2")
    make_tiny_bundle(
        root, "segmentation", name="chest-anatomy", encoder="mobilenet_v2", mode="multiclass",
        num_classes=len(CHEST_CLASSES), classes=CHEST_CLASSES,
    )  # fmt: skip
    make_tiny_bundle(root, "classification", name="skin-cls", **small, classes=SKIN_CLASSES, num_classes=7)
    make_tiny_bundle(root, "classification", name="chest-xray-cls", **small, classes=["normal", "pneumonia"])
    if modality:
        make_tiny_bundle(root, "classification", name="modality", **small, classes=MODALITY_CLASSES,
                         num_classes=len(MODALITY_CLASSES))  # fmt: skip
    return Path(root) / "models"

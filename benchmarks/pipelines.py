"""Pipelines and models of the benchmark scripts: the shipped pipelines (``medlens/pipelines/*.yaml``) over a
private models folder, which holds copies of the bundles their YAMLs name or random-weight stand-ins of the
shipped architectures; int8 graphs per bundle; example images per pipeline (real ones from the shared data
sets, synthetic ones otherwise).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, SHARED_DATASETS, synthetic_grey_images, synthetic_skin_images

SKIN_BUNDLES = ("skin-seg", "skin-cls")
HAM10000_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
MAX_SIDE = 2048  # images are read reduced to this longer side, as the app decodes uploads (MAX_ANALYSIS_SIDE)


@dataclass(frozen=True)
class ImageSource:
    """Where a pipeline's example images come from: ``images/`` of shared data sets (spread evenly over
    those present), else synthetic ``"colour"`` or ``"grey"`` images."""

    datasets: tuple[str, ...]
    synthetic: str = "colour"


#: example images per shipped pipeline; a pipeline not named here gets synthetic colour images
IMAGE_SOURCES = {
    "skin": ImageSource(("ham10000",), "colour"),
    "polyp": ImageSource(("kvasir_seg",), "colour"),
    "chest-xray": ImageSource(("chestxray_pneumonia", "cxr_lungs_shenzhen"), "grey"),
}


# ------------------------------------------------------------------------------------------------ pipelines
def pipeline_names() -> list[str]:
    """Names of the shipped pipelines (their YAML file stems), sorted."""
    from medlens.pipelines.config import shipped_pipeline_files

    return sorted(Path(p).stem for p in shipped_pipeline_files())


def pipeline_config(name: str, scope: bool = False) -> Any:
    """The shipped pipeline ``name`` as its YAML defines it; ``scope=False`` switches the out-of-scope checks
    off so that every stage runs on every image."""
    from medlens.errors import UnknownNameError
    from medlens.pipelines.advice import ScopeConfig
    from medlens.pipelines.config import PipelineConfig, shipped_pipeline_files

    paths = {Path(p).stem: p for p in shipped_pipeline_files()}
    if name not in paths:
        raise UnknownNameError("pipeline", name, sorted(paths))
    config = PipelineConfig.from_yaml(paths[name])
    if not scope:
        config.scope = ScopeConfig(expect="any", modality_name=config.scope.modality_name)
    return config


def bundle_names(config: Any) -> list[str]:
    """The bundles a pipeline config names: its segmenter's and/or its classifier's."""
    return [part.bundle for part in (config.segmenter, config.classifier) if part is not None]


def check_bundle(config: Any) -> str | None:
    """The bundle of the pipeline's modality check, which a served pipeline runs before its models (None for a
    YAML without the check)."""
    return config.modality_check.bundle if config.modality_check is not None else None


def build_pipeline(name: str, models_dir: Path, runtime: str, scope: bool = False) -> Any:
    """The shipped pipeline ``name`` over the bundles in ``models_dir`` (see :func:`pipeline_config`)."""
    from medlens.pipelines.pipeline import Pipeline

    return Pipeline.from_config(pipeline_config(name, scope), models_dir, runtime=runtime)


def skin_pipeline(models_dir: Path, runtime: str, scope: bool = False) -> Any:
    """The shipped skin pipeline over ``models_dir`` (see :func:`build_pipeline`)."""
    return build_pipeline("skin", models_dir, runtime, scope)


def classifier_inputs(pipeline: Any, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """What the pipeline's classifier feeds its network for each image: the image itself, or with a guided
    classifier the guided input (crop and/or mask channel) it makes from the segmenter's mask, as in
    ``Pipeline.analyze`` (then `GuidedInputs`, which a predictor takes as they are)."""
    from medlens.inference.decisions import probs_to_mask

    if pipeline.guide_mode is None:
        return list(images)
    seg = pipeline.segmenter
    masks = [probs_to_mask(p, seg.spec.mode, seg.spec.threshold) for p in seg.predict_proba(list(images))]
    return pipeline.classifier.guided_inputs(list(images), masks)


# ------------------------------------------------------------------------------------------------ models
def shipped_bundles_present(models_dir: str | Path, names: Sequence[str] = SKIN_BUNDLES) -> bool:
    from medlens.inference.bundle import is_bundle

    return all(is_bundle(Path(models_dir) / n) for n in names)


def recipe_path(name: str) -> Path:
    """The training config of a shipped bundle: ``configs/cpu/<name>.yaml`` (how the shipped models were
    trained) when present, else ``configs/<name>.yaml``."""
    cpu = REPO / "configs" / "cpu" / f"{name}.yaml"
    return cpu if cpu.is_file() else REPO / "configs" / f"{name}.yaml"


def shipped_spec(name: str) -> dict[str, Any]:
    """The model spec of the shipped bundle ``name`` (``models/<name>/bundle.json`` of this repository:
    architecture, channels, classes, input size, TTA flips, guide), for a random-weight stand-in; for the
    skin bundles without it, the spec their training configs describe (:func:`skin_specs`)."""
    from medlens.folders import BundleFolder

    meta = BundleFolder(REPO / "models" / name).meta
    if meta.is_file():
        return dict(json.loads(meta.read_text())["spec"])
    if name in SKIN_BUNDLES:
        return skin_specs()[name]
    raise FileNotFoundError(f"{meta} is missing: no shipped spec to build a stand-in of {name!r} from")


def skin_specs() -> dict[str, dict[str, Any]]:
    """Model specs of the skin bundles as their training configs describe them (architecture, extra model
    kwargs, input size, ImageNet normalisation), for random-weight stand-ins."""
    import yaml

    seg_cfg = yaml.safe_load(recipe_path("skin-seg").read_text())
    cls_cfg = yaml.safe_load(recipe_path("skin-cls").read_text())
    common = {"in_channels": 3, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "threshold": 0.5,
              "temperature": 1.0, "decision": None, "guide": None}  # fmt: skip
    specs = {
        "skin-seg": {"task": "segmentation", "mode": "binary", "arch": seg_cfg["model"]["arch"],
                     "encoder": seg_cfg["model"]["encoder"], "num_classes": 1,
                     "classes": ["background", "lesion"], "input_size": list(seg_cfg["data"]["input_size"]),
                     **common},
        "skin-cls": {"task": "classification", "mode": "multiclass", "arch": cls_cfg["model"]["arch"],
                     "encoder": None, "num_classes": len(HAM10000_CLASSES), "classes": list(HAM10000_CLASSES),
                     "input_size": list(cls_cfg["data"]["input_size"]), **common},
    }  # fmt: skip
    for name, cfg in (("skin-seg", seg_cfg), ("skin-cls", cls_cfg)):
        if cfg["model"].get("kwargs"):
            specs[name]["model_kwargs"] = dict(cfg["model"]["kwargs"])
    return specs


def v2_specs() -> dict[str, dict[str, Any]]:
    """Model specs of the planned v2 skin bundles (issue "Shipped models v2"), for random-weight stand-ins:
    U-Net / EfficientNet-Lite0 (timm) at 256x256 with decoder_channels [128, 64, 32, 16, 16], and a timm
    tf_efficientnet_lite0 classifier at 168x224 (H x W)."""
    specs = skin_specs()
    specs["skin-seg"].update(encoder="tu-tf_efficientnet_lite0", input_size=[256, 256],
                             model_kwargs={"decoder_channels": [128, 64, 32, 16, 16]})  # fmt: skip
    specs["skin-cls"].update(arch="tf_efficientnet_lite0", input_size=[168, 224], model_kwargs={})
    return specs


def make_random_bundle(spec: dict[str, Any], out_dir: Path, seed: int = 0) -> Path:
    """A bundle at ``out_dir`` with random weights for ``spec`` (BatchNorm statistics randomised so that the
    outputs are not constant), made through a minimal run folder and :func:`make_bundle`."""
    import torch

    from medlens.folders import RunFolder
    from medlens.inference.bundle import build_from_spec
    from medlens.inference.packaging import make_bundle
    from medlens.spec import ModelSpec

    torch.manual_seed(seed)
    model = build_from_spec(ModelSpec.from_dict(spec)).eval()
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    run = RunFolder(out_dir.parent / f"_run-{out_dir.name}")
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    run.spec.write_text(json.dumps(spec, indent=2))
    torch.save({"model": model.state_dict(), "epoch": 0, "best_score": 0.0, "model_spec": spec}, run.best)
    bundle = make_bundle(run.path, out_dir, card="Random weights: a stand-in for timing benchmarks only.")
    shutil.rmtree(run.path, ignore_errors=True)
    return bundle


def prepare_models(names: Sequence[str], models_dir: str | Path, out: Path, tiny: bool) -> str:
    """Put the bundles ``names`` (one pipeline's) in ``out``: copies of those in ``models_dir`` when all are
    there and not ``tiny``, else random-weight stand-ins of the shipped architectures
    (:func:`shipped_spec`). Returns a description of what was used."""
    out.mkdir(parents=True, exist_ok=True)
    if not tiny and shipped_bundles_present(models_dir, names):
        for name in names:
            shutil.copytree(Path(models_dir) / name, out / name, dirs_exist_ok=True)
        return f"shipped bundles from {models_dir}/ ({', '.join(names)})"
    if not tiny:
        print(f"note: {models_dir}/ lacks some of {', '.join(names)}: using random-weight stand-ins (--tiny)")
    specs = {name: shipped_spec(name) for name in names}
    for name, spec in specs.items():
        make_random_bundle(spec, out / name)
    return (
        "random-weight stand-ins (--tiny) of the shipped architectures (models/*/bundle.json): "
        + _describe(specs)
    )


def prepare_pipeline(
    name: str, models_dir: str | Path, work_dir: Path, tiny: bool, v2: bool = False
) -> tuple[Path, str]:
    """A private models folder under ``work_dir`` holding pipeline ``name``'s bundles (:func:`prepare_models`;
    skin: :func:`prepare_skin_models`, ``v2`` its v2 stand-ins) and the bundle of its modality check
    (:func:`check_bundle`, prepared once for the pipelines of a run, which share it). Returns ``(folder,
    description)``."""
    from medlens.inference.bundle import is_bundle

    config = pipeline_config(name)
    if name == "skin":
        out, desc = prepare_skin_models(models_dir, work_dir, tiny, v2)
    else:
        out = work_dir / "models"
        desc = prepare_models(bundle_names(config), models_dir, out, tiny)
    check = check_bundle(config)
    if check is None:
        return out, desc
    if is_bundle(out / check):
        return out, f"{desc}; modality check: {check}, as for an earlier pipeline"
    return out, f"{desc}; modality check: {prepare_models([check], models_dir, out, tiny)}"


def prepare_skin_models(
    models_dir: str | Path, work_dir: Path, tiny: bool, v2: bool = False
) -> tuple[Path, str]:
    """A private models folder under ``work_dir`` holding skin-seg and skin-cls (:func:`prepare_models`), or
    random-weight stand-ins of the v2 architectures (:func:`v2_specs`) when ``v2``. Returns
    ``(folder, description)``."""
    out = work_dir / "models"
    if not v2:
        return out, prepare_models(SKIN_BUNDLES, models_dir, out, tiny)
    out.mkdir(parents=True, exist_ok=True)
    for name, spec in v2_specs().items():
        make_random_bundle(spec, out / name)
    return out, "random-weight STAND-INS of the v2 architectures (--v2-standins): " + _describe(v2_specs())


def _describe(specs: dict[str, dict[str, Any]]) -> str:
    parts = []
    for name, spec in specs.items():
        kw = (spec.get("model_kwargs") or {}).get("decoder_channels")
        arch = f"{spec['arch']}/{spec['encoder']}" if spec.get("encoder") else spec["arch"]
        size = "x".join(map(str, spec["input_size"]))
        guide = (spec.get("guide") or {}).get("mode")
        parts.append(f"{name} {arch} {size}" + (f" decoder_channels {list(kw)}" if kw else "")
                     + (f" guided ({guide})" if guide else ""))  # fmt: skip
    return "; ".join(parts)


def models_label(desc: str) -> str:
    """A short label of the models a run used, for section titles."""
    if "STAND-INS of the v2" in desc:
        return "v2 stand-ins, random weights"
    if "random-weight" in desc:
        return "random-weight stand-ins"
    return "shipped bundles" if desc.startswith("shipped bundles from models/") else desc.split(" (")[0]


# ------------------------------------------------------------------------------------------------ int8
def prepare_int8(
    models_dir: Path, calibration: Mapping[str, Sequence[np.ndarray]]
) -> dict[str, dict[str, Any]]:
    """An int8 graph in the cache (``$MEDLENS_HOME``) for each bundle named in ``calibration``. Bundles with a
    ``split.json`` whose data folders are here go through `medlens.evaluation.int8.quantize_model`
    (calibrated on training images, scored on the held-out split: accepted or not); random-weight stand-ins
    are calibrated on ``calibration[name]`` (the model's inputs) for timing only (``checked: False``).
    Returns a report per bundle, with its ``path``."""
    from medlens.errors import DatasetError
    from medlens.evaluation.int8 import quantize_model
    from medlens.inference.bundle import Bundle
    from medlens.inference.export import ensure_onnx, onnx_cache_dir
    from medlens.inference.predictor import preprocess
    from medlens.inference.quantize import INT8_FILE, quantize_onnx

    reports = {}
    for name, images in calibration.items():
        bundle = Bundle.load(models_dir / name)
        try:
            reports[name] = {**quantize_model(bundle), "checked": True}
            continue
        except DatasetError as exc:
            reason = str(exc)
        out = onnx_cache_dir(bundle) / INT8_FILE
        quantize_onnx(ensure_onnx(bundle), out, preprocess(list(images), bundle.spec).numpy())
        reports[name] = {"path": str(out), "checked": False, "accepted": None, "reason": reason}
    return reports


def use_int8(pipeline: Any, reports: Mapping[str, dict[str, Any]]) -> Any:
    """Point the pipeline's predictors at the int8 graphs of :func:`prepare_int8` (accepted or not)."""
    from medlens.inference.runtime import OnnxRunner

    config = pipeline.config
    for predictor, part in ((pipeline.segmenter, config.segmenter), (pipeline.classifier, config.classifier)):
        if predictor is not None:
            predictor.runner = OnnxRunner(reports[part.bundle]["path"], "cpu", predictor.threads)
            predictor.precision = "int8"
    return pipeline


# ------------------------------------------------------------------------------------------------ images
def pipeline_images(
    name: str, folder: str | Path | None, n: int, seed: int = 0
) -> tuple[list[np.ndarray], str]:
    """``n`` example images for pipeline ``name`` and a description: from ``folder`` when given, else from
    its shared data sets (:data:`IMAGE_SOURCES`, spread evenly over those present), else synthetic. Files are
    read with their own channels (grey stays grey), reduced to :data:`MAX_SIDE`, as the app reads uploads;
    the choice is seeded, so runs see the same images."""
    from medlens.data.io import read_image

    source = IMAGE_SOURCES.get(name, ImageSource(()))
    folders = [Path(folder)] if folder else [SHARED_DATASETS / d / "images" for d in source.datasets]
    picked = dataset_files(folders, n, seed)
    if picked:
        images = [read_image(p, max_side=MAX_SIDE).array for p in picked]
        counts = ", ".join(f"{sum(p.parent == f for p in picked)} from {f}" for f in folders if f.is_dir())
        return images, f"{len(images)} real images ({counts})"
    make = synthetic_grey_images if source.synthetic == "grey" else synthetic_skin_images
    images = make(n)
    h, w = images[0].shape[:2]
    kind = "chest-film-like grey" if source.synthetic == "grey" else "dermoscopy-like colour"
    return images, f"{n} synthetic {w}x{h} {kind} images (no example images found)"


def dataset_files(folders: Sequence[Path], n: int, seed: int = 0) -> list[Path]:
    """Up to ``n`` image files spread evenly over the ``folders`` that hold some (seeded choice)."""
    from medlens.data.io import IMAGE_EXTENSIONS

    lists = [
        sorted(p for p in f.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) for f in folders if f.is_dir()
    ]
    lists = [files for files in lists if files]
    rng, picked = np.random.default_rng(seed), []
    for i, files in enumerate(lists):
        k = min(len(files), n // len(lists) + (i < n % len(lists)))
        picked += [files[j] for j in sorted(rng.choice(len(files), k, replace=False))]
    return picked

"""Shared helpers of the benchmark scripts: machine description, models, example images, statistics and the
BENCHMARKS.md section writer.

Every benchmark compares its variants side by side in one process and reports ratios, because absolute
numbers move with whatever else the machine runs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATASETS = Path(os.environ.get("MEDLENS_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
SKIN_BUNDLES = ("skin-seg", "skin-cls")
HAM10000_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ------------------------------------------------------------------------------------------------ machine
@contextlib.contextmanager
def bench_workdir(prefix: str, work_dir: str | None, threads: int | None) -> Iterator[tuple[Path, float]]:
    """Common set-up of a benchmark run: logging, model threads (``MEDLENS_NUM_THREADS``), a temporary work
    folder whose ``home`` is ``MEDLENS_HOME`` (ONNX cache, history), and the load average before the run."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if threads:
        os.environ["MEDLENS_NUM_THREADS"] = str(threads)
    if work_dir:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=work_dir) as tmp:
        work = Path(tmp)
        os.environ["MEDLENS_HOME"] = str(work / "home")
        yield work, round(os.getloadavg()[0], 2)


def cpu_model() -> str:
    """CPU model name (``lscpu``, else ``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare numbers: CPU, cores, GPU, library versions, date."""
    import torch

    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:  # pragma: no cover - ORT is a dependency of medlens
        ort_version = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(terse=True),
    }


def machine_line(info: dict[str, Any]) -> str:
    gpu = info["gpu"] or "no GPU"
    return (
        f"{info['cpu']}, {info['cpu_count']} logical CPUs, {gpu}; Python {info['python']}, "
        f"torch {info['torch']}, ONNX Runtime {info['onnxruntime']}; {info['date']}"
    )


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command that reproduces a run, as one shell line."""
    import shlex

    return " ".join([".venv/bin/python", "-m", module, *map(shlex.quote, argv)])


# ------------------------------------------------------------------------------------------------ statistics
def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """``{n, mean, p50, p95, p99, min, max}`` of millisecond values (rounded to 0.1 ms)."""
    a = np.asarray(values_ms, dtype=np.float64)
    if a.size == 0:
        return {
            "n": 0,
            "mean": float("nan"),
            "p50": float("nan"),
            "p95": float("nan"),
            "p99": float("nan"),
            "min": float("nan"),
            "max": float("nan"),
        }
    q = np.percentile(a, [50, 95, 99])
    stats = {"mean": a.mean(), "p50": q[0], "p95": q[1], "p99": q[2], "min": a.min(), "max": a.max()}
    return {"n": int(a.size), **{k: round(float(v), 1) for k, v in stats.items()}}


def ratio(a: float, b: float) -> float | None:
    """``a / b`` rounded to 2 decimals (None when undefined)."""
    if not b or not np.isfinite(a) or not np.isfinite(b):
        return None
    return round(float(a) / float(b), 2)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ output
def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    from medlens.jsonable import write_json as write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write(path, data)


BENCH_HEADER = (
    "# medlens benchmarks\n\n"
    'Speed measurements written by the scripts in `benchmarks/` (issue "Speed"). Every figure below was '
    "measured by the command printed above it, on the machine and date stated; variants are compared side by "
    "side in one run, so the ratios are more telling than the absolute numbers (shared machines are noisy).\n"
)


def update_section(md_path: str | Path, key: str, body: str) -> Path:
    """Replace (or append) the section between ``<!-- bench:key -->`` and ``<!-- /bench:key -->`` in
    ``md_path``; the file is created with a short header when missing. Other sections are left alone."""
    md_path = Path(md_path)
    text = md_path.read_text() if md_path.is_file() else BENCH_HEADER
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    md_path.write_text(text if text.endswith("\n") else text + "\n")
    return md_path


# ------------------------------------------------------------------------------------------------ models
def shipped_bundles_present(models_dir: str | Path, names: Sequence[str] = SKIN_BUNDLES) -> bool:
    from medlens.inference.bundle import is_bundle

    return all(is_bundle(Path(models_dir) / n) for n in names)


def recipe_path(name: str) -> Path:
    """The training config of a shipped bundle: ``configs/cpu/<name>.yaml`` (how the shipped models were
    trained) when present, else ``configs/<name>.yaml``."""
    cpu = REPO / "configs" / "cpu" / f"{name}.yaml"
    return cpu if cpu.is_file() else REPO / "configs" / f"{name}.yaml"


def skin_specs() -> dict[str, dict[str, Any]]:
    """Model specs of the shipped skin bundles as their training configs describe them (architecture, extra
    model kwargs, input size, ImageNet normalisation), for random-weight stand-ins."""
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


def make_random_bundle(spec: dict[str, Any], out_dir: Path, seed: int = 0) -> Path:
    """A bundle at ``out_dir`` with random weights for ``spec`` (BatchNorm statistics randomised so that the
    outputs are not constant), made through a minimal run folder and :func:`make_bundle`."""
    import torch

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
    run = out_dir.parent / f"_run-{out_dir.name}"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "model_spec.json").write_text(json.dumps(spec, indent=2))
    torch.save(
        {"model": model.state_dict(), "epoch": 0, "best_score": 0.0, "model_spec": spec},
        run / "checkpoints" / "best.pt",
    )
    bundle = make_bundle(run, out_dir, card="Random weights: a stand-in for timing benchmarks only.")
    shutil.rmtree(run, ignore_errors=True)
    return bundle


def v2_specs() -> dict[str, dict[str, Any]]:
    """Model specs of the planned v2 skin bundles (issue "Shipped models v2"), for random-weight stand-ins:
    U-Net / EfficientNet-Lite0 (timm) at 256x256 with decoder_channels [128, 64, 32, 16, 16], and a timm
    tf_efficientnet_lite0 classifier at 168x224 (H x W)."""
    specs = skin_specs()
    specs["skin-seg"].update(encoder="tu-tf_efficientnet_lite0", input_size=[256, 256],
                             model_kwargs={"decoder_channels": [128, 64, 32, 16, 16]})  # fmt: skip
    specs["skin-cls"].update(arch="tf_efficientnet_lite0", input_size=[168, 224], model_kwargs={})
    return specs


def prepare_skin_models(
    models_dir: str | Path, work_dir: Path, tiny: bool, v2: bool = False
) -> tuple[Path, str]:
    """A private models folder under ``work_dir`` holding skin-seg and skin-cls: copies of the bundles in
    ``models_dir``, or random-weight stand-ins of the shipped architectures when ``tiny`` or when those are
    missing, or of the v2 architectures (:func:`v2_specs`) when ``v2``. Returns ``(folder, description)``."""
    out = work_dir / "models"
    out.mkdir(parents=True, exist_ok=True)
    if v2:
        for name, spec in v2_specs().items():
            make_random_bundle(spec, out / name)
        return out, "random-weight STAND-INS of the v2 architectures (--v2-standins): " + _describe(
            v2_specs()
        )
    if not tiny and shipped_bundles_present(models_dir):
        for name in SKIN_BUNDLES:
            shutil.copytree(Path(models_dir) / name, out / name, dirs_exist_ok=True)
        return out, f"shipped bundles from {models_dir}/ (skin-seg, skin-cls)"
    if not tiny:
        print(
            f"note: {models_dir}/ lacks the skin-seg/skin-cls bundles: using random-weight stand-ins (--tiny)"
        )
    for name, spec in skin_specs().items():
        make_random_bundle(spec, out / name)
    desc = (
        "random-weight stand-ins (--tiny) of the shipped architectures from "
        f"{recipe_path('skin-seg').relative_to(REPO).parent}/: " + _describe(skin_specs())
    )
    return out, desc


def _describe(specs: dict[str, dict[str, Any]]) -> str:
    parts = []
    for name, spec in specs.items():
        kw = spec.get("model_kwargs", {}).get("decoder_channels")
        arch = f"{spec['arch']}/{spec['encoder']}" if spec["encoder"] else spec["arch"]
        size = "x".join(map(str, spec["input_size"]))
        parts.append(f"{name} {arch} {size}" + (f" decoder_channels {list(kw)}" if kw else ""))
    return "; ".join(parts)


def models_label(desc: str) -> str:
    """A short label of the models a run used, for section titles."""
    if "STAND-INS of the v2" in desc:
        return "v2 stand-ins, random weights"
    if "random-weight" in desc:
        return "random-weight stand-ins"
    return "shipped bundles" if desc.startswith("shipped bundles from models/") else desc.split(" (")[0]


def prepare_int8(models_dir: Path, images: Sequence[np.ndarray]) -> dict[str, dict[str, Any]]:
    """An int8 graph per skin bundle in the cache (``$MEDLENS_HOME``). Bundles with a ``split.json`` whose
    data folders are here go through `medlens.evaluation.int8.quantize_model` (calibrated on training
    images, scored on the held-out split: accepted or not); random-weight stand-ins are calibrated on
    ``images`` for timing only (``checked: False``). Returns a report per bundle, with its ``path``."""
    from medlens.errors import DatasetError
    from medlens.evaluation.int8 import quantize_model
    from medlens.inference.bundle import Bundle
    from medlens.inference.export import ensure_onnx, onnx_cache_dir
    from medlens.inference.predictor import preprocess
    from medlens.inference.quantize import INT8_FILE, quantize_onnx

    reports = {}
    for name in SKIN_BUNDLES:
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


def use_int8(pipeline: Any, reports: dict[str, dict[str, Any]]) -> Any:
    """Point the pipeline's predictors at the int8 graphs of :func:`prepare_int8` (accepted or not)."""
    from medlens.inference.runtime import OnnxRunner

    for predictor, name in ((pipeline.segmenter, "skin-seg"), (pipeline.classifier, "skin-cls")):
        predictor.runner = OnnxRunner(reports[name]["path"], "cpu", predictor.threads)
        predictor.precision = "int8"
    return pipeline


def skin_pipeline(models_dir: Path, runtime: str, scope: bool = False) -> Any:
    """The shipped skin pipeline over ``models_dir``; ``scope=False`` switches the out-of-scope checks off so
    that every stage (segment, features, classify, Grad-CAM, advice) runs on every image."""
    from medlens.pipelines.advice import ScopeConfig
    from medlens.pipelines.pipeline import Pipeline, PipelineConfig, shipped_pipeline_files

    path = next(p for p in shipped_pipeline_files() if Path(p).stem == "skin")
    config = PipelineConfig.from_yaml(path)
    if not scope:
        config.scope = ScopeConfig(expect="any", modality_name=config.scope.modality_name)
    return Pipeline.from_config(config, models_dir, runtime=runtime)


# ------------------------------------------------------------------------------------------------ images
def example_images(folder: str | Path | None, n: int, seed: int = 0) -> tuple[list[Path], str]:
    """Up to ``n`` image files: from ``folder``, else HAM10000 dermoscopy images from the shared data sets;
    ``([], reason)`` when neither exists. The choice is seeded, so runs see the same images."""
    from medlens.data.io import IMAGE_EXTENSIONS

    candidates = (
        [Path(folder)]
        if folder
        else [SHARED_DATASETS / "ham10000" / "images", SHARED_DATASETS / "isic2017_seg" / "images"]
    )
    for c in candidates:
        if c.is_dir():
            files = sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if files:
                rng = np.random.default_rng(seed)
                picked = [files[i] for i in sorted(rng.choice(len(files), min(n, len(files)), replace=False))]
                return picked, f"{len(picked)} real images from {c}"
    return [], "no example images found"


def synthetic_skin_images(n: int, size: tuple[int, int] = (150, 200), seed: int = 0) -> list[np.ndarray]:
    """Dermoscopy-like HWC uint8 images (a darker brown blob on skin tone) for machines without the data."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        r = rng.uniform(0.15, 0.3) * min(h, w)
        blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2)))[..., None]
        skin = np.array([200, 150, 130], np.float32) + rng.normal(0, 8, (h, w, 3))
        lesion = np.array([90, 55, 40], np.float32)
        out.append(np.clip(skin * (1 - blob) + lesion * blob, 0, 255).astype(np.uint8))
    return out


def load_images(paths: Sequence[Path]) -> list[np.ndarray]:
    from medlens.data.io import load_image

    return [load_image(p, channels=3) for p in paths]


def ensure_repo_on_path() -> None:
    """Let ``python benchmarks/<script>.py`` import ``benchmarks.common`` like ``python -m`` does."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))

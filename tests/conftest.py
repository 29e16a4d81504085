"""Shared test fixtures. Tests never reach the network and never need pretrained weights."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MEDLENS_NUM_THREADS", "1")  # predictors: one torch / onnxruntime thread
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
if "MEDLENS_HOME" not in os.environ:  # ONNX exports cached on first use and histories stay out of ~/.medlens
    import atexit
    import shutil
    import tempfile

    os.environ["MEDLENS_HOME"] = tempfile.mkdtemp(prefix="medlens-test-home-")
    atexit.register(shutil.rmtree, os.environ["MEDLENS_HOME"], ignore_errors=True)

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(
    os.environ.get(
        "MEDLENS_SHARED_DATASETS", Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    )
)


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    # One thread: the tests use tiny tensors, and several torch processes (torchrun, a live server) share
    # the CI machine's two cores; oversubscribed OpenMP threads are many times slower there.
    torch.set_num_threads(1)
    os.environ.setdefault("MEDLENS_NUM_THREADS", "1")  # what the CLI and the app then configure


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of its own per test module for the tiny bundles below (they land in ``<folder>/models``)."""
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="module")
def seg_bundle(tiny_models: Path) -> Path:
    """A tiny segmentation bundle ``tiny-seg`` with random weights and an ONNX export, per test module."""
    from tests.helpers_inference import make_tiny_bundle

    return make_tiny_bundle(tiny_models, "segmentation", onnx=True)


@pytest.fixture(scope="module")
def cls_bundle(tiny_models: Path) -> Path:
    """A tiny classification bundle ``tiny-cls`` with random weights and no ONNX export, per test module."""
    from tests.helpers_inference import make_tiny_bundle

    return make_tiny_bundle(tiny_models, "classification")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real data sets beside the checkout (`../shared/datasets`); skips where absent."""
    if not (SHARED / "MANIFEST.md").exists():
        pytest.skip(f"real data sets not found at {SHARED} (set MEDLENS_SHARED_DATASETS)")
    return SHARED


def make_synthetic_segmentation(
    root: Path, n: int = 12, size: int = 48, seed: int = 0, rgb: bool = True
) -> Path:
    """Write a tiny binary segmentation data set: bright discs on a noisy background.

    Layout: ``root/images/{id}.png`` and ``root/masks/{id}.png`` (0/255), plus ``labels.csv`` with a
    group column.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = ["id,label,patient_id"]
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
        r = rng.integers(size // 8, size // 4)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r**2
        img = rng.normal(60, 20, size=(size, size)).clip(0, 255)
        img[mask] += 120
        img = img.clip(0, 255).astype(np.uint8)
        arr = np.stack([img, (img * 0.8).astype(np.uint8), (img * 0.6).astype(np.uint8)], -1) if rgb else img
        Image.fromarray(arr).save(root / "images" / f"case{i:03d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"case{i:03d}.png")
        rows.append(f"case{i:03d},{'large' if r > size // 6 else 'small'},p{i // 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def make_synthetic_classification(root: Path, n_per_class: int = 8, size: int = 40, seed: int = 0) -> Path:
    """Write a tiny two-class data set as class sub-folders: ``root/benign`` (dark), ``root/malignant``
    (bright)."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(["benign", "malignant"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            base = 70 + 110 * k
            img = rng.normal(base, 25, size=(size, size, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{name}_{i:03d}.png")
    return root


@pytest.fixture()
def synthetic_seg(tmp_path: Path) -> Path:
    return make_synthetic_segmentation(tmp_path / "seg")


@pytest.fixture()
def synthetic_cls(tmp_path: Path) -> Path:
    return make_synthetic_classification(tmp_path / "cls")

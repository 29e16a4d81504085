"""Shared helpers of the benchmark scripts: machine description, statistics, the BENCHMARKS.md section writer
and example images (pipelines and models: `benchmarks.pipelines`).

Every benchmark compares its variants side by side in one process and reports ratios, because absolute
numbers move with whatever else the machine runs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import platform
import re
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


def synthetic_grey_images(n: int, size: tuple[int, int] = (256, 256), seed: int = 0) -> list[np.ndarray]:
    """Chest-film-like ``(H, W, 1)`` uint8 images (two dark lung fields and a brighter heart shadow on a grey
    body) for machines without the data."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w] / np.array([h, w], np.float32)[:, None, None]

    def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return np.exp(-((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) ** 2))

    out = []
    for _ in range(n):
        j = rng.uniform(-0.03, 0.03, 4)
        lungs = ellipse(0.48 + j[0], 0.3 + j[1], 0.3, 0.13) + ellipse(0.48 + j[0], 0.7 + j[2], 0.3, 0.13)
        heart = ellipse(0.62 + j[3], 0.55, 0.13, 0.13)
        film = 170.0 - 110.0 * np.clip(lungs, 0, 1) + 40.0 * heart + rng.normal(0, 6, (h, w))
        out.append(np.clip(film, 0, 255).astype(np.uint8)[..., None])
    return out


def load_images(paths: Sequence[Path]) -> list[np.ndarray]:
    from medlens.data.io import load_image

    return [load_image(p, channels=3) for p in paths]


def ensure_repo_on_path() -> None:
    """Let ``python benchmarks/<script>.py`` import ``benchmarks.common`` like ``python -m`` does."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))

"""The run folder on disk: its name, JSON files and metrics.csv (docs/ARCHITECTURE.md, "Run folder")."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from medlens.config import TrainConfig
from medlens.errors import ConfigError, MedlensError
from medlens.spec import Task

LAST = Path("checkpoints") / "last.pt"
BEST = Path("checkpoints") / "best.pt"


def make_run_dir(cfg: TrainConfig, resume: bool) -> Path:
    """``<out_dir>/<run_name>``: must hold ``checkpoints/last.pt`` when resuming, and must not otherwise.

    ``run_name`` defaults to ``<data folder>-<arch>[-<encoder>]-<YYYYmmdd-HHMMSS>``. A folder left by a start
    that failed before the first epoch ended (no last.pt) is reused.
    """
    if resume:
        if not cfg.run_name:
            raise ConfigError("resume: run_name (the run folder) is required")
        run_dir = Path(cfg.out_dir) / cfg.run_name
        if not (run_dir / LAST).is_file():
            raise MedlensError(f"{run_dir}: no {LAST.as_posix()} to resume from")
        return run_dir
    parts = [Path(cfg.data.root).name or "data", cfg.model.arch]
    parts += [cfg.model.encoder] if cfg.data.task == Task.SEGMENTATION else []
    run_dir = Path(cfg.out_dir) / (
        cfg.run_name or "-".join([*parts, datetime.now().strftime("%Y%m%d-%H%M%S")])
    )
    if (run_dir / LAST).exists():
        raise ConfigError(
            f"{run_dir}: a run already exists there; resume it (--resume) or choose another name"
        )
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def write_metrics_csv(rows: list[dict[str, float]], path: Path) -> None:
    """One row per epoch; columns in first-seen order (validation columns appear on validated epochs)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)

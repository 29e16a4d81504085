"""Making a run folder (its name and checks; its layout is :class:`medlens.folders.RunFolder`) and writing
its metrics.csv."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from medlens.config import TrainConfig
from medlens.errors import ConfigError, MedlensError
from medlens.folders import RunFolder
from medlens.spec import Task


def make_run_dir(cfg: TrainConfig, resume: bool) -> RunFolder:
    """``<out_dir>/<run_name>``: must hold ``checkpoints/last.pt`` when resuming, and must not otherwise.

    ``run_name`` defaults to ``<data folder>-<arch>[-<encoder>]-<YYYYmmdd-HHMMSS>``. A folder left by a start
    that failed before the first epoch ended (no last.pt) is reused.
    """
    if resume:
        if not cfg.run_name:
            raise ConfigError("resume: run_name (the run folder) is required")
        folder = RunFolder(Path(cfg.out_dir) / cfg.run_name)
        if not folder.last.is_file():
            raise MedlensError(f"{folder.path}: no {RunFolder.LAST} to resume from")
        return folder
    parts = [Path(cfg.data.root).name or "data", cfg.model.arch]
    parts += [cfg.model.encoder] if cfg.data.task == Task.SEGMENTATION else []
    folder = RunFolder(
        Path(cfg.out_dir) / (cfg.run_name or "-".join([*parts, datetime.now().strftime("%Y%m%d-%H%M%S")]))
    )
    if folder.last.exists():
        raise ConfigError(
            f"{folder.path}: a run already exists there; resume it (--resume) or choose another name"
        )
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    return folder


def write_metrics_csv(rows: list[dict[str, float]], path: Path) -> None:
    """One row per epoch; columns in first-seen order (validation columns appear on validated epochs)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)

"""Evaluation on a model's own split, and evaluation figures recorded in a bundle.

``medlens evaluate BUNDLE --split test --record test`` scores the bundle on the test side of its
``split.json``, reading the data folders of its ``config.yaml``; ``--record NAME`` stores the summary in
``bundle.json`` under ``evaluations[NAME]``, copies the plots into ``plots/NAME_*.png`` and rewrites the model
card, so that the validation, test and external figures stand side by side.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from medlens.data.index import DatasetIndex
from medlens.errors import BundleError, DatasetError
from medlens.folders import BundleFolder, RunRecord
from medlens.inference.bundle import source_folder

logger = logging.getLogger(__name__)

SPLITS = ("val", "test")  # the sides a user evaluates on; "train" is read too (int8 calibration)
PLOTS = (
    "confusion_matrix.png",
    "roc.png",
    "reliability.png",
    "dice_distribution.png",
    "bland_altman_ctr.png",
)
# Per-image and per-case details stay in the report folder; the bundle keeps the summary.
_NOT_RECORDED = ("cases", "skipped", "model")


def split_index(
    model: str | Path, split: str, skip_bad: bool = False, roots: list[str | Path] | None = None
) -> DatasetIndex:
    """The items of side ``split`` of the model's ``split.json``, read as its ``config.yaml`` reads data.

    ``roots`` replace the config's data folders (``data.root`` then ``data.extra_roots``, in that order) when
    the data lives elsewhere than where the model was trained.
    """
    from medlens.config import load_config
    from medlens.data.sources import discover_all
    from medlens.data.splits import load_splits

    if split not in (*SPLITS, "train"):
        raise DatasetError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    record = RunRecord(source_folder(model))  # a bundle keeps its run's config and split
    folder = record.path
    for file in (record.config, record.split):
        if not file.is_file():
            raise DatasetError(
                f"{folder}: no {file.name}, so its {split} split is unknown; give a data folder"
            )
    ids = load_splits(record.split)[split]
    if not ids:
        raise DatasetError(f"{record.split}: the {split} split is empty")
    data = load_config(record.config).data
    if roots:
        data.root, data.extra_roots = str(roots[0]), [str(r) for r in roots[1:]]
    for root in [data.root, *data.extra_roots, *data.partial_roots]:
        if not Path(root).is_dir():
            raise DatasetError(
                f"data folder {root} of {record.config} not found (paths are relative to the working "
                "directory)"
            )
    data.skip_bad = data.skip_bad or skip_bad
    index = discover_all(data)
    known = set(index.ids)
    missing = [i for i in ids if i not in known]
    if missing:
        raise DatasetError(f"{len(missing)} {split} ids of {folder} are not in its data, e.g. {missing[:3]}")
    return index.subset(ids)


def recorded_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The part of an evaluation's metrics a bundle keeps."""
    summary = {k: v for k, v in metrics.items() if k not in _NOT_RECORDED}
    summary["n_skipped"] = len(metrics.get("skipped") or [])
    return summary


def record_evaluation(model: str | Path, name: str, metrics: dict[str, Any], report: Path) -> Path:
    """Store ``metrics`` (summary) and the plots of ``report`` in the bundle ``model`` as ``name``."""
    from medlens.inference.bundle import is_bundle
    from medlens.inference.packaging import read_bundle_meta, write_bundle_meta

    folder = source_folder(model)
    if not is_bundle(folder):
        raise BundleError(f"{model}: --record stores figures in a bundle; this is not one (medlens bundle)")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", name):
        raise BundleError(f"--record {name!r}: use letters, digits and _ . : - only")
    prefix = name.replace(":", "-")
    plots = BundleFolder(folder).plots
    plots.mkdir(exist_ok=True)
    for plot in PLOTS:
        if (report / plot).is_file():
            shutil.copyfile(report / plot, plots / f"{prefix}_{plot}")
    meta = read_bundle_meta(folder)
    meta.setdefault("evaluations", {})[name] = recorded_summary(metrics)
    write_bundle_meta(folder, meta)
    logger.info("recorded evaluation %r in %s", name, folder)
    return folder

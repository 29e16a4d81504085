"""Writing bundles: a training run folder packaged as a versioned, self-describing folder (format in
:mod:`medlens.inference.bundle`); the model card and ``bundle.json`` rewritten when figures are recorded."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
from pathlib import Path

import torch

from medlens.errors import BundleError
from medlens.folders import BundleFolder, RunFolder
from medlens.inference.bundle import (
    BUNDLE_FORMAT_VERSION,
    build_from_spec,
    clean_state_dict,
    is_bundle,
    load_weights_into,
    read_json,
    read_run,
    sha256_file,
)
from medlens.inference.card import write_model_card
from medlens.jsonable import write_json

logger = logging.getLogger(__name__)


def _storage_state(state: dict[str, torch.Tensor], fp16: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in clean_state_dict(state).items():
        value = value.detach().cpu()
        # Normalisation statistics keep fp32: a running variance near 1e-5 loses its precision in fp16.
        if fp16 and value.is_floating_point() and not key.endswith(("running_mean", "running_var")):
            value = value.half()
        out[key] = value.contiguous().clone()
    return out


def _training_summary(run: RunFolder, ckpt: dict) -> dict:
    import yaml

    config: dict = {}
    if run.config.is_file():
        config = yaml.safe_load(run.config.read_text()) or {}
    data = config.get("data") or {}
    splits = read_json(run.split) if run.split.is_file() else {}
    epochs = None
    if run.metrics_csv.is_file():
        epochs = max(0, len(run.metrics_csv.read_text().strip().splitlines()) - 1)
    lineage = read_json(run.lineage) if run.lineage.is_file() else None
    if lineage is not None:  # the epochs in these weights: the bundles it started from, then this run
        lineage["epochs_total"] = int(lineage.get("epochs_before") or 0) + int(epochs or 0)
    return {
        "run_name": run.path.name,
        "data_roots": [r for r in [data.get("root"), *(data.get("extra_roots") or [])] if r],
        "split_sizes": {k: len(v) for k, v in splits.items() if isinstance(v, list)},
        "epochs_trained": epochs,
        "best_epoch": ckpt.get("epoch"),
        "best_score": ckpt.get("best_score"),
        "config": config,
        **({"lineage": lineage} if lineage is not None else {}),
    }


def _copy_record(run: RunFolder, bundle: BundleFolder) -> None:
    """The run's record (config, plan, split, metrics, plots) into the bundle, when present."""
    for rel in RunFolder.COPIED:
        if (run.path / rel).is_file():
            shutil.copy2(run.path / rel, bundle.path / rel)
    if run.plots.is_dir():
        shutil.copytree(run.plots, bundle.plots, dirs_exist_ok=True)


def _prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir``; an older bundle there is replaced (its own files only), other content refused."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not is_bundle(out_dir):
            raise BundleError(
                f"{out_dir} exists, is not empty and is not a bundle; refusing to write into it"
            )
        try:
            old = json.loads(BundleFolder(out_dir).meta.read_text()).get("files") or {}
        except (OSError, json.JSONDecodeError, AttributeError):
            old = {}
        for rel in [*old, BundleFolder.ONNX, BundleFolder.META]:
            (out_dir / rel).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def write_bundle_meta(out_dir: Path, meta: dict) -> list[Path]:
    """(Re)write a bundle's model card and ``bundle.json`` with every file's sha256; returns the files."""
    bundle = BundleFolder(out_dir)
    write_model_card(bundle.card, meta, meta.get("card"))
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != bundle.META)
    meta["files"] = {p.relative_to(out_dir).as_posix(): sha256_file(p) for p in files}
    write_json(bundle.meta, meta)
    return files


def read_bundle_meta(path: str | Path) -> dict:
    """The raw ``bundle.json`` of a bundle folder."""
    return read_json(BundleFolder(path).meta)


def make_bundle(
    run_dir: str | Path,
    out_dir: str | Path,
    name: str | None = None,
    fp16: bool = True,
    card: dict | str | None = None,
) -> Path:
    """Package a training run folder as a bundle in ``out_dir`` (the bundle folder itself) and return it.

    ``name`` defaults to ``out_dir``'s folder name. ``card``: extra model-card content, either markdown
    appended as a section or a dict of section title -> markdown that replaces/extends the generated sections
    (keys such as ``"Intended use"``, ``"Limitations"``, ``"Description"``).
    """
    from safetensors.torch import save_file

    import medlens

    run, bundle = RunFolder(run_dir), BundleFolder(out_dir)
    spec, ckpt = read_run(run.path)
    name = name or bundle.path.name
    _prepare_out_dir(bundle.path)
    # Fail before writing anything when the checkpoint does not fit its spec.
    load_weights_into(build_from_spec(spec), ckpt["model"], run.best)
    save_file(
        _storage_state(ckpt["model"], fp16),
        str(bundle.weights),
        metadata={"format_version": str(BUNDLE_FORMAT_VERSION), "dtype": "float16" if fp16 else "float32"},
    )
    _copy_record(run, bundle)
    metrics = read_json(run.val_metrics) if run.val_metrics.is_file() else {}
    if isinstance(card, str) and card.strip():
        card = {"Notes": card.strip()}
    meta = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "name": name,
        "spec": spec.to_dict(),
        "metrics": metrics,
        "evaluations": {},
        "training": _training_summary(run, ckpt),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "medlens_version": medlens.__version__,
        "card": card or {},
    }
    files = write_bundle_meta(bundle.path, meta)
    logger.info("bundle %r written to %s (%d files)", name, bundle.path, len(files))
    return bundle.path

"""Model bundles: a versioned, self-describing folder that a predictor can load without any training code.

Layout (format version 2; version 1 bundles still load; the file names live in
:class:`medlens.folders.BundleFolder`)::

    <bundle>/
      bundle.json        {"format_version": 2, "name", "spec": ModelSpec, "metrics" (validation),
                          "evaluations": {split or data set: metrics at the images' own size},
                          "training", "created", "medlens_version", "files": {relative path: sha256}}
      model.safetensors  weights (parameters fp16 or fp32; loaded as fp32)
      README.md          model card: data, split, metrics + CIs, intended use, limitations, how to reproduce
      config.yaml plan.json fingerprint.json val_metrics.json metrics.csv curves.png plots/  (if present)
      model.onnx         optional, written by medlens.inference.export

Loading imports only ``medlens.models.factory`` and ``safetensors``: no ``medlens.training``, no network.
Writing a bundle from a run folder: :mod:`medlens.inference.packaging`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medlens.errors import BundleError
from medlens.folders import BundleFolder, RunFolder
from medlens.jsonable import write_json
from medlens.spec import ModelSpec, trained_flips

logger = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)  # 1: before the evaluations section and the typed spec's new fields
# Parameter prefixes left by DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _spec_with_flips(spec: dict, config: object) -> dict:
    """A spec written before ``tta_flips`` was recorded gets the flips of its training config's ``augment``
    section when that was kept (a model trained without flips must not be averaged over flipped views)."""
    augment = config.get("augment") if isinstance(config, dict) else None
    if isinstance(spec, dict) and spec.get("tta_flips") is None and isinstance(augment, dict):
        return {**spec, "tta_flips": trained_flips(augment)}
    return spec


def _run_spec(run_dir: Path, spec: dict, source: object) -> ModelSpec:
    """A run folder's spec, its test-time flips completed from the run's ``config.yaml`` when unrecorded."""
    import yaml

    try:
        config = yaml.safe_load(RunFolder(run_dir).config.read_text())
    except (OSError, yaml.YAMLError):
        config = None
    return ModelSpec.from_dict(_spec_with_flips(spec, config), source)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc


def build_from_spec(spec: ModelSpec) -> nn.Module:
    """Instantiate the (untrained) network a model spec describes, with no pretrained weights."""
    from medlens.models.factory import create_model

    return create_model(
        spec.task.value,
        arch=spec.arch,
        encoder=spec.encoder or "resnet34",
        in_channels=spec.in_channels,
        num_classes=spec.num_classes,
        pretrained=False,
        **spec.model_kwargs,
    )


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DDP / torch.compile prefixes from parameter names."""
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> nn.Module:
    try:
        model.load_state_dict(clean_state_dict(state), strict=True)
    except RuntimeError as exc:
        raise BundleError(f"weights in {source} do not fit the model its spec describes: {exc}") from exc
    return model.float().eval()


@dataclass
class Bundle:
    """A loaded bundle description; weights are read only by :meth:`build_model` (lazy)."""

    path: Path
    name: str
    spec: ModelSpec
    metrics: dict = field(default_factory=dict)  # validation figures (val_metrics.json)
    evaluations: dict = field(default_factory=dict)  # {"val" | "test" | "external:<name>": metrics}
    format_version: int = BUNDLE_FORMAT_VERSION
    training: dict = field(default_factory=dict)
    created: str = ""
    medlens_version: str = ""
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """Read ``bundle.json``; BundleError on a missing file, unknown format version or missing weights."""
        path = Path(path)
        meta_path = BundleFolder(path).meta
        if not meta_path.is_file():
            raise BundleError(f"{path} is not a medlens bundle: {BundleFolder.META} is missing")
        meta = read_json(meta_path)
        version = meta.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS:
            shown = "missing" if version is None else repr(version)
            raise BundleError(
                f"{meta_path}: format_version {shown} is not supported by this medlens "
                f"(it reads versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))}); re-create the bundle "
                "with `medlens bundle` or upgrade medlens"
            )
        if not isinstance(meta.get("spec"), dict):
            raise BundleError(f"{meta_path}: the 'spec' section is missing")
        if not BundleFolder(path).weights.is_file():
            raise BundleError(f"{path}: {BundleFolder.WEIGHTS} is missing")
        return cls(
            path=path,
            name=str(meta.get("name") or path.name),
            spec=ModelSpec.from_dict(
                _spec_with_flips(meta["spec"], (meta.get("training") or {}).get("config")), meta_path
            ),
            metrics=meta.get("metrics") or {},
            evaluations=meta.get("evaluations") or {},
            format_version=int(version),
            training=meta.get("training") or {},
            created=str(meta.get("created", "")),
            medlens_version=str(meta.get("medlens_version", "")),
            files=dict(meta.get("files") or {}),
        )

    @property
    def task(self) -> str:
        return self.spec.task.value

    @property
    def folder(self) -> BundleFolder:
        return BundleFolder(self.path)

    @property
    def weights_path(self) -> Path:
        return self.folder.weights

    @property
    def onnx_path(self) -> Path:
        return self.folder.onnx

    def verify(self) -> None:
        """Check the files listed in ``bundle.json`` against their sha256; BundleError names a bad one."""
        for rel, expected in self.files.items():
            file = self.path / rel
            if not file.is_file():
                raise BundleError(f"{self.path}: {rel} is listed in {BundleFolder.META} but missing")
            if sha256_file(file) != expected:
                raise BundleError(
                    f"{file}: sha256 does not match {BundleFolder.META} (file changed or corrupt)"
                )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights as fp32 tensors (fp16 storage is widened); checks the sha256 when recorded."""
        from safetensors.torch import load_file

        expected = self.files.get(BundleFolder.WEIGHTS)
        if expected and sha256_file(self.weights_path) != expected:
            raise BundleError(
                f"{self.weights_path}: sha256 does not match {BundleFolder.META} (file changed or corrupt)"
            )
        try:
            state = load_file(str(self.weights_path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise BundleError(f"cannot read {self.weights_path}: {exc}") from exc
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}

    def build_model(self) -> nn.Module:
        """The network in eval mode, fp32, weights loaded, on CPU."""
        return load_weights_into(build_from_spec(self.spec), self.state_dict(), self.weights_path)

    def register_file(self, rel: str) -> None:
        """Record (or refresh) the sha256 of a file added after creation, e.g. ``model.onnx``."""
        self.files[rel] = sha256_file(self.path / rel)
        meta = read_json(self.folder.meta)
        meta["files"] = self.files
        write_json(self.folder.meta, meta)


def is_bundle(path: str | Path | Bundle) -> bool:
    return isinstance(path, Bundle) or BundleFolder(path).is_bundle()


def is_run_folder(path: str | Path) -> bool:
    return RunFolder(path).is_run()


def list_bundles(models_dir: str | Path) -> list[Bundle]:
    """Bundles directly under ``models_dir`` (sorted by folder name); broken ones are logged and left out."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    found = []
    for sub in sorted(p for p in models_dir.iterdir() if p.is_dir() and is_bundle(p)):
        try:
            found.append(Bundle.load(sub))
        except BundleError as exc:
            logger.warning("skipping bundle: %s", exc)
    return found


def _read_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors come in many types
        raise BundleError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        return ckpt
    raise BundleError(f"{path}: expected a checkpoint dict with a 'model' state dict")


def read_run(run_dir: str | Path) -> tuple[ModelSpec, dict]:
    """``(spec, checkpoint)`` of a training run folder; BundleError naming the missing file."""
    run = RunFolder(run_dir)
    for rel in (run.SPEC, run.BEST):
        if not (run.path / rel).is_file():
            raise BundleError(f"{run.path} is not a medlens run folder: {rel} is missing")
    spec = _run_spec(run.path, read_json(run.spec), run.spec)
    return spec, _read_checkpoint(run.best)


def source_kind(source: str | Path | Bundle) -> str:
    """``"bundle"``, ``"run"`` (a run folder) or ``"checkpoint"`` (a ``.pt``/``.pth`` file in a run folder's
    ``checkpoints/``); BundleError naming what a model source must hold otherwise."""
    if isinstance(source, Bundle) or is_bundle(source):
        return "bundle"
    path = Path(source)
    if path.is_file() and path.suffix in (".pt", ".pth"):
        return "checkpoint"
    if path.is_dir() and RunFolder(path).spec.is_file():
        return "run"
    run = f"{RunFolder.SPEC} + {RunFolder.BEST}"
    raise BundleError(f"{path} is neither a bundle ({BundleFolder.META}) nor a run folder ({run})")


def _as_bundle(source: str | Path | Bundle) -> Bundle:
    return source if isinstance(source, Bundle) else Bundle.load(source)


def read_spec(source: str | Path | Bundle) -> ModelSpec:
    """The model spec of a bundle, run folder or checkpoint file, without loading any weights."""
    kind = source_kind(source)
    if kind == "bundle":
        return _as_bundle(source).spec
    path = Path(source)
    spec_file = RunFolder(path.parent.parent if kind == "checkpoint" else path).spec
    if spec_file.is_file():  # the run's final spec (with calibration and decisions) comes first
        return _run_spec(spec_file.parent, read_json(spec_file), spec_file)
    spec = _read_checkpoint(path).get("model_spec")
    if not spec:
        raise BundleError(f"{path}: no model_spec in the checkpoint and no {spec_file}")
    return _run_spec(path.parent.parent if kind == "checkpoint" else path, spec, path)


def load_model_source(source: str | Path | Bundle) -> tuple[nn.Module, ModelSpec]:
    """``(model in eval mode, spec)`` from a bundle, a run folder or a checkpoint file inside a run folder."""
    kind = source_kind(source)
    if kind == "bundle":
        bundle = _as_bundle(source)
        return bundle.build_model(), bundle.spec
    checkpoint = Path(source) if kind == "checkpoint" else RunFolder(source).best
    if not checkpoint.is_file():
        raise BundleError(f"{source} is not a medlens run folder: {RunFolder.BEST} is missing")
    spec = read_spec(source)
    return load_weights_into(build_from_spec(spec), _read_checkpoint(checkpoint)["model"], checkpoint), spec


def source_folder(source: str | Path | Bundle) -> Path:
    """The bundle or run folder of a model source (a checkpoint file's run folder)."""
    if isinstance(source, Bundle):
        return source.path
    return Path(source).parent.parent if source_kind(source) == "checkpoint" else Path(source)


def weights_file(source: str | Path | Bundle) -> Path:
    """The file holding a source's weights: the bundle's safetensors, the checkpoint file given, or a run
    folder's ``checkpoints/best.pt``."""
    kind = source_kind(source)
    if kind == "bundle":
        return _as_bundle(source).weights_path
    return Path(source) if kind == "checkpoint" else RunFolder(source).best


def source_name(source: str | Path | Bundle) -> str:
    """A display name for a model source: the bundle name or the run folder name."""
    return _as_bundle(source).name if source_kind(source) == "bundle" else source_folder(source).name

"""Pipeline mode of batch prediction (`medlens.pipelines.batch`): what analyses the images — a pipeline by
name, a pipeline YAML, or ``auto`` (each image the pipeline of its modality, `medlens.pipelines.routing`) —
and what is written for each image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError, UnknownNameError
from medlens.jsonable import write_json
from medlens.pipelines.analysis import Analysis
from medlens.pipelines.routing import AUTO, ModalityRouter

Analyser = Callable[[Sequence[Any], "bool | None"], list[Analysis]]
"""(images or ``ImageRecord`` s, tta) -> one `Analysis` each, in order."""


def load_analyser(model: str | Path, models_dir: str | Path, runtime: str, batch_size: int, precision: str
                  ) -> Analyser:  # fmt: skip
    """The analyser of ``model``: ``auto`` (every pipeline of ``models_dir`` and their shared modality
    classifier; `MedlensError` without it), a pipeline YAML, or a pipeline by name among the shipped and
    ``<models_dir>/pipelines`` ones (only its bundles are loaded)."""
    from medlens.pipelines.pipeline import Pipeline, PipelineConfig, load_pipeline_configs, load_pipelines

    if str(model) == AUTO:
        pipelines = load_pipelines(models_dir, runtime, precision=precision)
        router = ModalityRouter.from_pipelines(pipelines)
        if router is None:
            raise MedlensError(
                f"'auto' needs the modality classifier, and no pipeline in {Path(models_dir).resolve()} has "
                "one (bundle 'modality', trained by configs/cpu/modality.yaml); name a pipeline instead: "
                f"{', '.join(load_pipeline_configs(models_dir))}"
            )
        for pipeline in pipelines.values():
            _batch_sizes(pipeline, batch_size)
        return lambda images, tta: router.analyze_batch(pipelines, images, gradcam=True, tta=tta)
    path = Path(model)
    if path.suffix.lower() in (".yaml", ".yml"):
        if not path.is_file():
            raise MedlensError(f"pipeline file {path} does not exist")
        config = PipelineConfig.from_yaml(path)
    else:
        configs = load_pipeline_configs(models_dir)
        if str(model) not in configs:
            kind = "model (run folder, bundle, pipeline name, pipeline YAML or auto)"
            raise UnknownNameError(kind, str(model), [*configs, AUTO])
        config = configs[str(model)]
    pipeline = Pipeline.from_config(config, models_dir, runtime, precision=precision)
    _batch_sizes(pipeline, batch_size)
    return lambda images, tta: pipeline.analyze_batch(images, gradcam=True, tta=tta)


def _batch_sizes(pipeline: Any, batch_size: int) -> None:
    for predictor in (pipeline.segmenter, pipeline.classifier):
        if predictor is not None:  # the classifier sees 3 TTA views per image
            predictor.batch_size = batch_size * (3 if predictor is pipeline.classifier else 1)


def write_analysis(analysis: Analysis, stem: str, source: Path, out: Path) -> dict[str, Any]:
    """Write ``<stem>.json`` and the mask, overlay and Grad-CAM PNGs of one analysis into ``out``; returns
    its row of the summary (`Analysis.csv_row`: the pipeline that analysed it, the modality seen, the result,
    the reading and findings; then the files). The JSON is `Analysis.to_dict` plus its ``classification`` as
    the REST API gives it (`Analysis.classification`): a refused image's raw probabilities are marked
    ``reading`` false there, as in the API."""
    files = {}
    for key, png in (
        ("mask", analysis.mask_png()),
        ("overlay", analysis.overlay_png()),
        ("gradcam", analysis.gradcam_png()),
    ):
        if png is not None:
            (out / f"{stem}_{key}.png").write_bytes(png)
            files[key] = f"{stem}_{key}.png"
    summary = {**analysis.to_dict(), "classification": analysis.classification}
    write_json(out / f"{stem}.json", {**summary, "source": str(source), "files": files})
    return {**analysis.csv_row(), **files, "json": f"{stem}.json"}

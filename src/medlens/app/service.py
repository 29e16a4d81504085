"""The service layer that the REST API and the Gradio UI share: bytes in, stored analysis out.

``AnalysisService.analyze_bytes`` decodes an upload (type sniffed from content by ``read_image``), runs it on
a free replica of the pipeline (:class:`~medlens.app.pool.PipelinePool`: up to ``workers`` analyses of one
pipeline at once, since Grad-CAM hooks make a pipeline unsafe to share between threads), and stores the
de-identified pixels, mask, overlay, Grad-CAM and result in the
:class:`~medlens.app.store.HistoryStore`. It is synchronous and blocking: the API calls it through
``run_in_threadpool``, Gradio runs it in its workers. :meth:`AnalysisService.start_warm_up` runs every
replica once on a synthetic image in the background; :attr:`AnalysisService.ready` turns true after it.

``pipeline="auto"`` (when the pipelines share a modality classifier, `medlens.pipelines.routing`) runs that
classifier on the image and hands it to the pipeline of its modality; an image no pipeline takes is stored as
a refused analysis of pipeline ``auto`` (out of scope, no class), as other out-of-scope results are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from medlens.app.pool import PipelinePool, serving_plan
from medlens.app.security import declared_size
from medlens.app.store import HistoryStore, make_thumbnail
from medlens.errors import InternalError, MedlensError, UnknownNameError
from medlens.jsonable import to_jsonable
from medlens.pipelines.config import DEFAULT_TTA
from medlens.pipelines.routing import AUTO, ModalityRouter

logger = logging.getLogger(__name__)

PIPELINE_ORDER = ("skin", "polyp", "chest-xray")
MAX_ANALYSIS_SIDE = 2048  # larger uploads are decoded reduced to this longer side (bounded memory and time)
_ARRAY_FIELDS = {"mask", "overlay", "gradcam"}


class NoPipelineError(MedlensError):
    """No pipeline is loaded (the models folder holds no bundles)."""


def analysis_result(analysis: Any) -> dict[str, Any]:
    """The JSON-safe result of an ``Analysis`` (no arrays): its ``to_dict()`` plus the contract fields."""
    base = analysis.to_dict() if hasattr(analysis, "to_dict") else {}
    if is_dataclass(analysis):
        base.update(
            {f.name: getattr(analysis, f.name) for f in fields(analysis) if f.name not in _ARRAY_FIELDS}
        )
    for name in _ARRAY_FIELDS:
        base.pop(name, None)
    base["probabilities"] = {str(k): float(v) for k, v in (analysis.probabilities or {}).items()}
    return to_jsonable(base)


def discover_bundles(models_dir: str | Path | None) -> list[dict[str, Any]]:
    """Bundles under ``models_dir`` (``list_bundles``; weights are not loaded) as ``{"name", "folder", "task",
    "classes", "input_size", "metrics", "evaluations", "created", "version", "path", "plots"}``; ``plots``
    maps plot file names to paths (see :func:`medlens.app.dashboard.bundle_plots`)."""
    if models_dir is None or not Path(models_dir).is_dir():
        return []
    from medlens.app.dashboard import bundle_plots
    from medlens.inference.bundle import list_bundles

    infos = []
    for bundle in list_bundles(models_dir):
        spec = bundle.spec
        infos.append(
            {
                "name": bundle.name,
                "folder": bundle.path.name,
                "task": spec.task.value,
                "classes": spec.classes,
                "input_size": list(spec.input_size),
                "metrics": to_jsonable(bundle.metrics),
                "evaluations": to_jsonable(bundle.evaluations),
                "created": bundle.created or None,
                "version": bundle.medlens_version or None,
                "path": bundle.path,
                "plots": bundle_plots(bundle.path),
            }
        )
    return infos


class AnalysisService:
    """Analyse uploads with the loaded pipelines and keep the history.

    Args:
        pipelines: name -> object with ``analyze(image, clahe=..., gradcam=...) -> Analysis`` (``Pipeline``).
        store: the history store.
        models_dir: folder of bundles, for :meth:`models` and the dashboard.
        max_pixels: decompression-bomb limit handed to ``read_image`` (None = its default).
        max_side: larger images are decoded reduced to this longer side (see ``read_image``).
        workers: replicas per pipeline (analyses at once); default :func:`~medlens.app.pool.serving_plan`.
        router: what ``pipeline="auto"`` uses; default the pipelines' shared modality classifier
            (:meth:`ModalityRouter.from_pipelines`; None, and no ``auto``, when they have none).
    """

    def __init__(
        self,
        pipelines: Mapping[str, Any],
        store: HistoryStore,
        models_dir: str | Path | None = None,
        max_pixels: int | None = None,
        max_side: int = MAX_ANALYSIS_SIDE,
        workers: int | None = None,
        router: ModalityRouter | None = None,
    ) -> None:
        self.pipelines = dict(pipelines)
        self.router = router or ModalityRouter.from_pipelines(self.pipelines)
        self.max_side = max_side
        self.store = store
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.max_pixels = max_pixels
        self.delete_hooks: list[Callable[[str], None]] = []  # e.g. the UI removing its copies of the files
        size = workers or serving_plan().workers
        self.pools = {name: PipelinePool(p, size) for name, p in self.pipelines.items()}
        self._slots = threading.BoundedSemaphore(size)  # analyses at once, all pipelines together
        self.bundles = discover_bundles(self.models_dir)
        self._ready = threading.Event()
        self.warm_up_ms: dict[str, float] = {}
        if not any(callable(getattr(p, "warm_up", None)) for p in self.pipelines.values()):
            self._ready.set()  # nothing to warm up

    @property
    def ready(self) -> bool:
        """Whether start-up is over: every pipeline replica has run once (:meth:`start_warm_up`)."""
        return self._ready.is_set()

    def start_warm_up(self) -> threading.Thread | None:
        """Warm every pipeline's replicas up in a background thread; :attr:`ready` turns true when done
        (also when a warm-up fails: that is logged, and the requests then report the error)."""
        if self.ready:
            return None

        def run() -> None:
            try:
                for name, pool in self.pools.items():
                    self.warm_up_ms[name] = round(pool.warm_up(), 1)
                    logger.info("pipeline %s: %d replica(s) warm in %.0f ms", name, pool.size,
                                self.warm_up_ms[name])  # fmt: skip
            except Exception:  # a broken model must not keep the server from starting
                logger.exception("warm-up failed")
            finally:
                self._ready.set()

        thread = threading.Thread(target=run, name="medlens-warm-up", daemon=True)
        thread.start()
        return thread

    def skip_warm_up(self) -> None:
        """Declare the service ready without warming up (first requests then pay the first-call costs)."""
        self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until :attr:`ready` (or ``timeout`` seconds); returns :attr:`ready`."""
        return self._ready.wait(timeout)

    @property
    def pipeline_names(self) -> list[str]:
        """Loaded pipeline names, the shipped ones first."""
        known = [n for n in PIPELINE_ORDER if n in self.pipelines]
        return known + sorted(n for n in self.pipelines if n not in PIPELINE_ORDER)

    @property
    def choices(self) -> list[str]:
        """What a request may name: ``auto`` first when there is a router, then :attr:`pipeline_names`."""
        return ([AUTO] if self.router is not None else []) + self.pipeline_names

    def resolve_pipeline(self, name: str | None) -> str:
        """``name`` if loaded (or ``auto`` with a router); if ``name`` is empty the first of :attr:`choices`
        (``auto`` when there is a router, as in the web app: an image no model is made for is refused);
        UnknownNameError otherwise, MedlensError for ``auto`` without a modality classifier."""
        if not self.pipelines:
            where = self.models_dir if self.models_dir is not None else "the models folder"
            raise NoPipelineError(f"no pipeline is available: {where} holds no usable bundles")
        if not name:
            return self.choices[0]
        if name == AUTO and self.router is None:
            raise MedlensError(
                "pipeline 'auto' needs the modality classifier (bundle 'modality' in the models folder), "
                f"which is not loaded; choose one of: {', '.join(self.pipeline_names)}"
            )
        if name not in self.choices:
            raise UnknownNameError("pipeline", name, self.choices)
        return name

    def _run(self, name: str, image: Any, clahe: bool, gradcam: bool, tta: bool | None) -> tuple[Any, float]:
        """``(analysis, ms waited for a replica)`` of a decoded image by pipeline ``name`` or ``auto``."""
        with self._slots:
            seen, t0 = None, time.perf_counter()
            if name == AUTO:
                seen = self.router.classify([image])[0]
                name = self.router.pipeline_for(seen) or AUTO
            t1 = time.perf_counter()
            if name == AUTO:
                return self.router.refusal(image, seen, (t1 - t0) * 1e3), 0.0
            given = {"modality": seen} if seen is not None else {}  # test doubles take no modality
            with self.pools[name].acquire() as pipe:
                wait = (time.perf_counter() - t1) * 1e3
                analysis = pipe.analyze(image, clahe=clahe, gradcam=gradcam, tta=tta, **given)
        if seen is not None:  # the classifier ran here, not in the pipeline
            analysis.timings_ms["modality"] = round((t1 - t0) * 1e3, 2)
        return analysis, wait

    def analyze_bytes(
        self,
        data: bytes,
        pipeline: str | None = None,
        clahe: bool = False,
        gradcam: bool = True,
        tta: bool | None = DEFAULT_TTA,
        file_name: str | None = None,
    ) -> dict[str, Any]:
        """Decode ``data``, analyse it with ``pipeline`` and store it; returns the stored record.
        ``file_name``: what errors call the upload (`medlens.app.security.upload_name`; never stored).

        Images larger than ``max_side`` are decoded reduced: ``result["original_size"]`` keeps the upload's
        size and ``result["input_notes"]`` says so (as it says that a transparent image was flattened).
        Raises ImageTooLargeError (more than ``max_pixels``, from the header, before decoding), ImageReadError
        (unreadable, unknown type, DICOM without pixels), UnknownNameError (pipeline), NoPipelineError.
        """
        from medlens.data.io import read_image  # imported here: keeps `import medlens.app` light

        name = self.resolve_pipeline(pipeline)
        t0 = time.perf_counter()
        declared_size(data, self.max_pixels, file_name)  # ImageTooLargeError before any decoding
        image = read_image(data, max_pixels=self.max_pixels, max_side=self.max_side, name=file_name)
        t1 = time.perf_counter()
        try:
            analysis, wait_ms = self._run(name, image, clahe, gradcam, tta)
        except MedlensError as exc:  # the image was read: a failure now is medlens's, not the input's
            raise InternalError(f"pipeline {name!r} failed on a readable image: {exc}") from exc
        t2 = time.perf_counter()
        result = analysis_result(analysis)
        result["auto"] = name == AUTO
        name = analysis.pipeline if name == AUTO else name  # the pipeline auto chose (auto: none took it)
        result["pipeline"] = name
        result["clahe"] = bool(clahe)
        result["tta"] = bool(analysis.tta)
        result["timings_ms"] = {
            "decode": round((t1 - t0) * 1000, 1),
            **{k: round(float(v), 1) for k, v in (analysis.timings_ms or {}).items()},
            "wait": round(wait_ms, 1),
            "analysis": round((t2 - t1) * 1000, 1),
        }
        record = self.store.add(
            pipeline=name,
            label=analysis.label,
            probabilities=result["probabilities"],
            features=result.get("features") or {},
            result=result,
            pictures={
                "image": image.array,  # pixels only: never the DICOM header, never the client's file name
                "mask": analysis.mask_image(),  # valued as result["mask_values"] says
                "overlay": analysis.overlay,
                "gradcam": analysis.gradcam,
                # the history's thumbnail: the overlay's, but a refused image's shows no segmentation
                "thumb": make_thumbnail(image.array) if analysis.out_of_scope else None,
            },
            source_format=image.source_format,
        )
        total = (time.perf_counter() - t0) * 1000
        logger.info("analysis %s: pipeline %s, label %s, %.0f ms", record["id"], name, analysis.label, total)
        return record

    # ------------------------------------------------------------------------------------------ history
    def get(self, analysis_id: str) -> dict[str, Any] | None:
        return self.store.get(analysis_id)

    def list(
        self,
        page: int = 1,
        page_size: int = 20,
        pipeline: str | None = None,
        label: str | None = None,
        out_of_scope: bool | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """(records of the page, total) newest first; see :meth:`HistoryStore.list`."""
        return self.store.list(page, page_size, pipeline, label, out_of_scope)

    def delete(self, analysis_id: str) -> bool:
        """Delete a stored analysis, then call :attr:`delete_hooks` with its id; False when there is none."""
        if not self.store.delete(analysis_id):
            return False
        for hook in self.delete_hooks:
            hook(analysis_id)
        return True

    def file_path(self, analysis_id: str, kind: str) -> Path | None:
        return self.store.file_path(analysis_id, kind)

    # ------------------------------------------------------------------------------------------ models
    def models(self) -> dict[str, Any]:
        """``{"pipelines": [...], "bundles": [...], "auto": ...}`` with each bundle's validation metrics
        (JSON-safe); ``auto``: the router's bundle and routes, None without one."""
        pipelines = []
        for name in self.pipeline_names:
            p = self.pipelines[name]
            info = p.info() if callable(getattr(p, "info", None)) else {}
            described = info.get("description", getattr(p, "description", ""))
            pipelines.append(to_jsonable({**info, "name": name, "description": described or ""}))
        bundles = [
            {**{k: v for k, v in b.items() if k not in ("path", "plots")}, "plots": sorted(b["plots"])}
            for b in self.bundles
        ]
        auto = self.router.info() if self.router is not None else None
        return {"pipelines": pipelines, "bundles": bundles, "auto": auto}

    def plot_path(self, bundle: str, plot: str) -> Path | None:
        """A bundle's evaluation plot (``dashboard.bundle_plots``) if present; names, never client paths."""
        for info in self.bundles:
            if bundle in (info["name"], info["folder"]) and plot in info["plots"]:
                return info["plots"][plot] if info["plots"][plot].is_file() else None
        return None

    # ------------------------------------------------------------------------------------------ views
    @staticmethod
    def to_view(record: Mapping[str, Any], base: str = "/api/v1") -> dict[str, Any]:
        """The API's JSON for a stored record (see :func:`medlens.app.views.analysis_view`)."""
        from medlens.app.views import analysis_view

        return analysis_view(record, base)

    def close(self) -> None:
        self.store.close()

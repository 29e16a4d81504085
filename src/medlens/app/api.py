"""REST API (FastAPI) under ``/api/v1`` with the Gradio UI mounted at ``/``; OpenAPI docs at ``/docs``.

``create_app`` wires one :class:`~medlens.app.service.AnalysisService` (pipelines + history store) into
both the routes and the UI. Inference runs in the threadpool, never on the event loop. Stored pictures are
reached only through analysis ids, never through paths a client sends.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

import medlens
from medlens.app import security
from medlens.app.pool import serving_plan
from medlens.app.service import AnalysisService, NoPipelineError
from medlens.app.store import HistoryStore
from medlens.errors import ConfigError, ImageReadError, MedlensError, UnknownNameError

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
PictureKind = Literal["image", "mask", "overlay", "gradcam", "thumbnail"]
_PIXEL_LIMIT_WORDS = ("exceeds the limit", "too many pixels", "too large", "decompression bomb", "max_pixels")


def load_pipelines_safely(models_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """``load_pipelines(models_dir, **kwargs)``, or {} with a warning when the folder has no usable bundle."""
    from medlens.pipelines.pipeline import load_pipelines

    try:
        return dict(load_pipelines(models_dir, **kwargs))
    except (MedlensError, OSError) as exc:
        logger.warning("no pipelines loaded from %s: %s", models_dir, exc)
        return {}


def pixel_limit_from(max_pixels: int | None = None) -> int:
    """Decompression-bomb limit: the argument, else ``MEDLENS_MAX_PIXELS``, else ``read_image``'s default."""
    from medlens.data.io import max_pixels_limit

    try:
        return max_pixels_limit(max_pixels)
    except ValueError as exc:
        raw = os.environ.get("MEDLENS_MAX_PIXELS")
        raise ConfigError(f"MEDLENS_MAX_PIXELS must be a number of pixels, got {raw!r}") from exc


def create_app(
    models_dir: str | Path = "models",
    home: str | Path | None = None,
    token: str | None = None,
    pipelines: dict[str, Any] | None = None,
    *,
    db_url: str | None = None,
    max_upload_mb: float | None = None,
    max_pixels: int | None = None,
    ui: bool = True,
    examples_dir: str | Path | None = None,
    frame_ancestors: str | None = "'self'",
    root_path: str = "",
    runtime: str | None = None,
    precision: str | None = None,
    workers: int | None = None,
    warm_up: bool = True,
) -> FastAPI:
    """Build the FastAPI app (API + optional Gradio UI at ``/``).

    Args:
        models_dir: bundles folder; pipelines come from ``load_pipelines(models_dir)`` unless given.
        home: MEDLENS_HOME (history database and files); default ``MEDLENS_HOME`` or ``~/.medlens``.
        token: when set, ``/api/*`` requires ``Authorization: Bearer <token>`` and the UI a login
            (password = token).
        pipelines: name -> Pipeline, injected (tests, embedding).
        db_url: SQLAlchemy URL of the history database (default ``MEDLENS_DB_URL`` or SQLite in ``home``).
        max_upload_mb: upload limit (default ``MEDLENS_MAX_UPLOAD_MB`` or 20).
        max_pixels: decompression-bomb limit (default ``MEDLENS_MAX_PIXELS`` or the reader's 64 M).
        ui: mount the Gradio UI at ``/``.
        examples_dir: ``<examples_dir>/<pipeline>/*.png|jpg`` shown in the UI
            (default ``<models_dir>/../examples``).
        frame_ancestors: CSP ``frame-ancestors`` (who may embed the app); "'self'" also sends X-Frame-Options.
        root_path: public path prefix behind a reverse proxy (e.g. "/medlens"), for the UI's URLs; the server
            (uvicorn ``--root-path``) sets it for the API.
        runtime, precision: of the loaded pipelines (default ``MEDLENS_RUNTIME`` or "torch",
            ``MEDLENS_PRECISION`` or "fp32"; "int8" needs ``medlens export --int8``).
        workers: analyses at once per pipeline (default ``MEDLENS_WORKERS`` or the cores); the models then
            get ``cores // workers`` threads each (:func:`medlens.app.pool.serving_plan`).
        warm_up: run every pipeline replica once in the background at start; ``/healthz`` answers 503
            (``ready: false``) until that is done.
    """
    plan = serving_plan(workers)
    if pipelines is None:
        runtime = runtime or os.environ.get("MEDLENS_RUNTIME") or "torch"
        precision = precision or os.environ.get("MEDLENS_PRECISION") or "fp32"
        pipelines = load_pipelines_safely(
            models_dir, runtime=runtime, precision=precision, num_threads=plan.threads
        )
    store = HistoryStore(home=home, db_url=db_url)
    pixel_limit = pixel_limit_from(max_pixels)
    service = AnalysisService(
        pipelines, store, models_dir=models_dir, max_pixels=pixel_limit, workers=plan.workers
    )
    if warm_up:
        service.start_warm_up()
    else:
        service.skip_warm_up()
    upload_limit = security.max_upload_bytes(max_upload_mb)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="medlens",
        version=medlens.__version__,
        description="Segment and classify 2D medical images. Research tool, not a diagnosis.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.upload_limit = upload_limit
    app.state.max_pixels = pixel_limit
    _add_error_handlers(app)

    @app.get("/healthz", tags=["meta"])
    def healthz(response: Response) -> dict[str, Any]:
        """Readiness: always open (no token), no data; 503 with ``ready: false`` while the models warm up."""
        if not service.ready:
            response.status_code = 503
        return {
            "status": "ok" if service.ready else "starting",
            "ready": service.ready,
            "version": medlens.__version__,
            "pipelines": service.pipeline_names,
            "workers": {name: pool.size for name, pool in service.pools.items()},
        }

    app.include_router(_api_router(service, upload_limit, pixel_limit, token))
    if ui:
        from medlens.app.ui import mount_ui

        examples = (
            Path(examples_dir) if examples_dir is not None else Path(models_dir).resolve().parent / "examples"
        )
        mount_ui(
            app,
            service,
            token=token,
            examples_dir=examples,
            max_file_size=upload_limit,
            max_pixels=pixel_limit,
            root_path=root_path,
        )
    # Outermost last: headers on everything, then the 500 handler, then the body limit closest to the routes.
    app.add_middleware(
        security.BodyLimitMiddleware,
        max_body=upload_limit + security.MULTIPART_SLACK_BYTES,
        message=security.too_large_message(upload_limit),
    )
    app.add_middleware(security.ErrorIdMiddleware)
    app.add_middleware(security.SecurityHeadersMiddleware, frame_ancestors=frame_ancestors)
    return app


def _api_router(service: AnalysisService, upload_limit: int, max_pixels: int, token: str | None) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(security.bearer_dependency(token))])

    def base_url(request: Request) -> str:
        return f"{request.scope.get('root_path', '').rstrip('/')}{API_PREFIX}"

    @router.get("/models", tags=["models"])
    def models() -> dict[str, Any]:
        """Loaded pipelines and the bundles with their validation metrics."""
        return service.models()

    @router.get("/models/{bundle}/plots/{plot}", tags=["models"], response_class=FileResponse)
    def model_plot(
        bundle: str, plot: Literal["confusion_matrix.png", "roc.png", "reliability.png", "curves.png"]
    ) -> FileResponse:
        """An evaluation plot of a bundle (PNG) when the bundle ships it."""
        path = service.plot_path(bundle, plot)
        if path is None:
            raise HTTPException(404, f"bundle {bundle!r} has no {plot}")
        return FileResponse(path, media_type="image/png")

    @router.post("/analyze", tags=["analyses"])
    async def analyze(
        request: Request,
        file: Annotated[
            UploadFile, File(description="PNG, JPEG, TIFF, BMP or DICOM; type read from the content")
        ],
        pipeline: Annotated[
            str | None, Form(description="skin, polyp or chest-xray (default: the first)")
        ] = None,
        clahe: Annotated[bool, Form(description="contrast-limited histogram equalisation first")] = False,
    ) -> dict[str, Any]:
        """Analyse one image; the result is stored in the history (de-identified pixels only)."""
        service.resolve_pipeline(pipeline or None)  # fail fast, before reading the file into memory
        data = await security.read_upload(file, upload_limit)
        security.check_declared_pixels(data, max_pixels)
        record = await run_in_threadpool(service.analyze_bytes, data, pipeline or None, clahe)
        return service.to_view(record, base_url(request))

    @router.get("/analyses", tags=["analyses"])
    def list_analyses(
        request: Request,
        page: Annotated[int, Query(ge=1)] = 1,
        page_size: Annotated[int, Query(ge=1, le=200)] = 20,
        pipeline: str | None = None,
        label: str | None = None,
    ) -> dict[str, Any]:
        """Stored analyses, newest first: ``{"items", "total", "page", "page_size"}``."""
        records, total = service.list(page=page, page_size=page_size, pipeline=pipeline, label=label)
        items = [service.to_view(r, base_url(request)) for r in records]
        return {"items": items, "total": total, "page": page, "page_size": page_size}

    @router.get("/analyses/{analysis_id}", tags=["analyses"])
    def get_analysis(request: Request, analysis_id: str) -> dict[str, Any]:
        record = service.get(analysis_id)
        if record is None:
            raise HTTPException(404, f"no analysis {analysis_id!r}")
        return service.to_view(record, base_url(request))

    @router.delete("/analyses/{analysis_id}", tags=["analyses"])
    def delete_analysis(analysis_id: str) -> dict[str, Any]:
        """Delete the record and the files that no other analysis references."""
        if not service.delete(analysis_id):
            raise HTTPException(404, f"no analysis {analysis_id!r}")
        return {"deleted": analysis_id}

    @router.get("/analyses/{analysis_id}/{kind}", tags=["analyses"], response_class=FileResponse)
    def picture(analysis_id: str, kind: PictureKind) -> FileResponse:
        """The stored input (de-identified pixels), mask (0/255), overlay, Grad-CAM or thumbnail, as PNG."""
        path = service.file_path(analysis_id, "thumb" if kind == "thumbnail" else kind)
        if path is None:
            raise HTTPException(404, f"analysis {analysis_id!r} has no {kind}")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, no-store"})

    return router


def _is_pixel_limit(exc: ImageReadError) -> bool:
    reason = exc.reason.lower()
    return any(word in reason for word in _PIXEL_LIMIT_WORDS)


def _add_error_handlers(app: FastAPI) -> None:
    """Bad input -> 4xx ``{"detail": message}``; the server keeps serving."""

    @app.exception_handler(ImageReadError)
    async def image_error(_request: Request, exc: ImageReadError) -> JSONResponse:
        status = 413 if _is_pixel_limit(exc) else 422
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(UnknownNameError)
    async def unknown_name(_request: Request, exc: UnknownNameError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "valid": exc.valid}, status_code=422)

    @app.exception_handler(NoPipelineError)
    async def no_pipeline(_request: Request, exc: NoPipelineError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(MedlensError)
    async def medlens_error(_request: Request, exc: MedlensError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        message = "; ".join(f"{'.'.join(e['loc'][1:] or e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": f"invalid request: {message}", "errors": errors}, status_code=422)

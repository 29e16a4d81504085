"""REST API (FastAPI) under ``/api/v1`` with the Gradio UI mounted at ``/``; OpenAPI docs (Swagger UI) at
``/docs``, whose script and styles are served from the ``fastapi-offline`` package (no CDN, works offline).
ReDoc is left out: its bundle fetches a logo from a CDN.

``create_app`` wires one :class:`~medlens.app.service.AnalysisService` (pipelines + history store) into
both the routes (:mod:`medlens.app.routes`) and the UI. Inference runs in the threadpool, never on the event
loop. Stored pictures are reached only through analysis ids, never through paths a client sends.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response

import medlens
from medlens.app import schemas, security
from medlens.app.handlers import add_error_handlers
from medlens.app.pool import serving_plan
from medlens.app.routes import API_PREFIX, api_router
from medlens.app.service import AnalysisService
from medlens.app.store import HistoryStore
from medlens.app.throttle import DEFAULT_MAX_FAILURES, AuthThrottleMiddleware, FailureThrottle
from medlens.errors import ConfigError, MedlensError
from medlens.inference.runtime import configure_threads

__all__ = ["API_PREFIX", "create_app", "load_pipelines_safely", "pixel_limit_from"]

logger = logging.getLogger(__name__)


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
        raise ConfigError(
            f"MEDLENS_MAX_PIXELS must be a number of pixels, got {os.environ.get('MEDLENS_MAX_PIXELS')!r}"
        ) from exc


@dataclass
class _Limits:
    upload: int  # bytes
    pixels: int
    auth_failures: int  # failed tokens / logins per client per throttle window


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
    max_auth_failures: int = DEFAULT_MAX_FAILURES,
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
        max_auth_failures: failed tokens or logins per client within 5 minutes before it gets 429.
        runtime, precision: of the loaded pipelines (default ``MEDLENS_RUNTIME`` or "torch",
            ``MEDLENS_PRECISION`` or "fp32"; "int8" needs ``medlens export --int8``).
        workers: analyses at once per pipeline (default ``MEDLENS_WORKERS`` or the cores); the models then
            get ``cores // workers`` threads each (:func:`medlens.app.pool.serving_plan`).
        warm_up: run every pipeline replica once in the background at start; ``/healthz`` answers 503
            (``ready: false``) until that is done.
    """
    plan = serving_plan(workers)
    configure_threads(plan.threads)  # torch's pool is the process's; ONNX sessions get plan.threads each
    if pipelines is None:
        runtime = runtime or os.environ.get("MEDLENS_RUNTIME") or "torch"
        precision = precision or os.environ.get("MEDLENS_PRECISION") or "fp32"
        pipelines = load_pipelines_safely(
            models_dir, runtime=runtime, precision=precision, num_threads=plan.threads
        )
    limits = _Limits(
        security.max_upload_bytes(max_upload_mb), pixel_limit_from(max_pixels), max_auth_failures
    )
    store = HistoryStore(home=home, db_url=db_url)
    service = AnalysisService(
        pipelines, store, models_dir=models_dir, max_pixels=limits.pixels, workers=plan.workers
    )
    service.start_warm_up() if warm_up else service.skip_warm_up()
    app = _fastapi(service, limits)
    app.include_router(api_router(service, limits.upload, limits.pixels, token))
    if ui:
        _mount_ui(app, service, token, limits, _examples_dir(models_dir, examples_dir), root_path)
    _add_middlewares(app, limits, frame_ancestors)
    return app


def _fastapi(service: AnalysisService, limits: _Limits) -> FastAPI:
    """The app with docs served offline, the error handlers, ``/healthz``, and a lifespan that closes the
    service (and runs the shutdown hooks the UI registers in ``app.state.shutdown``)."""
    from fastapi_offline import FastAPIOffline

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for hook in app.state.shutdown:
            hook()
        service.close()

    app = FastAPIOffline(
        redoc_url=None,
        title="medlens",
        version=medlens.__version__,
        description="Segment and classify 2D medical images. Research tool, not a diagnosis.",
        lifespan=lifespan,
    )
    app.state.service, app.state.upload_limit, app.state.max_pixels = service, limits.upload, limits.pixels
    app.state.shutdown = []  # callables run at shutdown, before the service closes
    add_error_handlers(app)

    @app.get(
        "/healthz", tags=["meta"], response_model=schemas.Health, responses={503: {"model": schemas.Health}}
    )
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

    return app


def _examples_dir(models_dir: str | Path, examples_dir: str | Path | None) -> Path:
    return Path(examples_dir) if examples_dir is not None else Path(models_dir).resolve().parent / "examples"


def _mount_ui(
    app: FastAPI, service: AnalysisService, token: str | None, limits: _Limits, examples: Path, root_path: str
) -> None:
    from medlens.app.ui import mount_ui

    mount_ui(
        app,
        service,
        token=token,
        examples_dir=examples,
        max_file_size=limits.upload,
        root_path=root_path,
    )


def _add_middlewares(app: FastAPI, limits: _Limits, frame_ancestors: str | None) -> None:
    """Outermost last: headers on everything, the 500 handler, the credential throttle, then the body limit
    closest to the routes."""
    app.add_middleware(
        security.BodyLimitMiddleware,
        max_body=limits.upload + security.MULTIPART_SLACK_BYTES,
        message=security.too_large_message(limits.upload),
    )
    app.add_middleware(AuthThrottleMiddleware, throttle=FailureThrottle(limits.auth_failures))
    app.add_middleware(security.ErrorIdMiddleware)
    app.add_middleware(security.SecurityHeadersMiddleware, frame_ancestors=frame_ancestors)

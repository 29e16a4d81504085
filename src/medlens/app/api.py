"""REST API (FastAPI) under ``/api/v1`` with the Gradio UI mounted at ``/``; OpenAPI docs (Swagger UI) at
``/docs``, whose script and styles are served from the ``fastapi-offline`` package (no CDN, works offline).
ReDoc is left out: its bundle fetches a logo from a CDN.

``create_app(settings)`` wires one :class:`~medlens.app.service.AnalysisService` (pipelines + history store)
into both the routes (:mod:`medlens.app.routes`) and the UI; what it serves and how comes from one
:class:`~medlens.app.settings.ServerSettings`. Inference runs in the threadpool, never on the event
loop. Stored pictures are reached only through analysis ids, never through paths a client sends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response

import medlens
from medlens.app import schemas, security
from medlens.app.handlers import add_error_handlers
from medlens.app.pool import serving_plan
from medlens.app.routes import API_PREFIX, api_router
from medlens.app.service import AnalysisService
from medlens.app.settings import ServerSettings, settings_from
from medlens.app.store import HistoryStore
from medlens.app.throttle import AuthThrottleMiddleware, FailureThrottle
from medlens.errors import MedlensError

__all__ = ["API_PREFIX", "ServerSettings", "create_app", "load_pipelines_safely"]

logger = logging.getLogger(__name__)


def load_pipelines_safely(models_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """``load_pipelines(models_dir, **kwargs)``, or {} with a warning when the folder has no usable bundle."""
    from medlens.pipelines.pipeline import load_pipelines

    try:
        return dict(load_pipelines(models_dir, **kwargs))
    except (MedlensError, OSError) as exc:
        logger.warning("no pipelines loaded from %s: %s", models_dir, exc)
        return {}


def create_app(
    settings: ServerSettings | str | Path | None = None,
    *,
    pipelines: dict[str, Any] | None = None,
    **fields: Any,
) -> FastAPI:
    """Build the FastAPI app (API + optional Gradio UI at ``/``) from the server's settings.

    Args:
        settings: what to serve and how (:class:`~medlens.app.settings.ServerSettings`): the models folder,
            the history (``home``, ``db_url``), the token (``/api/*`` then requires ``Authorization: Bearer
            <token>`` and the UI a login whose password is the token), limits, runtime, workers, UI.
        pipelines: name -> Pipeline, injected (tests, embedding) instead of those loaded from ``models_dir``.
        fields: settings fields that replace those of ``settings``. The older keyword form,
            ``create_app(models_dir, home=..., token=..., ui=False, ...)`` without settings, still works: the
            keywords are then flags of :func:`~medlens.app.settings.load_settings` (over ``MEDLENS_*``).

    Leaves process-wide state alone: torch's CPU threads are set where the process starts
    (:func:`medlens.app.server.configure_process`); the models loaded here get ``threads // workers`` threads
    each for their ONNX Runtime sessions (:func:`medlens.app.pool.serving_plan`). Unless ``warm_up`` is off,
    every pipeline replica runs once in the background and ``/healthz`` answers 503 (``ready: false``) until
    that is done.
    """
    if isinstance(settings, str | Path):  # the older form's first positional argument
        settings, fields = None, {"models_dir": settings, **fields}
    settings = settings_from(settings, fields)
    plan = serving_plan(settings.workers, settings.threads)
    if pipelines is None:
        pipelines = load_pipelines_safely(
            settings.models_dir,
            runtime=settings.runtime,
            precision=settings.precision,
            num_threads=plan.threads,
        )
    store = HistoryStore(home=settings.home, db_url=settings.db_url)
    service = AnalysisService(
        pipelines, store, models_dir=settings.models_dir, max_pixels=settings.max_pixels, workers=plan.workers
    )
    service.start_warm_up() if settings.warm_up else service.skip_warm_up()
    app = _fastapi(service, settings)
    app.include_router(api_router(service, settings.upload_bytes, settings.max_pixels, settings.token))
    if settings.ui:
        _mount_ui(app, service, settings)
    _add_middlewares(app, settings)
    return app


def _fastapi(service: AnalysisService, settings: ServerSettings) -> FastAPI:
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
    app.state.settings, app.state.service = settings, service
    app.state.upload_limit, app.state.max_pixels = settings.upload_bytes, settings.max_pixels
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


def _mount_ui(app: FastAPI, service: AnalysisService, settings: ServerSettings) -> None:
    from medlens.app.ui import mount_ui

    mount_ui(
        app,
        service,
        token=settings.token,
        examples_dir=settings.examples,
        max_file_size=settings.upload_bytes,
        root_path=settings.root_path,
    )


def _add_middlewares(app: FastAPI, settings: ServerSettings) -> None:
    """Outermost last: headers on everything, the 500 handler, the credential throttle, then the body limit
    closest to the routes."""
    app.add_middleware(
        security.BodyLimitMiddleware,
        max_body=settings.upload_bytes + security.MULTIPART_SLACK_BYTES,
        message=security.too_large_message(settings.upload_bytes),
    )
    app.add_middleware(AuthThrottleMiddleware, throttle=FailureThrottle(settings.max_auth_failures))
    app.add_middleware(security.ErrorIdMiddleware)
    app.add_middleware(security.SecurityHeadersMiddleware, frame_ancestors=settings.frame_ancestors)

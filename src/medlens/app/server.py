"""Run the web app: ``serve(settings)`` behind ``medlens serve``, and a factory for ``uvicorn --factory``.

These are where a server process starts, so they are where its process-wide state is set
(:func:`configure_process`: torch's CPU threads); `create_app` leaves it alone.

Binding rule: anything but loopback (127.0.0.1, ::1, localhost) needs a token (``--token`` or
``MEDLENS_API_TOKEN``) unless ``insecure`` is set, e.g. when a reverse proxy or the hosting platform controls
access.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from medlens.app.pool import serving_plan
from medlens.app.security import check_binding
from medlens.app.settings import DEFAULT_HOST, DEFAULT_PORT, ServerSettings, load_settings, settings_from

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "app_from_env", "configure_process", "serve"]

logger = logging.getLogger(__name__)


def configure_process(settings: ServerSettings) -> int:
    """Set torch's CPU threads for this server process to each worker's share of the thread budget
    (``threads // workers``, :func:`~medlens.app.pool.serving_plan`) and return them. torch's pool is the
    process's, so this belongs where the process starts, never in the app factory."""
    from medlens.inference.runtime import configure_threads

    return configure_threads(serving_plan(settings.workers, settings.threads).threads)


def serve(settings: ServerSettings | None = None, **fields: Any) -> None:
    """Serve the REST API (``/api/v1``, docs at ``/docs``) and the UI (``/``) with uvicorn until interrupted.

    Args:
        settings: host and port (default http://127.0.0.1:7860), token, models folder, history, runtime,
            workers... (:class:`~medlens.app.settings.ServerSettings`).
        fields: settings fields that replace those of ``settings``; without settings, the older keyword
            form (``serve(host=..., port=..., models_dir=..., token=...)``): flags over ``MEDLENS_*``.
    Raises:
        ConfigError: non-loopback host without a token and without ``insecure``; a bad setting.
    """
    import uvicorn

    from medlens.app.api import create_app

    settings = settings_from(settings, fields)
    check_binding(settings.host, settings.token, settings.insecure)
    configure_process(settings)
    app = create_app(settings)
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    logger.info(
        "medlens on http://%s:%d%s/ (REST API docs at /docs)%s",
        shown,
        settings.port,
        settings.root_path,
        "; token required" if settings.token else "",
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        root_path=settings.root_path,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_level=settings.log_level,
        server_header=False,
    )


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory medlens.app.server:app_from_env``, configured by the ``MEDLENS_*``
    environment (:func:`~medlens.app.settings.load_settings`; docs/DEPLOY.md lists the variables).

    uvicorn decides the host here, so the binding rule cannot be checked: set ``MEDLENS_API_TOKEN`` whenever
    the port is reachable from other machines.
    """
    from medlens.app.api import create_app

    settings = load_settings()
    if not settings.token:
        logger.warning("MEDLENS_API_TOKEN is not set: the API and UI are open to whoever reaches the port")
    configure_process(settings)
    return create_app(settings)

"""Run the web app: ``serve(...)`` behind ``medlens serve``, and a factory for ``uvicorn --factory``.

Binding rule: anything but loopback (127.0.0.1, ::1, localhost) needs a token (``--token`` or
``MEDLENS_API_TOKEN``) unless ``insecure=True``, e.g. when a reverse proxy or the hosting platform controls
access.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import FastAPI

from medlens.app.security import check_binding

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def resolve_token(token: str | None = None) -> str | None:
    """The token argument, else ``MEDLENS_API_TOKEN``, else None (empty strings count as unset)."""
    return token or os.environ.get("MEDLENS_API_TOKEN") or None


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    models_dir: str | Path = "models",
    home: str | Path | None = None,
    token: str | None = None,
    insecure: bool = False,
    *,
    root_path: str = "",
    forwarded_allow_ips: str | None = None,
    examples_dir: str | Path | None = None,
    frame_ancestors: str | None = "'self'",
    log_level: str = "info",
    runtime: str | None = None,
    precision: str | None = None,
    workers: int | None = None,
) -> None:
    """Serve the REST API (``/api/v1``, docs at ``/docs``) and the UI (``/``) with uvicorn until interrupted.

    Args:
        host, port: where to listen (default http://127.0.0.1:7860).
        models_dir: folder of bundles; the shipped pipelines whose bundles exist are loaded.
        home: MEDLENS_HOME for the history (default ``MEDLENS_HOME`` or ``~/.medlens``).
        token: bearer token for ``/api/*`` and the UI login (default ``MEDLENS_API_TOKEN``).
        insecure: allow a non-loopback host without a token.
        root_path: public path prefix behind a reverse proxy that strips it (e.g. "/medlens").
        forwarded_allow_ips: proxies whose X-Forwarded-* headers are trusted (uvicorn; default
            ``FORWARDED_ALLOW_IPS`` or 127.0.0.1).
        runtime, precision, workers: model runtime ("torch" / "onnx"), ONNX precision ("fp32" / "int8") and
            analyses at once per pipeline (see `medlens.app.api.create_app`).
    Raises:
        ConfigError: non-loopback host without a token and without ``insecure``.
    """
    import uvicorn

    from medlens.app.api import create_app

    token = resolve_token(token)
    check_binding(host, token, insecure)
    app = create_app(
        models_dir,
        home,
        token,
        examples_dir=examples_dir,
        frame_ancestors=frame_ancestors,
        root_path=root_path,
        runtime=runtime,
        precision=precision,
        workers=workers,
    )
    shown = f"[{host}]" if ":" in host else host
    logger.info(
        "medlens on http://%s:%d%s/ (REST API docs at /docs)%s",
        shown,
        port,
        root_path,
        "; token required" if token else "",
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        root_path=root_path,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level=log_level,
        server_header=False,
    )


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory medlens.app.server:app_from_env``, configured by environment:
    ``MEDLENS_MODELS_DIR`` (default models), ``MEDLENS_HOME``, ``MEDLENS_DB_URL``, ``MEDLENS_API_TOKEN``,
    ``MEDLENS_MAX_UPLOAD_MB``, ``MEDLENS_MAX_PIXELS``, ``MEDLENS_ROOT_PATH``, ``MEDLENS_RUNTIME``,
    ``MEDLENS_PRECISION``, ``MEDLENS_WORKERS``.

    uvicorn decides the host here, so the binding rule cannot be checked: set ``MEDLENS_API_TOKEN`` whenever
    the port is reachable from other machines.
    """
    from medlens.app.api import create_app

    token = resolve_token()
    if not token:
        logger.warning("MEDLENS_API_TOKEN is not set: the API and UI are open to whoever reaches the port")
    return create_app(
        os.environ.get("MEDLENS_MODELS_DIR", "models"),
        os.environ.get("MEDLENS_HOME") or None,
        token,
        root_path=os.environ.get("MEDLENS_ROOT_PATH", ""),
    )

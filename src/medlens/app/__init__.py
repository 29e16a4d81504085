"""medlens.app: the web app (FastAPI REST API under /api/v1 + Gradio UI at /) and its history store.

Entry points: :func:`medlens.app.api.create_app` (the ASGI app) and :func:`medlens.app.server.serve`
(uvicorn), both taking one :class:`medlens.app.settings.ServerSettings` (built by
:func:`medlens.app.settings.load_settings` from flags and ``MEDLENS_*``);
:class:`medlens.app.service.AnalysisService` (what API and UI share); :class:`medlens.app.store.HistoryStore`.
Submodules are imported lazily so that ``import medlens.app`` pulls in neither torch nor Gradio.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AnalysisService", "HistoryStore", "ServerSettings", "create_app", "load_settings", "serve"]

_LAZY = {
    "create_app": "medlens.app.api",
    "serve": "medlens.app.server",
    "AnalysisService": "medlens.app.service",
    "HistoryStore": "medlens.app.store",
    "ServerSettings": "medlens.app.settings",
    "load_settings": "medlens.app.settings",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medlens.app' has no attribute {name!r}")

"""Where medlens keeps its own files on a machine: ``$MEDLENS_HOME``, else ``~/.medlens`` (the web app's
history, the cache of exported ONNX graphs). This module is the one place that reads ``MEDLENS_HOME``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

HOME_VARIABLE = "MEDLENS_HOME"


def home_from_env(environ: Mapping[str, str] | None = None) -> Path | None:
    """``$MEDLENS_HOME`` of ``environ`` (default ``os.environ``), None when unset or empty."""
    raw = (os.environ if environ is None else environ).get(HOME_VARIABLE, "")
    return Path(raw).expanduser() if raw else None


def medlens_home() -> Path:
    """``$MEDLENS_HOME`` or ``~/.medlens``."""
    return home_from_env() or Path.home() / ".medlens"

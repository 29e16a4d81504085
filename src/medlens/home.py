"""Where medlens keeps its own files on a machine: ``$MEDLENS_HOME``, else ``~/.medlens`` (the web app's
history, the cache of exported ONNX graphs)."""

from __future__ import annotations

import os
from pathlib import Path


def medlens_home() -> Path:
    """``$MEDLENS_HOME`` or ``~/.medlens``."""
    return Path(os.environ.get("MEDLENS_HOME") or Path.home() / ".medlens").expanduser()

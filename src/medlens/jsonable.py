"""One way to turn results into JSON: numpy scalars and arrays, tuples, sets, dataclass instances and paths
become plain types; ``nan`` / ``inf`` become ``null``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (unknown objects by ``str``)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(asdict(obj))
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)  # Path, datetime, enums...


def write_json(path: str | Path, data: Any, indent: int = 2) -> Path:
    """Write ``data`` as indented JSON, made JSON-safe first (a nan metric is ``null``, not invalid JSON)."""
    path = Path(path)
    path.write_text(json.dumps(to_jsonable(data), indent=indent) + "\n", encoding="utf-8")
    return path

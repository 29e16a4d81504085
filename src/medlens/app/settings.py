"""The web server's settings: one typed, frozen :class:`ServerSettings`, built once where the process starts.

:func:`load_settings` turns the ``medlens serve`` flags and the ``MEDLENS_*`` environment variables into
settings (a flag wins over a variable, a variable over the default) and is the one place that reads the
server's variables; `create_app` and `serve` take the settings, and nothing below them reads the environment.
Three variables are not only the server's and keep their own single home, which this module asks:
``MEDLENS_HOME`` (:mod:`medlens.home`), ``MEDLENS_MAX_PIXELS`` (:mod:`medlens.data.io`) and
``MEDLENS_NUM_THREADS`` (:mod:`medlens.inference.runtime`). docs/DEPLOY.md lists every variable and its
default.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens.data.io import MAX_PIXELS, max_pixels_from_env
from medlens.errors import ConfigError
from medlens.home import home_from_env
from medlens.spec import PRECISIONS, RUNTIMES

DEFAULT_HOST = "127.0.0.1"  # loopback: anything else needs a token (security.check_binding)
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_FAILURES = 10  # failed tokens / logins per client within the throttle's window (throttle.py)


@dataclass(frozen=True)
class ServerSettings:
    """Everything the web app and its server are told. Paths may be given as strings; values are checked
    (ConfigError naming the field). The token and the database URL (which may hold a password) stay out of
    ``repr``, so that logging the settings leaks neither."""

    host: str = DEFAULT_HOST  # where to listen; anything but loopback needs a token or `insecure`
    port: int = DEFAULT_PORT
    token: str | None = field(default=None, repr=False)  # bearer token for /api/* and the UI's password
    insecure: bool = False  # allow a non-loopback host without a token (a proxy or firewall controls access)
    models_dir: Path = Path("models")  # the pipelines and their bundles
    home: Path | None = None  # history database and files; None: medlens.home.medlens_home()
    db_url: str | None = field(default=None, repr=False)  # SQLAlchemy URL; None: SQLite in `home`
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB  # larger bodies get 413 while they stream in
    max_pixels: int = MAX_PIXELS  # decompression-bomb guard, checked on the header before decoding
    runtime: str = "torch"  # of the loaded pipelines: one of spec.RUNTIMES
    precision: str = "fp32"  # of their ONNX graphs: one of spec.PRECISIONS ("int8": `medlens export --int8`)
    workers: int | None = None  # analyses at once over all pipelines; None: the cores, at most 4 (pool.py)
    threads: int | None = None  # the process's CPU thread budget, shared by the workers; None: the cores
    root_path: str = ""  # public path prefix behind a reverse proxy that strips it, e.g. "/medlens"
    forwarded_allow_ips: str | None = None  # proxies trusted for X-Forwarded-*; None: uvicorn's default
    examples_dir: Path | None = None  # <examples_dir>/<pipeline>/*.png|jpg in the UI; None: beside models_dir
    frame_ancestors: str | None = "'self'"  # CSP frame-ancestors: who may embed the app
    max_auth_failures: int = DEFAULT_MAX_FAILURES  # failed tokens or logins per client in 5 minutes, then 429
    log_level: str = "info"  # uvicorn's
    ui: bool = True  # mount the Gradio UI at /
    warm_up: bool = True  # run every pipeline replica once at start; /healthz answers 503 until then

    def __post_init__(self) -> None:
        for name in ("models_dir", "home", "examples_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.home is not None:
            object.__setattr__(self, "home", self.home.expanduser())
        object.__setattr__(self, "token", self.token or None)  # an empty token is no token
        object.__setattr__(self, "db_url", self.db_url or None)
        _check(self)

    @property
    def upload_bytes(self) -> int:
        """The upload limit in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def examples(self) -> Path:
        """The examples folder: ``examples_dir``, else ``examples`` beside the models folder."""
        return (
            self.examples_dir
            if self.examples_dir is not None
            else self.models_dir.resolve().parent / "examples"
        )


def _check(s: ServerSettings) -> None:
    problems = []
    if not 0 <= s.port <= 65535:
        problems.append(f"port must be 0..65535, got {s.port}")
    if not (s.max_upload_mb > 0 and math.isfinite(s.max_upload_mb)):
        problems.append(f"max_upload_mb: the upload limit must be positive, got {s.max_upload_mb} MB")
    for name in ("max_pixels", "max_auth_failures", "workers", "threads"):
        value = getattr(s, name)
        if value is not None and value < 1:
            problems.append(f"{name} must be at least 1, got {value}")
    if s.runtime not in RUNTIMES:
        problems.append(f"runtime must be one of {', '.join(RUNTIMES)}, got {s.runtime!r}")
    if s.precision not in PRECISIONS:
        problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {s.precision!r}")
    if problems:
        raise ConfigError("server settings: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------ environment
def _text(raw: str) -> str:
    return raw


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"one of {', '.join(choices)}")
        return raw

    return parse


def _positive(kind: type, what: str) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            value = 0
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(what)
        return value

    return parse


@dataclass(frozen=True)
class Variable:
    """An environment variable of the server: its name, the settings field it sets, and how it is parsed
    (``parse`` raises ValueError saying what it expects)."""

    name: str
    field: str
    parse: Callable[[str], Any]

    def read(self, environ: Mapping[str, str]) -> Any:
        """The parsed value, None when unset or empty; ConfigError naming the variable when it is bad."""
        raw = environ.get(self.name, "")
        if not raw:
            return None
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{self.name} must be {exc}, got {raw!r}") from None


VARIABLES: tuple[Variable, ...] = (
    Variable("MEDLENS_API_TOKEN", "token", _text),
    Variable("MEDLENS_MODELS_DIR", "models_dir", Path),
    Variable("MEDLENS_DB_URL", "db_url", _text),
    Variable("MEDLENS_MAX_UPLOAD_MB", "max_upload_mb", _positive(float, "a positive number of megabytes")),
    Variable("MEDLENS_RUNTIME", "runtime", _choice(RUNTIMES)),
    Variable("MEDLENS_PRECISION", "precision", _choice(PRECISIONS)),
    Variable("MEDLENS_WORKERS", "workers", _positive(int, "a positive whole number")),
    Variable("MEDLENS_ROOT_PATH", "root_path", _text),
)
FIELDS = tuple(f.name for f in dataclasses.fields(ServerSettings))


def from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings fields that ``environ`` (default ``os.environ``) sets, by field name."""
    from medlens.inference.runtime import threads_from_env  # imports torch: only when settings are built

    env = os.environ if environ is None else environ
    found = {var.field: var.read(env) for var in VARIABLES}
    found |= {
        "home": home_from_env(env),
        "max_pixels": max_pixels_from_env(env),
        "threads": threads_from_env(env),
    }
    return {name: value for name, value in found.items() if value is not None}


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base: ServerSettings | None = None,
) -> ServerSettings:
    """The server's settings: each field from ``flags`` (field name -> value; None means not given), else from
    the environment (``environ``, default ``os.environ``; see :data:`VARIABLES`), else from ``base`` (default
    ``ServerSettings()``, whose defaults are the documented ones).

    Raises:
        ConfigError: a bad variable (named) or value. TypeError: a flag that is no settings field.
    """
    given = {name: value for name, value in (flags or {}).items() if value is not None}
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown server setting(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
    return dataclasses.replace(base or ServerSettings(), **(from_environment(environ) | given))


def settings_from(settings: ServerSettings | None, fields: Mapping[str, Any]) -> ServerSettings:
    """What `create_app` and `serve` run with: ``settings`` with ``fields`` replaced, or, without settings,
    the older keyword form (``create_app(models_dir=..., home=..., ...)``): ``load_settings(fields)``."""
    if settings is None:
        return load_settings(fields)
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown server setting(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
    return dataclasses.replace(settings, **fields) if fields else settings

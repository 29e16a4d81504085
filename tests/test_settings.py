"""The server's settings: flag over variable over default, clear errors naming a bad variable, one home per
variable, the table in docs/DEPLOY.md, and an app factory that leaves torch's threads alone."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from medlens.app import server
from medlens.app.settings import VARIABLES, ServerSettings, load_settings
from medlens.cli import main
from medlens.errors import ConfigError
from tests.helpers_app import FakePipeline

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "medlens"
ELSEWHERE = {"MEDLENS_HOME": "home", "MEDLENS_MAX_PIXELS": "max_pixels", "MEDLENS_NUM_THREADS": "threads"}


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings(environ={})
    assert s == ServerSettings()
    assert (s.host, s.port, s.token, s.insecure) == ("127.0.0.1", 7860, None, False)
    assert (s.models_dir, s.home, s.db_url, s.runtime, s.precision) == (
        Path("models"),
        None,
        None,
        "torch",
        "fp32",
    )
    assert (s.upload_bytes, s.max_pixels, s.workers, s.threads) == (20 * 1024 * 1024, 64_000_000, None, None)


def test_flag_wins_over_variable_over_default(tmp_path: Path) -> None:
    env = {
        "MEDLENS_MODELS_DIR": str(tmp_path / "env-models"),
        "MEDLENS_HOME": str(tmp_path / "env-home"),
        "MEDLENS_API_TOKEN": "env-token",
        "MEDLENS_RUNTIME": "onnx",
        "MEDLENS_WORKERS": "3",
        "MEDLENS_NUM_THREADS": "6",
        "MEDLENS_MAX_UPLOAD_MB": "1.5",
        "MEDLENS_MAX_PIXELS": "1e6",
        "MEDLENS_ROOT_PATH": "/medlens",
    }
    s = load_settings(environ=env)
    assert (s.models_dir, s.home, s.token, s.runtime) == (tmp_path / "env-models", tmp_path / "env-home",
                                                          "env-token", "onnx")  # fmt: skip
    assert (s.workers, s.threads, s.max_pixels, s.root_path) == (3, 6, 1_000_000, "/medlens")
    assert s.upload_bytes == int(1.5 * 1024 * 1024) and s.precision == "fp32"  # unset: the default
    flags = {
        "models_dir": "flag-models",
        "home": None,
        "token": "flag-token",
        "runtime": "torch",
        "workers": 1,
    }
    s = load_settings(flags, environ=env)
    assert (s.models_dir, s.token, s.runtime, s.workers) == (Path("flag-models"), "flag-token", "torch", 1)
    assert s.home == tmp_path / "env-home"  # a flag left None does not count
    assert load_settings(environ={"MEDLENS_API_TOKEN": ""}).token is None  # empty means unset


def test_variables_are_read_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLENS_PRECISION", "int8")
    monkeypatch.setenv("MEDLENS_DB_URL", "sqlite:///elsewhere.db")
    s = load_settings()
    assert s.precision == "int8" and s.db_url == "sqlite:///elsewhere.db"
    assert load_settings(base=ServerSettings(models_dir="space")).models_dir == Path("space")  # base < env


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MEDLENS_MAX_UPLOAD_MB", "lots"),
        ("MEDLENS_MAX_UPLOAD_MB", "-1"),
        ("MEDLENS_MAX_UPLOAD_MB", "inf"),
        ("MEDLENS_WORKERS", "many"),
        ("MEDLENS_WORKERS", "0"),
        ("MEDLENS_NUM_THREADS", "two"),
        ("MEDLENS_MAX_PIXELS", "big"),
        ("MEDLENS_MAX_PIXELS", "-5"),
        ("MEDLENS_RUNTIME", "tensorrt"),
        ("MEDLENS_PRECISION", "fp8"),
    ],
)
def test_a_bad_variable_is_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name} must be .*{re.escape(repr(value))}"):
        load_settings(environ={name: value})


def test_bad_values_and_unknown_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="max_upload_mb"):
        ServerSettings(max_upload_mb=0)
    with pytest.raises(ConfigError, match="runtime must be one of torch, onnx"):
        ServerSettings(runtime="tensorrt")
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        load_settings({"workers": 0}, environ={})
    with pytest.raises(TypeError, match=r"unknown server setting.*modelsdir"):
        load_settings({"modelsdir": "x"}, environ={})


def test_secrets_stay_out_of_the_repr() -> None:
    s = ServerSettings(token="s3cret", db_url="postgresql+psycopg://medlens:pw@db/medlens")
    assert "s3cret" not in repr(s) and "pw@" not in repr(s) and "port=7860" in repr(s)


# ------------------------------------------------------------------------------------------------ threads
def test_create_app_leaves_torch_threads_alone(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from medlens.app.api import create_app

    before = torch.get_num_threads()
    wanted = before + 1  # what the settings would give each worker, were the factory to set it
    settings = ServerSettings(
        models_dir=tmp_path / "m", home=tmp_path / "h", threads=wanted, workers=1, ui=False
    )
    app = create_app(settings, pipelines={"skin": FakePipeline()})
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
    assert torch.get_num_threads() == before and app.state.settings is settings
    create_app(models_dir=tmp_path / "m", home=tmp_path / "h", threads=wanted, workers=1, ui=False,
               pipelines={"skin": FakePipeline()})  # fmt: skip
    assert torch.get_num_threads() == before


def test_the_process_entry_points_set_torch_threads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    from medlens.app import api

    before = torch.get_num_threads()
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    monkeypatch.setattr(api, "create_app", lambda settings: torch.get_num_threads())
    try:
        assert server.configure_process(ServerSettings(threads=4, workers=2)) == 2
        server.serve(ServerSettings(models_dir=tmp_path / "m", home=tmp_path / "h", threads=3, workers=1))
        assert torch.get_num_threads() == 3
        monkeypatch.setenv("MEDLENS_NUM_THREADS", "2")
        monkeypatch.setenv("MEDLENS_WORKERS", "1")
        assert server.app_from_env() == 2  # the threads were set before the app was made
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- entry points
def test_medlens_serve_flags_over_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[ServerSettings] = []
    monkeypatch.setattr(server, "serve", seen.append)
    monkeypatch.setenv("MEDLENS_MODELS_DIR", str(tmp_path / "env-models"))
    monkeypatch.setenv("MEDLENS_RUNTIME", "onnx")
    monkeypatch.setenv("MEDLENS_WORKERS", "2")
    monkeypatch.delenv("MEDLENS_API_TOKEN", raising=False)
    assert main(["serve", "--runtime", "torch", "--home", str(tmp_path / "h")]) == 0
    s = seen[-1]
    assert (s.host, s.port, s.runtime, s.workers) == ("127.0.0.1", 7860, "torch", 2)
    assert s.models_dir == tmp_path / "env-models" and s.home == tmp_path / "h" and s.token is None
    assert main(["serve", "--host", "0.0.0.0", "--port", "9000", "--models-dir", "m", "--token", "t",
                 "--insecure", "--precision", "int8", "--workers", "1"]) == 0  # fmt: skip
    s = seen[-1]
    assert (s.host, s.port, s.models_dir, s.token, s.insecure, s.precision, s.workers) == (
        "0.0.0.0", 9000, Path("m"), "t", True, "int8", 1)  # fmt: skip


def test_medlens_serve_names_a_bad_variable(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(server, "serve", lambda settings: pytest.fail("served with a bad variable"))
    monkeypatch.setenv("MEDLENS_MAX_UPLOAD_MB", "twenty")
    assert main(["serve"]) == 2
    assert (
        "MEDLENS_MAX_UPLOAD_MB must be a positive number of megabytes, got 'twenty'"
        in capsys.readouterr().err
    )


# --------------------------------------------------------------------------------------- one home, one table
def _homes() -> dict[str, set[str]]:
    """Variable -> the modules that write its name as a whole string (where it is read)."""
    homes: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
            if re.fullmatch(r"MEDLENS_[A-Z_]+", name):
                homes[name].add(path.relative_to(SRC).as_posix())
    return homes


def _table() -> dict[str, list[str]]:
    """Variable -> its row of the settings table in docs/DEPLOY.md (default, flag, read in, meaning)."""
    text = (REPO / "docs" / "DEPLOY.md").read_text()
    rows = re.findall(r"^\| `(MEDLENS_[A-Z_]+)` \|(.*)\|$", text, flags=re.MULTILINE)
    return {name: [cell.strip() for cell in rest.split("|")] for name, rest in rows}


def test_each_variable_is_read_in_one_module_and_documented_there() -> None:
    homes, table = _homes(), _table()
    assert {name: modules for name, modules in homes.items() if len(modules) != 1} == {}
    assert set(table) == set(homes)
    assert {name: row[2] for name, row in table.items()} == {n: f"`{m.pop()}`" for n, m in homes.items()}
    assert {v.name for v in VARIABLES} | set(ELSEWHERE) == set(homes)


def test_the_documented_defaults_are_the_code_s() -> None:
    table, defaults = _table(), ServerSettings()
    fields = {v.name: v.field for v in VARIABLES} | ELSEWHERE
    for name, field in fields.items():
        default = getattr(defaults, field)
        if default is None:
            continue  # described in words ("unset", "cores", ...)
        shown = (
            "empty" if default == "" else f"`{default:g}`" if isinstance(default, float) else f"`{default}`"
        )
        assert table[name][0] == shown, name

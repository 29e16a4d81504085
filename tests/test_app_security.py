"""Security helpers: binding rule, token compare, upload limits, header sniffing, headers, serve() refusal."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient

from medlens.app import security, server
from medlens.app.settings import ServerSettings
from medlens.errors import ConfigError, ImageTooLargeError
from tests.helpers_app import bomb_png, png_bytes, rgb_image


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1", "localhost", "127.0.1.1", "LOCALHOST", "[::1]", " ::1 "]
)
def test_loopback_hosts(host):
    assert security.is_loopback(host)


@pytest.mark.parametrize(
    "host", ["127.0.0.1.evil.com", "127.example.org", "localhost.evil.com", "[127.0.0.1]x", "1270.0.0.1", ""]
)
def test_look_alike_hosts_are_not_loopback(host):
    assert not security.is_loopback(host)
    with pytest.raises(ConfigError, match="refusing to listen"):
        security.check_binding(host, token=None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org"])
def test_non_loopback_needs_a_token_or_insecure(host):
    with pytest.raises(ConfigError, match="MEDLENS_API_TOKEN"):
        security.check_binding(host, token=None)
    security.check_binding(host, token="t")
    security.check_binding(host, token=None, insecure=True)
    security.check_binding("127.0.0.1", token=None)


def test_serve_refuses_to_start_without_token_on_all_interfaces(monkeypatch, tmp_path):
    import uvicorn

    monkeypatch.delenv("MEDLENS_API_TOKEN", raising=False)
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(k))
    with pytest.raises(ConfigError, match="refusing to listen"):
        server.serve(host="0.0.0.0", port=9, models_dir=tmp_path / "m", home=tmp_path / "h")
    with pytest.raises(ConfigError, match="refusing to listen"):
        server.serve(ServerSettings(host="0.0.0.0", port=9, models_dir=tmp_path / "m", home=tmp_path / "h"))
    assert not started


def test_serve_binds_loopback_by_default_and_takes_the_token_from_env(monkeypatch, tmp_path):
    import uvicorn

    from medlens.app import api

    monkeypatch.delenv("MEDLENS_API_TOKEN", raising=False)
    started, apps = [], []
    monkeypatch.setattr(uvicorn, "run", lambda app, **k: started.append(k))
    monkeypatch.setattr(api, "create_app", lambda settings: apps.append(settings) or "app")
    server.serve(models_dir=tmp_path / "m", home=tmp_path / "h")
    assert started[-1]["host"] == "127.0.0.1" and started[-1]["port"] == 7860 and apps[-1].token is None
    monkeypatch.setenv("MEDLENS_API_TOKEN", "from-env")
    server.serve(host="0.0.0.0", models_dir=tmp_path / "m", home=tmp_path / "h")  # the token makes it legal
    assert started[-1]["host"] == "0.0.0.0" and apps[-1].token == "from-env"
    server.serve(host="0.0.0.0", token="arg", models_dir=tmp_path / "m", home=tmp_path / "h")
    assert apps[-1].token == "arg"


def test_token_compare():
    assert security.token_matches("abc", "abc")
    assert not security.token_matches("abd", "abc")
    assert not security.token_matches("", "abc") and not security.token_matches(None, "abc")
    assert not security.token_matches("abcd", "abc")
    assert security.token_matches("pässwörd", "pässwörd")
    check = security.gradio_auth("tok")
    assert check("anyone", "tok") and not check("anyone", "nope")


def test_image_size_check_reads_headers_only_and_names_the_real_size():
    with pytest.raises(ImageTooLargeError) as exc:
        security.declared_size(bomb_png(20000, 20000), 64_000_000)  # far beyond Pillow's own bomb limit
    assert (exc.value.width, exc.value.height, exc.value.limit) == (20000, 20000, 64_000_000)
    assert "20000x20000" in str(exc.value) and "9223372036854775807" not in str(exc.value)
    with pytest.raises(ImageTooLargeError, match="5000x4000"):
        security.declared_size(bomb_png(5000, 4000), 1000)
    assert security.declared_size(png_bytes(rgb_image(30)), 1000) == (30, 30)
    assert security.declared_size(b"hello", 1000) is None  # not an image: read_image says why later


class _Upload:
    def __init__(self, data: bytes, filename: str | None = "/home/jane/scan.png") -> None:
        self.data, self.pos, self.reads, self.filename = data, 0, 0, filename

    async def read(self, n: int) -> bytes:
        self.reads += 1
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk


def test_read_upload_stops_as_soon_as_the_limit_is_passed():
    upload = _Upload(b"x" * 10_000)
    with pytest.raises(HTTPException) as exc:
        asyncio.run(security.read_upload(upload, limit=2_500, chunk_size=1_000))
    assert exc.value.status_code == 413 and upload.reads == 3  # never read the rest
    assert asyncio.run(security.read_upload(_Upload(b"abc"), limit=10)) == b"abc"
    with pytest.raises(HTTPException) as exc:
        asyncio.run(security.read_upload(_Upload(b""), limit=10))
    assert exc.value.status_code == 422 and exc.value.detail == "cannot read scan.png: empty file"
    with pytest.raises(HTTPException, match="cannot read <upload>: empty file"):
        asyncio.run(security.read_upload(_Upload(b"", filename=None), limit=10))


def _tiny_app(frame_ancestors="'self'") -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/x")
    def x() -> dict:
        return {"ok": True}

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("hidden detail")

    @app.post("/upload")
    async def upload(request: Request) -> dict:
        return {"n": len(await request.body())}

    app.add_middleware(security.BodyLimitMiddleware, max_body=1000)
    app.add_middleware(security.ErrorIdMiddleware)
    app.add_middleware(security.SecurityHeadersMiddleware, frame_ancestors=frame_ancestors)
    return app


def test_middlewares_headers_errors_and_body_limit():
    with TestClient(_tiny_app(), raise_server_exceptions=False) as c:
        r = c.get("/api/v1/x")
        assert (
            r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "SAMEORIGIN"
        )
        assert (
            r.headers["cache-control"] == "no-store"
            and "frame-ancestors 'self'" in r.headers["content-security-policy"]
        )
        r = c.get("/boom")
        assert r.status_code == 500 and r.json()["detail"] == "internal error" and "hidden" not in r.text
        assert r.headers["x-content-type-options"] == "nosniff"
        assert c.post("/upload", content=b"x" * 999).json() == {"n": 999}
        assert c.post("/upload", content=b"x" * 1001).status_code == 413

        def stream():
            for _ in range(5):
                yield b"y" * 400

        assert c.post("/upload", content=stream()).status_code == 413
    with TestClient(_tiny_app("'self' https://huggingface.co")) as c:
        r = c.get("/api/v1/x")
        assert "x-frame-options" not in r.headers and "huggingface.co" in r.headers["content-security-policy"]

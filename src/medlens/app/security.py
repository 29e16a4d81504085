"""Security and robustness of the web app: bearer token, binding rule, upload limits, header sniffing,
headers, and a last-resort error handler that answers 500 with an error id and no stack trace.

The middlewares are plain ASGI (not ``BaseHTTPMiddleware``) so that they stream, cost nothing per request, and
also cover the mounted Gradio app.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import PurePath, PurePosixPath
from typing import Any

from fastapi import HTTPException, Request, UploadFile

from medlens.errors import UPLOAD_NAME, ConfigError

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MULTIPART_SLACK_BYTES = 64 * 1024  # boundaries and form fields around the file in a multipart body
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


# ------------------------------------------------------------------------------------------------ binding
def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only: "localhost", or an address
    that parses as a loopback IP (127.0.0.0/8, ::1, also in brackets). Names are not resolved, so
    "127.0.0.1.evil.com" is not loopback."""
    host = host.strip().lower()
    if host in ("localhost", "localhost."):
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None, insecure: bool = False) -> None:
    """Refuse to listen beyond loopback without a token (ConfigError) unless ``insecure`` is set."""
    if is_loopback(host) or token or insecure:
        if not is_loopback(host) and not token:
            logger.warning("listening on %s WITHOUT a token: anyone who can reach it can use it", host)
        return
    raise ConfigError(
        f"refusing to listen on {host!r} without a token: anyone on the network could read the analyses. "
        "Set MEDLENS_API_TOKEN (or pass --token), bind 127.0.0.1, or pass --insecure if something else "
        "(a reverse proxy, a firewall) controls access."
    )


# ------------------------------------------------------------------------------------------------ token
def token_matches(presented: str | None, token: str) -> bool:
    """Constant-time comparison of a presented secret with the configured token."""
    if not presented:
        return False
    return secrets.compare_digest(presented.encode("utf-8"), token.encode("utf-8"))


def bearer_dependency(token: str | None) -> Callable[[Request], None]:
    """FastAPI dependency requiring ``Authorization: Bearer <token>`` (401 otherwise); no-op without token."""

    def require_bearer(request: Request) -> None:
        if not token:
            return
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token_matches(presented.strip(), token):
            raise HTTPException(
                status_code=401,
                detail="missing or invalid bearer token (send 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_bearer


def gradio_auth(token: str) -> Callable[[str, str], bool]:
    """A Gradio ``auth`` callable: any user name, the token as password (constant-time)."""

    def check(_username: str, password: str) -> bool:
        return token_matches(password, token)

    return check


# ------------------------------------------------------------------------------------------------ uploads
UPLOAD_NAME_LIMIT = 80


def upload_name(path: str | PurePath | None) -> str:
    """An uploaded file's name as its user knows it, safe to show: the basename only (Gradio keeps an upload
    as ``<cache>/<hash>/<name>``; a client may send a path, with either slash), characters that are not
    printable and backticks dropped, a long name cut; "" when nothing is left."""
    base = PurePosixPath(str(path or "").replace("\\", "/")).name
    name = "".join(c for c in base if c.isprintable() and c != "`").strip()
    return name if len(name) <= UPLOAD_NAME_LIMIT else name[: UPLOAD_NAME_LIMIT - 1] + "…"


async def read_upload(upload: UploadFile, limit: int, chunk_size: int = 1024 * 1024) -> bytes:
    """Read an upload in chunks; 413 as soon as it exceeds ``limit`` bytes, 422 (naming the file, see
    :func:`upload_name`) when it is empty."""
    chunks, size = [], 0
    while chunk := await upload.read(chunk_size):
        size += len(chunk)
        if size > limit:
            raise HTTPException(status_code=413, detail=too_large_message(limit))
        chunks.append(chunk)
    if size == 0:
        name = upload_name(upload.filename) or UPLOAD_NAME
        raise HTTPException(status_code=422, detail=f"cannot read {name}: empty file")
    return b"".join(chunks)


def too_large_message(limit: int) -> str:
    return f"upload too large: the limit is {limit / 1024 / 1024:g} MB (MEDLENS_MAX_UPLOAD_MB)"


def declared_size(data: bytes, max_pixels: int | None, name: str | None = None) -> tuple[int, int] | None:
    """(height, width) declared by an image's header; ImageTooLargeError (413, with the declared size, naming
    the file ``name``) when it declares more than ``max_pixels`` pixels. Reads the header only, so a
    decompression bomb is refused before any allocation; None for other header problems, left to
    ``read_image``, whose messages say more."""
    from medlens.data.io import probe_image  # imported here: keeps `import medlens.app.security` light
    from medlens.errors import ImageReadError, ImageTooLargeError

    try:
        info = probe_image(data, max_pixels=max_pixels, name=name)
    except ImageTooLargeError:
        raise
    except ImageReadError:
        return None
    return info.height, info.width


# ------------------------------------------------------------------------------------------------ middlewares
async def send_json(send: Send, status: int, payload: dict[str, Any], headers: list | None = None) -> None:
    body = json.dumps(payload).encode("utf-8")
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse bodies over ``max_body`` bytes with 413: at once from Content-Length, else while streaming."""

    def __init__(self, app: ASGIApp, max_body: int, message: str | None = None) -> None:
        self.app, self.max_body = app, max_body
        self.message = message or f"request body too large: the limit is {max_body} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await send_json(send, 413, {"detail": self.message}, [(b"connection", b"close")])
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(status_code=413, detail=self.message)
            return message

        await self.app(scope, limited_receive, send)


class SecurityHeadersMiddleware:
    """Add nosniff, referrer and framing headers to every response; ``no-store`` on API responses."""

    def __init__(self, app: ASGIApp, frame_ancestors: str | None = "'self'") -> None:
        self.app = app
        self.headers = list(SECURITY_HEADERS)
        if frame_ancestors:
            self.headers.append((b"content-security-policy", f"frame-ancestors {frame_ancestors}".encode()))
            if frame_ancestors.strip() == "'self'":
                self.headers.append((b"x-frame-options", b"SAMEORIGIN"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope.get("path", ""), scope.get("root_path", "")
        is_api = (path[len(root) :] if root and path.startswith(root) else path).startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.headers if k not in present]
                if is_api and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def log_internal_error(exc: BaseException, where: str) -> str:
    """Log an unexpected exception with its traceback under a fresh error id and return the id (the one thing
    a client is told). Only the exception is logged, never local variables: no pixel data reaches the log."""
    error_id = uuid.uuid4().hex[:12]
    logger.error("internal error %s on %s", error_id, where, exc_info=(type(exc), exc, exc.__traceback__))
    return error_id


class ErrorIdMiddleware:
    """Answer any unhandled exception with 500 ``{"detail": "internal error", "id": <error id>}``.

    The traceback is logged server-side under that id; the client never sees it. Pixel data never reaches the
    log because only the exception and its traceback are logged, not local variables.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except HTTPException as exc:  # raised outside a route (e.g. by BodyLimitMiddleware's receive)
            if not started:
                await send_json(send, exc.status_code, {"detail": exc.detail})
        except Exception as exc:
            error_id = log_internal_error(exc, f"{scope.get('method')} {scope.get('path')}")
            if not started:
                await send_json(send, 500, {"detail": "internal error", "id": error_id})

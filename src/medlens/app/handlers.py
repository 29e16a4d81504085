"""Errors to HTTP answers, by exception type (never by message text).

- :class:`~medlens.errors.ImageTooLargeError` -> 413 with the image's real size;
- :class:`~medlens.errors.UnknownNameError` -> 422 with the valid names;
- :class:`~medlens.app.service.NoPipelineError` -> 503;
- any other :class:`~medlens.errors.MedlensError` (bad input) -> 422 with its message;
- a malformed multipart body -> 400 with the parser's reason;
- :class:`~medlens.errors.InternalError` and anything unexpected -> 500
  ``{"detail": "internal error", "id"}``, the traceback logged under that id and never sent (anything that
  no handler takes is answered the same way by ``security.ErrorIdMiddleware``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from medlens.app.security import log_internal_error
from medlens.app.service import NoPipelineError
from medlens.errors import ImageTooLargeError, InternalError, MedlensError, UnknownNameError

logger = logging.getLogger(__name__)

MULTIPART_HINT = {
    "Maximum header size exceeded": "a part header (usually the file name) is longer than about 4 kB; "
    "rename the file to a shorter name",
}


def internal_error_response(exc: BaseException, where: str) -> JSONResponse:
    """500 with a fresh error id; the traceback goes to the log under that id, never to the client."""
    return JSONResponse({"detail": "internal error", "id": log_internal_error(exc, where)}, status_code=500)


def _where(request: Request) -> str:
    return f"{request.method} {request.url.path}"


async def too_large(_request: Request, exc: ImageTooLargeError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=413)


async def unknown_name(_request: Request, exc: UnknownNameError) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "valid": exc.valid}, status_code=422)


async def no_pipeline(_request: Request, exc: NoPipelineError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)


async def bad_input(_request: Request, exc: MedlensError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def internal(request: Request, exc: InternalError) -> JSONResponse:
    return internal_error_response(exc, _where(request))


async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    message = "; ".join(f"{'.'.join(e['loc'][1:] or e['loc'])}: {e['msg']}" for e in errors)
    return JSONResponse({"detail": f"invalid request: {message}", "errors": errors}, status_code=422)


def multipart_reason(exc: HTTPException) -> str | None:
    """The parser's reason behind Starlette's "Invalid multipart data." (None for other HTTP errors)."""
    context = exc.__context__
    if not isinstance(context, MultiPartException):
        return None
    cause = str(context.__cause__ or "").strip()
    if not cause:
        return context.message
    return f"{context.message.rstrip('.')}: {cause}" + (
        f" ({MULTIPART_HINT[cause]})" if cause in MULTIPART_HINT else ""
    )


async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    reason = multipart_reason(exc)
    detail = f"malformed upload: {reason}" if reason else exc.detail
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


HANDLERS = (
    (ImageTooLargeError, too_large),
    (UnknownNameError, unknown_name),
    (NoPipelineError, no_pipeline),
    (MedlensError, bad_input),
    (InternalError, internal),
    (RequestValidationError, invalid_request),
    (HTTPException, http_error),
)


def add_error_handlers(app: FastAPI) -> None:
    """Register :data:`HANDLERS` (Starlette picks the most specific class of the exception's MRO)."""
    for kind, handler in HANDLERS:
        app.add_exception_handler(kind, handler)

"""Throttle failed credentials per client: wrong API tokens (401 under ``/api/``) and failed UI logins
(``POST /login`` answered 400/401). After ``max_failures`` failures within ``window_s`` seconds a client gets
429 with ``Retry-After`` on those paths until its oldest counted failure leaves the window.

The client is the connection's address as uvicorn reports it (``--forwarded-allow-ips`` decides whether a
proxy's X-Forwarded-For replaces it). Plain ASGI, like the other middlewares in :mod:`medlens.app.security`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

from medlens.app.security import ASGIApp, Message, Receive, Scope, Send, send_json

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 300.0
MAX_CLIENTS = 10_000  # bound on the clients remembered (oldest forgotten first)


class FailureThrottle:
    """Failure times per client in a sliding window. Thread-safe."""

    def __init__(
        self,
        max_failures: int,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0 = now)."""
        with self._lock:
            now = self.clock()
            times = self._recent(client, now)
            if len(times) < self.max_failures:
                return 0.0
            return max(0.0, self.window_s - (now - times[-self.max_failures]))

    def record_failure(self, client: str) -> None:
        with self._lock:
            now = self.clock()
            times = self._recent(client, now)
            times.append(now)
            self._failures.pop(client, None)
            self._failures[client] = times  # most recent last: the oldest clients are forgotten first
            while len(self._failures) > MAX_CLIENTS:
                self._failures.pop(next(iter(self._failures)))
        if len(times) == self.max_failures:
            logger.warning("client %s throttled after %d failed logins or tokens", client, len(times))


def _guarded(scope: Scope) -> str | None:
    """ "api" or "login" when the request's credentials are checked, else None."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    path = path[len(root) :] if root and path.startswith(root) else path
    if path.startswith("/api/"):
        return "api"
    if path.rstrip("/") == "/login" and scope.get("method") == "POST":
        return "login"
    return None


class AuthThrottleMiddleware:
    """429 for clients with too many recent credential failures; counts the failures it sees."""

    def __init__(self, app: ASGIApp, throttle: FailureThrottle) -> None:
        self.app, self.throttle = app, throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = _guarded(scope) if scope["type"] == "http" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown",))[0]
        wait = self.throttle.retry_after(client)
        if wait > 0:
            detail = f"too many failed logins or tokens from this client; try again in {math.ceil(wait)} s"
            await send_json(send, 429, {"detail": detail}, [(b"retry-after", str(math.ceil(wait)).encode())])
            return
        failed = (401,) if kind == "api" else (400, 401)

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in failed:
                self.throttle.record_failure(client)
            await send(message)

        await self.app(scope, receive, watching_send)

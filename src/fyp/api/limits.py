"""A bound on the requests a server process holds at once.

Without it every request that arrives while the feed slots and worker threads are busy waits in
memory (its connection, its task, its body once read), however many arrive. With it, a request
beyond ``max_in_flight`` is answered at once with a 503 ``overloaded`` problem and
``Retry-After``, before its body is read: a client backs off, the server's memory stays bounded.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from fyp.api import problems
from fyp.errors import Overloaded

RETRY_AFTER_S = 1


class InFlightLimit:
    """Pure ASGI middleware: at most ``limit`` HTTP requests inside ``app`` at once."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.app = app
        self.limit = limit
        self.in_flight = 0
        """Requests inside now (one event loop: no lock needed)."""
        self.refused = 0
        """Requests answered 503 since start."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.refused += 1
            response = problems.problem(
                Overloaded.status,
                Overloaded.slug,
                Overloaded.title,
                f"the server is handling {self.limit} requests; retry in {RETRY_AFTER_S} s",
                scope.get("path"),
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

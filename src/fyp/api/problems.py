"""Errors as RFC 9457 problem documents: the one place where failures become HTTP.

Every error response has ``Content-Type: application/problem+json`` and a stable ``type``
(``urn:fyp:problem:<slug>``) that clients can switch on; ``detail`` is for humans.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fyp.errors import PROBLEM_TYPE_PREFIX, FypError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
MAX_INSTANCE_LEN = 512

_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("access-denied", "Access denied"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance and len(instance) <= MAX_INSTANCE_LEN:
        # A longer path is left out rather than echoed: the answer to a hostile request stays
        # small whatever it sent (ids are at most 128 characters, so real paths fit).
        body["instance"] = instance
    body.update(extra)
    all_headers = dict(headers or {})
    if status == 401:
        all_headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=all_headers)


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def validation_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic errors as ``{"field", "detail"}``, fields as dotted paths (``items.3.tags``)."""
    return [
        {"field": _location(tuple(err.get("loc", ()))), "detail": str(err.get("msg", "invalid"))}
        for err in errors
    ]


def _allowed_methods(request: Request) -> list[str]:
    """Every method the request's path is served with. Each method of a path is a route of its
    own, and Starlette's 405 names only those of the first route that matched the path; the
    API document lists them all (the route itself covers paths left out of the document)."""
    route = request.scope.get("route")
    methods = set(getattr(route, "methods", None) or ())
    template = getattr(route, "path", None)
    operations = request.app.openapi().get("paths", {}).get(template, {})
    methods.update(method.upper() for method in operations)
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(FypError)
    async def fyp_error(request: Request, exc: FypError) -> JSONResponse:
        return problem(
            exc.status,
            exc.slug,
            exc.title,
            exc.detail,
            request.url.path,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc.errors())
        first = errors[0] if errors else {"field": "body", "detail": "invalid"}
        return problem(
            422,
            "invalid-input",
            "Invalid input",
            f"{first['field']}: {first['detail']}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
            request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem(
            exc.status_code, slug, title, str(exc.detail), request.url.path, headers=headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(
            500, "internal", "Internal error", "the server failed; see its log", request.url.path
        )

"""The OpenAPI document says what the server really sends and accepts.

* Every refusal is a problem document (``application/problem+json``, schema ``Problem``):
  :data:`PROBLEM_RESPONSES` lists them, with the headers they carry (``WWW-Authenticate`` on 401,
  ``Retry-After`` on 429), and replaces FastAPI's default 422 (``HTTPValidationError`` as
  ``application/json``, which the server never sends). The ``/v1`` router passes it to every
  route it holds, so a route added there is documented without further work.
* Path ids carry the constraints the server checks (:func:`fyp.types.is_valid_id`), and the
  ``region`` of a user, a feed or a training request the deployment's configured regions, so a
  request the document calls valid is one the server accepts. Both are filled in when the
  document is generated (:func:`install`): the routes check ids themselves, and the regions
  come from the configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from fyp.api.problems import PROBLEM_JSON
from fyp.types import Id


class ProblemFieldError(BaseModel):
    field: str
    """The offending field as a dotted path (``items.3.tags``), or ``body``."""
    detail: str


class Problem(BaseModel):
    """An RFC 9457 problem document: every error response of fyp."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    type: str = Field(pattern=r"^urn:fyp:problem:[a-z0-9-]+$")
    """Stable, for clients to switch on: ``urn:fyp:problem:<slug>``."""
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    """For humans."""
    instance: str | None = None
    """The request path."""
    errors: list[ProblemFieldError] | None = None
    """``invalid-input``: every field that failed, not only the first."""
    retry_after: int | None = None
    """``rate-limited``: seconds to wait (also the ``Retry-After`` header)."""


_PROBLEM_REF: Final = {"$ref": "#/components/schemas/Problem"}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
    }
    if headers:
        response["headers"] = headers
    return response


PROBLEM_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    400: _problem("The request body could not be read"),
    401: _problem(
        "No valid API key (`urn:fyp:problem:unauthenticated`)",
        {
            "WWW-Authenticate": {
                "description": "The scheme to authenticate with",
                "schema": {"type": "string", "enum": ["Bearer"]},
            }
        },
    ),
    403: _problem(
        "Refused (`access-denied`): the API key lacks the route's scope or region, the client is "
        "not loopback on a server without keys, or the region's policy refuses the access"
    ),
    404: _problem("No such user, item or region (`not-found`)"),
    409: _problem("Conflicts with what is stored (`conflict`)"),
    413: _problem("The request body is over the limit (`payload-too-large`)"),
    422: _problem("Invalid input (`invalid-input`), every failing field under `errors`"),
    429: _problem(
        "The API key's rate limit is spent (`rate-limited`)",
        {
            "Retry-After": {
                "description": "Seconds to wait before the key has room again",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    ),
    503: _problem(
        "The region is unavailable (`region-quarantined`, `key-unavailable`) or a backend is "
        "down (`backend-unavailable`)"
    ),
}
"""Every problem a ``/v1`` route can answer with (the server's own 500s are not a contract)."""

_ID_SCHEMA: Final[dict[str, Any]] = TypeAdapter(Id).json_schema()
"""What :func:`fyp.types.is_valid_id` accepts, as the body models declare it."""


def install(app: FastAPI, region_names: Sequence[str]) -> None:
    """Generate ``app``'s document with the ``Problem`` schema, id constraints on path ids and
    ``region_names`` as the only region names."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem.pop("$defs", {}))
            schemas["Problem"] = problem
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)  # FastAPI's default 422, replaced above
            _constrain(spec, list(region_names))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def _constrain(spec: dict[str, Any], region_names: list[str]) -> None:
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                name = parameter.get("name", "")
                if parameter.get("in") == "path" and name.endswith("_id"):
                    parameter["schema"] = {**parameter.get("schema", {}), **_ID_SCHEMA}
                elif name == "region":
                    _pin_regions(parameter.get("schema", {}), region_names)
    for schema in spec.get("components", {}).get("schemas", {}).values():
        properties = schema.get("properties", {})
        if "region" in properties:
            _pin_regions(properties["region"], region_names)


def _pin_regions(schema: dict[str, Any], region_names: list[str]) -> None:
    """Limit a region-name schema (or each branch of ``anyOf``, for optional ones) to the
    deployment's regions."""
    if schema.get("type") == "string":
        schema["enum"] = region_names
    for branch in schema.get("anyOf", ()):
        _pin_regions(branch, region_names)

"""One error hierarchy for the whole engine.

Every failure a caller can act on is a :class:`FypError` subclass with a stable ``slug``. The HTTP
layer maps them to RFC 9457 problem documents in exactly one place (``fyp.api.problems``); the CLI
prints them. Code never raises bare ``ValueError`` across a module boundary for caller mistakes.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_TYPE_PREFIX = "urn:fyp:problem:"


class FypError(Exception):
    """Base of every error fyp reports to a caller."""

    slug: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.slug

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the problem response carries besides its body (none by default)."""
        return {}


class InvalidInput(FypError):
    slug = "invalid-input"
    status = 422
    title = "Invalid input"


class NotFound(FypError):
    slug = "not-found"
    status = 404
    title = "Not found"


class Conflict(FypError):
    slug = "conflict"
    status = 409
    title = "Conflict"


class AccessDenied(FypError):
    """The governance gate refused an access; the refusal is in the region's audit log."""

    slug = "access-denied"
    status = 403
    title = "Access denied"


class Unauthenticated(FypError):
    slug = "unauthenticated"
    status = 401
    title = "Authentication required"


class RateLimited(FypError):
    """An API key spent its request budget; ``Retry-After`` says when to try again."""

    slug = "rate-limited"
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class BackendUnavailable(FypError):
    slug = "backend-unavailable"
    status = 503
    title = "Backend unavailable"


class Overloaded(FypError):
    """The server holds as many requests as it is configured to (``server.max_in_flight``):
    this one is refused at once, before its body is read, instead of queueing without bound."""

    slug = "overloaded"
    status = 503
    title = "Server busy"


class RegionQuarantined(FypError):
    """A region failed an integrity check (its audit log or key): it serves no personal data
    until an operator fixes it; other regions carry on."""

    slug = "region-quarantined"
    status = 503
    title = "Region unavailable"


class AuditLogDamaged(RegionQuarantined):
    """A region's audit log cannot take another entry (its counter, entries or tree were altered
    or damaged): nothing more is done in that region, since it could not be recorded."""


class WitnessRefused(FypError):
    """A witness's source (a server's audit endpoints, or the log's files) gave no usable tree
    head or proof; the witness kept nothing."""

    slug = "witness-refused"
    status = 502
    title = "No usable tree head"


class KeyUnavailable(FypError):
    """A region's key-encryption key is missing, unreadable, corrupt or not the one its data
    needs: the region serves no personal data until the key file is restored."""

    slug = "key-unavailable"
    status = 503
    title = "Encryption key unavailable"


class CiphertextInvalid(FypError):
    """An encrypted value does not open under its key and context (altered, or moved to another
    user, row or column)."""

    slug = "ciphertext-invalid"
    status = 500
    title = "Encrypted data failed its check"


class SchemaMismatch(FypError):
    """A database was written by a newer fyp, or is not an fyp database at all."""

    slug = "schema-mismatch"
    status = 500
    title = "Schema mismatch"


class ConfigError(FypError):
    slug = "config-error"
    status = 500
    title = "Configuration error"

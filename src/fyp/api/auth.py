"""Who may call the HTTP API: API keys, the scope each route needs, and per-key rate limits.

Two modes:

* **keys configured** (``FYP_API_KEY`` set, or a keys file made by ``fyp apikey``): every
  ``/v1`` call needs ``Authorization: Bearer <secret>`` of an active key (else 401) whose scopes
  cover the route (:data:`ROUTE_SCOPES`, else 403) and whose rate limit has room (else 429 with
  ``Retry-After``). The key's regions are enforced by the gate
  (:func:`fyp.governance.api_keys.region_refusal`), and its name goes into the audit entries the
  request causes.
* **no keys**: loopback clients only, as before keys existed.

The keys file is re-read when it changes (checked at most once a second), so ``fyp apikey add``
and ``revoke`` reach a running server without a restart. Rate limits are per server process:
with ``--workers N`` a key can get up to N times its rate.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import SecretStr

from fyp.errors import AccessDenied, ConfigError, RateLimited, Unauthenticated
from fyp.governance import api_keys
from fyp.governance.api_keys import ApiKey, KeyFile

log = logging.getLogger(__name__)

ANY_SCOPE: Final = "any"
"""Routes that publish no personal data (the region list, the transparency report): any key."""

ROUTE_SCOPES: Final[Mapping[tuple[str, str], str]] = {
    ("GET", "/v1/regions"): ANY_SCOPE,
    ("GET", "/v1/transparency"): ANY_SCOPE,
    ("PUT", "/v1/items"): "ingest",
    ("GET", "/v1/items/{item_id}"): "feed",
    ("PUT", "/v1/users"): "ingest",
    ("GET", "/v1/users/{user_id}"): "ingest",
    ("POST", "/v1/events"): "ingest",
    ("GET", "/v1/users/{user_id}/feed"): "feed",
    ("GET", "/v1/users/{user_id}/export"): "rights",
    ("DELETE", "/v1/users/{user_id}"): "rights",
    ("GET", "/v1/users/{user_id}/controls"): "rights",
    ("PUT", "/v1/users/{user_id}/controls"): "rights",
    ("PATCH", "/v1/users/{user_id}/controls"): "rights",
    ("GET", "/v1/users/{user_id}/interests"): "rights",
    ("DELETE", "/v1/users/{user_id}/interests"): "rights",
    ("POST", "/v1/train"): "train",
}
"""The scope each ``/v1`` route needs (``admin`` has them all). The one table to edit when a
route is added; a test fails for any route missing here."""

PREFIX_SCOPES: Final = (("/v1/audit", "audit"),)
"""Routes under these prefixes need this scope unless listed above."""

FALLBACK_SCOPE: Final = "admin"
"""What a route in neither table needs: only ``admin`` keys, until someone decides."""

HEALTH_DETAIL_SCOPES: Final = frozenset({"admin", "audit"})
"""Keys that see ``/healthz`` in full (model versions, quarantine reasons)."""


def required_scope(method: str, path: str) -> str:
    scope = ROUTE_SCOPES.get((method, path))
    if scope is not None:
        return scope
    for prefix, prefixed in PREFIX_SCOPES:
        if path == prefix or path.startswith(prefix + "/"):
            return prefixed
    return FALLBACK_SCOPE


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class _Bucket:
    tokens: float
    updated: float
    rate: float
    size: int


class RateLimiter:
    """A token bucket per key name: ``size`` requests at once, refilled at ``rate`` per second."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: ApiKey) -> float:
        """Spend one request of ``key``'s budget: 0 when allowed, else seconds until one is."""
        if key.rate is None:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key.name)
        if bucket is None or (bucket.rate, bucket.size) != (key.rate, key.bucket_size):
            # New key, or its limit changed in the file: start from a full bucket.
            bucket = _Bucket(float(key.bucket_size), now, key.rate, key.bucket_size)
            self._buckets[key.name] = bucket
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(float(bucket.size), bucket.tokens + elapsed * bucket.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / bucket.rate

    def forget_except(self, names: set[str]) -> None:
        for name in set(self._buckets) - names:
            del self._buckets[name]


class Authenticator:
    """The server's keys (``FYP_API_KEY`` and the keys file) and their rate limits.

    ``clock`` (monotonic seconds) drives the rate limits and the keys file re-reads; tests pass
    their own.
    """

    def __init__(
        self,
        data_dir: Path,
        env_secret: SecretStr | None = None,
        clock: Callable[[], float] = time.monotonic,
        reload_interval_s: float = 1.0,
    ) -> None:
        self._file = KeyFile(api_keys.keys_path(data_dir))
        self._env = api_keys.env_key(env_secret.get_secret_value()) if env_secret else None
        self._clock = clock
        self._reload_interval_s = reload_interval_s
        self._lock = threading.Lock()
        self._limiter = RateLimiter(clock)
        self._by_digest: dict[str, ApiKey] = {}
        self._signature: tuple[int, int, int] | None = None
        self._file_present = False
        self._checked_at = clock()
        with self._lock:
            # A broken keys file stops the server from starting: the operator sees why at once.
            self._load(strict=True, force=True)

    @property
    def configured(self) -> bool:
        """Whether requests need a key (else the server serves loopback clients only)."""
        with self._lock:
            self._refresh()
            return self._env is not None or self._file_present

    def identify(self, secret: str) -> ApiKey | None:
        """The active key with this secret, or ``None``."""
        with self._lock:
            self._refresh()
            # Looked up by digest: timing can tell at most how a guess's digest compares.
            return self._by_digest.get(api_keys.digest(secret))

    def authorize(
        self, token: str | None, client_host: str | None, method: str, route: str
    ) -> ApiKey | None:
        """The key a request to ``route`` acts under (``None``: keyless loopback); raises the
        401, 403 or 429 the request gets instead."""
        if not self.configured:
            if not is_loopback(client_host):
                raise AccessDenied(
                    "this server has no API key and serves loopback clients only; "
                    "set FYP_API_KEY or add one with 'fyp apikey add' to accept remote clients"
                )
            return None
        key = self.identify(token) if token else None
        if key is None:
            raise Unauthenticated("send 'Authorization: Bearer <key>' with a valid API key")
        with self._lock:
            wait = self._limiter.take(key)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise RateLimited(
                f"API key {key.name!r} is limited to {key.rate:g} requests per second "
                f"(bursts of {key.bucket_size}); retry in {retry_after} s",
                retry_after=retry_after,
            )
        scope = required_scope(method, route)
        if scope != ANY_SCOPE and not key.grants(scope):
            raise AccessDenied(
                f"API key {key.name!r} has scopes {sorted(key.scopes)}; "
                f"{method} {route} needs {scope!r}"
            )
        return key

    def sees_health_detail(self, token: str | None, client_host: str | None) -> bool:
        """Whether ``/healthz`` answers in full: to keys with ``admin`` or ``audit``, or to
        loopback clients of a server without keys."""
        if not self.configured:
            return is_loopback(client_host)
        key = self.identify(token) if token else None
        return key is not None and bool(key.scopes & HEALTH_DETAIL_SCOPES)

    # ---- the keys file ---------------------------------------------------------------------------

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked_at < self._reload_interval_s:
            return
        self._checked_at = now
        self._load(strict=False)

    def _load(self, strict: bool, force: bool = False) -> None:
        path = self._file.path
        try:
            stat = path.stat()
        except FileNotFoundError:
            signature = None
        else:
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._signature and not force:
            return
        self._signature = signature
        self._file_present = signature is not None
        try:
            keys = self._file.read()
        except ConfigError as exc:
            if strict:
                raise
            # Fail closed: no key of a file that cannot be read gets in (FYP_API_KEY still does).
            log.error("API keys file unreadable, its keys refused until fixed: %s", exc)
            keys = []
        active = {k.digest: k for k in keys if k.active}
        if self._env is not None:
            active[self._env.digest] = self._env
        self._by_digest = active
        self._limiter.forget_except({k.name for k in active.values()})


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None

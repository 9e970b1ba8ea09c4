"""Named API keys with scopes, regions and rate limits, and the key a request acts under.

Keys live in ``<data_dir>/keys/api-keys.json`` (mode 0600), written by ``fyp apikey``. The file
holds each key's SHA-256 digest, never the secret: the secret is printed once when the key is
made. A plain hash is enough because secrets are 256 random bits (nothing to guess from a
dictionary); ``FYP_API_KEY`` (chosen by the operator, so perhaps weaker) is never written here.

Each key has scopes from :data:`SCOPES` (``admin`` implies every other), optionally a set of
regions (the gate refuses to open any other region while a request acts under that key) and
optionally a rate limit (requests per second, with a burst). ``FYP_API_KEY`` keeps working as
the key named ``default``, with every scope, every region and no rate limit.

The HTTP layer puts the key a request acts under in a context variable (:func:`acting_as`); the
gate reads it to refuse other regions (:func:`region_refusal`) and to name the key in the audit
entries the request causes (:func:`audit_detail`). Context variables follow the request into the
worker threads FastAPI and ``anyio.to_thread.run_sync`` run sync code in (each copies the
caller's context), so every entry the request causes carries the name.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from fyp.errors import ConfigError, Conflict, InvalidInput, NotFound

SCOPES: Final = ("ingest", "feed", "rights", "train", "audit", "admin")
"""``ingest``: catalog, users and events in; ``feed``: feeds and item details; ``rights``: a
user's export, erasure, controls and interests; ``train``: retraining; ``audit``: the audit
routes and the full ``/healthz``; ``admin``: everything."""

DEFAULT_KEY_NAME: Final = "default"
"""The name ``FYP_API_KEY`` goes by (reserved: no key in the file may take it)."""

KEYS_FILE: Final = Path("keys") / "api-keys.json"
"""Where the named keys live, relative to the data directory."""

SECRET_PREFIX: Final = "fyp_"
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FILE_VERSION: Final = 1


def digest(secret: str) -> str:
    """The SHA-256 of a secret, hex: what the keys file holds and what requests are matched by."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One named key: what it may do, where, and how often. Holds the secret's digest only."""

    name: str
    digest: str
    scopes: frozenset[str]
    regions: frozenset[str] | None = None
    """``None``: every region; else only these."""
    rate: float | None = None
    """Sustained requests per second; ``None``: unlimited."""
    burst: int | None = None
    """Requests allowed at once before the rate applies (default: the rate, at least 1)."""
    created_at: float = 0.0
    revoked_at: float | None = None

    def grants(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def covers(self, region: str) -> bool:
        return self.regions is None or region in self.regions

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def bucket_size(self) -> int:
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate or 1.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.digest,
            "scopes": sorted(self.scopes),
            "regions": sorted(self.regions) if self.regions is not None else None,
            "rate": self.rate,
            "burst": self.burst,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }

    @classmethod
    def from_json(cls, raw: Any) -> ApiKey:
        if not isinstance(raw, dict):
            raise ValueError("a key entry is not an object")
        regions = raw.get("regions")
        key = cls(
            name=str(raw["name"]),
            digest=str(raw["sha256"]),
            scopes=frozenset(str(s) for s in raw["scopes"]),
            regions=frozenset(str(r) for r in regions) if regions is not None else None,
            rate=float(raw["rate"]) if raw.get("rate") is not None else None,
            burst=int(raw["burst"]) if raw.get("burst") is not None else None,
            created_at=float(raw.get("created_at", 0.0)),
            revoked_at=float(raw["revoked_at"]) if raw.get("revoked_at") is not None else None,
        )
        if not re.fullmatch(r"[0-9a-f]{64}", key.digest):
            raise ValueError(f"key {key.name!r}: sha256 is not a SHA-256 hex digest")
        unknown = key.scopes - set(SCOPES)
        if unknown or not key.scopes:
            raise ValueError(f"key {key.name!r}: unknown or no scopes {sorted(unknown)}")
        return key


def env_key(secret: str) -> ApiKey:
    """``FYP_API_KEY`` as a key: every scope, every region, no rate limit."""
    return ApiKey(name=DEFAULT_KEY_NAME, digest=digest(secret), scopes=frozenset({"admin"}))


def keys_path(data_dir: Path) -> Path:
    return data_dir / KEYS_FILE


def keys_configured(data_dir: Path, env_secret: object | None) -> bool:
    """Whether the server runs with keys: ``FYP_API_KEY`` is set or a keys file exists.

    A keys file whose keys are all revoked still counts: revoking the last key locks everyone
    out rather than silently reopening the server to unauthenticated loopback clients. Delete
    the file to go back to loopback-only serving without keys.
    """
    return env_secret is not None or keys_path(data_dir).exists()


def parse_scopes(text: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(f"scopes must be a comma-separated subset of {', '.join(SCOPES)}")
    return scopes


@dataclass
class KeyFile:
    """The keys file: read it, add a key, revoke one. Changes are atomic (write and rename) and
    serialized between processes by an advisory lock next to the file."""

    path: Path

    def read(self) -> list[ApiKey]:
        """Every key in the file, revoked ones included; ``[]`` when there is no file.

        Raises ``ConfigError`` (with the reason) on a file that is not a keys file.
        """
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{self.path}: not readable as JSON: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("version") != _FILE_VERSION:
            raise ConfigError(f"{self.path}: not an fyp API keys file (version {_FILE_VERSION})")
        try:
            keys = [ApiKey.from_json(entry) for entry in raw["keys"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.path}: malformed key entry: {exc}") from exc
        names = [k.name for k in keys]
        if len(names) != len(set(names)):
            raise ConfigError(f"{self.path}: a key name appears twice")
        return keys

    def add(
        self,
        name: str,
        scopes: Iterable[str],
        now: float,
        regions: Sequence[str] | None = None,
        rate: float | None = None,
        burst: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Make a key; returns it and its secret (the only time the secret exists outside the
        caller's hands)."""
        if not _NAME_RE.match(name):
            raise InvalidInput(
                f"{name!r} is not a key name: 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if name == DEFAULT_KEY_NAME:
            raise InvalidInput(f"{DEFAULT_KEY_NAME!r} is the name FYP_API_KEY goes by")
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise InvalidInput("rate must be a positive number of requests per second")
        if burst is not None and burst < 1:
            raise InvalidInput("burst must be at least 1")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            name=name,
            digest=digest(secret),
            scopes=frozenset(scopes),
            regions=frozenset(regions) if regions else None,
            rate=rate,
            burst=burst,
            created_at=now,
        )
        with self._locked() as keys:
            if any(k.name == name for k in keys):
                # Names are never reused, revoked or not: the audit log names keys by them.
                raise Conflict(f"an API key named {name!r} exists already")
            keys.append(key)
        return key, secret

    def revoke(self, name: str, now: float) -> ApiKey:
        with self._locked() as keys:
            for index, key in enumerate(keys):
                if key.name == name:
                    if key.revoked_at is None:
                        keys[index] = replace(key, revoked_at=now)
                    return keys[index]
        raise NotFound(f"no API key named {name!r}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[ApiKey]]:
        """Read the keys under the lock, let the caller change the list, write it back."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            keys = self.read()
            yield keys
            self._write(keys)

    def _write(self, keys: list[ApiKey]) -> None:
        text = json.dumps({"version": _FILE_VERSION, "keys": [k.to_json() for k in keys]}, indent=2)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def describe(keys: Iterable[ApiKey]) -> list[str]:
    """One line per key, for ``fyp apikey list``: never the secret, a short id of its hash."""
    lines = []
    for key in keys:
        state = "active" if key.active else "revoked " + _stamp(key.revoked_at or 0.0)
        regions = ",".join(sorted(key.regions)) if key.regions is not None else "all regions"
        rate = f"{key.rate:g}/s burst {key.bucket_size}" if key.rate is not None else "no limit"
        lines.append(
            f"{key.name}\t{','.join(sorted(key.scopes))}\t{regions}\t{rate}\t"
            f"id {key.digest[:12]}\tcreated {_stamp(key.created_at)}\t{state}"
        )
    return lines


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# ---- the key a request acts under ---------------------------------------------------------------

_ACTING: Final[contextvars.ContextVar[ApiKey | None]] = contextvars.ContextVar(
    "fyp_api_key", default=None
)


def acting_as(key: ApiKey | None) -> None:
    """Mark the current request (its context) as acting under ``key`` (``None``: no key)."""
    _ACTING.set(key)


def current() -> ApiKey | None:
    return _ACTING.get()


def audit_detail() -> dict[str, str]:
    """What an audit entry caused by the current request says about its key: the name only."""
    key = _ACTING.get()
    return {"api_key": key.name} if key is not None else {}


def region_refusal(region: str, purpose: str) -> str | None:
    """Why the current request's key may not open ``region`` for ``purpose``; ``None`` if it may.

    Finding which region a user lives in (purpose ``route``) asks every region and reveals no
    personal data, so it is left to the policy; everything else stays inside the key's regions.
    """
    key = _ACTING.get()
    if key is None or purpose == "route" or key.covers(region):
        return None
    allowed = ", ".join(sorted(key.regions or ()))
    return f"API key {key.name!r} is limited to region(s) {allowed}, not {region!r}"

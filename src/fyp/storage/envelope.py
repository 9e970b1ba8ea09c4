"""Envelope encryption at rest: a key-encryption key per region, a data key per user.

Each region has a **keyring** of key-encryption keys (KEKs, AES-256), kept in one file under the
data directory (``keys/kek-<region>.json``, mode 0600). Every KEK has a version and an id derived
from its bytes (``kek_id``), so a key file holding other bytes under a known id cannot pass for it.
The newest KEK the region's database names as active wraps new data keys; every KEK listed can
unwrap. ``fyp keys rotate`` adds a version, re-wraps every user's data key under it and then drops
the old one: only the small wrapped keys change, never the encrypted rows.

Each user has a **data key** (DEK, AES-256), created on their first write, stored only wrapped
(``user_keys`` in the region's database): AES-GCM under the KEK with associated data binding it to
the region and the user, so a wrapped key copied to another user's row does not unwrap. Personal
columns are sealed with the DEK, AES-GCM again, with associated data naming the region, the user,
the column and the row (:func:`associated_data`): a ciphertext moved to another user, another row
or another column fails to open. Erasure deletes the wrapped key with the rows, so any copy of the
rows (a backup, a copied database file) can no longer be read by anyone (crypto-shredding).

Sealed values are ``0x01 ‖ nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)``; random 96-bit nonces
are safe far beyond the number of values one user's key ever seals.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fyp.errors import CiphertextInvalid, KeyUnavailable

KEY_FILE_FORMAT: Final = "fyp-region-kek-v1"
_SEALED_VERSION: Final = b"\x01"
_NONCE: Final = 12
_KEY_BYTES: Final = 32
DEK_CACHE_SIZE: Final = 50_000
"""Unwrapped data keys kept in process memory (about 0.3 KiB each)."""


def kek_id(key: bytes) -> str:
    """A KEK's id: a hash of its bytes (names the key without revealing it)."""
    return hashlib.sha256(b"fyp kek id v1\n" + key).hexdigest()[:16]


def associated_data(kind: str, region: str, user_id: str, *row: str) -> bytes:
    """What a sealed value is bound to: its kind (column), region, user and row identity.

    Each part is length-prefixed, so no two different tuples encode to the same bytes.
    """
    out = bytearray(b"fyp/" + kind.encode() + b"\n")
    for part in (region, user_id, *row):
        data = part.encode()
        out += struct.pack(">I", len(data)) + data
    return bytes(out)


class DataKey:
    """One user's unwrapped data key: seals and opens that user's values."""

    __slots__ = ("_aead", "wrapped")

    def __init__(self, key: bytes, wrapped: bytes = b"") -> None:
        self._aead = AESGCM(key)
        self.wrapped = wrapped
        """The wrapped form this key was read from (to notice a re-wrap or a new key)."""

    def seal(self, plaintext: bytes, ad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return _SEALED_VERSION + nonce + self._aead.encrypt(nonce, plaintext, ad)

    def open(self, sealed: bytes, ad: bytes) -> bytes:
        """The plaintext; raises ``InvalidTag`` when the value was not sealed with this key
        and ``ad`` (altered, moved to another row or user, or sealed under another key)."""
        data = sealed if isinstance(sealed, bytes) else bytes(sealed)
        if data[:1] != _SEALED_VERSION:
            raise InvalidTag("not a sealed fyp value")
        return self._aead.decrypt(data[1 : 1 + _NONCE], data[1 + _NONCE :], ad)


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


@dataclass(frozen=True)
class Kek:
    """One version of a region's key-encryption key."""

    id: str
    version: int
    key: bytes
    created_at: float

    @classmethod
    def generate(cls, version: int, now: float | None = None) -> Kek:
        key = AESGCM.generate_key(bit_length=256)
        return cls(kek_id(key), version, key, time.time() if now is None else now)


def _wrap_ad(region: str, user_id: str) -> bytes:
    return associated_data("dek", region, user_id)


class Keyring:
    """A region's KEK versions: the newest wraps, every listed one unwraps."""

    def __init__(self, region: str, keks: Iterable[Kek]) -> None:
        self.region = region
        self._keks = {k.id: k for k in keks}
        self._aeads = {k.id: AESGCM(k.key) for k in self._keks.values()}

    @classmethod
    def ephemeral(cls, region: str) -> Keyring:
        """A keyring that lives in memory only (tests, throwaway in-memory databases)."""
        return cls(region, [Kek.generate(1)])

    @property
    def keks(self) -> list[Kek]:
        return sorted(self._keks.values(), key=lambda k: k.version)

    @property
    def ids(self) -> set[str]:
        return set(self._keks)

    @property
    def newest(self) -> Kek:
        return self.keks[-1]

    def get(self, kid: str) -> Kek | None:
        return self._keks.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keks

    def with_new_version(self, now: float | None = None) -> tuple[Keyring, Kek]:
        kek = Kek.generate(self.newest.version + 1 if self._keks else 1, now)
        return Keyring(self.region, [*self._keks.values(), kek]), kek

    def only(self, ids: Iterable[str]) -> Keyring:
        keep = set(ids)
        return Keyring(self.region, [k for k in self._keks.values() if k.id in keep])

    def wrap(self, kid: str, user_id: str, dek: bytes) -> bytes:
        aead = self._aeads.get(kid)
        if aead is None:
            raise KeyUnavailable(f"region {self.region!r}: no KEK {kid} in the keyring")
        nonce = os.urandom(_NONCE)
        return nonce + aead.encrypt(nonce, dek, _wrap_ad(self.region, user_id))

    def unwrap(self, kid: str, user_id: str, wrapped: bytes) -> bytes:
        aead = self._aeads.get(kid)
        if aead is None:
            raise KeyUnavailable(
                f"region {self.region!r}: the data key of a user is wrapped by KEK {kid}, "
                "which the keyring does not hold"
            )
        data = bytes(wrapped)
        try:
            return aead.decrypt(data[:_NONCE], data[_NONCE:], _wrap_ad(self.region, user_id))
        except InvalidTag as exc:
            raise CiphertextInvalid(
                f"region {self.region!r}: a wrapped data key does not open under KEK {kid} for "
                "its user (altered, moved from another user, or a wrong key with that id)"
            ) from exc


class KeyFile:
    """The file holding a region's keyring (``keys/kek-<region>.json``, mode 0600)."""

    def __init__(self, path: Path, region: str) -> None:
        self.path = path
        self.region = region

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> Keyring:
        """The keyring; a missing, unreadable or malformed file is a clear ``KeyUnavailable``."""
        where = f"region {self.region!r}: key file {self.path}"
        try:
            mode = self.path.stat().st_mode
            raw = self.path.read_bytes()
        except FileNotFoundError as exc:
            raise KeyUnavailable(f"{where} is missing") from exc
        except OSError as exc:
            raise KeyUnavailable(f"{where} cannot be read: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyUnavailable(
                f"{where} is readable by others (mode {stat.S_IMODE(mode):o}); "
                "restrict it to its owner (chmod 600)"
            )
        try:
            doc = json.loads(raw)
            if doc.get("format") != KEY_FILE_FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, not {KEY_FILE_FORMAT!r}")
            keks = [
                Kek(
                    str(k["id"]),
                    int(k["version"]),
                    base64.b64decode(k["key"], validate=True),
                    float(k["created_at"]),
                )
                for k in doc["keys"]
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyUnavailable(f"{where} is corrupt: {exc}") from exc
        if doc.get("region") != self.region:
            raise KeyUnavailable(f"{where} belongs to region {doc.get('region')!r}")
        if not keks:
            raise KeyUnavailable(f"{where} holds no key")
        for kek in keks:
            if len(kek.key) != _KEY_BYTES:
                raise KeyUnavailable(f"{where} is corrupt: KEK {kek.id} is not a 256-bit key")
            if kek_id(kek.key) != kek.id:
                raise KeyUnavailable(
                    f"{where} is corrupt: the key listed as {kek.id} has other bytes"
                )
        if len({k.version for k in keks}) != len(keks):
            raise KeyUnavailable(f"{where} is corrupt: two keys share a version")
        return Keyring(self.region, keks)

    def save(self, keyring: Keyring) -> None:
        """Replace the file atomically (write, fsync, rename), mode 0600."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        self._write(tmp, keyring)
        tmp.replace(self.path)
        _fsync_dir(self.path.parent)

    def create(self) -> Keyring:
        """A new file with a first KEK; if another process created one meanwhile, that one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        self._write(tmp, Keyring(self.region, [Kek.generate(1)]))
        try:
            os.link(tmp, self.path)  # fails if another process won the race: use its file
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        _fsync_dir(self.path.parent)
        return self.load()

    def _write(self, path: Path, keyring: Keyring) -> None:
        doc: dict[str, Any] = {
            "format": KEY_FILE_FORMAT,
            "region": self.region,
            "keys": [
                {
                    "id": k.id,
                    "version": k.version,
                    "created_at": k.created_at,
                    "key": base64.b64encode(k.key).decode(),
                }
                for k in keyring.keks
            ],
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DataKeyCache:
    """A bounded LRU of unwrapped data keys by user id (thread-safe)."""

    def __init__(self, size: int = DEK_CACHE_SIZE) -> None:
        self._size = size
        self._keys: OrderedDict[str, DataKey] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, user_id: str) -> DataKey | None:
        with self._lock:
            key = self._keys.get(user_id)
            if key is not None:
                self._keys.move_to_end(user_id)
            return key

    def put(self, user_id: str, key: DataKey) -> None:
        with self._lock:
            self._keys[user_id] = key
            self._keys.move_to_end(user_id)
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)

    def evict(self, user_ids: Sequence[str]) -> None:
        with self._lock:
            for user_id in user_ids:
                self._keys.pop(user_id, None)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._keys


@dataclass(frozen=True)
class KekStatus:
    """One KEK as the region's key file and database see it."""

    id: str
    version: int
    created_at: float
    in_file: bool
    registered: bool
    active: bool
    retired_at: float | None
    data_keys: int
    """User data keys currently wrapped by this KEK."""


@dataclass(frozen=True)
class RotationReport:
    region: str
    new_kek: str
    new_version: int
    retired: list[str]
    rewrapped: int
    resumed: bool
    seconds: float

"""Signing keys for audit tree heads (Ed25519, through ``cryptography``).

Each region signs its own audit log's tree heads with a key of its own, kept in a file under the
data directory (``keys/audit-<region>.ed25519``, mode 0600, raw 32-byte seed). Anyone holding
the public key can check a tree head without access to the region; an auditor should pin the
public key (``fyp audit key``) somewhere the operator cannot rewrite, because a verifier that
trusts whatever key sits next to the log trusts whoever can replace both.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fyp.errors import ConfigError

_TREE_HEAD_CONTEXT = b"fyp audit tree head v1\n"


def tree_head_message(region: str, size: int, timestamp_ms: int, root: bytes) -> bytes:
    """The exact bytes a tree head signature covers; the region name binds it to one log."""
    name = region.encode()
    return (
        _TREE_HEAD_CONTEXT
        + struct.pack(">H", len(name))
        + name
        + struct.pack(">QQ", size, timestamp_ms)
        + root
    )


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Verifier:
    """A region's public key: checks tree head signatures."""

    public: Ed25519PublicKey

    @classmethod
    def from_hex(cls, text: str) -> Verifier:
        try:
            return cls(Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.strip())))
        except ValueError as exc:
            raise ConfigError(f"not an Ed25519 public key in hex: {exc}") from exc

    @classmethod
    def from_key_file(cls, path: Path) -> Verifier:
        """The public half of the signing key at ``path``, read without creating anything."""
        try:
            seed = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the signing key {path}: {exc.strerror}") from exc
        if len(seed) != 32:
            raise ConfigError(f"{path} is not an Ed25519 key (expected 32 bytes)")
        return Signer(Ed25519PrivateKey.from_private_bytes(seed)).verifier

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def hex(self) -> str:
        return self.public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def valid(self, message: bytes, signature: bytes) -> bool:
        try:
            self.public.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signer:
    """A region's private key: signs tree heads."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """Load the key at ``path``; create it (mode 0600) when there is none yet."""
        if path.exists():
            seed = path.read_bytes()
            if len(seed) != 32:
                raise ConfigError(f"{path} is not an Ed25519 key (expected 32 bytes)")
            return cls(Ed25519PrivateKey.from_private_bytes(seed))
        path.parent.mkdir(parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        seed = private.private_bytes_raw()
        # Write-then-rename so two processes starting together end with one complete key file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(seed)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)  # fails if another process won the race: use its key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return cls.load_or_create(path)

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.private.public_key())

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

"""Checking a region's audit log from outside it: verification that only reads, and a witness.

A region's signed tree heads live in the region's own audit database, so whoever can rewrite the
log can delete its heads too, and with them the evidence of a truncation or a rewrite. RFC 9162's
defence is that others keep copies. A **witness** (a monitor run by someone other than the
region's operator, ideally on another host, from cron or a timer) fetches the region's latest
signed head (``GET /v1/audit/{region}/head``, or the log's files read-only), checks its signature
with the region's public key pinned beforehand (``fyp audit key``), checks with a consistency
proof (``GET /v1/audit/{region}/consistency``) that the log only grew since the last head it
kept, and appends the head to a HEADS file of its own, one JSON object per line.
``fyp audit verify --against HEADS`` then checks the log against every head in that file, so a
log truncated or rewritten below a witnessed head fails even when its own heads were deleted too.

What a witness cannot see: entries appended after the last head it kept, then removed before
the next head was signed. The window is the signing interval plus the polling interval.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from fyp.config import FypConfig
from fyp.errors import BackendUnavailable, ConfigError, FypError, NotFound, WitnessRefused
from fyp.governance import merkle
from fyp.governance.keys import Verifier
from fyp.governance.policy import Principal
from fyp.storage.audit import SqlAuditLog, TreeHead
from fyp.storage.audit_verify import VerifyReport

# ---- reading a region's log without writing to it --------------------------------------------


def open_read_only(config: FypConfig, region: str) -> SqlAuditLog:
    """The region's audit log opened for checking: nothing is created, upgraded or written."""
    url = config.audit_url(region)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            # Opening a missing SQLite file would create an empty log, which then "verifies".
            raise NotFound(f"region {region!r} has no audit log at {path}")
    return SqlAuditLog(url, region, read_only=True)


def region_verifier(config: FypConfig, region: str, pinned: Verifier | None) -> Verifier:
    """The key to check the region's heads with: the pinned one, else the region's key file."""
    if pinned is not None:
        return pinned
    return Verifier.from_key_file(config.audit_key_path(region))


@dataclass
class VerifyOutcome:
    report: VerifyReport
    recorded_seq: int | None = None
    """The audit entry recording this verification (written after the check passed)."""


def verify_region(
    config: FypConfig,
    region: str,
    pinned: Verifier | None,
    witnessed: Sequence[TreeHead] = (),
    record_as: str | None = None,
) -> VerifyOutcome:
    """Verify the region's log in full, reading only; then, if it passed and ``record_as``
    names an auditor, record the verification as the log's next entry.

    Recording comes after the check so that the check never reads its own access, and only on
    a log that passed, so that nothing is appended to a log that could not hold it (a damaged
    log stays as it was found, for the investigation).
    """
    try:
        verifier = region_verifier(config, region, pinned)
    except ConfigError as exc:
        report = VerifyReport(region, 0)
        report.fail(f"the tree heads cannot be checked: {exc.detail}; pass --public-key")
        return VerifyOutcome(report)
    log = open_read_only(config, region)
    try:
        report = log.verify(verifier, witnessed)
    finally:
        log.close()
    outcome = VerifyOutcome(report)
    if report.ok and record_as is not None:
        writer = SqlAuditLog(config.audit_url(region), region)
        try:
            outcome.recorded_seq = writer.append(
                Principal.auditor(region, record_as).id,
                "audit",
                "verify",
                "allow",
                {
                    "reason": "verified the whole log from its files (fyp audit verify)",
                    "principal_region": region,
                    "entries": report.entries,
                    "root": report.root,
                    "heads_checked": report.heads_checked,
                    "witnessed_checked": report.witnessed_checked,
                },
                time.time(),
            )
        finally:
            writer.close()
    return outcome


# ---- the HEADS file ----------------------------------------------------------------------------


def parse_head(data: Any) -> TreeHead:
    """A head from its JSON form, with every field checked (``ValueError`` when malformed)."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        head = TreeHead.from_json(data)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"missing or malformed field {exc}") from exc
    if head.size < 0 or not 0 <= head.timestamp_ms < 2**64:
        raise ValueError("tree_size and timestamp_ms must be non-negative")
    if len(head.root) != merkle.HASH_SIZE or len(head.signature) != 64:
        raise ValueError("root_hash must be 32 bytes and signature 64, in hex")
    return head


def read_heads(path: Path, region: str | None = None) -> list[TreeHead]:
    """The heads in a HEADS file (JSON lines), in file order; only ``region``'s if given."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the heads file {path}: {exc.strerror}") from exc
    return parse_heads(text, path, region)


def parse_heads(text: str, path: Path, region: str | None = None) -> list[TreeHead]:
    heads: list[TreeHead] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            head = parse_head(json.loads(line))
        except ValueError as exc:  # json.JSONDecodeError is one
            raise ConfigError(f"{path}:{number}: not a tree head: {exc}") from exc
        if region is None or head.region == region:
            heads.append(head)
    return heads


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Any]:
    """The HEADS file opened for appending, locked against another witness run at once."""
    try:
        handle = path.open("a+", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot open the heads file {path}: {exc.strerror}") from exc
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield handle


# ---- where the heads come from -----------------------------------------------------------------


class HeadSource(Protocol):
    def latest_head(self, region: str) -> TreeHead: ...
    def consistency(self, region: str, first: int, second: int) -> list[bytes]: ...


class HttpHeadSource:
    """A running server's witness endpoints (``/v1/audit/{region}/head`` and ``/consistency``)."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    @classmethod
    def connect(cls, base_url: str, api_key: str | None, timeout_s: float = 30.0) -> HttpHeadSource:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return cls(httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s))

    def _get(self, path: str, params: dict[str, int] | None = None) -> Any:
        try:
            response = self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"cannot reach {path}: {exc}") from exc
        if response.status_code != 200:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise WitnessRefused(f"GET {path} answered {response.status_code}: {detail}")
        try:
            return response.json()
        except ValueError as exc:
            raise WitnessRefused(f"GET {path} did not answer JSON") from exc

    def latest_head(self, region: str) -> TreeHead:
        data = self._get(f"/v1/audit/{region}/head")
        try:
            return parse_head(data)
        except ValueError as exc:
            raise WitnessRefused(f"the server's head is malformed: {exc}") from exc

    def consistency(self, region: str, first: int, second: int) -> list[bytes]:
        data = self._get(f"/v1/audit/{region}/consistency", {"first": first, "second": second})
        try:
            return [bytes.fromhex(h) for h in data["proof"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise WitnessRefused("the server's consistency proof is malformed") from exc

    def close(self) -> None:
        self._client.close()


class LocalHeadSource:
    """The region's log files, read-only (a witness on the same host, with read access only)."""

    def __init__(self, config: FypConfig) -> None:
        self._config = config
        self._logs: dict[str, SqlAuditLog] = {}

    def _log(self, region: str) -> SqlAuditLog:
        if region not in self._logs:
            self._logs[region] = open_read_only(self._config, region)
        return self._logs[region]

    def latest_head(self, region: str) -> TreeHead:
        head = self._log(region).head()
        if head is None:
            raise WitnessRefused(f"region {region!r} has no signed tree head yet")
        return head

    def consistency(self, region: str, first: int, second: int) -> list[bytes]:
        try:
            return self._log(region).consistency_proof(first, second)[1]
        except merkle.ProofError as exc:
            raise WitnessRefused(f"no consistency proof from the log: {exc}") from exc

    def close(self) -> None:
        for log in self._logs.values():
            log.close()


# ---- witnessing ----------------------------------------------------------------------------------


@dataclass
class WitnessOutcome:
    region: str
    head: TreeHead | None
    """The head fetched (``None`` when none could be had)."""
    previous: TreeHead | None
    """The last head this witness had kept for the region."""
    appended: bool
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _check(
    source: HeadSource, region: str, pinned: Verifier, head: TreeHead, previous: TreeHead | None
) -> str | None:
    if head.region != region:
        return f"the head is for region {head.region!r}, not {region!r}"
    if head.key_id != pinned.key_id or not pinned.valid(head.message(), head.signature):
        return (
            f"the head of size {head.size} is not signed by the pinned key {pinned.key_id} "
            f"(it names key {head.key_id}): the key was replaced or the head forged"
        )
    if previous is None:
        return None
    if head.size < previous.size:
        return (
            f"the log's latest head covers {head.size} entries, fewer than the {previous.size} "
            "of the head this witness kept: the log was truncated or rolled back"
        )
    if head.size == previous.size:
        if head.root != previous.root:
            return f"two signed heads of size {head.size} with different roots: the log forked"
        return None
    if previous.size == 0:
        return None  # the empty log is a prefix of every log
    try:
        proof = source.consistency(region, previous.size, head.size)
        merkle.verify_consistency(previous.size, head.size, previous.root, head.root, proof)
    except (merkle.ProofError, WitnessRefused) as exc:
        reason = exc.detail if isinstance(exc, FypError) else str(exc)
        return (
            f"the log of {head.size} entries is not an extension of the {previous.size} this "
            f"witness kept ({reason}): entries it held were altered, removed or reordered"
        )
    return None


def witness(source: HeadSource, region: str, pinned: Verifier, heads_path: Path) -> WitnessOutcome:
    """Fetch the region's latest head, check it, and append it to ``heads_path`` if it holds.

    Appends only a head that verifies under ``pinned`` and is consistent with the last head kept
    for the region (and only when it is newer); on a failure nothing is appended and the
    outcome names the problem. Errors reaching the source raise (nothing was checked).
    """
    with _locked(heads_path) as handle:
        handle.seek(0)
        text = handle.read()
        kept = parse_heads(text, heads_path, region)
        previous = max(kept, key=lambda h: h.size) if kept else None
        try:
            head = source.latest_head(region)
        except WitnessRefused as exc:
            return WitnessOutcome(region, None, previous, False, exc.detail)
        problem = _check(source, region, pinned, head, previous)
        if problem is not None:
            return WitnessOutcome(region, head, previous, False, problem)
        if previous is not None and head.size == previous.size:
            return WitnessOutcome(region, head, previous, False, None)
        separator = "\n" if text and not text.endswith("\n") else ""
        handle.write(separator + json.dumps(head.to_json(), sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        return WitnessOutcome(region, head, previous, True, None)

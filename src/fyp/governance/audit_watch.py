"""The checks of each region's audit log when an engine starts, and the full one after.

At startup every region gets ``SqlAuditLog.quick_check``: O(log n) lookups that catch a log which
cannot take its next append, removed tail entries and a latest signed head that no longer holds,
but not an entry edited in the middle of the log (its leaf hash is only read by a full rebuild).
The full check (``SqlAuditLog.verify``) reads every entry; on a log of a million entries it takes
tens of seconds (docs/BENCHMARKS.md), too long to hold a server's start. So a server starts
serving after the quick check and runs the full one here, one region after another, in one
daemon thread; a region that fails it is quarantined (HTTP 503 ``region-quarantined`` from then
on), and ``/healthz`` reports each region's state meanwhile (``audit_check``).

With ``audit_witness_file`` set (a witness's HEADS file, which this deployment reads but cannot
write), both checks also hold each log to the heads the witness kept: a log truncated or
rewritten together with its own signed heads then fails at start too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, Literal

from fyp.errors import ConfigError
from fyp.governance.gate import Gate
from fyp.governance.witness import read_heads
from fyp.storage.audit import SqlAuditLog, TreeHead

log = logging.getLogger(__name__)

CheckState = Literal["pending", "running", "verified", "failed", "skipped", "stopped", "error"]
"""``skipped``: the region was already quarantined; ``stopped``: the server stopped first;
``error``: the check itself could not run (logged); the region keeps serving."""

_JOIN_TIMEOUT_S: Final = 30.0


def check_at_start(
    gate: Gate, logs: Mapping[str, SqlAuditLog], witness_file: Path | None
) -> dict[str, list[TreeHead]]:
    """Run each region's start-up check, against the latest witnessed head too when there is a
    witness file; quarantine the regions that fail. Returns the witnessed heads per region."""
    witnessed: dict[str, list[TreeHead]] = {name: [] for name in logs}
    unusable: str | None = None
    if witness_file is not None and witness_file.exists():
        try:
            for head in read_heads(witness_file):
                witnessed.setdefault(head.region, []).append(head)
        except ConfigError as exc:
            # Every region's check depends on it: none is vouched for until it is fixed.
            unusable = f"the audit witness file cannot be used: {exc.detail}"
    elif witness_file is not None:
        log.warning("audit witness file %s does not exist yet: no witnessed heads", witness_file)
    for name, audit_log in logs.items():
        if unusable is not None:
            gate.quarantine(name, unusable)
            continue
        latest = max(witnessed[name], key=lambda head: head.size, default=None)
        problem = audit_log.quick_check(witnessed=latest)
        if problem is not None:
            gate.quarantine(name, f"audit log check failed: {problem}")
    return witnessed


class AuditLogCheck:
    """Runs ``verify`` on each region's audit log once and quarantines a region that fails."""

    def __init__(
        self,
        gate: Gate,
        regions: Sequence[str],
        witnessed: Mapping[str, Sequence[TreeHead]] | None = None,
    ) -> None:
        self._gate = gate
        self._regions = list(regions)
        self._witnessed = dict(witnessed or {})
        self._state: dict[str, CheckState] = dict.fromkeys(self._regions, "pending")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def status(self) -> dict[str, str]:
        return dict(self._state)

    def start(self) -> None:
        """Start the check in a daemon thread (once; a second call does nothing)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self.run, name="fyp-audit-check", daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait until the check has finished (for tools and tests that want its verdict)."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_JOIN_TIMEOUT_S)

    def run(self) -> None:
        for region in self._regions:
            if self._stop.is_set():
                self._state[region] = "stopped"
                continue
            if region in self._gate.quarantined:
                self._state[region] = "skipped"
                continue
            self._state[region] = "running"
            try:
                report = self._gate.audit_log(region).verify(
                    witnessed=self._witnessed.get(region, ()), stop=self._stop
                )
            except Exception:  # the check must never take the server down; it says so instead
                log.exception("the full audit log check of region %s could not run", region)
                self._state[region] = "error"
                continue
            if report.interrupted:
                self._state[region] = "stopped"
            elif report.ok:
                self._state[region] = "verified"
            else:
                self._state[region] = "failed"
                self._gate.quarantine(region, f"full audit log check failed: {report.summary()}")

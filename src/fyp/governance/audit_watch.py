"""The full check of each region's audit log, run once in the background after a server starts.

At startup every region gets ``SqlAuditLog.quick_check``: O(log n) lookups that catch a log which
cannot take its next append, removed tail entries and a latest signed head that no longer holds,
but not an entry edited in the middle of the log (its leaf hash is only read by a full rebuild).
The full check (``SqlAuditLog.verify``) reads every entry; on a log of a million entries it takes
tens of seconds (docs/BENCHMARKS.md), too long to hold a server's start. So a server starts
serving after the quick check and runs the full one here, one region after another, in one
daemon thread; a region that fails it is quarantined (HTTP 503 ``region-quarantined`` from then
on), and ``/healthz`` reports each region's state meanwhile (``audit_check``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Final, Literal

from fyp.governance.gate import Gate

log = logging.getLogger(__name__)

CheckState = Literal["pending", "running", "verified", "failed", "skipped", "stopped", "error"]
"""``skipped``: the region was already quarantined; ``stopped``: the server stopped first;
``error``: the check itself could not run (logged); the region keeps serving."""

_JOIN_TIMEOUT_S: Final = 30.0


class AuditLogCheck:
    """Runs ``verify`` on each region's audit log once and quarantines a region that fails."""

    def __init__(self, gate: Gate, regions: Sequence[str]) -> None:
        self._gate = gate
        self._regions = list(regions)
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
                report = self._gate.audit_log(region).verify(stop=self._stop)
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

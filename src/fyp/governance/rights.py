"""Users' rights as calls that finish in seconds: export, erasure, controls, inferred interests.

Each right is a purpose of its own (``export_user``, ``erase_user``, ``manage_controls``), so the
policy decides who may exercise it, and every use is in the region's audit log: the gate records
the open, and export and erasure also record what they did (counts only, and the user id as a
salted hash, so the log itself does not keep the person after their erasure).

Erasure is one linearizable operation in three durable steps: (1) ``begin_erasure`` orders it in
the region's database (from that commit on every write about the user is refused, and the rows
written before it are counted); (2) its one audit entry is written; (3) ``finish_erasure`` deletes
the user's data key (first, so any copy of their sealed rows is unreadable) and every row about
them (``ERASED_TABLES``) in one transaction. Between (1) and (2) the erasure waits for this
process's in-flight requests about the user (:mod:`fyp.governance.fence`); after (3) it drops the
cached routing entry, marks the model store (models trained before must be retrained) and calls
the engine's erasure hooks (the served models, the joiner and the online learners forget the
user). A process that dies between the steps leaves a pending erasure that the next start, or the
background sync, finishes (``resume_erasures``). The receipt carries the audit entry with an
inclusion proof against a freshly signed tree head, so the requester can check it was recorded.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from fyp.errors import BackendUnavailable, InvalidInput, NotFound
from fyp.governance.gate import Gate, RegionHandle
from fyp.governance.policy import Principal, Purpose
from fyp.storage.roles import (
    MAX_BLOCKED_TAGS,
    MAX_KEYWORD_FILTERS,
    Interest,
    PendingErasure,
    UserControls,
)

log = logging.getLogger(__name__)

_AUDIT_CLAIM_STALE_S = 10.0
"""How long the claim on writing an erasure's audit entry is held before another process may
take it over: far longer than the append takes, short enough to finish a dead process's work."""

MAX_FILTER_LENGTH = 100
ErasureHook = Callable[[str, str], None]
"""Called with ``(region, user_id)`` after a user's rows are erased."""
ExportHook = Callable[[str, str], dict[str, Any]]
"""Called with ``(region, user_id)`` during an export: what a model holds about the user, outside
the region's database (its sections are added to the export's ``models``)."""


def subject_hash(region: str, user_id: str) -> str:
    """How the audit log names the subject of an export or erasure: not the id itself."""
    return hashlib.sha256(f"fyp-subject\n{region}\n{user_id}".encode()).hexdigest()[:32]


class UserRightsService:
    def __init__(
        self,
        gate: Gate,
        clock: Callable[[], float] = time.time,
        service_region: str | None = None,
    ) -> None:
        self._gate = gate
        self._clock = clock
        # A region-pinned deployment acts as its own region's service for every user, so a
        # request about a user of another region reaches the gate as the export it is.
        self._service_region = service_region
        self._erasure_hooks: list[ErasureHook] = []
        self._export_hooks: list[ExportHook] = []
        self._model_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def on_erase(self, hook: ErasureHook) -> None:
        self._erasure_hooks.append(hook)

    def on_export(self, hook: ExportHook) -> None:
        self._export_hooks.append(hook)

    def _open(self, user_id: str, purpose: Purpose, as_operator: str | None = None) -> RegionHandle:
        """Open the user's home region: as its service (API calls made on the user's request),
        or as a named operator of that region (``fyp user`` on the command line)."""
        region = self._gate.locate(user_id)
        if region is None:
            raise NotFound(f"no user {user_id!r}")
        principal = (
            Principal.operator(region, as_operator)
            if as_operator
            else Principal.service(self._service_region or region)
        )
        return self._gate.open(region, principal, purpose)

    # ---- export ---------------------------------------------------------------------------------

    def export(self, user_id: str, as_operator: str | None = None) -> dict[str, Any]:
        """Everything held about the user: profile, events, state, interests, served reasons."""
        handle = self._open(user_id, "export_user", as_operator)
        now = self._clock()
        rows = handle.rights.export_user(user_id)
        if rows is None:
            raise NotFound(f"no user {user_id!r}")
        interests = handle.rights.interests(user_id, now)
        models: dict[str, Any] = {}
        for hook in self._export_hooks:
            models.update(hook(handle.region, user_id))
        counts = {table: len(found) for table, found in rows.items()}
        seq = handle.record(
            "export_user", {"subject": subject_hash(handle.region, user_id), "rows": counts}
        )
        return {
            "user_id": user_id,
            "region": handle.region,
            "exported_at": now,
            "audit_seq": seq,
            "profile": rows["users"][0],
            "events": rows["events"],
            "online_state": {
                "seen": rows["seen"],
                "follows": rows["follows"],
                "not_interested_items": rows["hidden_items"],
                "muted_creators": rows["muted_creators"],
                "affinities": rows["affinity"],
            },
            "inferred_interests": [asdict(i) for i in interests],
            "served": rows["feed_log"],
            "controls": rows["user_controls"],
            "models": models,
        }

    # ---- erasure --------------------------------------------------------------------------------

    def erase(self, user_id: str, as_operator: str | None = None) -> dict[str, Any]:
        """Erase the user; the receipt names the rows deleted and proves the audit entry.

        Linearizable (see ``SqlRegionStore.begin_erasure``): a write about the user that commits
        after the erasure is ordered is refused, one that committed before it is deleted with the
        rest, and a second request for the same user finds no user (404).
        """
        handle = self._open(user_id, "erase_user", as_operator)
        started = time.perf_counter()
        claim = uuid.uuid4().hex
        pending = handle.rights.begin_erasure(user_id, self._clock(), claim)
        if pending is None:
            raise NotFound(f"no user {user_id!r}")
        self._gate.forget(user_id)
        return self._complete(handle, pending, claim, started, held=True)

    def resume_erasures(self, region: str, older_than_s: float = 0.0) -> list[dict[str, Any]]:
        """Finish the region's erasures that were ordered and not finished (the process that
        ordered them died, or is slow); returns their receipts. ``older_than_s`` leaves alone
        the ones a live process may still be finishing."""
        handle = self._gate.open(
            region, Principal.service(self._service_region or region), "erase_user"
        )
        cutoff = self._clock() - older_than_s
        receipts = []
        for pending in handle.rights.pending_erasures():
            if pending.requested_at > cutoff:
                continue
            self._gate.forget(pending.user_id)
            try:
                receipts.append(
                    self._complete(handle, pending, uuid.uuid4().hex, time.perf_counter())
                )
            except NotFound:
                continue  # another process finished it meanwhile
        return receipts

    def _complete(
        self,
        handle: RegionHandle,
        pending: PendingErasure,
        claim: str,
        started: float,
        held: bool = False,
    ) -> dict[str, Any]:
        region = handle.region
        # Requests of this process that wrote about the user before the erasure was ordered
        # finish (and hand their events to the online learner) before anything is deleted.
        self._gate.fence.drain(pending.user_id)
        seq = self._record_erasure(handle, pending, claim, held)
        with self._model_lock(region):
            handle.rights.finish_erasure(pending.erasure_id)
            # Again: a request that looked the user up before the erasure was ordered may have
            # cached their home since.
            self._gate.forget(pending.user_id)
            # Wall-clock, like the training times it is compared with.
            handle.models.mark_erasure(time.time())
            for hook in self._erasure_hooks:
                try:
                    hook(region, pending.user_id)
                except Exception:
                    # The rows and the record are gone for good; a model that could not drop
                    # the user in memory loses them at the retraining the mark triggers.
                    log.exception("region %s: an erasure hook failed", region)
        log_ = self._gate.audit_log(region)
        head = self._gate.sign_audit_head(region)
        _, leaf = log_.leaf(seq)
        _, path = log_.inclusion_proof(seq, head.size)
        return {
            "user_id": pending.user_id,
            "region": region,
            "erased_at": self._clock(),
            "seconds": round(time.perf_counter() - started, 4),
            "rows_deleted": pending.rows,
            "audit": {
                "seq": seq,
                "subject": subject_hash(region, pending.user_id),
                "leaf_hash": leaf.hex(),
                "tree_head": head.to_json(),
                "audit_path": [p.hex() for p in path],
            },
        }

    def _record_erasure(
        self, handle: RegionHandle, pending: PendingErasure, claim: str, held: bool
    ) -> int:
        """The erasure's one audit entry, written before any row is deleted.

        One writer per erasure: the process that ordered it holds the claim from the start
        (``held``); a claim held longer than ``_AUDIT_CLAIM_STALE_S`` is taken over (its holder
        died), and the taker first looks for the entry the holder may have written just before
        dying.
        """
        deadline = time.monotonic() + _AUDIT_CLAIM_STALE_S * 2
        log_ = self._gate.audit_log(handle.region)
        # A claim taken long ago (the erasure waited on requests in flight) is renewed first:
        # another process may be about to take it over.
        held = held and self._clock() - pending.requested_at < _AUDIT_CLAIM_STALE_S / 2
        while not held and not handle.rights.claim_erasure_audit(
            pending.erasure_id, claim, self._clock(), _AUDIT_CLAIM_STALE_S
        ):
            if handle.rights.pending_erasure(pending.erasure_id) is None:
                # Finished by another process meanwhile: its receipt is the erasure's receipt.
                raise NotFound(f"no user {pending.user_id!r}")
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    "another process is recording this erasure; it finishes in the background"
                )
            time.sleep(0.05)
        seq = log_.find_recent("erase_user", "erasure", pending.erasure_id, pending.requested_at)
        if seq is not None:
            return seq
        return handle.record(
            "erase_user",
            {
                "subject": subject_hash(handle.region, pending.user_id),
                "erasure": pending.erasure_id,
                "rows": pending.rows,
            },
        )

    def _model_lock(self, region: str) -> threading.Lock:
        """One erasure at a time per region touches the model directory and the learners."""
        with self._locks_lock:
            return self._model_locks.setdefault(region, threading.Lock())

    # ---- controls and interests -----------------------------------------------------------------

    def controls(self, user_id: str) -> UserControls:
        handle = self._open(user_id, "manage_controls")
        self._require_user(handle, user_id)
        return handle.rights.controls(user_id)

    def put_controls(
        self,
        user_id: str,
        personalized: bool,
        keyword_filters: Sequence[str],
        blocked_tags: Sequence[str],
    ) -> UserControls:
        keywords = _clean(keyword_filters, MAX_KEYWORD_FILTERS, "keyword_filters")
        tags = [t.lstrip("#") for t in _clean(blocked_tags, MAX_BLOCKED_TAGS, "blocked_tags")]
        handle = self._open(user_id, "manage_controls")
        self._require_user(handle, user_id)
        controls = UserControls(personalized, tuple(keywords), tuple(dict.fromkeys(tags)))
        return handle.rights.put_controls(user_id, controls, self._clock())

    def patch_controls(
        self,
        user_id: str,
        personalized: bool | None = None,
        keyword_filters: Sequence[str] | None = None,
        blocked_tags: Sequence[str] | None = None,
    ) -> UserControls:
        """Change only the controls given (``None`` keeps the stored value), with the limits of
        :meth:`put_controls`. The store merges and writes in one transaction, so concurrent
        patches (in any process) apply one after the other instead of undoing each other."""
        keywords = (
            None
            if keyword_filters is None
            else _clean(keyword_filters, MAX_KEYWORD_FILTERS, "keyword_filters")
        )
        tags = (
            None
            if blocked_tags is None
            else [t.lstrip("#") for t in _clean(blocked_tags, MAX_BLOCKED_TAGS, "blocked_tags")]
        )
        handle = self._open(user_id, "manage_controls")
        return handle.rights.patch_controls(
            user_id,
            self._clock(),
            personalized=personalized,
            keyword_filters=None if keywords is None else tuple(keywords),
            blocked_tags=None if tags is None else tuple(dict.fromkeys(tags)),
        )

    def interests(self, user_id: str) -> list[Interest]:
        handle = self._open(user_id, "manage_controls")
        self._require_user(handle, user_id)
        return handle.rights.interests(user_id, self._clock())

    def delete_interests(self, user_id: str, tag: str | None = None) -> int:
        handle = self._open(user_id, "manage_controls")
        self._require_user(handle, user_id)
        return handle.rights.reset_interests(user_id, self._clock(), tag)

    @staticmethod
    def _require_user(handle: RegionHandle, user_id: str) -> None:
        if handle.users.get_user(user_id) is None:
            raise NotFound(f"no user {user_id!r}")


def _clean(values: Sequence[str], limit: int, field: str) -> list[str]:
    cleaned = list(dict.fromkeys(v.strip() for v in values if v.strip()))
    if len(cleaned) > limit:
        raise InvalidInput(f"{field}: at most {limit} entries, got {len(cleaned)}")
    long = [v for v in cleaned if len(v) > MAX_FILTER_LENGTH]
    if long:
        raise InvalidInput(
            f"{field}: entries are at most {MAX_FILTER_LENGTH} characters ({long[0][:20]!r}…)"
        )
    return cleaned

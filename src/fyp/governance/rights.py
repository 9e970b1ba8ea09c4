"""Users' rights as calls that finish in seconds: export, erasure, controls, inferred interests.

Each right is a purpose of its own (``export_user``, ``erase_user``, ``manage_controls``), so the
policy decides who may exercise it, and every use is in the region's audit log: the gate records
the open, and export and erasure also record what they did (counts only, and the user id as a
salted hash, so the log itself does not keep the person after their erasure).

Erasure deletes the user's data key and every row about them in one durable transaction
(``ERASED_TABLES``: the key first, so any copy of their sealed rows is unreadable), drops
the cached routing entry, and calls the engine's erasure hooks (models holding per-user rows drop
them there). The feed's learned models keep no per-user vectors (viewers are folded in at request
time from their events), so the next training run, which reads only the remaining events, holds no
trace of the user. The receipt carries the audit entry with an inclusion proof against a freshly
signed tree head, so the requester can check the erasure was recorded.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from fyp.errors import InvalidInput, NotFound
from fyp.governance.gate import Gate, RegionHandle
from fyp.governance.policy import Principal, Purpose
from fyp.storage.roles import MAX_BLOCKED_TAGS, MAX_KEYWORD_FILTERS, Interest, UserControls

MAX_FILTER_LENGTH = 100
_PATCH_LOCK = threading.Lock()
"""Held across the read and the write of a controls patch."""
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
        handle = self._open(user_id, "erase_user", as_operator)
        if not handle.users.has_users([user_id]):
            raise NotFound(f"no user {user_id!r}")
        started = time.perf_counter()
        counts = handle.rights.erase_user(user_id)
        self._gate.forget(user_id)
        # Wall-clock, like the training times it is compared with.
        handle.models.mark_erasure(time.time())
        for hook in self._erasure_hooks:
            hook(handle.region, user_id)
        erased_at = self._clock()
        seq = handle.record(
            "erase_user", {"subject": subject_hash(handle.region, user_id), "rows": counts}
        )
        log = self._gate.audit_log(handle.region)
        head = self._gate.sign_audit_head(handle.region)
        _, leaf = log.leaf(seq)
        _, path = log.inclusion_proof(seq, head.size)
        return {
            "user_id": user_id,
            "region": handle.region,
            "erased_at": erased_at,
            "seconds": round(time.perf_counter() - started, 4),
            "rows_deleted": counts,
            "audit": {
                "seq": seq,
                "subject": subject_hash(handle.region, user_id),
                "leaf_hash": leaf.hex(),
                "tree_head": head.to_json(),
                "audit_path": [p.hex() for p in path],
            },
        }

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
        :meth:`put_controls`. The read and the write run under one lock, so two patches made
        through this process at once cannot undo each other."""
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
        self._require_user(handle, user_id)
        with _PATCH_LOCK:
            stored = handle.rights.controls(user_id)
            merged = UserControls(
                stored.personalized if personalized is None else personalized,
                stored.keyword_filters if keywords is None else tuple(keywords),
                stored.blocked_tags if tags is None else tuple(dict.fromkeys(tags)),
            )
            return handle.rights.put_controls(user_id, merged, self._clock())

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

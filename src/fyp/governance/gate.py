"""The governance gate: the only door to a region's personal data.

``gate.open(region, principal, purpose)`` asks the policy, records the decision in the region's
audit log, and on allow returns a :class:`RegionHandle`. The handle exposes the regional roles
(users, events, state, stats, models, audit), and every method call through it is checked against
what the purpose permits: a feed request can read a viewer's state but cannot scan the event log,
a training run can scan events but cannot read profiles. A refused call raises ``AccessDenied`` and
is itself recorded.

Nothing outside ``fyp.governance`` and ``fyp.storage`` holds a regional store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, cast

from fyp.errors import AccessDenied, NotFound, RegionQuarantined
from fyp.governance import api_keys
from fyp.governance.fence import UserFence
from fyp.governance.policy import PURPOSE_OPERATIONS, Decision, Policy, Principal, Purpose
from fyp.storage.audit import SqlAuditLog, TreeHead
from fyp.storage.models import ModelStore
from fyp.storage.region import SqlRegionStore
from fyp.storage.roles import (
    AuditLog,
    EventLog,
    ItemStats,
    RegionKeys,
    UserRights,
    Users,
    UserState,
)

log_ = logging.getLogger(__name__)

_ROLE_METHODS: Final[Mapping[str, frozenset[str]]] = {
    "users": frozenset({"upsert_users", "get_user", "has_users", "count_users", "user_ids"}),
    "events": frozenset({"append", "recent_for_user", "scan", "last_seq"}),
    "state": frozenset({"hydrate", "seen_among", "record_served"}),
    "stats": frozenset({"stats", "trending", "totals"}),
    "models": frozenset(
        {
            "save",
            "load_current",
            "current_version",
            "mark_erasure",
            "last_erasure",
            "online_dir",
            "save_published",
            "load_published",
        }
    ),
    "audit": frozenset({"append", "tail", "count", "verify", "leaf"}),
    "keys": frozenset({"rotate_kek", "key_status"}),
    "rights": frozenset(
        {
            "export_user",
            "begin_erasure",
            "claim_erasure_audit",
            "pending_erasure",
            "pending_erasures",
            "finish_erasure",
            "erase_user",
            "controls",
            "put_controls",
            "patch_controls",
            "interests",
            "reset_interests",
        }
    ),
}


class _Guarded:
    """Forwards a role's methods, refusing those the handle's purpose does not permit."""

    __slots__ = ("_check", "_role", "_target")

    def __init__(self, role: str, target: object, check: Callable[[str], None]) -> None:
        self._role = role
        self._target = target
        self._check = check

    def __getattr__(self, name: str) -> Any:
        if name not in _ROLE_METHODS[self._role]:
            raise AttributeError(f"role {self._role!r} has no operation {name!r}")
        self._check(f"{self._role}.{name}")
        return getattr(self._target, name)


class RegionHandle:
    """Access to one region's personal data for one principal and one purpose."""

    def __init__(
        self,
        gate: Gate,
        region: str,
        principal: Principal,
        purpose: Purpose,
        store: SqlRegionStore,
        models: ModelStore,
        audit: SqlAuditLog,
    ) -> None:
        self.region = region
        self.principal = principal
        self.purpose = purpose
        self._gate = gate
        self._allowed = PURPOSE_OPERATIONS[purpose]
        self.users = cast(Users, _Guarded("users", store, self._check))
        self.events = cast(EventLog, _Guarded("events", store, self._check))
        self.state = cast(UserState, _Guarded("state", store, self._check))
        self.stats = cast(ItemStats, _Guarded("stats", store, self._check))
        self.models = cast(ModelStore, _Guarded("models", models, self._check))
        self.audit = cast(AuditLog, _Guarded("audit", audit, self._check))
        self.rights = cast(UserRights, _Guarded("rights", store, self._check))
        self.keys = cast(RegionKeys, _Guarded("keys", store, self._check))

    def record(self, action: str, detail: Mapping[str, Any]) -> int:
        """Append what this handle did (an export, an erasure) to the region's audit log."""
        return self._gate.record_action(
            self.region, self.principal, self.purpose, action, dict(detail)
        )

    def _check(self, operation: str) -> None:
        if operation not in self._allowed:
            self._gate.record(
                self.region,
                self.principal,
                self.purpose,
                operation,
                Decision(False, f"purpose {self.purpose!r} does not permit {operation}"),
            )
            raise AccessDenied(
                f"{self.principal.id} may not {operation} for purpose {self.purpose!r} "
                f"in region {self.region!r}"
            )


class Gate:
    """Opens regional handles under a policy and records every decision.

    The gate owns the regional stores. ``locate`` finds a user's home region by asking each region
    with that region's own service principal; answers are cached in process memory only.
    """

    def __init__(
        self,
        stores: Mapping[str, SqlRegionStore],
        model_stores: Mapping[str, ModelStore],
        audit_logs: Mapping[str, SqlAuditLog],
        policy: Policy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stores = dict(stores)
        self._models = dict(model_stores)
        self._audit = dict(audit_logs)
        self._policy = policy
        self._clock = clock
        self._home: dict[str, str] = {}
        self._quarantined: dict[str, str] = {}
        self._home_lock = threading.Lock()
        self.fence = UserFence()
        """Orders each erasure after this process's in-flight writes about the user."""

    @property
    def regions(self) -> list[str]:
        return list(self._stores)

    def quarantine(self, region: str, reason: str) -> None:
        """Stop serving ``region``'s personal data (an integrity check failed); others go on."""
        log_.error("region %s quarantined: %s", region, reason)
        self._quarantined[region] = reason

    @property
    def quarantined(self) -> dict[str, str]:
        return dict(self._quarantined)

    def open(self, region: str, principal: Principal, purpose: Purpose) -> RegionHandle:
        store = self._stores.get(region)
        if store is None:
            raise NotFound(f"no region named {region!r}; configured: {sorted(self._stores)}")
        reason = self._quarantined.get(region)
        if reason is not None and purpose != "audit":
            # Auditors may still read the log to investigate; nothing else gets in.
            raise RegionQuarantined(f"region {region!r} is quarantined: {reason}")
        refused = api_keys.region_refusal(region, purpose)
        if refused is not None:  # the request's API key is limited to other regions
            self.record(region, principal, purpose, "open", Decision(False, refused))
            raise AccessDenied(refused)
        decision = self._policy.decide(principal, region, purpose)
        # An allowed cross-region open is an export, and the log says so.
        self.record(region, principal, purpose, "export" if decision.export else "open", decision)
        if not decision.allowed:
            raise AccessDenied(
                f"{principal.id} may not open region {region!r} for {purpose!r}: {decision.reason}"
            )
        return RegionHandle(
            self, region, principal, purpose, store, self._models[region], self._audit[region]
        )

    def record_action(
        self, region: str, principal: Principal, purpose: str, action: str, detail: dict[str, Any]
    ) -> int:
        """Record an action taken through an allowed handle; returns its audit ``seq``.

        Durable (on disk before it returns): an export or erasure is acknowledged with this
        entry's ``seq``, so the entry must outlive a power loss like the act itself."""
        return self._audit[region].append(
            principal.id,
            purpose,
            action,
            "allow",
            detail | api_keys.audit_detail(),
            self._clock(),
            durable=True,
        )

    def forget(self, user_id: str) -> None:
        """Drop a user's cached home region (after erasure)."""
        with self._home_lock:
            self._home.pop(user_id, None)

    def forget_routes(self) -> None:
        """Drop every cached home region (another process erased users: which ones, this one
        cannot tell; the cache refills on the next requests)."""
        with self._home_lock:
            self._home.clear()

    def record(
        self, region: str, principal: Principal, purpose: str, action: str, decision: Decision
    ) -> None:
        self._audit[region].append(
            principal.id,
            purpose,
            action,
            "allow" if decision.allowed else "deny",
            {
                "reason": decision.reason,
                "principal_region": principal.region,
                **({"rule": decision.rule} if decision.rule else {}),
                **api_keys.audit_detail(),
            },
            self._clock(),
        )

    # ---- audit log tree heads and proofs ---------------------------------------------------------
    # These carry hashes and sizes only, never an entry's content, so like the model pointer they
    # are reachable without opening the region (monitors poll them); entries need ``open``.

    def audit_log(self, region: str) -> SqlAuditLog:
        log = self._audit.get(region)
        if log is None:
            raise NotFound(f"no region named {region!r}; configured: {sorted(self._audit)}")
        return log

    def sign_audit_head(self, region: str) -> TreeHead:
        """Sign the region's current audit tree head unless the latest signed one is current."""
        if region in self._quarantined:
            # Signing now would vouch for a log that failed its check.
            raise RegionQuarantined(
                f"region {region!r} is quarantined: {self._quarantined[region]}"
            )
        log = self.audit_log(region)
        latest = log.head()
        if latest is not None and latest.size == log.size():
            return latest
        return log.sign_head(self._clock())

    def model_version(self, region: str) -> str | None:
        """The region's current model version, read without opening the region.

        The pointer only names a snapshot (no person's data), so serving processes may poll it to
        notice a model trained by another process; loading the snapshot still goes through
        ``open``.
        """
        return self._models[region].current_version()

    def last_erasure(self, region: str) -> float:
        """When a user of the region was last erased (an instant, no id; 0.0 if never): other
        processes poll it to forget the user in memory too."""
        return self._models[region].last_erasure()

    def oldest_pending_erasure(self, region: str) -> float | None:
        """When the region's oldest unfinished erasure was ordered, if any: an instant, no
        person's data, so a process may poll it without opening the region (finishing the
        erasure then goes through ``open``)."""
        return self._stores[region].oldest_pending_erasure()

    def published_version(self, region: str) -> str | None:
        """The version of the region's latest online-published ranker (a name, like
        ``model_version``; loading it goes through ``open``)."""
        return self._models[region].published_version()

    def locate(self, user_id: str) -> str | None:
        """The user's home region, or ``None`` when no region holds them."""
        return self.locate_many([user_id]).get(user_id)

    def locate_many(self, user_ids: Sequence[str]) -> dict[str, str]:
        """Home regions of those ``user_ids`` that exist; unknown users are absent."""
        found: dict[str, str] = {}
        with self._home_lock:
            for user_id in user_ids:
                region = self._home.get(user_id)
                if region is not None:
                    found[user_id] = region
        missing = [u for u in dict.fromkeys(user_ids) if u not in found]
        for region in self._stores:
            if not missing:
                break
            if region in self._quarantined:
                continue
            handle = self.open(region, Principal.service(region), "route")
            present = handle.users.has_users(missing)
            for user_id in present:
                found[user_id] = region
                self.remember(user_id, region)
            missing = [u for u in missing if u not in present]
        blind = sorted(set(self._quarantined) & set(self._stores))
        if missing and blind:
            # They may live in a region that cannot be asked: say so rather than "not found".
            raise RegionQuarantined(
                f"cannot tell where {len(missing)} user(s) live: region(s) {blind} quarantined"
            )
        return found

    def remember(self, user_id: str, region: str) -> None:
        with self._home_lock:
            if len(self._home) > 1_000_000:
                self._home.clear()
            self._home[user_id] = region

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        for log in self._audit.values():
            log.close()

"""Who may do what, where: principals, purposes, and the region policy.

A principal is a service, an operator, an auditor or a user, always with a home region. A purpose
names why data is touched; each purpose permits a fixed set of role operations
(``PURPOSE_OPERATIONS``), so even an allowed handle can only do what its purpose needs.

The policy here is the deliberately small first one: deny by default; a principal may open its own
region for the purposes its kind is granted; any other region is refused (reading another region's
data would be an export). Richer, declarative policies plug in behind the same ``Policy`` protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol

Purpose = Literal[
    "route", "serve_feed", "ingest", "manage_users", "read_user", "train", "operate", "audit"
]
PrincipalKind = Literal["service", "operator", "auditor", "user"]

PURPOSE_OPERATIONS: Final[Mapping[str, frozenset[str]]] = {
    "route": frozenset({"users.has_users"}),
    "serve_feed": frozenset(
        {
            "users.get_user",
            "state.hydrate",
            "state.seen_among",
            "state.record_served",
            "stats.stats",
            "stats.trending",
            "stats.totals",
            "events.recent_for_user",
            "models.load_current",
            "models.current_version",
        }
    ),
    "ingest": frozenset({"users.has_users", "events.append"}),
    "manage_users": frozenset({"users.upsert_users", "users.get_user", "users.has_users"}),
    "read_user": frozenset({"users.get_user"}),
    "train": frozenset(
        {
            "events.scan",
            "events.last_seq",
            "models.save",
            "models.load_current",
            "models.current_version",
        }
    ),
    "operate": frozenset(
        {"users.count_users", "events.last_seq", "stats.totals", "models.current_version"}
    ),
    "audit": frozenset({"audit.tail", "audit.count", "audit.verify", "audit.leaf"}),
}

KIND_PURPOSES: Final[Mapping[PrincipalKind, frozenset[str]]] = {
    "service": frozenset(
        {"route", "serve_feed", "ingest", "manage_users", "read_user", "train", "operate"}
    ),
    "operator": frozenset({"route", "ingest", "manage_users", "read_user", "train", "operate"}),
    "auditor": frozenset({"audit", "operate"}),
    "user": frozenset({"read_user"}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    kind: PrincipalKind
    region: str
    """The principal's home region: the only region whose data it may open."""

    @classmethod
    def service(cls, region: str) -> Principal:
        """The engine's own service identity inside ``region``."""
        return cls(id=f"service:{region}", kind="service", region=region)

    @classmethod
    def operator(cls, region: str, name: str = "cli") -> Principal:
        return cls(id=f"operator:{name}@{region}", kind="operator", region=region)

    @classmethod
    def auditor(cls, region: str, name: str = "cli") -> Principal:
        return cls(id=f"auditor:{name}@{region}", kind="auditor", region=region)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str


class Policy(Protocol):
    def decide(self, principal: Principal, region: str, purpose: str) -> Decision: ...


class RegionPolicy:
    """Deny by default; allow a principal its own region for its kind's purposes."""

    def decide(self, principal: Principal, region: str, purpose: str) -> Decision:
        if purpose not in PURPOSE_OPERATIONS:
            return Decision(False, f"unknown purpose {purpose!r}")
        if principal.region != region:
            return Decision(
                False,
                f"cross-region access from {principal.region!r} to {region!r} is an export "
                "and no exception allows it",
            )
        if purpose not in KIND_PURPOSES[principal.kind]:
            return Decision(False, f"a {principal.kind} is not granted {purpose!r}")
        return Decision(True, f"{principal.kind} in its home region for {purpose!r}")

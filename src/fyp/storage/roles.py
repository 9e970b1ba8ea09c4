"""Storage by role: the narrow interfaces the rest of fyp sees, and the records they return.

``Catalog`` is global and non-personal and may be used directly. Every other role holds personal
data of one region and is reachable only through a gate handle (``fyp.governance.gate``).
Records are plain frozen dataclasses, cheap to build on the feed's hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fyp.types import Event, Item, User

if TYPE_CHECKING:
    from fyp.governance.keys import Verifier
    from fyp.storage.audit_verify import VerifyReport
    from fyp.storage.envelope import KekStatus, RotationReport


@dataclass(frozen=True, slots=True)
class ItemRecord:
    item_id: str
    creator_id: str
    created_at: float
    duration_s: float
    caption: str
    tags: tuple[str, ...]
    language: str | None
    regions: tuple[str, ...]

    def available_in(self, region: str) -> bool:
        return not self.regions or region in self.regions

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "creator_id": self.creator_id,
            "created_at": self.created_at,
            "duration_s": self.duration_s,
            "caption": self.caption,
            "tags": list(self.tags),
            "language": self.language,
            "regions": list(self.regions),
        }


CatalogPosition = tuple[float, str]
"""A place in the catalog's newest-first order: ``(created_at, item_id)``, both descending."""


@dataclass(frozen=True, slots=True)
class CatalogPage:
    """One step of a newest-first walk through the catalog (``Catalog.scan_newest``)."""

    items: list[ItemRecord]
    """The items of the step available in the region asked for, newest first."""
    examined: int
    """Catalog rows the step read, available or not: the work it did."""
    next: CatalogPosition | None
    """Where the next step starts; ``None`` once the catalog is exhausted."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    region: str
    attributes: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class EventRecord:
    seq: int
    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float
    watch_ms: int | None
    request_id: str | None


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: list[str]
    duplicates: list[str]
    """Already stored with the same content (or repeated in the batch): nothing changed."""
    conflicts: list[str] = field(default_factory=list)
    """Already stored with different content: refused (an ``event_id`` names one event)."""
    unknown_users: list[str] = field(default_factory=list)
    """Refused: their user does not exist, or is being erased, when the batch commits."""


@dataclass(frozen=True, slots=True)
class PendingErasure:
    """An erasure that is ordered but not finished: no write about the user is accepted any more,
    and their rows are deleted next (see ``UserRights.begin_erasure``)."""

    erasure_id: str
    user_id: str
    requested_at: float
    rows: dict[str, int]
    """Rows about the user per table when the erasure was ordered: exactly what it deletes."""


@dataclass(frozen=True, slots=True)
class UpsertResult:
    created: int
    updated: int


MAX_KEYWORD_FILTERS = 500
MAX_BLOCKED_TAGS = 500


@dataclass(frozen=True, slots=True)
class UserControls:
    """What a user decided about their own feed (``/v1/users/{id}/controls``)."""

    personalized: bool = True
    """False: the feed is not based on profiling (popular in the region, followed creators)."""
    keyword_filters: tuple[str, ...] = ()
    """Items whose caption or tags contain any of these (case-insensitive) are never shown."""
    blocked_tags: tuple[str, ...] = ()
    """Items carrying any of these tags are never shown."""
    interests_reset_at: float | None = None
    """Events before this instant no longer shape the feed (a reset of inferred interests)."""


@dataclass(frozen=True, slots=True)
class Interest:
    """An inferred interest: the decayed affinity the feed holds for a tag or a creator."""

    kind: str
    """``tag`` or ``creator``."""
    key: str
    weight: float


@dataclass(frozen=True, slots=True)
class UserStateSnapshot:
    """What the feed knows about a viewer right now (affinities already decayed to ``as_of``)."""

    as_of: float
    follows: frozenset[str] = frozenset()
    hidden_items: frozenset[str] = frozenset()
    muted_creators: frozenset[str] = frozenset()
    creator_affinity: Mapping[str, float] = field(default_factory=dict)
    tag_affinity: Mapping[str, float] = field(default_factory=dict)
    recent_positives: tuple[str, ...] = ()
    """Most recent first."""
    controls: UserControls = field(default_factory=UserControls)


@dataclass(frozen=True, slots=True)
class ItemStatsRecord:
    views: int = 0
    plays: int = 0
    finishes: int = 0
    likes: int = 0
    shares: int = 0
    skips: int = 0
    not_interested: int = 0
    watch_ratio_sum: float = 0.0


@dataclass(frozen=True, slots=True)
class ServedItem:
    item_id: str
    position: int
    score: float
    reasons: list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    ts: float
    principal: str
    purpose: str
    action: str
    decision: str
    detail: dict[str, Any]


class Catalog(Protocol):
    """The global item catalog. Holds no personal data."""

    def upsert_items(self, items: Sequence[Item]) -> UpsertResult: ...
    def get_items(self, item_ids: Sequence[str]) -> dict[str, ItemRecord]: ...
    def recent_items(self, since: float, limit: int) -> list[ItemRecord]: ...
    def items_by_creators(
        self, creator_ids: Sequence[str], per_creator: int
    ) -> list[ItemRecord]: ...
    def items_by_tags(self, tags: Sequence[str], per_tag: int) -> dict[str, list[str]]: ...
    def scan_newest(self, region: str, after: CatalogPosition | None, limit: int) -> CatalogPage:
        """The next ``limit`` items newest first, strictly after ``after`` (from the newest when
        ``None``), keeping those available in ``region``: a keyset walk, each step bounded."""
        ...

    def count_items(self) -> int: ...


class Users(Protocol):
    def upsert_users(self, users: Sequence[User], now: float) -> UpsertResult: ...
    def get_user(self, user_id: str) -> UserRecord | None: ...
    def has_users(self, user_ids: Sequence[str]) -> set[str]: ...
    def count_users(self) -> int: ...
    def user_ids(self) -> list[str]: ...


class EventLog(Protocol):
    def append(
        self, events: Sequence[Event], items: Mapping[str, ItemRecord], now: float
    ) -> AppendResult:
        """Store new events and fold them into user state and item stats in one transaction.

        Events whose ``event_id`` is already stored (or repeated in the batch) are duplicates and
        change nothing. Returns only after the transaction is durable.
        """
        ...

    def recent_for_user(self, user_id: str, limit: int) -> list[EventRecord]: ...
    def scan(self, max_events: int, batch: int = 50_000) -> Iterator[list[EventRecord]]:
        """The region's most recent ``max_events`` events, oldest first, in batches."""
        ...

    def last_seq(self) -> int: ...


class UserRights(Protocol):
    """Everything a user may ask about or do to the data held about them, in their region."""

    def export_user(self, user_id: str) -> dict[str, Any] | None: ...
    def begin_erasure(
        self, user_id: str, now: float, claim: str | None = None
    ) -> PendingErasure | None:
        """Order the user's erasure, durably: from this commit on every write about them is
        refused, and writes that committed before it are counted in ``rows`` and deleted with
        the rest. ``None`` when the user does not exist or is already being erased. ``claim``
        takes the writing of its audit entry at once (see ``claim_erasure_audit``)."""
        ...

    def claim_erasure_audit(self, erasure_id: str, token: str, now: float, stale_s: float) -> bool:
        """Take (or renew, with the same ``token``) the writing of the erasure's audit entry:
        one writer at a time; a claim older than ``stale_s`` is taken over, its holder presumed
        dead (who then looks for the entry that holder may have written)."""
        ...

    def pending_erasure(self, erasure_id: str) -> PendingErasure | None: ...
    def pending_erasures(self) -> list[PendingErasure]:
        """Erasures ordered and not finished (a process died between the two steps)."""
        ...

    def finish_erasure(self, erasure_id: str) -> dict[str, int] | None:
        """Delete the user's data key, every row about them and the pending mark, in one durable
        transaction; ``None`` if another process finished it already."""
        ...

    def erase_user(self, user_id: str) -> dict[str, int]:
        """Order and finish an erasure at once, without an audit entry (tools and tests; the
        right itself is :meth:`fyp.governance.rights.UserRightsService.erase`)."""
        ...

    def controls(self, user_id: str) -> UserControls: ...
    def put_controls(self, user_id: str, controls: UserControls, now: float) -> UserControls: ...
    def patch_controls(
        self,
        user_id: str,
        now: float,
        personalized: bool | None = None,
        keyword_filters: Sequence[str] | None = None,
        blocked_tags: Sequence[str] | None = None,
    ) -> UserControls:
        """Change only the controls given, atomically (a read-merge-write in one transaction)."""
        ...

    def interests(self, user_id: str, now: float) -> list[Interest]: ...
    def reset_interests(self, user_id: str, now: float, tag: str | None = None) -> int: ...


class RegionKeys(Protocol):
    """The region's key-encryption keys (never a personal value: data keys stay wrapped)."""

    def key_status(self) -> list[KekStatus]: ...
    def rotate_kek(
        self,
        now: float,
        batch: int = 2_000,
        progress: Callable[[int], None] | None = None,
        stop_after_batches: int | None = None,
    ) -> RotationReport:
        """A new KEK version wraps every data key; the old versions are retired and dropped."""
        ...


class UserState(Protocol):
    def hydrate(self, user_id: str, now: float) -> UserStateSnapshot: ...
    def seen_among(self, user_id: str, item_ids: Sequence[str]) -> set[str]: ...
    def record_served(
        self,
        user_id: str,
        request_id: str,
        model_version: str,
        served: Sequence[ServedItem],
        now: float,
    ) -> None:
        """Log a feed response and mark its items seen, so they never return."""
        ...


class ItemStats(Protocol):
    """Per-item engagement aggregated over one region's viewers (counts, not people)."""

    def stats(self, item_ids: Sequence[str]) -> dict[str, ItemStatsRecord]: ...
    def trending(self, limit: int) -> list[tuple[str, float]]:
        """Items by time-decayed engagement, highest first, as ``(item_id, log_score)``."""
        ...

    def totals(self) -> ItemStatsRecord: ...


class AuditLog(Protocol):
    def append(
        self,
        principal: str,
        purpose: str,
        action: str,
        decision: str,
        detail: Mapping[str, Any],
        now: float,
    ) -> int: ...
    def tail(self, limit: int) -> list[AuditRecord]: ...
    def count(self) -> int: ...
    def leaf(self, seq: int) -> tuple[AuditRecord, bytes]: ...
    def verify(self, verifier: Verifier | None = None) -> VerifyReport: ...

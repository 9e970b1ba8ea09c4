"""The feed's stage contracts: one method per component, every component named.

A feed request is a :class:`FeedQuery` that flows through fixed stages (see ``fyp.pipeline.order``):

* ``FeedGate.check(query)`` raises to refuse the request;
* ``Hydrator.hydrate(query)`` fills in what the later stages read (the viewer's state);
* ``CandidateSource.fetch(query)`` returns candidates, each carrying the source's name and score;
* ``Filter.apply(query, candidates)`` returns kept *and* removed, with a reason per removal;
* ``BackfillSource.scan(query)`` opens a walk the runner draws more candidates from, batch by
  batch, only while fewer candidates than the page survived the filters; each batch goes through
  the same filters;
* ``Scorer.score(query, candidates)`` returns one number per candidate, same length and order:
  scorers never drop or reorder;
* ``Selector.select(query, candidates)`` re-ranks or trims: its output is a subset of its input,
  without duplicates;
* ``SideEffect.run(query, result)`` records what was served.

Sources and scorers declare ``fail_open`` and a latency budget; the runner records a fallback or an
overrun in the trace instead of failing the feed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from fyp.signals import preference_weight
from fyp.storage.roles import (
    EventRecord,
    ItemRecord,
    ItemStatsRecord,
    UserRecord,
    UserStateSnapshot,
)

if TYPE_CHECKING:
    from fyp.config import FypConfig
    from fyp.governance.gate import RegionHandle
    from fyp.models.serving import ServingModel
    from fyp.pipeline.trace import Trace
    from fyp.storage.roles import Catalog


@dataclass(slots=True)
class Candidate:
    """An item under consideration for one viewer, and everything learned about it on the way."""

    item_id: str
    sources: dict[str, float] = field(default_factory=dict)
    """Source name -> rank-normalized source score in (0, 1]; 1 is the source's best."""
    anchors: dict[str, str] = field(default_factory=dict)
    """Source name -> what produced this candidate (the liked item, the tag, the creator)."""
    item: ItemRecord | None = None
    stats: ItemStatsRecord | None = None
    features: dict[str, float] = field(default_factory=dict)
    score: float = 0.0
    exploration: bool = False
    """Placed by the exploration selector rather than by score."""
    ranker_inputs: tuple[float, ...] | None = None
    """The ranker's numeric inputs for this candidate (``NUMERIC_FEATURES`` order), logged with
    the impression so online training learns from exactly what was scored."""

    @property
    def creator_id(self) -> str:
        return self.item.creator_id if self.item is not None else ""

    @property
    def tags(self) -> tuple[str, ...]:
        return self.item.tags if self.item is not None else ()


@dataclass(slots=True)
class FeedContext:
    """What components may use to answer: the catalog, the gated region, the served model."""

    config: FypConfig
    catalog: Catalog
    data: RegionHandle
    model: ServingModel | None


@dataclass(slots=True)
class FeedQuery:
    request_id: str
    user_id: str
    region: str
    n: int
    now: float
    context: FeedContext
    trace: Trace
    user: UserRecord | None = None
    state: UserStateSnapshot | None = None
    _recent: dict[int, list[EventRecord]] = field(default_factory=dict)
    _preferences: dict[int, list[tuple[str, float]]] = field(default_factory=dict)

    def recent_events(self, limit: int) -> list[EventRecord]:
        """The viewer's latest events, newest first: read once per request, shared by the
        components that need them (the learned source and the ranker)."""
        found = self._recent.get(limit)
        if found is None:
            found = self.context.data.events.recent_for_user(self.user_id, limit)
            self._recent[limit] = found
        return found

    def recent_preferences(self, limit: int) -> list[tuple[str, float]]:
        """``(item id, preference weight)`` of the viewer's latest events, newest first, weighed
        as training weighs them; computed once per request for the learned sources."""
        found = self._preferences.get(limit)
        if found is None:
            history = self.recent_events(limit)
            training = self.context.config.training
            records = self.context.catalog.get_items(list({e.item_id for e in history}))
            found = [
                (
                    e.item_id,
                    preference_weight(
                        e.type,
                        e.watch_ms,
                        records[e.item_id].duration_s if e.item_id in records else 0.0,
                        training.event_weights,
                        training.play_weight,
                    ),
                )
                for e in history
            ]
            self._preferences[limit] = found
        return found

    @property
    def viewer(self) -> UserStateSnapshot:
        """The hydrated viewer state; stages after the hydrators may rely on it."""
        if self.state is None:
            raise RuntimeError("viewer state read before the hydrators ran")
        return self.state


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    text: str


@dataclass(frozen=True, slots=True)
class FeedItem:
    item_id: str
    score: float
    reasons: tuple[Reason, ...]
    ranker_inputs: tuple[float, ...] | None = None
    """What the ranker scored this item with (logged for online training, not returned)."""


@dataclass(frozen=True, slots=True)
class FeedResult:
    request_id: str
    user_id: str
    region: str
    model_version: str
    algorithm_hash: str
    items: tuple[FeedItem, ...]
    trace: Trace


@dataclass(frozen=True, slots=True)
class FilterResult:
    kept: list[Candidate]
    removed: list[tuple[Candidate, str]]
    """Each removed candidate with the reason, e.g. ``already_seen``."""


class FeedGate(Protocol):
    name: str

    def check(self, query: FeedQuery) -> None: ...


class Hydrator(Protocol):
    name: str

    def hydrate(self, query: FeedQuery) -> None: ...


class CandidateSource(Protocol):
    name: str
    fail_open: bool
    budget_ms: float
    prior: float
    """How much a top candidate of this source is worth relative to other sources' (0-1)."""

    def fetch(self, query: FeedQuery) -> list[Candidate]: ...


class BackfillScan(Protocol):
    """One request's walk through a backfill source's order; the runner pulls batches."""

    @property
    def spent(self) -> bool:
        """Nothing more to give: the order is exhausted or the work bound reached."""
        ...

    def more(self, want: int) -> list[Candidate]:
        """At least one more step of the walk: candidates carrying their catalog record, about
        ``want`` of them (fewer when the step found fewer, perhaps none; more is allowed)."""
        ...

    def done(self, added: list[Candidate]) -> None:
        """The walk is over; ``added`` are its candidates that the filters kept and the runner
        took, in the order they came. Their source scores are set here (by rank among them),
        and a source may learn where to start next time."""
        ...

    def summary(self) -> str:
        """What the walk did, for the trace (where it looked, how much it read)."""
        ...


class BackfillSource(Protocol):
    """Finds eligible items the candidate sources missed, when the page would be short."""

    name: str
    fail_open: bool
    budget_ms: float
    prior: float
    max_added: int
    """Most candidates it adds to one request beyond those that fill the page."""

    def scan(self, query: FeedQuery) -> BackfillScan: ...

    def forget(self, region: str, user_id: str) -> None:
        """Drop anything kept about the viewer between requests (their erasure)."""
        ...


class Filter(Protocol):
    name: str

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult: ...


class Scorer(Protocol):
    name: str
    fail_open: bool
    budget_ms: float

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]: ...


class Selector(Protocol):
    name: str

    def select(self, query: FeedQuery, candidates: list[Candidate]) -> list[Candidate]: ...


class SideEffect(Protocol):
    name: str

    def run(self, query: FeedQuery, result: FeedResult) -> None: ...


def rank_scores(count: int) -> list[float]:
    """Rank-normalized scores for ``count`` ordered results: 1.0 for the best, down to ~0."""
    if count <= 0:
        return []
    return [1.0 - i / count for i in range(count)]

"""Backfill: more eligible items from the catalog when the candidate sources cannot fill a page.

The runner uses it only when fewer candidates than the page survived the filters: a small
catalog, a viewer who has already seen what trending and the learned sources offer, strict
keyword filters, or a non-personalized feed (whose only other sources are the followed creators
and the region's trending list). It walks two orders, both the same for every viewer of a region,
so it uses nothing inferred about the viewer and serves the non-personalized feed as well:

1. **popular in the region**: the region's trending list (time-decayed engagement of the
   region's viewers) down to ``popular_depth``, deeper than the trending source goes;
2. **newest first**: the whole catalog in keyset steps down its ``created_at`` index
   (``Catalog.scan_newest``), keeping the items available in the region.

The runner filters every batch with the feed's own filters (seen, not-interested, the viewer's
keyword filters and blocked tags) and asks for more until the page can be filled, the catalog is
exhausted, or ``max_examined`` list entries and catalog rows have been read. Steps double in size,
so a long stretch of seen items costs a few round trips; the bound keeps a request's work fixed
however large the catalog is.

A viewer who reads on pages after pages has seen a longer stretch of the newest items each time.
So that the walk does not read that stretch again on every request, the source keeps a
:class:`ResumeHint` per viewer: the stretch, from the newest row down to just before the first
item the last walk added. The next walk reads the rows above the stretch (what was published
since), jumps past it, and reads the stretch itself last. A hint only reorders the walk, never
narrows it: a stale one (an item imported into the stretch later) costs order, not items.

A hint says how far a viewer has scrolled, so it is treated as the personal state it is: it lives
only in the serving process's memory (never written), for ``HINT_TTL_S`` of the engine's clock at
most, for at most ``MAX_HINTS`` viewers; it is bound to the account (its creation time), so a
re-created user id never inherits one; and an erasure drops it at once (``forget``, called by
the engine's erasure hook; another process's copy expires within the TTL).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from fyp.config import MoreFromCatalogConfig
from fyp.pipeline.cache import RegionTTLCache
from fyp.pipeline.contracts import Candidate, FeedQuery
from fyp.storage.roles import CatalogPosition, ItemRecord

POPULAR: Final = "popular"
"""Anchor of a candidate found in the region's popularity list."""
NEWEST: Final = "newest"
"""Anchor of a candidate found by the newest-first walk of the catalog."""

_FIRST_STEP: Final = 64
_MAX_STEP: Final = 4_096
"""Entries read per step: at least four per wanted candidate, doubling up to this."""
MAX_HINTS: Final = 20_000
"""Viewers whose resume hint is kept (least recently used dropped): about 300 bytes each."""
HINT_TTL_S: Final = 900.0
"""A hint older than this (engine clock) is not used: a reading session's length."""


@dataclass(frozen=True, slots=True)
class ResumeHint:
    """A stretch of the newest-first order that held nothing the viewer could be offered when
    their last walk went through it: from ``top`` down to ``skip_to`` (both catalog positions)."""

    top: CatalogPosition
    skip_to: CatalogPosition
    """The walk resumes strictly after this position."""
    account: float
    """The viewer's account creation time: a re-created user id does not match."""
    made_at: float


class MoreFromCatalog:
    name = "more_from_catalog"

    def __init__(self, config: MoreFromCatalogConfig, ttl_s: float = 2.0) -> None:
        self.config = config
        self.fail_open = config.fail_open
        self.budget_ms = config.budget_ms
        self.prior = config.prior
        self.max_added = config.k
        # The popularity list is the same for every viewer of a region: share it for a moment.
        self._popular: RegionTTLCache[list[str]] = RegionTTLCache(ttl_s)
        self._hints: OrderedDict[tuple[str, str], ResumeHint] = OrderedDict()
        self._lock = threading.Lock()

    def scan(self, query: FeedQuery) -> CatalogWalk:
        depth = self.config.popular_depth
        stats = query.context.data.stats
        popular = (
            self._popular.get(
                query.region,
                lambda: [item_id for item_id, _ in stats.trending(depth)],
                query.now,
            )
            if depth > 0
            else []
        )
        key = (query.region, query.user_id)
        with self._lock:
            hint = self._hints.get(key)
            if hint is not None:
                if hint.account == _account(query) and 0 <= query.now - hint.made_at <= HINT_TTL_S:
                    self._hints.move_to_end(key)
                else:
                    del self._hints[key]
                    hint = None
        return CatalogWalk(self, query, popular, hint)

    def remember(self, query: FeedQuery, top: CatalogPosition, skip_to: CatalogPosition) -> None:
        key = (query.region, query.user_id)
        hint = ResumeHint(top, skip_to, _account(query), query.now)
        with self._lock:
            self._hints[key] = hint
            self._hints.move_to_end(key)
            while len(self._hints) > MAX_HINTS:
                self._hints.popitem(last=False)

    def forget(self, region: str, user_id: str) -> None:
        """Drop what this source keeps about a viewer (their erasure)."""
        with self._lock:
            self._hints.pop((region, user_id), None)


def _account(query: FeedQuery) -> float:
    return query.user.created_at if query.user is not None else 0.0


class _Segment:
    """A stretch of the newest-first order: the rows after ``after``, down to ``floor``."""

    def __init__(
        self, label: str, after: CatalogPosition | None, floor: float | None, *, above: bool
    ) -> None:
        self.label = label
        self.after = after
        self.floor = floor
        """The segment ends at the first row published before this time (``above``: at or
        before it); ``None``: at the catalog's end. Compared on publication time only: item ids
        may sort differently in the database's collation, so at a boundary instant segments
        overlap instead (the runner drops repeats) and never leave a gap."""
        self.above = above
        self.started = False
        self.done = False

    def holds(self, created_at: float) -> bool:
        if self.floor is None:
            return True
        return created_at > self.floor if self.above else created_at >= self.floor


class CatalogWalk:
    """One request's walk: the popularity list, then the catalog newest first (with the
    viewer's resume hint: the rows above the hinted stretch, the rows past it, the stretch)."""

    def __init__(
        self,
        source: MoreFromCatalog,
        query: FeedQuery,
        popular: list[str],
        hint: ResumeHint | None,
    ) -> None:
        self._source = source
        self._config = source.config
        self._query = query
        self._popular = popular
        self._popular_set = frozenset(popular)
        self._popular_read = 0
        self._hint = hint
        if hint is None:
            self._segments = [_Segment("all", None, None, above=False)]
        else:
            # Above the stretch: rows newer than its top; past it; then the stretch itself,
            # whose start is known once the first segment has ended.
            self._segments = [
                _Segment("above", None, hint.top[0], above=True),
                _Segment("past", hint.skip_to, None, above=False),
                _Segment("stretch", None, hint.skip_to[0], above=False),
            ]
        self._newest: CatalogPosition | None = None
        self._above_end: CatalogPosition | None = None
        self._resume_at: dict[str, tuple[str, CatalogPosition | None]] = {}
        """Item id -> its segment and the position a walk resumes after to reach it first."""
        self._catalog_read = 0
        self._handed = 0
        self._step = _FIRST_STEP

    @property
    def examined(self) -> int:
        return self._popular_read + self._catalog_read

    @property
    def bound_reached(self) -> bool:
        return self.examined >= self._config.max_examined

    @property
    def catalog_done(self) -> bool:
        return all(s.done for s in self._segments)

    @property
    def spent(self) -> bool:
        return self.catalog_done or self.bound_reached

    def more(self, want: int) -> list[Candidate]:
        room = self._config.max_examined - self.examined
        size = min(max(self._step, 4 * want), _MAX_STEP, room)
        self._step = min(self._step * 2, _MAX_STEP)
        if size <= 0 or self.spent:
            return []
        region = self._query.region
        if self._popular_read < len(self._popular):
            ids = self._popular[self._popular_read : self._popular_read + size]
            self._popular_read += len(ids)
            known = self._query.context.catalog.get_items(ids)
            found = [known[i] for i in ids if i in known and known[i].available_in(region)]
            return self._hand(found, POPULAR)
        segment = next(s for s in self._segments if not s.done)
        if not segment.started and segment.label == "stretch":
            segment.after = self._above_end  # the stretch starts where "above" ended
        segment.started = True
        start = segment.after
        page = self._query.context.catalog.scan_newest(region, start, size)
        self._catalog_read += page.examined
        records = [r for r in page.items if segment.holds(r.created_at)]
        # Past the segment's floor, or at the catalog's end (the last row read may be one
        # unavailable in the region, so it is checked too).
        if len(records) < len(page.items) or page.next is None or not segment.holds(page.next[0]):
            segment.done = True
        segment.after = page.next
        if records and self._newest is None and start is None:
            self._newest = (records[0].created_at, records[0].item_id)
        if segment.label == "above" and records:
            self._above_end = (records[-1].created_at, records[-1].item_id)
        previous = start
        fresh: list[ItemRecord] = []
        for record in records:
            self._resume_at.setdefault(record.item_id, (segment.label, previous))
            previous = (record.created_at, record.item_id)
            # What the popularity list held was offered already (or filtered out) this request.
            if record.item_id not in self._popular_set:
                fresh.append(record)
        return self._hand(fresh, NEWEST)

    def _hand(self, records: list[ItemRecord], anchor: str) -> list[Candidate]:
        out = [
            # Scored in ``done``, once the filters have had their say.
            Candidate(
                r.item_id,
                sources={self._source.name: 0.0},
                anchors={self._source.name: anchor},
                item=r,
            )
            for r in records
        ]
        self._handed += len(out)
        return out

    def done(self, added: list[Candidate]) -> None:
        """Score what the runner took by its rank among them (in (0, 1] like every source's
        scores, 0.5 a page down): by how many items the walk passed, it would depend on how much
        the viewer has seen and on where their hint let the walk start. Then keep where their
        next walk should resume: just before the first item of the newest-first walk that the
        runner took (the rows before it held nothing for them)."""
        n = self._query.n
        for rank, cand in enumerate(added):
            cand.sources[self._source.name] = 1.0 / (1.0 + rank / n)
        first = next(
            (c for c in added if c.anchors.get(self._source.name) == NEWEST),
            None,
        )
        if first is None or first.item_id not in self._resume_at:
            return  # the walk learned nothing new about where the viewer's items start
        segment, resume = self._resume_at[first.item_id]
        if segment == "above":
            # Something new at the top: the hinted stretch still holds; keep it.
            return
        if resume is None:
            # Their items start at the very top: nothing to skip.
            self._source.forget(self._query.region, self._query.user_id)
            return
        top = self._newest or (self._hint.top if self._hint is not None else resume)
        self._source.remember(self._query, top, resume)

    def summary(self) -> str:
        parts = []
        if self._popular_read:
            parts.append(f"{self._popular_read} of the region's popular list")
        if self._catalog_read or self.catalog_done:
            end = ", to its end" if self.catalog_done else ""
            jumped = ", resuming past what they had seen" if self._hint is not None else ""
            parts.append(f"{self._catalog_read} catalog rows newest first{jumped}{end}")
        read = " and ".join(parts) if parts else "nothing"
        note = f"read {read}; offered {self._handed}"
        if self.bound_reached and not self.catalog_done:
            note += f"; stopped at the bound of {self._config.max_examined} entries examined"
        return note

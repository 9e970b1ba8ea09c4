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
so a viewer who has seen a long stretch of the order costs a few round trips, not one per page;
the bound keeps a request's work fixed however large the catalog is.
"""

from __future__ import annotations

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
        return CatalogWalk(self.name, self.config, query, popular)


class CatalogWalk:
    """One request's walk: the popularity list first, then the catalog newest first."""

    def __init__(
        self, name: str, config: MoreFromCatalogConfig, query: FeedQuery, popular: list[str]
    ) -> None:
        self._name = name
        self._config = config
        self._query = query
        self._popular = popular
        self._popular_set = frozenset(popular)
        self._popular_read = 0
        self._position: CatalogPosition | None = None
        self._catalog_read = 0
        self._catalog_done = False
        self._handed = 0
        self._step = _FIRST_STEP

    @property
    def examined(self) -> int:
        return self._popular_read + self._catalog_read

    @property
    def bound_reached(self) -> bool:
        return self.examined >= self._config.max_examined

    @property
    def spent(self) -> bool:
        return self._catalog_done or self.bound_reached

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
            records = self._query.context.catalog.get_items(ids)
            found = [records[i] for i in ids if i in records and records[i].available_in(region)]
            return self._hand(found, POPULAR)
        page = self._query.context.catalog.scan_newest(region, self._position, size)
        self._catalog_read += page.examined
        self._position = page.next
        self._catalog_done = page.next is None
        # What the popularity list held was offered already (or filtered out) this request.
        return self._hand([r for r in page.items if r.item_id not in self._popular_set], NEWEST)

    def _hand(self, records: list[ItemRecord], anchor: str) -> list[Candidate]:
        n = self._query.n
        out = [
            # Decreasing along the walk, in (0, 1] like every source's scores: 0.5 a page down.
            Candidate(
                r.item_id,
                sources={self._name: 1.0 / (1.0 + (self._handed + i) / n)},
                anchors={self._name: anchor},
                item=r,
            )
            for i, r in enumerate(records)
        ]
        self._handed += len(out)
        return out

    def summary(self) -> str:
        parts = []
        if self._popular_read:
            parts.append(f"{self._popular_read} of the region's popular list")
        if self._catalog_read or self._catalog_done:
            end = ", to its end" if self._catalog_done else ""
            parts.append(f"{self._catalog_read} catalog rows newest first{end}")
        read = " and ".join(parts) if parts else "nothing"
        note = f"read {read}; offered {self._handed}"
        if self.bound_reached and not self._catalog_done:
            note += f"; stopped at the bound of {self._config.max_examined} entries examined"
        return note

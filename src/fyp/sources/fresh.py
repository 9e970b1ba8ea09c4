"""Fresh items: the newest items in the catalog, so new uploads get a first audience."""

from __future__ import annotations

from fyp.config import FreshConfig
from fyp.pipeline.cache import RegionTTLCache
from fyp.pipeline.contracts import Candidate, FeedQuery, rank_scores


class FreshSource:
    name = "fresh"

    def __init__(self, config: FreshConfig, ttl_s: float = 2.0) -> None:
        self.config = config
        self.fail_open = config.fail_open
        self.budget_ms = config.budget_ms
        self.prior = config.prior
        self._cache: RegionTTLCache[list[str]] = RegionTTLCache(ttl_s)

    def fetch(self, query: FeedQuery) -> list[Candidate]:
        since = query.now - self.config.max_age_hours * 3600.0
        catalog = query.context.catalog

        def load() -> list[str]:
            # Over-fetch: items unavailable in this region are dropped by a filter later.
            recent = catalog.recent_items(since, self.config.k * 2)
            return [r.item_id for r in recent if r.available_in(query.region)][: self.config.k]

        ids = self._cache.get(query.region, load, query.now)
        return [
            Candidate(item_id, sources={self.name: r})
            for item_id, r in zip(ids, rank_scores(len(ids)), strict=True)
        ]

"""Trending in the viewer's region: items by time-decayed engagement of that region's viewers."""

from __future__ import annotations

from fyp.config import TrendingConfig
from fyp.pipeline.cache import RegionTTLCache
from fyp.pipeline.contracts import Candidate, FeedQuery, rank_scores


class TrendingSource:
    name = "trending"

    def __init__(self, config: TrendingConfig, ttl_s: float = 2.0) -> None:
        self.config = config
        self.fail_open = config.fail_open
        self.budget_ms = config.budget_ms
        self.prior = config.prior
        # The list is the same for every viewer of a region: share it for a moment.
        self._cache: RegionTTLCache[list[str]] = RegionTTLCache(ttl_s)

    def fetch(self, query: FeedQuery) -> list[Candidate]:
        stats = query.context.data.stats
        ids = self._cache.get(
            query.region,
            lambda: [item_id for item_id, _ in stats.trending(self.config.k)],
            query.now,
        )
        return [
            Candidate(item_id, sources={self.name: r})
            for item_id, r in zip(ids, rank_scores(len(ids)), strict=True)
        ]

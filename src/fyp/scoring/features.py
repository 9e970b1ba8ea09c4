"""Per-candidate features, each scaled to about [-1, 1] so the value model's weights are comparable.

* ``retrieval``: how strongly the sources vouch for the item: a noisy-or over sources of
  ``prior(source) * rank-normalized score``, so an item found by several sources rises.
* ``creator_affinity`` / ``tag_affinity``: the viewer's online affinity (decayed, moved by every
  event), squashed with ``tanh(affinity / affinity_scale)``. Not-interested drives them negative.
* ``engagement``: the item's finish, like and share rates and skip rate in the viewer's region,
  smoothed toward the region's averages with ``prior_views`` pseudo-views, as a log-lift.
* ``freshness``: ``0.5 ** (age / freshness_half_life)``.
* ``popularity``: views in the region, log-scaled against the most viewed candidate.
"""

from __future__ import annotations

import math

from fyp.config import ScoringConfig, SourcesConfig
from fyp.pipeline.cache import RegionTTLCache
from fyp.pipeline.contracts import Candidate, FeedQuery
from fyp.storage.roles import ItemStatsRecord


class _Feature:
    fail_open = True
    budget_ms = 5.0


class RetrievalScorer(_Feature):
    name = "retrieval"

    def __init__(self, sources: SourcesConfig) -> None:
        self._priors = sources.priors()

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        out: list[float] = []
        for cand in candidates:
            miss = 1.0
            for source, value in cand.sources.items():
                miss *= 1.0 - self._priors.get(source, 0.5) * min(max(value, 0.0), 1.0)
            out.append(1.0 - miss)
        return out


class CreatorAffinityScorer(_Feature):
    name = "creator_affinity"

    def __init__(self, scoring: ScoringConfig) -> None:
        self._scale = scoring.affinity_scale

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        affinity = query.viewer.creator_affinity
        return [math.tanh(affinity.get(c.creator_id, 0.0) / self._scale) for c in candidates]


class TagAffinityScorer(_Feature):
    name = "tag_affinity"

    def __init__(self, scoring: ScoringConfig) -> None:
        self._scale = scoring.affinity_scale

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        affinity = query.viewer.tag_affinity
        out: list[float] = []
        for cand in candidates:
            tags = cand.tags
            total = sum(affinity.get(t, 0.0) for t in tags) / math.sqrt(len(tags)) if tags else 0.0
            out.append(math.tanh(total / self._scale))
        return out


class EngagementScorer(_Feature):
    name = "engagement"
    budget_ms = 10.0

    def __init__(self, scoring: ScoringConfig, totals_ttl_s: float = 10.0) -> None:
        self._prior = scoring.prior_views
        # The region's totals move with every view: cached briefly, on the engine's clock.
        self._totals: RegionTTLCache[ItemStatsRecord] = RegionTTLCache(totals_ttl_s)

    def _region_totals(self, query: FeedQuery) -> ItemStatsRecord:
        return self._totals.get(query.region, query.context.data.stats.totals, query.now)

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        totals = self._region_totals(query)
        views = max(totals.views, 1)
        # Region averages, floored so a region with no likes yet does not divide by zero.
        avg = {
            "finishes": max(totals.finishes / views, 0.01),
            "likes": max(totals.likes / views, 0.005),
            "shares": max(totals.shares / views, 0.001),
            "skips": max(totals.skips / views, 0.01),
        }
        prior = self._prior
        finish, like, share, skip = avg["finishes"], avg["likes"], avg["shares"], avg["skips"]
        log, tanh = math.log, math.tanh
        out: list[float] = []
        for cand in candidates:
            s = cand.stats
            if s is None or (s.views == 0 and s.finishes == s.likes == s.shares == s.skips == 0):
                out.append(0.0)  # no evidence: exactly the region's average
                continue
            denominator = s.views + prior
            # Each rate is smoothed toward the region's average and divided by it (a lift).
            lift = (
                log((s.finishes + prior * finish) / denominator / finish)
                + log((s.likes + prior * like) / denominator / like)
                + 0.5 * log((s.shares + prior * share) / denominator / share)
                - 0.5 * log((s.skips + prior * skip) / denominator / skip)
            ) / 2.0
            out.append(tanh(lift))
        return out


class FreshnessScorer(_Feature):
    name = "freshness"

    def __init__(self, scoring: ScoringConfig) -> None:
        self._half_life_s = scoring.freshness_half_life_hours * 3600.0

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        out: list[float] = []
        for cand in candidates:
            age = max(query.now - cand.item.created_at, 0.0) if cand.item else math.inf
            out.append(0.5 ** (age / self._half_life_s))
        return out


class PopularityScorer(_Feature):
    name = "popularity"

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        views = [c.stats.views if c.stats else 0 for c in candidates]
        top = math.log1p(max(views, default=0))
        if top <= 0:
            return [0.0] * len(candidates)
        return [math.log1p(v) / top for v in views]

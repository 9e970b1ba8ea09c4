"""The value model: the final score is a weighted sum of the features the scorers computed.

The weights live in ``ScoringConfig.weights`` and are published as they are; a feature a scorer
failed to compute (fail-open) contributes 0.
"""

from __future__ import annotations

from fyp.config import ScoringConfig
from fyp.pipeline.contracts import Candidate, FeedQuery


class ValueModel:
    name = "value_model"
    fail_open = False
    budget_ms = 2.0

    def __init__(self, scoring: ScoringConfig) -> None:
        self.weights = dict(scoring.weights)

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        weights = [(f, w) for f, w in self.weights.items() if w]
        out: list[float] = []
        for cand in candidates:
            features = cand.features
            total = 0.0
            for feature, weight in weights:
                total += weight * features.get(feature, 0.0)
            out.append(total)
        return out


class PlainOrder:
    """The score of the non-personalized feed: followed creators' newest items (in (1, 2]), then
    the region's most popular (in (0, 1]), then the backfill's items (in (-1, 0]), each in its
    own source's order. Uses nothing inferred about the viewer: only whom they chose to follow,
    what the region as a whole watches, and what the catalog holds."""

    name = "plain_order"
    fail_open = False
    budget_ms = 1.0

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        return [self._tiered(c.sources) for c in candidates]

    @staticmethod
    def _tiered(sources: dict[str, float]) -> float:
        if "following" in sources:
            return 1.0 + sources["following"]
        if "trending" in sources:
            return sources["trending"]
        return sources.get("more_from_catalog", 0.0) - 1.0

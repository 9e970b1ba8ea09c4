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
    """The score of the non-personalized feed: followed creators' newest items, then the
    region's most popular, each in its own source's order. Uses nothing inferred about the
    viewer: only whom they chose to follow and what the region as a whole watches."""

    name = "plain_order"
    fail_open = False
    budget_ms = 1.0

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        return [
            1.0 + c.sources["following"]
            if "following" in c.sources
            else c.sources.get("trending", 0.0)
            for c in candidates
        ]

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

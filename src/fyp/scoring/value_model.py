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
        weights = self.weights.items()
        return [sum(w * c.features.get(f, 0.0) for f, w in weights) for c in candidates]

"""Learned taste: nearest items to the viewer in the region's ALS embedding space (faiss).

The viewer's vector is folded in at request time from their latest events with the same preference
weights training uses, so it reflects the swipe that just happened without retraining.
"""

from __future__ import annotations

from fyp.config import EmbeddingConfig, TrainingConfig
from fyp.pipeline.contracts import Candidate, FeedQuery


class EmbeddingSource:
    name = "embedding"

    def __init__(self, config: EmbeddingConfig, training: TrainingConfig) -> None:
        self.config = config
        self.training = training
        self.fail_open = config.fail_open
        self.budget_ms = config.budget_ms
        self.prior = config.prior

    def fetch(self, query: FeedQuery) -> list[Candidate]:
        model = query.context.model
        if model is None:
            return []
        interactions = query.recent_preferences(self.config.history)
        if not interactions:
            return []
        vector = model.user_vector(interactions)
        if vector is None:
            return []
        nearest = model.nearest(vector, self.config.k)
        if not nearest:
            return []
        top = max(nearest[0][1], 1e-9)
        return [
            Candidate(item_id, sources={self.name: max(score, 0.0) / top})
            for item_id, score in nearest
            if score > 0
        ]

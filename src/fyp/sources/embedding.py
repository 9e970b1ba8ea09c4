"""Learned taste: nearest items to the viewer in the region's ALS embedding space (faiss).

The viewer's vector is folded in at request time from their latest events with the same preference
weights training uses, so it reflects the swipe that just happened without retraining.
"""

from __future__ import annotations

from fyp.config import EmbeddingConfig, TrainingConfig
from fyp.pipeline.contracts import Candidate, FeedQuery
from fyp.signals import preference_weight


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
        history = query.recent_events(self.config.history)
        if not history:
            return []
        records = query.context.catalog.get_items(list({e.item_id for e in history}))
        interactions = [
            (
                e.item_id,
                preference_weight(
                    e.type,
                    e.watch_ms,
                    records[e.item_id].duration_s if e.item_id in records else 0.0,
                    self.training.event_weights,
                    self.training.play_weight,
                ),
            )
            for e in history
        ]
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

"""Content towers: nearest items to the viewer in a two-tower model's space.

The item tower reads each item's caption and tags, so an item uploaded after the last training
(placed by the engine's sync loop) or one nobody has watched yet is found as soon as a viewer's
recent positive items point its way. The viewer's vector is pooled from their latest positive
items at request time: the swipe that just happened counts.
"""

from __future__ import annotations

from fyp.config import ContentTowerConfig, EmbeddingConfig, TrainingConfig
from fyp.pipeline.contracts import Candidate, FeedQuery

NEW_ITEM_ANCHOR = "new"
"""Anchor of a candidate the towers placed from its content alone (no training interactions)."""


class ContentTowerSource:
    name = "content_tower"

    def __init__(
        self, config: ContentTowerConfig, embedding: EmbeddingConfig, training: TrainingConfig
    ) -> None:
        self.config = config
        self.training = training
        # The same read of the viewer's latest events as the learned source's (shared per request).
        self.history_events = embedding.history
        self.fail_open = config.fail_open
        self.budget_ms = config.budget_ms
        self.prior = config.prior

    def fetch(self, query: FeedQuery) -> list[Candidate]:
        model = query.context.model
        tower = model.tower if model is not None else None
        if tower is None:
            return []
        positive: list[str] = []
        # Oldest first, so the newest positives come last (and a repeat moves to the end).
        for item_id, weight in reversed(query.recent_preferences(self.history_events)):
            if weight > 0:
                if item_id in positive:
                    positive.remove(item_id)
                positive.append(item_id)
        vector = tower.user_vector(positive[-self.config.history :])
        if vector is None:
            return []
        nearest = [(i, s) for i, s in tower.nearest(vector, self.config.k) if s > 0]
        if not nearest:
            return []
        top = max(nearest[0][1], 1e-9)
        return [
            Candidate(
                item_id,
                sources={self.name: score / top},
                anchors={} if item_id in tower.trained_items else {self.name: NEW_ITEM_ANCHOR},
            )
            for item_id, score in nearest
        ]

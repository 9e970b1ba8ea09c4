"""Creators the viewer follows: their newest items."""

from __future__ import annotations

from fyp.config import FollowingConfig
from fyp.pipeline.contracts import Candidate, FeedQuery, rank_scores


class FollowingSource:
    name = "following"

    def __init__(self, config: FollowingConfig) -> None:
        self.config = config
        self.fail_open = config.fail_open
        self.budget_ms = config.budget_ms
        self.prior = config.prior

    def fetch(self, query: FeedQuery) -> list[Candidate]:
        followed = sorted(query.viewer.follows)
        if not followed:
            return []
        records = query.context.catalog.items_by_creators(followed, self.config.per_creator)
        records.sort(key=lambda r: (-r.created_at, r.item_id))
        records = records[: self.config.k]
        return [
            Candidate(r.item_id, sources={self.name: score}, anchors={self.name: r.creator_id})
            for r, score in zip(records, rank_scores(len(records)), strict=True)
        ]

"""The viewer's strongest tags right now (online affinity): the newest items carrying them.

Affinities move with every event, so a few likes in a topic change this source on the next request,
before any model is retrained.
"""

from __future__ import annotations

from fyp.config import InterestTagsConfig
from fyp.pipeline.contracts import Candidate, FeedQuery


class InterestTagsSource:
    name = "interest_tags"

    def __init__(self, config: InterestTagsConfig) -> None:
        self.config = config
        self.fail_open = config.fail_open
        self.budget_ms = config.budget_ms
        self.prior = config.prior

    def fetch(self, query: FeedQuery) -> list[Candidate]:
        affinity = query.viewer.tag_affinity
        top = sorted((t for t, a in affinity.items() if a > 0), key=lambda t: (-affinity[t], t))
        top = top[: self.config.top_tags]
        if not top:
            return []
        strongest = affinity[top[0]]
        by_tag = query.context.catalog.items_by_tags(top, self.config.per_tag)
        best: dict[str, tuple[float, str]] = {}
        for tag in top:
            ids = by_tag.get(tag, [])
            weight = affinity[tag] / strongest
            for rank, item_id in enumerate(ids):
                score = weight * (1.0 - 0.5 * rank / max(len(ids), 1))
                if score > best.get(item_id, (0.0, ""))[0]:
                    best[item_id] = (score, tag)
        ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[: self.config.k]
        return [
            Candidate(item_id, sources={self.name: score}, anchors={self.name: tag})
            for item_id, (score, tag) in ranked
        ]

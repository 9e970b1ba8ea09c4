"""Item-to-item co-engagement: items liked by the viewers who liked the viewer's recent favourites.

The neighbour table comes from the region's last training run; the anchors are the viewer's most
recent positive items, read fresh on every request, so a like pulls its neighbours forward at once.
"""

from __future__ import annotations

from fyp.config import CoEngagementConfig
from fyp.pipeline.contracts import Candidate, FeedQuery

_RECENCY_DECAY = 0.1
"""Each older anchor counts a little less: weight ``1 / (1 + 0.1 * position)``."""


class CoEngagementSource:
    name = "co_engagement"

    def __init__(self, config: CoEngagementConfig) -> None:
        self.config = config
        self.fail_open = config.fail_open
        self.budget_ms = config.budget_ms
        self.prior = config.prior

    def fetch(self, query: FeedQuery) -> list[Candidate]:
        model = query.context.model
        anchors = query.viewer.recent_positives[: self.config.anchors]
        if model is None or not anchors:
            return []
        best: dict[str, tuple[float, str]] = {}
        for position, anchor in enumerate(anchors):
            weight = 1.0 / (1.0 + _RECENCY_DECAY * position)
            for item_id, similarity in model.similar(anchor, self.config.per_anchor):
                score = weight * similarity
                if score > best.get(item_id, (0.0, ""))[0]:
                    best[item_id] = (score, anchor)
        for anchor in anchors:
            best.pop(anchor, None)
        ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[: self.config.k]
        if not ranked:
            return []
        top = ranked[0][1][0]
        return [
            Candidate(item_id, sources={self.name: score / top}, anchors={self.name: anchor})
            for item_id, (score, anchor) in ranked
        ]

"""The ``ranker`` feature: the multi-task ranker's heads combined by the ranker's value model.

For all candidates of a request, one batched forward pass predicts the watch ratio and the chances
of a finish, a quick skip, a like, a share and a follow; ``RankerConfig.objective_weights`` (in
config, published with the algorithm) combine them into one number, which the first value model
then weighs like any other feature (``ScoringConfig.weights["ranker"]``). The quick-skip head has a
negative weight, and the viewer's skips and not-interested reach the heads through the affinity
features, so negative feedback lowers the score.

Each head's prediction is also kept on the candidate as ``ranker_<task>`` so explanations can say
what the model expects (``fyp.pipeline.explain``). Without a trained ranker (a fresh install, a
region with too few viewings) the feature is 0 for every candidate, like any feature without data.
"""

from __future__ import annotations

import numpy as np

from fyp.config import RankerConfig
from fyp.pipeline.contracts import Candidate, FeedQuery
from fyp.storage.roles import ItemRecord

HEAD_FEATURE_PREFIX = "ranker_"


class RankerScorer:
    name = "ranker"
    fail_open = True
    budget_ms = 10.0

    def __init__(self, config: RankerConfig) -> None:
        self.objective_weights = {task: w for task, w in config.objective_weights.items() if w}

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        model = query.context.model
        ranker = model.ranker if model is not None else None
        out = [0.0] * len(candidates)
        if ranker is None:
            return out
        scored = [(k, c, c.item) for k, c in enumerate(candidates) if c.item is not None]
        if not scored:
            return out
        items: list[ItemRecord] = [item for _, _, item in scored]
        heads = ranker.score_candidates(
            query.user_id, items, [c.stats for _, c, _ in scored], query.viewer, query.now
        )
        weights = np.array(
            [self.objective_weights.get(task, 0.0) for task in ranker.tasks], dtype=np.float32
        )
        values = (heads @ weights).tolist()
        names = [HEAD_FEATURE_PREFIX + task for task in ranker.tasks]
        for (k, cand, _), row, value in zip(scored, heads.tolist(), values, strict=True):
            features = cand.features
            for name, p in zip(names, row, strict=True):
                features[name] = p
            out[k] = value
        return out

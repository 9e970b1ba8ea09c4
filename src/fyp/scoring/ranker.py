"""The ``ranker`` feature: the multi-task ranker's heads combined by the ranker's value model.

For all candidates of a request, one batched forward pass predicts the watch ratio and the chances
of a finish, a quick skip, a like, a share and a follow; ``RankerConfig.objective_weights`` (in
config, published with the algorithm) combine them into one number, which the first value model
then weighs like any other feature (``ScoringConfig.weights["ranker"]``). The quick-skip head has a
negative weight, and the viewer's skips and not-interested reach the heads through the affinity
features, so negative feedback lowers the score.

Among the inputs is the learned source's retrieval score of every candidate: the viewer's vector,
folded in from their latest events with the training preference weights (as the embedding source
does, and solved once per request thanks to the serving model's cache), dotted with the item's
factor. Which other sources found a candidate is not an input: a logged viewing cannot say which
sources would have found it, so the ranker could not learn what those scores are worth.

Each head's prediction is also kept on the candidate as ``ranker_<task>`` so explanations can say
what the model expects (``fyp.pipeline.explain``). Without a trained ranker (a fresh install, a
region with too few viewings) the feature is 0 for every candidate, like any feature without data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fyp.config import RankerConfig, TrainingConfig
from fyp.pipeline.contracts import Candidate, FeedQuery
from fyp.signals import preference_weight
from fyp.storage.roles import ItemRecord

if TYPE_CHECKING:
    from fyp.models.serving import ServingModel

HEAD_FEATURE_PREFIX = "ranker_"


class RankerScorer:
    name = "ranker"
    fail_open = True
    budget_ms = 10.0

    def __init__(
        self, config: RankerConfig, training: TrainingConfig | None = None, history: int = 200
    ) -> None:
        self.objective_weights = {task: w for task, w in config.objective_weights.items() if w}
        self.watch_seconds_weight = config.watch_seconds_weight
        self.training = training or TrainingConfig()
        # How many of the viewer's latest events fold them in: the embedding source's setting, so
        # both ask for the same vector and the serving model solves it once.
        self.history = history

    def _als_scores(
        self, query: FeedQuery, model: ServingModel, items: list[ItemRecord]
    ) -> list[float | None] | None:
        history = query.recent_events(self.history)
        if not history:
            return None
        durations = {item.item_id: item.duration_s for item in items}
        missing = [e.item_id for e in history if e.item_id not in durations]
        if missing:
            records = query.context.catalog.get_items(list(dict.fromkeys(missing)))
            durations.update({i: r.duration_s for i, r in records.items()})
        weights, play_weight = self.training.event_weights, self.training.play_weight
        vector = model.user_vector(
            [
                (
                    e.item_id,
                    preference_weight(
                        e.type, e.watch_ms, durations.get(e.item_id, 0.0), weights, play_weight
                    ),
                )
                for e in history
            ]
        )
        if vector is None:
            return None
        return model.item_scores(vector, [item.item_id for item in items])

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        model = query.context.model
        ranker = model.ranker if model is not None else None
        out = [0.0] * len(candidates)
        if model is None or ranker is None:
            return out
        scored = [(k, c, c.item) for k, c in enumerate(candidates) if c.item is not None]
        if not scored:
            return out
        items: list[ItemRecord] = [item for _, _, item in scored]
        batch = ranker.serving_batch(
            query.user_id,
            items,
            [c.stats for _, c, _ in scored],
            query.viewer,
            query.now,
            self._als_scores(query, model, items),
        )
        heads = ranker.predict(batch)
        weights = np.array(
            [self.objective_weights.get(task, 0.0) for task in ranker.tasks], dtype=np.float32
        )
        values_array = heads @ weights
        if self.watch_seconds_weight and "watch_ratio" in ranker.tasks:
            # Expected minutes watched: the predicted share of the video times its length.
            minutes = np.array([item.duration_s for item in items], dtype=np.float32) / 60.0
            ratio = heads[:, ranker.tasks.index("watch_ratio")]
            values_array = values_array + self.watch_seconds_weight * ratio * minutes
        values = values_array.tolist()
        names = [HEAD_FEATURE_PREFIX + task for task in ranker.tasks]
        inputs = batch.numeric.tolist()
        for (k, cand, _), row, value, x in zip(scored, heads.tolist(), values, inputs, strict=True):
            cand.ranker_inputs = tuple(x)
            features = cand.features
            for name, p in zip(names, row, strict=True):
                features[name] = p
            out[k] = value
        return out

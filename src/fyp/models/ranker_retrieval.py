"""Point-in-time retrieval scores for ranker training: what the learned source would have said.

At serving, the ranker reads the learned (ALS) source's score of each candidate: the viewer's
vector, folded in from their latest events, dotted with the item's factor. For a logged viewing the
same number has to come from a model that had not seen that viewing, or the ranker would learn to
trust a score that, in training, already knew the answer.

``als_scores_before`` therefore fits ALS (same preference weights and hyperparameters as the
region's model) on the events before a ``cutoff`` only, and scores the viewings at or after it with
that fit's viewer factors: the viewer as the model knew them at the cutoff, a little staler than a
request-time fold-in, never fresher. Viewings before the cutoff, and viewers or items the fit never
saw, keep ``has_als_score = 0``. Training splits its viewings in the middle, so the half after the
split teaches the ranker what the score is worth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from fyp.config import TrainingConfig
from fyp.models.ranker_data import ExampleSet, LoggedEvent, set_als_scores
from fyp.signals import preference_weight
from fyp.storage.roles import ItemRecord


@dataclass(frozen=True)
class AlsFit:
    users: dict[str, int]
    items: dict[str, int]
    user_factors: npt.NDArray[np.float32]
    item_factors: npt.NDArray[np.float32]


def fit_als(
    events: Sequence[LoggedEvent], items: Mapping[str, ItemRecord], config: TrainingConfig
) -> AlsFit | None:
    """ALS on ``events`` with the training preference weights; ``None`` if there is too little."""
    users: dict[str, int] = {}
    columns: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    weights = config.event_weights
    for event in events:
        item = items.get(event.item_id)
        if item is None:
            continue
        weight = preference_weight(
            event.type, event.watch_ms, item.duration_s, weights, config.play_weight
        )
        if weight:
            rows.append(users.setdefault(event.user_id, len(users)))
            cols.append(columns.setdefault(event.item_id, len(columns)))
            values.append(weight)
    if len(users) < 2 or len(columns) < 2:
        return None
    matrix = sp.coo_matrix((values, (rows, cols)), shape=(len(users), len(columns))).tocsr()
    matrix.sum_duplicates()
    matrix.data[np.abs(matrix.data) < 1e-9] = 0.0
    matrix.eliminate_zeros()
    if matrix.nnz == 0:
        return None
    factors = min(config.factors, max(2, min(matrix.shape) - 1))
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(
            factors=factors,
            regularization=config.regularization,
            alpha=config.alpha,
            iterations=config.iterations,
            random_state=config.seed,
        )
        als.fit(matrix.astype(np.float32), show_progress=False)
    return AlsFit(
        users,
        columns,
        np.asarray(als.user_factors, dtype=np.float32),
        np.asarray(als.item_factors, dtype=np.float32),
    )


def als_scores_before(
    events: Sequence[LoggedEvent],
    items: Mapping[str, ItemRecord],
    examples: ExampleSet,
    config: TrainingConfig,
    cutoff: float,
) -> int:
    """Fit on the events before ``cutoff``; fill in the score of the viewings from ``cutoff`` on.

    Returns how many viewings got a score.
    """
    fit = fit_als([e for e in events if e.ts < cutoff], items, config)
    if fit is None:
        return 0
    after = np.flatnonzero(examples.ts >= cutoff)
    user_rows = np.array([fit.users.get(examples.user_ids[k], -1) for k in after], dtype=np.int64)
    item_rows = np.array([fit.items.get(examples.item_ids[k], -1) for k in after], dtype=np.int64)
    known = (user_rows >= 0) & (item_rows >= 0)
    if not known.any():
        return 0
    scores = np.einsum(
        "ij,ij->i", fit.user_factors[user_rows[known]], fit.item_factors[item_rows[known]]
    ).astype(np.float64)
    set_als_scores(examples, after[known], scores)
    return int(known.sum())

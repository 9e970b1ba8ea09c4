"""Offline metrics: top-K accuracy, beyond-accuracy, and ranker (classification) metrics.

Conventions, chosen to match the common full-ranking protocol (Rendle et al. 2021; Dacrema et
al. 2019) so numbers are comparable with published tables:

* Lists are ranked over **all** items (no sampled negatives); a user's training items are
  excluded by the recommender, and ``evaluate`` checks that they are.
* ``truth`` is the set of a user's held-out items (duplicates count once). Users without any
  held-out item are not scored; metrics are the unweighted mean over scored users.
* ``recall@K = hits in top K / |truth|`` (not ``/ min(|truth|, K)``, the "truncated" variant some
  papers use): a user with more than K held-out items cannot reach 1.
* ``ndcg@K`` uses binary relevance, gains ``1 / log2(rank + 1)`` (rank 1-based) and the ideal DCG
  of ``min(|truth|, K)`` hits at the top.
* ``hit@K`` is 1 when any held-out item is in the top K; ``mrr@K`` is ``1 / rank`` of the first hit
  within the top K, else 0.

Recommendation lists are ``users x K`` integer arrays, best first, padded with ``-1`` where a
recommender had fewer than K items to offer; padding never counts as a hit or as an item.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from fyp.eval.data import FitContext, FloatArray, IntArray, Interactions, Recommender

DEFAULT_KS: tuple[int, ...] = (10, 20, 50)
RANKING_METRICS: tuple[str, ...] = ("recall", "ndcg", "hit", "mrr")
"""Names of the per-user accuracy metrics, each reported as ``name@K``."""

Truth: TypeAlias = sp.csr_matrix | sp.csr_array | Sequence[npt.ArrayLike]
"""Each user's held-out items: a users x items sparse matrix (stored non-zeros are relevant) or
one array of item indices per user."""

BoolArray = npt.NDArray[np.bool_]


class RecommendationError(ValueError):
    """A recommender broke its contract (shape, ids out of range, duplicates, excluded items)."""


# --------------------------------------------------------------------------------------------
# Top-K accuracy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerUserMetrics:
    """Per-user accuracy values, row-aligned with the recommendation lists they were computed from.

    ``values["ndcg@20"][i]`` is user row ``i``'s NDCG@20; it is NaN when that user has no held-out
    item (``n_relevant[i] == 0``), so a mean over a bucket must skip NaN (``mean`` does).
    """

    values: dict[str, FloatArray]
    n_relevant: IntArray

    def mean(self, rows: IntArray | BoolArray | None = None) -> dict[str, float]:
        """Mean of each metric over the scored users among ``rows`` (all rows by default).

        Raises ``ValueError`` when none of them has a held-out item.
        """
        selected = np.ones(len(self.n_relevant), dtype=np.bool_)
        if rows is not None:
            selected = np.zeros_like(selected)
            selected[rows] = True
        selected &= self.n_relevant > 0
        if not selected.any():
            raise ValueError("no user with a held-out item to average over")
        return {name: float(column[selected].mean()) for name, column in self.values.items()}


def truth_matrix(truth: Truth, n_rows: int) -> sp.csr_matrix:
    """``truth`` as a binary CSR matrix with ``n_rows`` rows (duplicates collapse to one)."""
    if sp.issparse(truth):
        matrix = sp.csr_matrix(truth, copy=True)
        if matrix.shape[0] != n_rows:
            raise ValueError(f"truth has {matrix.shape[0]} rows for {n_rows} recommendation lists")
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        matrix.data = np.ones(matrix.nnz, dtype=np.float32)
        return matrix
    lists = [np.asarray(items, dtype=np.int64).ravel() for items in truth]
    if len(lists) != n_rows:
        raise ValueError(f"truth has {len(lists)} users for {n_rows} recommendation lists")
    cols = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
    if len(cols) and cols.min() < 0:
        raise ValueError("truth contains negative item indices")
    rows = np.repeat(np.arange(n_rows), [len(items) for items in lists])
    n_cols = int(cols.max()) + 1 if len(cols) else 0
    matrix = sp.csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(n_rows, n_cols)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _as_recs(recs: npt.ArrayLike) -> IntArray:
    array = np.asarray(recs)
    if array.ndim != 2:
        raise RecommendationError(f"recommendations must be users x K, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise RecommendationError(
            f"recommendations must be integer item indices, got {array.dtype}"
        )
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < -1:
        raise RecommendationError("recommendations contain negative ids other than -1 padding")
    return array


def check_no_duplicates(recs: IntArray) -> None:
    """Raise ``RecommendationError`` if any list names an item twice (padding aside)."""
    if recs.shape[1] < 2:
        return
    ordered = np.sort(recs, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if repeated.any():
        row = int(np.flatnonzero(repeated.any(axis=1))[0])
        raise RecommendationError(f"recommendation list {row} contains duplicate items")


def _membership(recs: IntArray, matrix: sp.csr_matrix) -> BoolArray:
    """``out[i, r]`` is whether ``recs[i, r]`` is a stored entry of row ``i`` of ``matrix``."""
    n_cols = max(int(matrix.shape[1]), int(recs.max(initial=-1)) + 1, 1)
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    # One int64 key per (row, item) pair turns the per-row set test into a single sorted lookup.
    stored = np.sort(rows * n_cols + matrix.indices.astype(np.int64))
    valid = recs >= 0
    keys = np.arange(recs.shape[0], dtype=np.int64)[:, None] * n_cols + recs
    if len(stored) == 0:
        return np.zeros(recs.shape, dtype=np.bool_)
    at = np.minimum(np.searchsorted(stored, keys), len(stored) - 1)
    found: BoolArray = (stored[at] == keys) & valid
    return found


def per_user_ranking_metrics(
    recs: npt.ArrayLike, truth: Truth, ks: Sequence[int] = DEFAULT_KS
) -> PerUserMetrics:
    """Recall, NDCG, hit rate and MRR at each K in ``ks`` for every list in ``recs``.

    ``recs`` is ``users x L`` (best first, ``-1`` padded) with ``L >= max(ks)``; ``truth`` has
    one row per list. Raises ``RecommendationError`` on malformed lists or duplicates.
    """
    array = _as_recs(recs)
    n, width = array.shape
    cutoffs = sorted({int(k) for k in ks})
    if not cutoffs or cutoffs[0] < 1:
        raise ValueError(f"cutoffs must be positive, got {list(ks)}")
    if cutoffs[-1] > width:
        raise ValueError(f"metrics at K={cutoffs[-1]} need lists of at least {cutoffs[-1]} items")
    check_no_duplicates(array)
    relevant = truth_matrix(truth, n)
    n_relevant = np.diff(relevant.indptr).astype(np.int64)
    scored = n_relevant > 0
    hits = _membership(array, relevant).astype(np.float64)

    discount = 1.0 / np.log2(np.arange(2, width + 2, dtype=np.float64))
    hits_cum = np.cumsum(hits, axis=1)
    dcg_cum = np.cumsum(hits * discount, axis=1)
    ideal_cum = np.cumsum(discount)
    any_hit = hits.any(axis=1)
    first_hit = np.where(any_hit, hits.argmax(axis=1), width)  # 0-based rank of the first hit

    safe_relevant = np.maximum(n_relevant, 1)
    values: dict[str, FloatArray] = {}
    for k in cutoffs:
        found = hits_cum[:, k - 1]
        ideal = ideal_cum[np.minimum(safe_relevant, k) - 1]
        per_metric = {
            "recall": found / safe_relevant,
            "ndcg": dcg_cum[:, k - 1] / ideal,
            "hit": (found > 0).astype(np.float64),
            "mrr": np.where(first_hit < k, 1.0 / (first_hit + 1.0), 0.0),
        }
        for name in RANKING_METRICS:
            values[f"{name}@{k}"] = np.where(scored, per_metric[name], np.nan)
    return PerUserMetrics(values=values, n_relevant=n_relevant)


def ranking_metrics(
    recs: npt.ArrayLike, truth: Truth, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Mean ``recall@K``, ``ndcg@K``, ``hit@K`` and ``mrr@K`` over users with a held-out item."""
    return per_user_ranking_metrics(recs, truth, ks).mean()


def metric_cutoff(metric: str) -> tuple[str, int]:
    """Split ``"ndcg@20"`` into ``("ndcg", 20)``."""
    match = re.fullmatch(r"([a-z_]+)@(\d+)", metric)
    if match is None or int(match.group(2)) < 1:
        raise ValueError(f"metric names look like 'ndcg@20', got {metric!r}")
    return match.group(1), int(match.group(2))


# --------------------------------------------------------------------------------------------
# Beyond accuracy
# --------------------------------------------------------------------------------------------


def coverage(recs: npt.ArrayLike, n_items: int) -> float:
    """Share of the ``n_items`` catalog that appears in at least one list."""
    array = _as_recs(recs)
    items = array[array >= 0]
    if len(items) and items.max() >= n_items:
        raise RecommendationError(f"item {int(items.max())} is outside a catalog of {n_items}")
    return len(np.unique(items)) / n_items if n_items else 0.0


def novelty(recs: npt.ArrayLike, item_counts: npt.ArrayLike, n_users: int) -> float:
    """Mean self-information ``-log2 p(i)`` of recommended items (Zhou et al. 2010).

    ``p(i) = item_counts[i] / n_users`` is the share of training users who interacted with the
    item. Items nobody interacted with count as one user (so the value stays finite) and ``p``
    is capped at 1. Each list's mean is taken first, then the mean over lists; NaN when no list
    has an item.
    """
    array = _as_recs(recs)
    counts = np.asarray(item_counts, dtype=np.float64)
    if n_users < 1:
        raise ValueError("novelty needs n_users >= 1")
    information = -np.log2(np.minimum(np.maximum(counts, 1.0) / n_users, 1.0))
    valid = array >= 0
    per_list = np.where(valid, information[np.where(valid, array, 0)], 0.0).sum(axis=1)
    lengths = valid.sum(axis=1)
    if not lengths.any():
        return float("nan")
    return float((per_list[lengths > 0] / lengths[lengths > 0]).mean())


def tag_matrix(tags: Sequence[Sequence[str]]) -> sp.csr_matrix:
    """Items x tags binary matrix from each item's tag list (tag columns in sorted order)."""
    vocabulary = {tag: j for j, tag in enumerate(sorted({t for item in tags for t in item}))}
    rows = [i for i, item in enumerate(tags) for _ in set(item)]
    cols = [vocabulary[t] for item in tags for t in set(item)]
    return sp.csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (rows, cols)),
        shape=(len(tags), len(vocabulary)),
    )


def per_user_diversity(
    recs: npt.ArrayLike,
    *,
    item_vectors: npt.ArrayLike | None = None,
    item_tags: sp.csr_matrix | Sequence[Sequence[str]] | None = None,
    max_batch_entries: int = 1 << 24,
) -> FloatArray:
    """Intra-list diversity of each list: mean over item pairs of ``1 - similarity``.

    Give exactly one of ``item_vectors`` (items x d; cosine similarity, so a pair's distance lies
    in [0, 2]; an all-zero vector has similarity 0 to everything) or ``item_tags`` (items x tags
    binary matrix or tag lists; Jaccard similarity, 0 for two untagged items). NaN for lists with
    fewer than two items. ``max_batch_entries`` bounds the dense work arrays.
    """
    array = _as_recs(recs)
    if (item_vectors is None) == (item_tags is None):
        raise ValueError("give exactly one of item_vectors or item_tags")
    n, width = array.shape
    out = np.full(n, np.nan)
    if width < 2 or n == 0:
        return out
    dense: FloatArray | None = None
    tags: sp.csr_matrix | None = None
    if item_vectors is not None:
        dense = np.asarray(item_vectors, dtype=np.float64)
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        dense = dense / np.where(norms > 0, norms, 1.0)
        n_features = dense.shape[1]
    else:
        tags = item_tags if sp.issparse(item_tags) else tag_matrix(item_tags)  # type: ignore[arg-type]
        tags = sp.csr_matrix(tags, dtype=np.float64)
        tags.data[:] = 1.0
        n_features = tags.shape[1]
    upper = np.triu(np.ones((width, width), dtype=np.bool_), k=1)
    batch = max(1, max_batch_entries // (width * max(n_features, width, 1)))
    for start in range(0, n, batch):
        block = array[start : start + batch]
        valid = block >= 0
        flat = np.where(valid, block, 0).ravel()
        if dense is not None:
            features = dense[flat]
        else:
            assert tags is not None
            features = tags[flat].toarray()
        features = features.reshape(len(block), width, n_features) * valid[:, :, None]
        overlap = np.einsum("bkd,bld->bkl", features, features)
        if dense is not None:
            similarity = overlap
        else:
            sizes = features.sum(axis=2)
            union = sizes[:, :, None] + sizes[:, None, :] - overlap
            similarity = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
        pairs = valid[:, :, None] & valid[:, None, :] & upper
        n_pairs = pairs.sum(axis=(1, 2))
        total = (similarity * pairs).sum(axis=(1, 2))
        out[start : start + len(block)] = np.where(
            n_pairs > 0, 1.0 - total / np.maximum(n_pairs, 1), np.nan
        )
    return out


def intra_list_diversity(
    recs: npt.ArrayLike,
    *,
    item_vectors: npt.ArrayLike | None = None,
    item_tags: sp.csr_matrix | Sequence[Sequence[str]] | None = None,
) -> float:
    """Mean of ``per_user_diversity`` over lists with at least two items (NaN if none)."""
    values = per_user_diversity(recs, item_vectors=item_vectors, item_tags=item_tags)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


# --------------------------------------------------------------------------------------------
# Ranker metrics
# --------------------------------------------------------------------------------------------


def _binary_labels(labels: npt.ArrayLike) -> BoolArray:
    array = np.asarray(labels).ravel()
    if array.dtype == np.bool_:
        return array
    numeric = array.astype(np.float64)
    if not np.isin(numeric, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1 or boolean")
    result: BoolArray = numeric == 1.0
    return result


def _finite_scores(scores: npt.ArrayLike, n: int, what: str = "scores") -> FloatArray:
    array = np.asarray(scores, dtype=np.float64).ravel()
    if len(array) != n:
        raise ValueError(f"{what} has {len(array)} entries for {n} labels")
    if np.isnan(array).any():
        raise ValueError(f"{what} contain NaN")
    return array


def grouped_auc(
    groups: npt.ArrayLike, labels: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[IntArray, FloatArray, IntArray]:
    """ROC AUC within each group: ``(group ids, auc, examples per group)``, sorted by group id.

    AUC is the Mann-Whitney statistic with tied scores given their average rank (a tied
    positive/negative pair counts one half). Groups whose labels are all one class get NaN.
    """
    y = _binary_labels(labels)
    s = _finite_scores(scores, len(y))
    g = np.asarray(groups, dtype=np.int64).ravel()
    if len(g) != len(y):
        raise ValueError(f"groups has {len(g)} entries for {len(y)} labels")
    if len(y) == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    order = np.lexsort((s, g))
    g, s, y = g[order], s[order], y[order]
    n = len(y)
    index = np.arange(n)
    new_group = np.r_[True, g[1:] != g[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, index, 0))
    rank_in_group = (index - group_start + 1).astype(np.float64)
    # A run of equal scores inside a group shares the mean of the ranks it spans.
    new_run = new_group | np.r_[True, s[1:] != s[:-1]]
    run = np.cumsum(new_run) - 1
    run_length = np.bincount(run)
    run_rank = rank_in_group[new_run] + (run_length - 1) / 2.0
    ranks = run_rank[run]
    group = np.cumsum(new_group) - 1
    n_pos = np.bincount(group, weights=y.astype(np.float64))
    n_all = np.bincount(group).astype(np.float64)
    n_neg = n_all - n_pos
    rank_sum = np.bincount(group, weights=np.where(y, ranks, 0.0))
    both = (n_pos > 0) & (n_neg > 0)
    auc_values = np.full(len(n_all), np.nan)
    auc_values[both] = (rank_sum[both] - n_pos[both] * (n_pos[both] + 1) / 2.0) / (
        n_pos[both] * n_neg[both]
    )
    return g[new_group], auc_values, n_all.astype(np.int64)


def auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """ROC AUC (ties count one half). Raises ``ValueError`` unless both classes are present."""
    y = np.asarray(labels).ravel()
    _, values, _ = grouped_auc(np.zeros(len(y), dtype=np.int64), y, scores)
    if len(values) == 0 or np.isnan(values[0]):
        raise ValueError("AUC needs at least one positive and one negative example")
    return float(values[0])


def gauc(user_ids: npt.ArrayLike, labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Per-user AUC averaged with weights equal to each user's number of examples.

    Users whose examples are all positive or all negative are skipped (their AUC is undefined);
    raises ``ValueError`` when no user has both classes.
    """
    _, values, counts = grouped_auc(user_ids, labels, scores)
    defined = ~np.isnan(values)
    if not defined.any():
        raise ValueError("GAUC needs a user with both a positive and a negative example")
    return float(np.average(values[defined], weights=counts[defined]))


def log_loss(labels: npt.ArrayLike, probs: npt.ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, natural log; ``probs`` are clipped to ``[eps, 1 - eps]``.

    Clipping bounds the cost of a confident mistake at ``-ln(eps)`` (about 16.1 by default)
    instead of infinity. Raises ``ValueError`` on probabilities outside [0, 1] or empty input.
    """
    y = _binary_labels(labels)
    p = _finite_scores(probs, len(y), "probs")
    if len(y) == 0:
        raise ValueError("log loss of no examples")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probs must lie in [0, 1]")
    if not 0 < eps < 0.5:
        raise ValueError("eps must lie in (0, 0.5)")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def soft_log_loss(
    targets: npt.NDArray[np.float64], probs: npt.NDArray[np.float64], eps: float = 1e-7
) -> float:
    """Mean binary cross-entropy against targets in [0, 1] (a soft label such as the watch
    ratio); ``probs`` clipped to ``[eps, 1 - eps]`` as in :func:`log_loss`."""
    p = np.clip(probs, eps, 1.0 - eps)
    return float(-np.mean(targets * np.log(p) + (1 - targets) * np.log1p(-p)))


# --------------------------------------------------------------------------------------------
# Running a recommender
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalResult:
    """What ``evaluate`` measured for one recommender on one split."""

    recommender: str
    metrics: dict[str, float]
    """``recall@K``, ``ndcg@K``, ``hit@K``, ``mrr@K``, ``coverage@K``, ``novelty@K`` and, when item
    features were given, ``diversity@K``, for each K."""
    users: IntArray
    """The users that were scored (those with a held-out item), in row order of ``per_user``."""
    per_user: PerUserMetrics
    fit_seconds: float | None
    """Wall time of ``fit``; None when the recommender came in already fitted."""
    recommend_seconds: float
    """Wall time spent inside ``recommend`` (all batches), excluding metric computation."""
    recommendations: IntArray | None = None
    """``len(users) x max(ks)`` lists, when asked for with ``keep_recommendations``."""


def _check_batch(
    recs: Any, users: IntArray, k: int, exclude: sp.csr_matrix, n_items: int, name: str
) -> IntArray:
    array = _as_recs(recs)
    if array.shape != (len(users), k):
        raise RecommendationError(
            f"{name} returned shape {array.shape} for {len(users)} users and k={k}"
        )
    if array.size and array.max() >= n_items:
        raise RecommendationError(f"{name} returned item {int(array.max())} of {n_items}")
    check_no_duplicates(array)
    if _membership(array, exclude[users]).any():
        raise RecommendationError(f"{name} recommended an excluded (training) item")
    return array


def evaluate(
    recommender: Recommender,
    train: sp.csr_matrix,
    test: Interactions | sp.csr_matrix,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    context: FitContext | None = None,
    exclude: sp.csr_matrix | None = None,
    drop_excluded_from_truth: bool = True,
    batch_size: int = 2048,
    item_vectors: npt.ArrayLike | None = None,
    item_tags: sp.csr_matrix | Sequence[Sequence[str]] | None = None,
    keep_recommendations: bool = False,
) -> EvalResult:
    """Fit (when ``context`` is given) and score ``recommender`` on ``test`` by full ranking.

    ``train`` is the users x items matrix the model learns from (and, by default, what it must
    exclude); ``test`` holds the held-out interactions over the same id spaces. Only users with a
    held-out item are asked for recommendations, ``batch_size`` users per ``recommend`` call,
    each for ``max(ks)`` items. Every batch is checked (shape, ids in range, no duplicates, no
    excluded item); a violation raises ``RecommendationError`` rather than silently scoring a
    leaky or broken model.

    With ``drop_excluded_from_truth`` (the default) held-out items that are also excluded (items
    the user already had in training, as with repeat consumption) are removed from the truth:
    the recommender is forbidden to return them, so counting them would only lower every model's
    recall alike. Users left with no held-out item are not scored.

    Novelty uses the training matrix's item popularity; coverage and diversity are over the
    scored users' lists. Raises ``ValueError`` when no user has a held-out item.
    """
    train = sp.csr_matrix(train)
    n_users, n_items = train.shape
    exclude = train if exclude is None else sp.csr_matrix(exclude)
    if exclude.shape != train.shape:
        raise ValueError(f"exclude has shape {exclude.shape}, train {train.shape}")
    truth = test.matrix() if isinstance(test, Interactions) else truth_matrix(test, n_users)
    if truth.shape[0] != n_users or truth.shape[1] > n_items:
        raise ValueError(f"test has shape {truth.shape}, train {train.shape}")
    if truth.shape[1] < n_items:
        truth.resize((n_users, n_items))
    if drop_excluded_from_truth:
        # Stored entries of ``exclude`` are what recommenders must filter, whatever their value.
        pattern = sp.csr_matrix(
            (np.ones(exclude.nnz, np.float32), exclude.indices, exclude.indptr), shape=exclude.shape
        )
        pattern.sum_duplicates()
        pattern.data[:] = 1.0
        truth = sp.csr_matrix(truth - truth.multiply(pattern))
        truth.eliminate_zeros()
    cutoffs = sorted({int(k) for k in ks})
    if not cutoffs or cutoffs[0] < 1:
        raise ValueError(f"cutoffs must be positive, got {list(ks)}")
    width = cutoffs[-1]
    users = np.flatnonzero(np.diff(truth.indptr) > 0).astype(np.int64)
    if len(users) == 0:
        raise ValueError("no user has a held-out item to score")

    fit_seconds: float | None = None
    if context is not None:
        started = time.perf_counter()
        recommender.fit(train, context)
        fit_seconds = time.perf_counter() - started

    batches: list[IntArray] = []
    recommend_seconds = 0.0
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        started = time.perf_counter()
        raw = recommender.recommend(batch, width, exclude)
        recommend_seconds += time.perf_counter() - started
        batches.append(_check_batch(raw, batch, width, exclude, n_items, recommender.name))
    recs = np.vstack(batches)

    per_user = per_user_ranking_metrics(recs, truth[users], cutoffs)
    metrics = per_user.mean()
    item_counts = np.diff(sp.csc_matrix(train != 0).indptr)
    for k in cutoffs:
        top = recs[:, :k]
        metrics[f"coverage@{k}"] = coverage(top, n_items)
        metrics[f"novelty@{k}"] = novelty(top, item_counts, n_users)
        if item_vectors is not None or item_tags is not None:
            metrics[f"diversity@{k}"] = intra_list_diversity(
                top, item_vectors=item_vectors, item_tags=item_tags
            )
    return EvalResult(
        recommender=recommender.name,
        metrics=metrics,
        users=users,
        per_user=per_user,
        fit_seconds=fit_seconds,
        recommend_seconds=recommend_seconds,
        recommendations=recs if keep_recommendations else None,
    )

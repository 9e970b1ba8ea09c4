"""Reference recommenders every run reports beside the engine's models, each tuned on validation.

Every baseline implements :class:`fyp.eval.data.Recommender`: ``fit`` on a users x items training
matrix, then ``recommend`` full-ranked top-K lists that never contain a user's excluded items or a
duplicate, ``-1`` padded when fewer than K items are left. Each has a stable ``name``, a frozen
config dataclass and a ``grid()`` of a few candidate configs; :func:`tune` fits every candidate on
``train_for_validation``, scores it on ``validation`` and keeps the best.

The grids are deliberately small (one to six configs) so a tuned run on a 1M-interaction data
set stays within minutes on two cores. The slow ones: EASE's fit is cubic in the catalog (15-35 s
per config at 10k items, minutes near its 20k limit) and reproducible BPR is single-threaded
(about 45 s per 100 epochs on Gowalla's 800k interactions). The grids span the ranges where these
models usually do best (Steck 2019 for EASE; Rendle et al. 2021 for iALS; Dacrema et al. 2019 for
item-kNN) and were checked against validation scores (never test) on MovieLens latest-small and
Gowalla; a wider search belongs in a dedicated study.

Baselines learn from the matrix as given: pass the binary matrix for the standard implicit
feedback setup, or a weighted one to let values act as confidences (iALS) or strengths.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
import scipy.linalg
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from implicit.bpr import BayesianPersonalizedRanking
from threadpoolctl import threadpool_limits

from fyp.eval.data import FitContext, FloatArray, IntArray, Interactions, ItemFeatures, Recommender
from fyp.eval.metrics import RANKING_METRICS, evaluate, metric_cutoff

C = TypeVar("C")

_SCORE_BUDGET = 1 << 24
"""Dense score entries (users x items) materialised at once while ranking; bounds memory."""

# implicit's top-k gives filtered (already liked) items this score and keeps them in the output.
_IMPLICIT_FILTERED = float(np.finfo(np.float32).min)


class ModelTooLargeError(RuntimeError):
    """A baseline cannot run on this data set within its resource limit; the message says why
    in a form a report can show as is (``"skipped: ..."``)."""


class NotFittedError(RuntimeError):
    """``recommend`` was called before ``fit``."""


def top_k_excluding(
    scores: npt.NDArray[np.floating[Any]], exclude: sp.csr_matrix, k: int
) -> IntArray:
    """Indices of the ``k`` highest scores per row, best first, skipping ``exclude``'s entries.

    ``scores`` is rows x items and is **modified in place** (excluded entries become ``-inf``);
    ``exclude`` has the same shape, and its stored entries are excluded whatever their value.
    Items scored ``-inf`` are never returned: rows run out into ``-1`` padding instead. Among
    equal scores the lower item index comes first, except at the cut-off, where which of a tie
    gets in is arbitrary but deterministic. Raises ``ValueError`` on NaN scores.
    """
    n_rows, n_items = scores.shape
    if exclude.shape != scores.shape:
        raise ValueError(f"exclude has shape {exclude.shape}, scores {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    rows = np.repeat(np.arange(n_rows), np.diff(exclude.indptr))
    scores[rows, exclude.indices] = -np.inf
    out = np.full((n_rows, k), -1, dtype=np.int64)
    width = min(k, n_items)
    if width == 0 or n_rows == 0:
        return out
    if width < n_items:
        candidates = np.argpartition(-scores, width - 1, axis=1)[:, :width]
        candidates.sort(axis=1)  # so the stable sort below breaks ties by item index
    else:
        candidates = np.tile(np.arange(n_items), (n_rows, 1))
    values = np.take_along_axis(scores, candidates, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    ids = np.take_along_axis(candidates, order, axis=1).astype(np.int64)
    ids[np.take_along_axis(values, order, axis=1) == -np.inf] = -1
    out[:, :width] = ids
    return out


def _canonical(train: sp.csr_matrix) -> sp.csr_matrix:
    """A float32 CSR copy with summed duplicates, sorted indices and no stored zeros."""
    matrix = sp.csr_matrix(train, dtype=np.float32, copy=True)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix


def _users(users: npt.ArrayLike) -> IntArray:
    return np.asarray(users, dtype=np.int64).ravel()


def _rank_by_scores(
    score: Callable[[IntArray], npt.NDArray[np.floating[Any]]],
    users: npt.ArrayLike,
    k: int,
    exclude: sp.csr_matrix,
    n_items: int,
) -> IntArray:
    """Top-``k`` lists from ``score(users) -> users x items``, in user batches that bound memory."""
    ids = _users(users)
    rows = sp.csr_matrix(exclude)
    if rows.shape[1] != n_items:
        raise ValueError(f"exclude has {rows.shape[1]} item columns, the model {n_items}")
    out = np.full((len(ids), k), -1, dtype=np.int64)
    step = max(1, _SCORE_BUDGET // max(n_items, 1))
    for start in range(0, len(ids), step):
        batch = ids[start : start + step]
        scores = np.array(score(batch), copy=True)
        out[start : start + len(batch)] = top_k_excluding(scores, rows[batch], k)
    return out


# --------------------------------------------------------------------------------------------
# Most popular
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MostPopularConfig:
    """Most-popular has nothing to tune."""


class MostPopular:
    """Items ranked by how many training users interacted with them (ties: lower index first).

    Repeat interactions of one user with one item count once (the matrix's stored entries).
    """

    name: str = "most-popular"

    def __init__(self, config: MostPopularConfig | None = None) -> None:
        self.config = config or MostPopularConfig()
        self._scores: FloatArray | None = None

    @classmethod
    def grid(cls) -> list[MostPopularConfig]:
        """The single (empty) config."""
        return [MostPopularConfig()]

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        counts = np.diff(sp.csc_matrix(_canonical(train)).indptr)
        n_items = len(counts)
        # Distinct scores (n_items - position in the popularity order) make ties deterministic.
        order = np.lexsort((np.arange(n_items), -counts))
        scores = np.empty(n_items, dtype=np.float64)
        scores[order] = np.arange(n_items, 0, -1, dtype=np.float64)
        self._scores = scores

    def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
        scores = self._scores
        if scores is None:
            raise NotFittedError(f"{self.name}: call fit first")
        return _rank_by_scores(
            lambda batch: np.tile(scores, (len(batch), 1)), users, k, exclude, len(scores)
        )


# --------------------------------------------------------------------------------------------
# Item kNN
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemKNNConfig:
    neighbours: int = 100
    """How many most-similar items each item keeps."""
    shrink: float = 0.0
    """Added to the cosine's denominator: damps similarities supported by few users."""

    def __post_init__(self) -> None:
        if self.neighbours < 1 or self.shrink < 0:
            raise ValueError(f"invalid item-kNN config {self}")


class ItemKNN:
    """Item-based kNN (Sarwar et al. 2001; "ItemKNN-CF" in Dacrema et al. 2019).

    ``sim(i, j) = x_i . x_j / (|x_i| |x_j| + shrink)`` over the training matrix's item columns;
    each target item keeps its ``neighbours`` most similar other items (positive similarity
    only), and a user's score for ``j`` sums ``sim(j, i)`` times their value for each history
    item ``i`` among them.
    """

    name: str = "item-knn"

    def __init__(self, config: ItemKNNConfig | None = None) -> None:
        self.config = config or ItemKNNConfig()
        self._train: sp.csr_matrix | None = None
        self._weights: sp.csr_matrix | None = None

    @classmethod
    def grid(cls) -> list[ItemKNNConfig]:
        """Neighbours 20 / 100 / 400 x shrink 0 / 50 (6 configs)."""
        return [ItemKNNConfig(neighbours=n, shrink=s) for n in (20, 100, 400) for s in (0.0, 50.0)]

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        x = _canonical(train)
        n_items = x.shape[1]
        by_item = sp.csr_matrix(x.T, dtype=np.float64)
        norms = np.sqrt(np.asarray(by_item.multiply(by_item).sum(axis=1)).ravel())
        keep = min(self.config.neighbours, max(n_items - 1, 0))
        rows: list[IntArray] = []
        cols: list[IntArray] = []
        values: list[FloatArray] = []
        step = max(1, _SCORE_BUDGET // max(n_items, 1))
        for start in range(0, n_items if keep else 0, step):
            targets = np.arange(start, min(start + step, n_items))
            dots = np.asarray((by_item[targets] @ by_item.T).toarray())
            denominator = norms[targets, None] * norms[None, :] + self.config.shrink
            similarity = np.divide(
                dots, denominator, out=np.zeros_like(dots), where=denominator > 0
            )
            similarity[np.arange(len(targets)), targets] = 0.0  # an item is not its own neighbour
            top = np.argpartition(-similarity, keep - 1, axis=1)[:, :keep]
            top_values = np.take_along_axis(similarity, top, axis=1)
            positive = top_values > 0
            rows.append(np.broadcast_to(targets[:, None], top.shape)[positive])
            cols.append(top[positive])
            values.append(top_values[positive])
        target_by_neighbour = sp.csr_matrix(
            (
                np.concatenate(values) if values else np.zeros(0),
                (
                    np.concatenate(rows) if rows else np.zeros(0, np.int64),
                    np.concatenate(cols) if cols else np.zeros(0, np.int64),
                ),
            ),
            shape=(n_items, n_items),
            dtype=np.float32,
        )
        # Transposed so that (user history row) @ weights gives the score of every target item.
        self._weights = sp.csr_matrix(target_by_neighbour.T)
        self._train = x

    @property
    def similarity(self) -> sp.csr_matrix:
        """Items x items: row ``j`` holds target ``j``'s kept neighbours and their similarity."""
        if self._weights is None:
            raise NotFittedError(f"{self.name}: call fit first")
        return sp.csr_matrix(self._weights.T)

    def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
        train, weights = self._train, self._weights
        if train is None or weights is None:
            raise NotFittedError(f"{self.name}: call fit first")
        return _rank_by_scores(
            lambda batch: np.asarray((train[batch] @ weights).toarray()),
            users,
            k,
            exclude,
            train.shape[1],
        )


# --------------------------------------------------------------------------------------------
# EASE
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EASEConfig:
    l2: float = 300.0
    """The L2 penalty lambda on the item-item weights."""

    def __post_init__(self) -> None:
        if self.l2 <= 0:
            raise ValueError(f"EASE needs l2 > 0, got {self.l2}")


EASE_MAX_ITEMS = 20_000
"""Default catalog size above which EASE refuses to fit (about 8 GB at the limit)."""


def ease_memory_bytes(n_items: int) -> int:
    """Peak memory EASE's fit may need: float64 Gram matrix and inverse, float32 weights."""
    return 20 * n_items * n_items


class EASE:
    """Embarrassingly Shallow Autoencoder (Steck 2019), closed form.

    ``P = (X^T X + l2 I)^-1``, ``B = I - P / diag(P)`` (column-wise), i.e. ``B_ij = -P_ij / P_jj``
    with a zero diagonal; a user's scores are ``x_u B``. The dense item x item matrices grow with
    the square of the catalog, so ``fit`` refuses (``ModelTooLargeError``) above ``max_items``.
    """

    name: str = "ease"

    def __init__(
        self, config: EASEConfig | None = None, *, max_items: int = EASE_MAX_ITEMS
    ) -> None:
        self.config = config or EASEConfig()
        self.max_items = max_items
        self._train: sp.csr_matrix | None = None
        self._weights: npt.NDArray[np.float32] | None = None

    @classmethod
    def grid(cls) -> list[EASEConfig]:
        """l2 in 30 / 100 / 300 / 1000 / 3000 (5 configs; Steck found 200-1000 on large sets)."""
        return [EASEConfig(l2=value) for value in (30.0, 100.0, 300.0, 1000.0, 3000.0)]

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        n_items = train.shape[1]
        if n_items > self.max_items:
            raise ModelTooLargeError(
                f"skipped: {n_items:,} items too large for dense EASE "
                f"(limit {self.max_items:,}; needs ~{ease_memory_bytes(n_items) / 1e9:.1f} GB)"
            )
        x = _canonical(train)
        x64 = sp.csr_matrix(x, dtype=np.float64)
        gram = np.asarray((x64.T @ x64).toarray(), dtype=np.float64)
        gram[np.diag_indices(n_items)] += self.config.l2
        # The Gram matrix is symmetric, so its transpose (a Fortran-ordered view) has the same
        # inverse and lets LAPACK work in place instead of copying n^2 floats.
        inverse = scipy.linalg.inv(gram.T, overwrite_a=True, check_finite=False)
        del gram
        diagonal = np.diag(inverse).copy()
        inverse /= -diagonal[None, :]
        np.fill_diagonal(inverse, 0.0)
        self._weights = inverse.astype(np.float32)
        self._train = x

    @property
    def weights(self) -> npt.NDArray[np.float32]:
        """The fitted items x items matrix ``B`` (zero diagonal)."""
        if self._weights is None:
            raise NotFittedError(f"{self.name}: call fit first")
        return self._weights

    def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
        train, weights = self._train, self._weights
        if train is None or weights is None:
            raise NotFittedError(f"{self.name}: call fit first")
        return _rank_by_scores(
            lambda batch: np.asarray(train[batch] @ weights), users, k, exclude, train.shape[1]
        )


# --------------------------------------------------------------------------------------------
# implicit's matrix factorisations
# --------------------------------------------------------------------------------------------


def _implicit_recommend(
    model: Any, users: npt.ArrayLike, k: int, exclude: sp.csr_matrix, n_items: int
) -> IntArray:
    """Top-``k`` through implicit's batch ``recommend``, in this module's output contract.

    implicit returns ``len(users) x N`` ids and scores; items it filtered stay in the output
    with the lowest float32 score, so they are turned into ``-1`` padding here.
    """
    ids = _users(users)
    out = np.full((len(ids), k), -1, dtype=np.int64)
    width = min(k, n_items)
    if len(ids) == 0 or width == 0:
        return out
    rows = sp.csr_matrix(exclude)
    if rows.shape[1] != n_items:
        raise ValueError(f"exclude has {rows.shape[1]} item columns, the model {n_items}")
    # implicit parallelises top-k over users itself; threaded BLAS underneath oversubscribes.
    with threadpool_limits(1, "blas"):
        found, scores = model.recommend(ids, rows[ids], N=width, filter_already_liked_items=True)
    found = np.asarray(found, dtype=np.int64).reshape(len(ids), width)
    found[np.asarray(scores).reshape(len(ids), width) <= _IMPLICIT_FILTERED] = -1
    out[:, :width] = found
    return out


@dataclass(frozen=True)
class IALSConfig:
    factors: int = 64
    regularization: float = 30.0
    """implicit's L2 penalty (not scaled by counts)."""
    alpha: float = 10.0
    """Confidence of an observed entry is ``alpha * value`` (unobserved entries weigh 1)."""
    iterations: int = 15


class IALS:
    """Implicit ALS (Hu, Koren & Volinsky 2008) via ``implicit``'s conjugate-gradient solver.

    Seeded from ``FitContext.seed``; each ALS half-step solves users (items) independently, so
    the result does not depend on ``num_threads``. BLAS is held at one thread during ``fit`` as
    implicit asks (its own threads parallelise over users).
    """

    name: str = "ials"

    def __init__(self, config: IALSConfig | None = None, *, num_threads: int = 0) -> None:
        self.config = config or IALSConfig()
        self.num_threads = num_threads
        self._model: Any = None
        self._n_items = 0

    @classmethod
    def grid(cls) -> list[IALSConfig]:
        """Factors 64 / 128 x (alpha, regularization) in (1, 10), (10, 30), (40, 100) (6).

        Dense data sets (MovieLens) prefer a low alpha, sparse check-in data (Gowalla) a high
        one, and each alpha wants its own penalty (Rendle et al. 2021 tune them jointly), so the
        pairs move together instead of being crossed.
        """
        return [
            IALSConfig(factors=f, alpha=a, regularization=r)
            for f in (64, 128)
            for a, r in ((1.0, 10.0), (10.0, 30.0), (40.0, 100.0))
        ]

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        x = _canonical(train)
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.config.factors,
                regularization=self.config.regularization,
                alpha=self.config.alpha,
                iterations=self.config.iterations,
                use_gpu=False,
                num_threads=self.num_threads,
                random_state=context.seed,
            )
            model.fit(x, show_progress=False)
        self._model = model
        self._n_items = x.shape[1]

    def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
        if self._model is None:
            raise NotFittedError(f"{self.name}: call fit first")
        return _implicit_recommend(self._model, users, k, exclude, self._n_items)


@dataclass(frozen=True)
class BPRConfig:
    factors: int = 128
    learning_rate: float = 0.005
    regularization: float = 0.01
    iterations: int = 100


class BPR:
    """Bayesian Personalized Ranking (Rendle et al. 2009) via ``implicit``'s SGD.

    Seeded from ``FitContext.seed``. implicit's multi-threaded BPR updates shared factors
    without locks (Hogwild), so only ``num_threads=1`` (the default) is reproducible.
    """

    name: str = "bpr"

    def __init__(self, config: BPRConfig | None = None, *, num_threads: int = 1) -> None:
        self.config = config or BPRConfig()
        self.num_threads = num_threads
        self._model: Any = None
        self._n_items = 0

    @classmethod
    def grid(cls) -> list[BPRConfig]:
        """Factors 64 / 128 x (learning rate, epochs) in (0.005, 100), (0.01, 200), (0.05, 100)
        (6 configs, regularization 0.01). BPR overfits small dense data with more steps and
        underfits sparse data with fewer (MovieLens latest-small vs Gowalla), so step size and
        epochs are paired rather than crossed."""
        return [
            BPRConfig(factors=f, learning_rate=lr, iterations=n)
            for f in (64, 128)
            for lr, n in ((0.005, 100), (0.01, 200), (0.05, 100))
        ]

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        x = _canonical(train)
        with threadpool_limits(1, "blas"):
            model = BayesianPersonalizedRanking(
                factors=self.config.factors,
                learning_rate=self.config.learning_rate,
                regularization=self.config.regularization,
                iterations=self.config.iterations,
                use_gpu=False,
                num_threads=self.num_threads,
                random_state=context.seed,
            )
            model.fit(x, show_progress=False)
        self._model = model
        self._n_items = x.shape[1]

    def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
        if self._model is None:
            raise NotFittedError(f"{self.name}: call fit first")
        return _implicit_recommend(self._model, users, k, exclude, self._n_items)


BASELINES = (MostPopular, ItemKNN, EASE, IALS, BPR)
"""Every baseline class, in report order."""


# --------------------------------------------------------------------------------------------
# Tuning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneResult(Generic[C]):
    """The outcome of :func:`tune`: validation score of every config, in grid order."""

    recommender: str
    metric: str
    best_config: C
    best_score: float
    scores: tuple[tuple[C, float], ...]
    seconds: float
    """Wall time of the whole search (fits and scoring)."""


def tune(
    factory: Callable[[C], Recommender],
    grid: Sequence[C],
    split_pair: tuple[Interactions, Interactions],
    metric: str = "ndcg@20",
    k: int = 20,
    *,
    weighted: bool = False,
    items: ItemFeatures | None = None,
    seed: int = 0,
) -> TuneResult[C]:
    """Pick the config of ``grid`` whose model scores best on validation.

    ``split_pair`` is ``(train_for_validation, validation)`` (``Split.tuning_pair()``): each
    candidate ``factory(config)`` is fit on the first (binary matrix unless ``weighted``, with
    ``FitContext(seed=seed)``) and ranks top-``k`` lists scored on the second with ``metric``
    (an accuracy metric such as ``"ndcg@20"`` with its K at most ``k``). The test part is never
    touched. Ties keep the earlier config, so the result is as deterministic as the models.
    Exceptions from a candidate (``ModelTooLargeError``) propagate to the caller.
    """
    base, cutoff = metric_cutoff(metric)
    if base not in RANKING_METRICS:
        raise ValueError(f"tune on one of {RANKING_METRICS} at some K, not {metric!r}")
    if cutoff > k:
        raise ValueError(f"{metric} needs lists of {cutoff} items, k is {k}")
    if not grid:
        raise ValueError("empty grid")
    started = time.perf_counter()
    train_part, validation = split_pair
    matrix = train_part.matrix(weighted=weighted)
    context = FitContext(train=train_part, items=items, seed=seed)
    scores: list[tuple[C, float]] = []
    name = ""
    for config in grid:
        model = factory(config)
        name = model.name
        result = evaluate(model, matrix, validation, ks=(cutoff, k), context=context)
        scores.append((config, result.metrics[metric]))
    best_config, best_score = scores[0]
    for config, score in scores[1:]:
        if score > best_score:
            best_config, best_score = config, score
    return TuneResult(
        recommender=name,
        metric=metric,
        best_config=best_config,
        best_score=best_score,
        scores=tuple(scores),
        seconds=time.perf_counter() - started,
    )

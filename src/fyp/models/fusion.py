"""fyp's default retrieval model: several complementary scorers, fused with weights it tunes itself.

No single model wins everywhere. An item-item linear model (EASE) is hard to beat on dense
catalogs, factor models (iALS) on large sparse ones, what a person did last predicts what they do
next on sequential data, and content vectors are the only signal for items nobody has touched yet
(a TF-IDF/vector similarity component, and a two-tower model trained in PyTorch whose item tower
reads the content, :class:`TwoTower`). :class:`FusionRecommender` fits all that apply, and
tunes both each component's few settings and the fusion weights on a validation part it carves
from the training data it is given (the last interaction of each user when there are
timestamps, a random tenth of each user's items when there are not). It is never told which
dataset it is; the same defaults run everywhere.

With a cold-start validation (``FitContext.tuning_candidates``: the validation items were held
out of the fit part entirely) the validation ranks among those items only, as the test will.

Components expose ``scores(users) -> users x items``; each component's scores are standardised
per user (zero mean, unit variance over the catalog) before the weighted sum, so weights compare
across components. Weights are found by coordinate ascent on validation NDCG@20 over a candidate
pool (the union of every component's top items per user), which makes each trial a small array
operation instead of a full re-ranking.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import scipy.linalg
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from fyp.eval.data import FitContext, IntArray, Interactions, ItemFeatures
from fyp.eval.metrics import ranking_metrics
from fyp.eval.protocols import leave_last_n_out, random_holdout
from fyp.models.text import embed_texts, item_text
from fyp.models.two_tower import TwoTower as TwoTowerTrainer
from fyp.models.two_tower import TwoTowerConfig

log = logging.getLogger(__name__)

FloatMatrix = npt.NDArray[np.float32]

EASE_MAX_ITEMS: Final = 15_000
"""Above this many active items the item-item component is a sparse kNN instead of dense EASE."""
POOL_PER_COMPONENT: Final = 150
"""Candidates each component contributes per validation user to the fusion search."""
MAX_VALIDATION_USERS: Final = 10_000
WEIGHT_STEPS: Final = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
TWO_TOWER_MAX_INTERACTIONS: Final = 400_000
"""Above this many training interactions the two-tower component is left out of the grid: it is
fit twice (on the validation part, then on everything) and at about 30 s per epoch per million
interactions on 2 cores it would break the offline contract's five-minute budget."""
_SCORE_BUDGET: Final = 16_000_000
"""Floats per scored user batch (bounds memory: users x items per batch)."""


class Component(Protocol):
    name: str

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None: ...
    def scores(self, users: IntArray) -> FloatMatrix: ...


def _standardise(scores: FloatMatrix) -> FloatMatrix:
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    standardised: FloatMatrix = ((scores - mean) / np.maximum(std, 1e-8)).astype(np.float32)
    return standardised


# ---- components ---------------------------------------------------------------------------------


class Popularity:
    """How often each item was interacted with (log-scaled): the same for everyone.

    With ``half_life`` (a fraction of the training log's time span) and timestamps, recent
    interactions count more: what is popular now, rather than what was popular once.
    """

    name = "popularity"

    def __init__(self, half_life: float | None = None) -> None:
        self.half_life = half_life
        self._scores: FloatMatrix = np.zeros(0, dtype=np.float32)

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        log_ = context.train
        if self.half_life is not None and log_.timestamp is not None and len(log_):
            ts = log_.timestamp
            span = max(float(ts.max() - ts.min()), 1e-9)
            age = (float(ts.max()) - ts) / (self.half_life * span)
            counts = np.bincount(log_.item, weights=0.5**age, minlength=train.shape[1])
        else:
            counts = np.asarray((train > 0).sum(axis=0)).ravel()
        self._scores = np.log1p(counts).astype(np.float32)

    def scores(self, users: IntArray) -> FloatMatrix:
        return np.tile(self._scores, (len(users), 1))


class ItemLinear:
    """Item-item model: EASE (Steck 2019) on the items that have interactions, or, on catalogs
    too large for a dense item x item inverse, cosine item-kNN with ``neighbours`` per item."""

    name = "item_linear"

    def __init__(self, l2: float = 300.0, neighbours: int = 200) -> None:
        self.l2 = l2
        self.neighbours = neighbours
        self._x: sp.csr_matrix | None = None
        self._active: IntArray = np.zeros(0, dtype=np.int64)
        self._dense: FloatMatrix | None = None
        self._sparse: sp.csr_matrix | None = None

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        x = sp.csr_matrix((train > 0).astype(np.float32))
        active = np.flatnonzero(np.asarray(x.sum(axis=0)).ravel() > 0)
        self._x, self._active = x, active
        sub = x[:, active]
        if len(active) <= EASE_MAX_ITEMS:
            # Single precision halves the cost of the inverse; with l2 >= 50 on a Gram matrix of
            # counts the system is well conditioned enough for ranking.
            gram = np.asarray((sub.T @ sub).toarray(), dtype=np.float32)
            gram[np.diag_indices_from(gram)] += self.l2
            inverse = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
            weights = -inverse / np.diag(inverse)
            np.fill_diagonal(weights, 0.0)
            self._dense, self._sparse = weights.astype(np.float32, copy=False), None
        else:
            norms = np.sqrt(np.asarray(sub.multiply(sub).sum(axis=0)).ravel()) + 1e-9
            normed = sp.csr_matrix(sub @ sp.diags(1.0 / norms))
            sim = sp.csr_matrix(normed.T @ normed)
            sim.setdiag(0.0)
            sim.eliminate_zeros()
            # Row j of the kept matrix holds target j's nearest neighbours; a user's score for j
            # sums the similarities of those neighbours the user has (scores = X @ kept.T).
            kept = _top_per_row(sim, self.neighbours)
            self._sparse, self._dense = sp.csr_matrix(kept.T), None

    def scores(self, users: IntArray) -> FloatMatrix:
        assert self._x is not None
        rows = self._x[users][:, self._active]
        out = np.zeros((len(users), self._x.shape[1]), dtype=np.float32)
        if self._dense is not None:
            out[:, self._active] = rows @ self._dense
        elif self._sparse is not None:
            out[:, self._active] = (rows @ self._sparse).toarray()
        return out


def _top_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each row."""
    matrix = sp.csr_matrix(matrix)
    indptr, indices, data = [0], [], []
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        values = matrix.data[start:end]
        cols = matrix.indices[start:end]
        if len(values) > k:
            keep = np.argpartition(-values, k - 1)[:k]
            values, cols = values[keep], cols[keep]
        indices.append(cols)
        data.append(values)
        indptr.append(indptr[-1] + len(values))
    return sp.csr_matrix(
        (
            np.concatenate(data) if data else np.zeros(0, np.float32),
            np.concatenate(indices) if indices else np.zeros(0, np.int32),
            np.asarray(indptr),
        ),
        shape=matrix.shape,
    )


class Factors:
    """Implicit-feedback matrix factorisation (iALS, via ``implicit``)."""

    name = "factors"

    def __init__(
        self, factors: int = 128, alpha: float = 10.0, regularization: float = 30.0
    ) -> None:
        self.factors = factors
        self.alpha = alpha
        self.regularization = regularization
        self._users: FloatMatrix | None = None
        self._items: FloatMatrix | None = None

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        x = sp.csr_matrix((train > 0).astype(np.float32))
        # implicit parallelises over users itself and asks for single-threaded BLAS.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                alpha=self.alpha,
                regularization=self.regularization,
                iterations=15,
                random_state=context.seed,
            )
            model.fit(x, show_progress=False)
        self._users = np.asarray(model.user_factors, dtype=np.float32)
        self._items = np.asarray(model.item_factors, dtype=np.float32)

    def scores(self, users: IntArray) -> FloatMatrix:
        assert self._users is not None and self._items is not None
        return self._users[users] @ self._items.T


class Transitions:
    """What people do next: item-to-next-item transition probabilities from training sequences,
    applied to the user's last few items (most recent first, weights ``decay ** position``)."""

    name = "transitions"

    def __init__(self, window: int = 3, decay: float = 0.5) -> None:
        self.window = window
        self.decay = decay
        self._next: sp.csr_matrix | None = None
        self._recent: list[IntArray] = []

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        n_items = train.shape[1]
        sequences = context.train.sequences()
        src: list[IntArray] = []
        dst: list[IntArray] = []
        for seq in sequences:
            if len(seq) > 1:
                src.append(seq[:-1])
                dst.append(seq[1:])
        if src:
            counts = sp.csr_matrix(
                (
                    np.ones(sum(len(s) for s in src), dtype=np.float32),
                    (np.concatenate(src), np.concatenate(dst)),
                ),
                shape=(n_items, n_items),
            )
            counts.sum_duplicates()
            totals = np.asarray(counts.sum(axis=1)).ravel()
            self._next = sp.csr_matrix(sp.diags(1.0 / np.maximum(totals, 1.0)) @ counts)
        else:
            self._next = sp.csr_matrix((n_items, n_items), dtype=np.float32)
        self._recent = [seq[::-1][: self.window] for seq in sequences]

    def scores(self, users: IntArray) -> FloatMatrix:
        assert self._next is not None
        rows, cols, vals = [], [], []
        for r, user in enumerate(users):
            recent = self._recent[user] if user < len(self._recent) else np.zeros(0, np.int64)
            for position, item in enumerate(recent):
                rows.append(r)
                cols.append(item)
                vals.append(self.decay**position)
        profile = sp.csr_matrix((vals, (rows, cols)), shape=(len(users), self._next.shape[0]))
        return np.asarray((profile @ self._next).toarray(), dtype=np.float32)


class Content:
    """Similarity of items' content (app-given vectors, tags, text words) to what the user had.

    Items are described by L2-normalised blocks (each dense vector set, and TF-IDF over tags and
    words), so an item nobody has interacted with can still be recommended.
    """

    name = "content"

    def __init__(self) -> None:
        self._items: sp.csr_matrix | FloatMatrix | None = None
        self._x: sp.csr_matrix | None = None

    @staticmethod
    def available(items: ItemFeatures | None) -> bool:
        return items is not None and bool(items.vectors or items.tags or items.text)

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        self._x = sp.csr_matrix((train > 0).astype(np.float32))
        self._items = item_content_matrix(context.items, train.shape[1])

    def scores(self, users: IntArray) -> FloatMatrix:
        assert self._x is not None and self._items is not None
        rows = self._x[users]
        counts = np.maximum(np.asarray(rows.sum(axis=1)).ravel(), 1.0)
        profile = sp.diags(1.0 / counts) @ rows @ self._items
        if sp.issparse(profile):
            result = profile @ self._items.T
            return np.asarray(result.toarray() if sp.issparse(result) else result, np.float32)
        return np.asarray(profile @ self._items.T, dtype=np.float32)


class TwoTower:
    """The learned two-tower retrieval model (:mod:`fyp.models.two_tower`) as a component.

    Its item tower sees the item's content when there is any (:func:`item_content_features`),
    so items with no interactions get scores from their content; users are their ID embedding
    plus their most recent training items.
    """

    name = "two_tower"

    def __init__(self, epochs: int = 8, temperature: float = 0.1, dim: int = 64) -> None:
        self.config = TwoTowerConfig(dim=dim, epochs=epochs, temperature=temperature)
        self._users: FloatMatrix | None = None
        self._items: FloatMatrix | None = None

    @staticmethod
    def applicable(items: ItemFeatures | None, n_interactions: int) -> bool:
        """In the grid when items have content (the reason for a learned content tower; on
        ID-only data iALS and EASE already cover what it would learn) and the log is small
        enough (:data:`TWO_TOWER_MAX_INTERACTIONS`)."""
        return Content.available(items) and n_interactions <= TWO_TOWER_MAX_INTERACTIONS

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        log_ = context.train
        n_users, n_items = train.shape
        content = item_content_features(context.items, n_items)
        config = TwoTowerConfig(**{**self.config.__dict__, "seed": context.seed})
        model = TwoTowerTrainer(config).fit(
            log_.user, log_.item, n_users, n_items, content=content, timestamps=log_.timestamp
        )
        self._users = model.user_vectors_from_history(
            log_.sequences(), np.arange(n_users, dtype=np.int64)
        )
        self._items = model.item_vectors()
        log.info(
            "two-tower: %d epochs in %.1f s, last loss %.3f",
            model.epochs_run,
            model.seconds,
            model.losses[-1] if model.losses else float("nan"),
        )

    def scores(self, users: IntArray) -> FloatMatrix:
        assert self._users is not None and self._items is not None
        return self._users[users] @ self._items.T


def item_content_features(items: ItemFeatures | None, n_items: int) -> FloatMatrix | None:
    """Dense content per item for learned models: each app-given vector set centred and
    L2-normalised, and the item's text and tags embedded by :func:`fyp.models.text.embed_texts`,
    side by side (``n_items x d``); None when nothing is known. Unknown rows are zeros."""
    if items is None:
        return None
    blocks: list[FloatMatrix] = []
    for vectors in items.vectors.values():
        v = np.zeros((n_items, np.asarray(vectors).shape[1]), dtype=np.float32)
        given = np.asarray(vectors, dtype=np.float32)[:n_items]
        v[: len(given)] = given
        present = np.abs(v).sum(axis=1) > 0
        if present.any():
            v[present] -= v[present].mean(axis=0, keepdims=True)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)
        blocks.append(v)
    if items.text is not None or items.tags is not None:
        texts = [
            item_text(
                items.text[i] if items.text is not None and i < len(items.text) else "",
                [t.replace(":", " ") for t in items.tags[i]]
                if items.tags is not None and i < len(items.tags)
                else None,
            )
            for i in range(n_items)
        ]
        if any(texts):
            blocks.append(embed_texts(texts, threads=1))
    return np.hstack(blocks) if blocks else None


def item_content_matrix(items: ItemFeatures | None, n_items: int) -> sp.csr_matrix:
    """Items x features: normalised dense vectors and TF-IDF tag/word blocks, side by side."""
    blocks: list[sp.csr_matrix] = []
    if items is not None:
        for vectors in items.vectors.values():
            v = np.asarray(vectors, dtype=np.float32)[:n_items]
            v = v - v.mean(axis=0, keepdims=True)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)
            blocks.append(sp.csr_matrix(v))
        documents: list[list[str]] = [[] for _ in range(n_items)]
        if items.tags is not None:
            for i, tags in enumerate(items.tags[:n_items]):
                documents[i].extend(f"tag:{t}" for t in tags)
        if items.text is not None:
            for i, text in enumerate(items.text[:n_items]):
                documents[i].extend(w for w in _words(text))
        if any(documents):
            blocks.append(_tfidf(documents))
    if not blocks:
        return sp.csr_matrix((n_items, 1), dtype=np.float32)
    combined = sp.hstack(blocks, format="csr", dtype=np.float32)
    norms = np.sqrt(np.asarray(combined.multiply(combined).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-8)) @ combined)


def _words(text: str) -> list[str]:
    out: list[str] = []
    word: list[str] = []
    for ch in text.lower():
        if ch.isalnum():
            word.append(ch)
        elif word:
            out.append("".join(word))
            word = []
    if word:
        out.append("".join(word))
    return [w for w in out if len(w) > 2 and not w.isdigit()]


def _tfidf(documents: Sequence[Sequence[str]]) -> sp.csr_matrix:
    vocabulary: dict[str, int] = {}
    rows, cols = [], []
    for i, doc in enumerate(documents):
        for term in set(doc):
            rows.append(i)
            cols.append(vocabulary.setdefault(term, len(vocabulary)))
    tf = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(documents), len(vocabulary))
    )
    df = np.asarray((tf > 0).sum(axis=0)).ravel()
    idf = np.log((1 + len(documents)) / (1 + df)) + 1.0
    weighted = sp.csr_matrix(tf @ sp.diags(idf.astype(np.float32)))
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-8)) @ weighted)


# ---- the fused model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentChoice:
    name: str
    settings: dict[str, Any]
    validation_ndcg: float
    weight: float = 0.0


@dataclass
class FusionReport:
    """What the model chose on its own validation part, for reports and lineage."""

    validation: str = ""
    validation_users: int = 0
    components: list[ComponentChoice] = field(default_factory=list)
    fused_validation_ndcg: float = 0.0
    seconds: float = 0.0


def _candidates(
    items: ItemFeatures | None, n_items: int, has_time: bool, n_interactions: int = 0
) -> list[tuple[str, list[dict[str, Any]], Callable[..., Component]]]:
    """Each applicable component with its small grid of settings."""
    grid: list[tuple[str, list[dict[str, Any]], Callable[..., Component]]] = [
        (
            "popularity",
            [{}, {"half_life": 0.02}, {"half_life": 0.1}] if has_time else [{}],
            Popularity,
        ),
        (
            "item_linear",
            [{"l2": v} for v in (50.0, 200.0, 800.0)]
            if n_items <= EASE_MAX_ITEMS
            else [{"neighbours": k} for k in (50, 200, 800)],
            ItemLinear,
        ),
        (
            "factors",
            [
                {"factors": 128, "alpha": a, "regularization": r}
                for a, r in ((2.0, 10.0), (10.0, 30.0), (40.0, 100.0))
            ],
            Factors,
        ),
    ]
    if has_time:
        grid.append(("transitions", [{"window": w, "decay": 0.5} for w in (1, 3, 10)], Transitions))
    if Content.available(items):
        grid.append(("content", [{}], Content))
    if TwoTower.applicable(items, n_interactions):
        grid.append(("two_tower", [{}], TwoTower))
    return grid


class FusionRecommender:
    """fyp's default retrieval (see the module docstring). Implements ``Recommender``."""

    name = "fyp"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.report = FusionReport()
        self._components: list[tuple[Component, float]] = []
        self._n_items = 0

    # Validation carved from whatever training data the model is given.
    def _carve(self, train: Interactions) -> tuple[Interactions, Interactions, str]:
        if train.timestamp is not None:
            split = leave_last_n_out(train, n=1, validation=False, min_train=2)
            return split.train, split.test, "last interaction of each user with 3 or more"
        kept, held = random_holdout(train, 0.1, self.seed)
        return kept, held, "random 10% of each user's items (users with 2 or more)"

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        started = time.perf_counter()
        self._n_items = train.shape[1]
        if context.tuning is not None:
            inner_train, validation = context.tuning
            how = "the validation part the caller gave"
        else:
            inner_train, validation, how = self._carve(context.train)
        x_inner = inner_train.matrix()
        truth = validation.matrix()
        users = np.flatnonzero(np.asarray((truth > 0).sum(axis=1)).ravel() > 0)
        rng = np.random.default_rng(self.seed)
        if len(users) > MAX_VALIDATION_USERS:
            users = np.sort(rng.choice(users, MAX_VALIDATION_USERS, replace=False))
        inner_context = FitContext(train=inner_train, items=context.items, seed=self.seed)
        allowed: npt.NDArray[np.bool_] | None = None
        if context.tuning is not None and context.tuning_candidates is not None:
            # A cold-start validation: rank among the held-out items only, as the test will.
            allowed = np.zeros(self._n_items, dtype=bool)
            allowed[np.asarray(context.tuning_candidates, dtype=np.int64)] = True
        exclude = x_inner[users]
        truth_rows = truth[users]
        k_pool = min(POOL_PER_COMPONENT, self._n_items)
        chosen: list[tuple[str, dict[str, Any], Callable[..., Component], float]] = []
        fitted: dict[str, Component] = {}
        candidate_sets: list[IntArray] = []
        has_time = context.train.timestamp is not None
        for name, grid, make in _candidates(
            context.items, self._n_items, has_time, len(context.train)
        ):
            best: tuple[float, dict[str, Any], Component, IntArray] | None = None
            for settings in grid:
                component = make(**settings)
                component.fit(x_inner, inner_context)
                recs = _top_lists(component, users, exclude, k_pool, allowed)
                ndcg = _ndcg(recs[:, :20], truth_rows)
                log.info("fusion: %s %s validation ndcg@20 %.4f", name, settings, ndcg)
                if best is None or ndcg > best[0]:
                    best = (ndcg, settings, component, recs)
            assert best is not None
            chosen.append((name, best[1], make, best[0]))
            fitted[name] = best[2]
            candidate_sets.append(best[3])
        # The pool: every component's best candidates; each component's scores gathered on it.
        pool = np.concatenate(candidate_sets, axis=1)
        pool.sort(axis=1)
        pool[pool < 0] = 0  # padding (users with fewer candidates) points at item 0, excluded below
        pooled = {
            name: _gather_standardised(component, users, pool) for name, component in fitted.items()
        }
        del fitted
        weights = self._search_weights(
            pooled, pool, exclude, truth_rows, {name: ndcg for name, _, _, ndcg in chosen}, allowed
        )
        self.report = FusionReport(
            validation=how,
            validation_users=len(users),
            components=[
                ComponentChoice(name, settings, ndcg, weights[name])
                for name, settings, _, ndcg in chosen
            ],
            fused_validation_ndcg=weights["__score__"],
        )
        # Refit the chosen settings on everything the model was given.
        self._components = []
        for name, settings, make, _ in chosen:
            if weights[name] <= 0:
                continue
            component = make(**settings)
            component.fit(train, context)
            self._components.append((component, weights[name]))
        self.report.seconds = time.perf_counter() - started

    def _search_weights(
        self,
        pooled: dict[str, FloatMatrix],
        pool: IntArray,
        exclude: sp.csr_matrix,
        truth: sp.csr_matrix,
        single: dict[str, float],
        allowed: npt.NDArray[np.bool_] | None = None,
    ) -> dict[str, float]:
        names = list(pooled)
        # Items of the pool that are excluded (training items, or outside the allowed ones)
        # never count.
        excluded = np.zeros(pool.shape, dtype=bool) if allowed is None else ~allowed[pool]
        for r in range(pool.shape[0]):
            start, end = exclude.indptr[r], exclude.indptr[r + 1]
            excluded[r] |= np.isin(pool[r], exclude.indices[start:end])
        relevant = np.zeros(pool.shape, dtype=bool)
        for r in range(pool.shape[0]):
            start, end = truth.indptr[r], truth.indptr[r + 1]
            relevant[r] = np.isin(pool[r], truth.indices[start:end])
        n_truth = np.diff(truth.indptr)
        discounts = 1.0 / np.log2(np.arange(2, 22))
        ideal = np.array([discounts[: min(int(t), 20)].sum() for t in n_truth])

        def score(weights: dict[str, float]) -> float:
            total = np.zeros(pool.shape, dtype=np.float32)
            for n in names:
                if weights[n]:
                    total += weights[n] * pooled[n]
            total[excluded] = -np.inf
            # Duplicated pool entries (an item several components proposed) share a score, so
            # only the first copy of each may count: mark later copies as excluded.
            dup = np.zeros(pool.shape, dtype=bool)
            dup[:, 1:] = pool[:, 1:] == pool[:, :-1]
            total[dup] = -np.inf
            top = np.argsort(-total, axis=1, kind="stable")[:, :20]
            hits = np.take_along_axis(relevant & ~dup & ~excluded, top, axis=1)
            dcg = (hits * discounts).sum(axis=1)
            return float(np.mean(dcg / np.maximum(ideal, 1e-9)))

        weights = dict.fromkeys(names, 0.0)
        weights[max(single, key=lambda n: single[n])] = 1.0
        best = score(weights)
        for _ in range(3):
            improved = False
            for n in names:
                for step in WEIGHT_STEPS:
                    if step == weights[n]:
                        continue
                    trial = {**weights, n: step}
                    if not any(trial.values()):
                        continue
                    value = score(trial)
                    if value > best + 1e-6:
                        best, weights, improved = value, trial, True
            if not improved:
                break
        return {**weights, "__score__": best}

    def scores(self, users: IntArray) -> FloatMatrix:
        total = np.zeros((len(users), self._n_items), dtype=np.float32)
        for component, weight in self._components:
            total += weight * _standardise(component.scores(users))
        return total

    def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
        from fyp.eval.baselines import top_k_excluding

        users = np.asarray(users, dtype=np.int64)
        out = np.full((len(users), k), -1, dtype=np.int64)
        step = max(1, _SCORE_BUDGET // max(self._n_items, 1))
        rows = sp.csr_matrix(exclude)
        for start in range(0, len(users), step):
            batch = users[start : start + step]
            out[start : start + len(batch)] = top_k_excluding(self.scores(batch), rows[batch], k)
        return out


def _top_lists(
    component: Component,
    users: IntArray,
    exclude: sp.csr_matrix,
    k: int,
    allowed: npt.NDArray[np.bool_] | None = None,
) -> IntArray:
    """Each user's top-``k`` items (excluding ``exclude``'s and, with ``allowed``, every item
    not allowed; -1 padded), in bounded batches."""
    from fyp.eval.baselines import top_k_excluding

    out = np.full((len(users), k), -1, dtype=np.int64)
    step = 256
    for start in range(0, len(users), step):
        batch = users[start : start + step]
        scores = component.scores(batch)
        if allowed is not None:
            scores[:, ~allowed] = -np.inf
        out[start : start + len(batch)] = top_k_excluding(
            scores, exclude[start : start + len(batch)], k
        )
    return out


class ComponentRecommender:
    """One component on its own, as a ``Recommender`` (ablations, cold-start reports)."""

    def __init__(self, name: str, make: Callable[[], Component]) -> None:
        self.name = name
        self._make = make
        self._component: Component | None = None

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        self._component = self._make()
        self._component.fit(train, context)

    def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
        assert self._component is not None, "fit first"
        users = np.asarray(users, dtype=np.int64)
        return _top_lists(self._component, users, sp.csr_matrix(exclude)[users], k)


def _gather_standardised(component: Component, users: IntArray, pool: IntArray) -> FloatMatrix:
    out = np.zeros(pool.shape, dtype=np.float32)
    step = 256
    for start in range(0, len(users), step):
        batch = users[start : start + step]
        scores = _standardise(component.scores(batch))
        out[start : start + len(batch)] = np.take_along_axis(
            scores, pool[start : start + len(batch)], axis=1
        )
    return out


def _ndcg(recs: IntArray, truth: sp.csr_matrix) -> float:
    value = ranking_metrics(recs, truth, ks=(recs.shape[1],)).get(f"ndcg@{recs.shape[1]}", 0.0)
    return 0.0 if math.isnan(value) else float(value)

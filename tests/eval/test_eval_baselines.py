"""Baselines: planted-structure recovery, exclusion, determinism, EASE's limit, and tuning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from fyp.eval.baselines import (
    BASELINES,
    BPR,
    EASE,
    IALS,
    BPRConfig,
    EASEConfig,
    IALSConfig,
    ItemKNN,
    ItemKNNConfig,
    ModelTooLargeError,
    MostPopular,
    NotFittedError,
    top_k_excluding,
    tune,
)
from fyp.eval.data import FitContext, IntArray, Interactions, Recommender
from fyp.eval.metrics import evaluate

BLOCK = 20
N_ITEMS = 3 * BLOCK
"""Items 0-19 are group A's, 20-39 group B's, 40-59 a rarely touched tail."""
N_USERS = 80


def _planted(seed: int = 0) -> tuple[Interactions, Interactions, Interactions]:
    """(everything, train, test): each user takes ~70% of their group's block and two tail items;
    a random fifth of each user's items is held out."""
    rng = np.random.default_rng(seed)
    users: list[int] = []
    items: list[int] = []
    for user in range(N_USERS):
        block = (user % 2) * BLOCK
        chosen = block + np.flatnonzero(rng.random(BLOCK) < 0.7)
        tail = 2 * BLOCK + rng.choice(BLOCK, size=2, replace=False)
        for item in np.concatenate([chosen, tail]):
            users.append(user)
            items.append(int(item))
    everything = Interactions(
        user=np.array(users, dtype=np.int64),
        item=np.array(items, dtype=np.int64),
        user_labels=[f"u{u}" for u in range(N_USERS)],
        item_labels=[f"i{i}" for i in range(N_ITEMS)],
    )
    held_out = rng.random(len(everything)) < 0.2
    return everything, everything.take(~held_out), everything.take(held_out)


EVERYTHING, TRAIN, TEST = _planted()
TRAIN_MATRIX = TRAIN.matrix()
CONTEXT = FitContext(train=TRAIN, seed=7)

# Small, fast configs that suit a 60-item catalog.
SMALL: dict[str, Any] = {
    "most-popular": lambda: MostPopular(),
    "item-knn": lambda: ItemKNN(ItemKNNConfig(neighbours=10)),
    "ease": lambda: EASE(EASEConfig(l2=10.0)),
    "ials": lambda: IALS(IALSConfig(factors=8, regularization=1.0, iterations=10)),
    "bpr": lambda: BPR(BPRConfig(factors=8, learning_rate=0.01, iterations=50)),
}
PERSONALISED = ["item-knn", "ease", "ials", "bpr"]


class _Random:
    """Uniformly random lists of allowed items: the chance level."""

    name = "random"

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        pass

    def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
        scores = self.rng.random((len(users), exclude.shape[1]))
        return top_k_excluding(scores, sp.csr_matrix(exclude)[users], k)


def _ndcg(model: Recommender) -> float:
    return evaluate(model, TRAIN_MATRIX, TEST, ks=(10,), context=CONTEXT).metrics["ndcg@10"]


CHANCE = np.mean([_ndcg(_Random(seed)) for seed in range(5)])


def test_planted_data_is_as_described() -> None:
    assert TRAIN_MATRIX.shape == (N_USERS, N_ITEMS)
    assert 0.05 < CHANCE < 0.2


@pytest.mark.parametrize("name", PERSONALISED)
def test_personalised_baselines_recover_the_groups(name: str) -> None:
    # Knowing a user's block but nothing finer scores about 0.6 here; chance about 0.14.
    score = _ndcg(SMALL[name]())
    assert score > 0.45, score
    assert score > 3 * CHANCE
    assert score > _ndcg(MostPopular()) + 0.2


def test_most_popular_cannot_see_the_groups() -> None:
    # The two blocks are equally popular, so popularity only separates them from the tail.
    assert _ndcg(MostPopular()) < 0.25


@pytest.mark.parametrize("name", list(SMALL))
def test_lists_cover_exactly_the_allowed_items(name: str) -> None:
    model = SMALL[name]()
    model.fit(TRAIN_MATRIX, CONTEXT)
    users = np.arange(N_USERS)
    k = N_ITEMS + 5  # more than the catalog: every list must end in -1 padding
    recs = model.recommend(users, k, TRAIN_MATRIX)
    assert recs.shape == (N_USERS, k) and recs.dtype == np.int64
    for user in users:
        seen = set(TRAIN_MATRIX[user].indices)
        valid = recs[user][recs[user] >= 0]
        assert len(valid) == len(set(valid)), "duplicates"
        assert set(valid) == set(range(N_ITEMS)) - seen
        assert (recs[user][len(valid) :] == -1).all(), "padding must trail"


@pytest.mark.parametrize("name", list(SMALL))
def test_recommend_takes_any_user_subset_and_exclusion_matrix(name: str) -> None:
    model = SMALL[name]()
    model.fit(TRAIN_MATRIX, CONTEXT)
    users = np.array([5, 2, 5 + 2 * 3])
    everything = EVERYTHING.matrix()
    recs = model.recommend(users, 10, everything)
    assert recs.shape == (3, 10)
    for row, user in zip(recs, users, strict=True):
        assert not set(row) & set(everything[user].indices)
    assert model.recommend(np.zeros(0, dtype=np.int64), 10, everything).shape == (0, 10)


@pytest.mark.parametrize("name", list(SMALL))
def test_deterministic_for_a_seed(name: str) -> None:
    first, second = SMALL[name](), SMALL[name]()
    first.fit(TRAIN_MATRIX, CONTEXT)
    second.fit(TRAIN_MATRIX, CONTEXT)
    users = np.arange(N_USERS)
    np.testing.assert_array_equal(
        first.recommend(users, 15, TRAIN_MATRIX), second.recommend(users, 15, TRAIN_MATRIX)
    )


@pytest.mark.parametrize("cls", [IALS, BPR])
def test_seed_reaches_the_factorisation(cls: Any) -> None:
    config = cls.grid()[0]
    one, other = cls(config), cls(config)
    one.fit(TRAIN_MATRIX, FitContext(train=TRAIN, seed=1))
    other.fit(TRAIN_MATRIX, FitContext(train=TRAIN, seed=2))
    assert not np.array_equal(one._model.item_factors, other._model.item_factors)


def test_ials_does_not_depend_on_thread_count() -> None:
    config = IALSConfig(factors=8, iterations=5)
    single, double = IALS(config, num_threads=1), IALS(config, num_threads=2)
    single.fit(TRAIN_MATRIX, CONTEXT)
    double.fit(TRAIN_MATRIX, CONTEXT)
    np.testing.assert_allclose(single._model.item_factors, double._model.item_factors, rtol=1e-5)


def test_recommend_before_fit_raises() -> None:
    for cls in BASELINES:
        with pytest.raises(NotFittedError):
            cls().recommend(np.array([0]), 5, TRAIN_MATRIX)


def test_most_popular_order_and_ties() -> None:
    train = sp.csr_matrix(
        np.array(
            [
                [1, 0, 1, 0, 1],
                [0, 0, 1, 0, 1],
                [0, 0, 0, 0, 1],
            ],
            dtype=np.float32,
        )
    )
    model = MostPopular()
    model.fit(train, CONTEXT)
    nobody = sp.csr_matrix((3, 5), dtype=np.float32)
    # Counts 1, 0, 2, 0, 3: item 4, then 2, then 0, then the zero-count tie broken by index.
    assert model.recommend(np.array([0]), 5, nobody).tolist() == [[4, 2, 0, 1, 3]]
    assert model.recommend(np.array([1]), 4, train).tolist() == [[0, 1, 3, -1]]


def test_item_knn_similarity_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    dense = (rng.random((30, 12)) < 0.35).astype(np.float64) * rng.integers(1, 4, size=(30, 12))
    config = ItemKNNConfig(neighbours=3, shrink=2.0)
    model = ItemKNN(config)
    model.fit(sp.csr_matrix(dense), CONTEXT)
    norms = np.linalg.norm(dense, axis=0)
    expected = dense.T @ dense / (np.outer(norms, norms) + config.shrink)
    np.fill_diagonal(expected, 0.0)
    similarity = model.similarity.toarray()
    for item in range(12):
        kept = np.flatnonzero(similarity[item])
        assert len(kept) <= 3
        np.testing.assert_allclose(similarity[item, kept], expected[item, kept], rtol=1e-5)
        # Whatever was dropped is no more similar than the weakest kept neighbour.
        dropped = np.setdiff1d(np.arange(12), np.r_[kept, item])
        if len(kept) == 3 and len(dropped):
            assert expected[item, dropped].max() <= similarity[item, kept].min() + 1e-6


def test_ease_matches_the_closed_form() -> None:
    rng = np.random.default_rng(5)
    dense = (rng.random((40, 15)) < 0.3).astype(np.float64)
    model = EASE(EASEConfig(l2=3.0))
    model.fit(sp.csr_matrix(dense), CONTEXT)
    p = np.linalg.inv(dense.T @ dense + 3.0 * np.eye(15))
    expected = np.eye(15) - p / np.diag(p)[None, :]
    np.testing.assert_allclose(model.weights, expected, atol=1e-5)
    assert np.all(np.diag(model.weights) == 0)


def test_ease_refuses_large_catalogs_with_a_reportable_message() -> None:
    model = EASE(max_items=59)
    with pytest.raises(ModelTooLargeError, match=r"^skipped: 60 items too large for dense EASE"):
        model.fit(TRAIN_MATRIX, CONTEXT)
    with pytest.raises(ModelTooLargeError, match=r"needs ~\d+\.\d GB"):
        EASE().fit(sp.csr_matrix((2, 40_000), dtype=np.float32), CONTEXT)
    EASE(max_items=60).fit(TRAIN_MATRIX, CONTEXT)


def test_grids_are_small_typed_and_distinct() -> None:
    for cls in BASELINES:
        grid = cls.grid()
        assert 1 <= len(grid) <= 6
        assert len(set(grid)) == len(grid)
        assert all(type(config) is type(cls().config) for config in grid)
    assert len({cls.name for cls in BASELINES}) == len(BASELINES)


@given(
    st.integers(1, 5).flatmap(
        lambda rows: st.tuples(
            st.lists(
                st.lists(st.integers(0, 3), min_size=8, max_size=8), min_size=rows, max_size=rows
            ),
            st.lists(st.lists(st.booleans(), min_size=8, max_size=8), min_size=rows, max_size=rows),
            st.integers(1, 10),
        )
    )
)
def test_top_k_excluding_matches_sorting(
    case: tuple[list[list[int]], list[list[bool]], int],
) -> None:
    raw_scores, excluded, k = case
    scores = np.array(raw_scores, dtype=np.float64)
    mask = np.array(excluded)
    result = top_k_excluding(scores.copy(), sp.csr_matrix(mask.astype(np.float32)), k)
    assert result.shape == (len(scores), k)
    for row in range(len(scores)):
        allowed = np.flatnonzero(~mask[row])
        expected = np.sort(scores[row, allowed])[::-1][:k]  # tied items may swap, values may not
        got = result[row][result[row] >= 0]
        assert len(got) == len(expected) and len(set(got)) == len(got)
        assert not mask[row, got].any()
        np.testing.assert_array_equal(scores[row, got], expected)
        assert (result[row][len(got) :] == -1).all()


def test_top_k_excluding_breaks_ties_by_index_and_drops_minus_infinity() -> None:
    scores = np.array([[1.0, 3.0, 3.0, -np.inf, 3.0]])
    assert top_k_excluding(scores, sp.csr_matrix((1, 5)), 6).tolist() == [[1, 2, 4, 0, -1, -1]]
    with pytest.raises(ValueError, match="NaN"):
        top_k_excluding(np.array([[np.nan, 1.0]]), sp.csr_matrix((1, 2)), 1)


# ---------------------------------------------------------------------------------------------
# Tuning
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Knob:
    truthful: bool
    label: str = ""


class _Oracle:
    """Recommends the validation items when ``truthful``, else the least likely items."""

    name = "oracle"

    def __init__(self, config: _Knob, validation: sp.csr_matrix, fits: list[int]) -> None:
        self.config = config
        self.validation = validation
        self.fits = fits

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        self.fits.append(train.nnz)

    def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
        scores = self.validation[users].toarray().astype(np.float64)
        if not self.config.truthful:
            scores = -scores
        return top_k_excluding(scores, sp.csr_matrix(exclude)[users], k)


def test_tune_picks_the_best_validation_config() -> None:
    _, train_part, validation = _planted(seed=1)
    fits: list[int] = []
    grid = [_Knob(False, "a"), _Knob(True, "b"), _Knob(True, "c"), _Knob(False, "d")]
    result = tune(
        lambda config: _Oracle(config, validation.matrix(), fits), grid, (train_part, validation)
    )
    assert result.best_config == _Knob(True, "b")  # ties keep the earlier config
    assert [config for config, _ in result.scores] == grid
    assert result.best_score == max(score for _, score in result.scores)
    assert result.recommender == "oracle" and result.metric == "ndcg@20"
    assert fits == [train_part.matrix().nnz] * 4  # fit on train_for_validation only
    assert result.seconds >= 0


def test_tune_real_baseline_agrees_with_evaluate() -> None:
    _, train_part, validation = _planted(seed=2)
    grid = [ItemKNNConfig(neighbours=n) for n in (1, 10)]
    result = tune(ItemKNN, grid, (train_part, validation), metric="recall@10", k=10)
    for config, score in result.scores:
        again = evaluate(
            ItemKNN(config),
            train_part.matrix(),
            validation,
            ks=(10,),
            context=FitContext(train=train_part),
        )
        assert score == again.metrics["recall@10"]
    assert result.best_score == max(score for _, score in result.scores)


def test_tune_validates_its_metric() -> None:
    pair = (TRAIN, TEST)
    with pytest.raises(ValueError, match="tune on"):
        tune(MostPopular, MostPopular.grid(), pair, metric="coverage@20")
    with pytest.raises(ValueError, match="k is 10"):
        tune(MostPopular, MostPopular.grid(), pair, metric="ndcg@20", k=10)
    with pytest.raises(ValueError, match="empty grid"):
        tune(MostPopular, [], pair)
    with pytest.raises(ModelTooLargeError):
        tune(lambda config: EASE(config, max_items=10), EASE.grid(), pair)

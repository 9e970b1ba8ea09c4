"""Offline metrics: hand-computed values, edge cases, brute-force cross-checks, and ``evaluate``."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from fyp.eval.data import FitContext, IntArray, Interactions
from fyp.eval.metrics import (
    RecommendationError,
    auc,
    coverage,
    evaluate,
    gauc,
    grouped_auc,
    intra_list_diversity,
    log_loss,
    metric_cutoff,
    novelty,
    per_user_diversity,
    per_user_ranking_metrics,
    ranking_metrics,
    tag_matrix,
)

# ---------------------------------------------------------------------------------------------
# Top-K accuracy: hand-computed values
# ---------------------------------------------------------------------------------------------


def test_single_hit_at_rank_three() -> None:
    m = ranking_metrics([[7, 8, 5, 9]], [[5]], ks=(1, 3, 4))
    assert m["ndcg@4"] == pytest.approx(1 / math.log2(4))
    assert m["ndcg@3"] == pytest.approx(0.5)
    assert m["recall@3"] == 1.0 and m["hit@3"] == 1.0
    assert m["mrr@3"] == pytest.approx(1 / 3)
    assert m["ndcg@1"] == m["recall@1"] == m["hit@1"] == m["mrr@1"] == 0.0


def test_two_relevant_items() -> None:
    # Hits at ranks 1 and 3 among two relevant items.
    m = ranking_metrics([[1, 9, 2, 8]], [[2, 1]], ks=(3,))
    ideal = 1 + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / ideal)
    assert m["recall@3"] == 1.0
    assert m["mrr@3"] == 1.0


def test_more_truth_than_k_recall_divides_by_all_truth() -> None:
    m = ranking_metrics([[0, 1, 9]], [[0, 1, 2, 3, 4]], ks=(2,))
    assert m["recall@2"] == pytest.approx(2 / 5)  # the common definition, not 2 / min(5, 2)
    assert m["ndcg@2"] == pytest.approx(1.0)  # ideal DCG over min(|truth|, K) = 2 hits
    assert m["hit@2"] == 1.0 and m["mrr@2"] == 1.0


def test_no_hits_is_zero_everywhere() -> None:
    m = ranking_metrics([[3, 4, 5]], [[0, 1]], ks=(3,))
    assert all(value == 0.0 for value in m.values())


def test_padding_never_hits() -> None:
    m = ranking_metrics([[5, -1, -1], [-1, -1, -1]], [[5, 6], [0]], ks=(3,))
    assert m["hit@3"] == pytest.approx(0.5)
    assert m["recall@3"] == pytest.approx(0.25)
    per_user = per_user_ranking_metrics([[-1, -1, -1]], [[0]], ks=(3,))
    assert per_user.values["ndcg@3"][0] == 0.0


def test_users_without_truth_are_skipped_and_marked_nan() -> None:
    per_user = per_user_ranking_metrics([[0, 1], [0, 1], [2, 3]], [[1], [], [9]], ks=(2,))
    assert np.isnan(per_user.values["recall@2"][1])
    assert list(per_user.n_relevant) == [1, 0, 1]
    assert per_user.mean()["recall@2"] == pytest.approx(0.5)
    assert per_user.mean(np.array([0, 1]))["recall@2"] == 1.0  # buckets skip the empty user
    with pytest.raises(ValueError, match="no user"):
        per_user.mean(np.array([1]))


def test_truth_duplicates_count_once_and_sparse_truth_agrees() -> None:
    recs = np.array([[0, 2, 4], [1, 3, 5]])
    truth_lists = [[2, 2, 7], [5]]
    truth_matrix = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 0, 1], [2, 7, 5])), shape=(2, 8))
    assert ranking_metrics(recs, truth_lists, ks=(3,)) == ranking_metrics(
        recs, truth_matrix, ks=(3,)
    )
    assert ranking_metrics(recs, truth_lists, ks=(3,))["recall@3"] == pytest.approx(0.75)


def test_malformed_lists_are_rejected() -> None:
    with pytest.raises(RecommendationError, match="duplicate"):
        ranking_metrics([[1, 2, 1]], [[1]], ks=(3,))
    with pytest.raises(ValueError, match="at least 5"):
        ranking_metrics([[1, 2, 3]], [[1]], ks=(5,))
    with pytest.raises(RecommendationError):
        ranking_metrics([[1, -2, 3]], [[1]], ks=(3,))
    with pytest.raises(RecommendationError, match="integer"):
        ranking_metrics([[1.0, 2.0]], [[1]], ks=(2,))
    with pytest.raises(ValueError, match="2 users for 1"):
        ranking_metrics([[1, 2]], [[1], [2]], ks=(2,))
    # Repeated padding is not a duplicate.
    assert ranking_metrics([[1, -1, -1]], [[1]], ks=(3,))["hit@3"] == 1.0


def test_metric_cutoff() -> None:
    assert metric_cutoff("ndcg@20") == ("ndcg", 20)
    with pytest.raises(ValueError):
        metric_cutoff("ndcg20")


def _reference(recs: list[int], truth: set[int], k: int) -> dict[str, float]:
    """Straight from the definitions, one user at a time."""
    top = recs[:k]
    hits = [item in truth for item in top]
    dcg = sum(1 / math.log2(rank + 2) for rank, hit in enumerate(hits) if hit)
    ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(truth), k)))
    first = next((rank for rank, hit in enumerate(hits) if hit), None)
    return {
        "recall": sum(hits) / len(truth),
        "ndcg": dcg / ideal,
        "hit": float(any(hits)),
        "mrr": 0.0 if first is None else 1 / (first + 1),
    }


@st.composite
def _lists_and_truth(draw: st.DrawFn) -> tuple[list[list[int]], list[set[int]]]:
    n_items = draw(st.integers(3, 15))
    width = draw(st.integers(1, n_items))
    users = draw(st.integers(1, 6))
    recs: list[list[int]] = []
    truth: list[set[int]] = []
    for _ in range(users):
        items = draw(st.permutations(range(n_items)))[:width]
        padding = draw(st.integers(0, width))
        recs.append(list(items[: width - padding]) + [-1] * padding)
        truth.append(draw(st.sets(st.integers(0, n_items - 1), min_size=1)))
    return recs, truth


@given(_lists_and_truth())
def test_vectorised_metrics_match_the_definitions(
    case: tuple[list[list[int]], list[set[int]]],
) -> None:
    recs, truth = case
    width = len(recs[0])
    ks = sorted({1, max(1, width // 2), width})
    per_user = per_user_ranking_metrics(np.array(recs), [sorted(t) for t in truth], ks)
    for user, (items, relevant) in enumerate(zip(recs, truth, strict=True)):
        for k in ks:
            for name, value in _reference(items, relevant, k).items():
                assert per_user.values[f"{name}@{k}"][user] == pytest.approx(value)


# ---------------------------------------------------------------------------------------------
# Beyond accuracy
# ---------------------------------------------------------------------------------------------


def test_coverage() -> None:
    assert coverage([[0, 1], [1, 2], [2, -1]], n_items=6) == pytest.approx(3 / 6)
    assert coverage(np.full((2, 3), -1), n_items=4) == 0.0
    with pytest.raises(RecommendationError):
        coverage([[0, 7]], n_items=5)


def test_novelty_is_mean_self_information() -> None:
    counts = np.array([8, 4, 1, 0])  # of 8 users: p = 1, 1/2, 1/8, and 0 counted as 1/8
    value = novelty([[0, 1], [2, 3], [1, -1]], counts, n_users=8)
    assert value == pytest.approx(((0 + 1) / 2 + (3 + 3) / 2 + 1) / 3)
    assert math.isnan(novelty([[-1, -1]], counts, n_users=8))


def test_diversity_with_vectors() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    values = per_user_diversity(
        [[0, 1, -1], [0, 2, -1], [0, 1, 2], [0, -1, -1], [0, 3, -1]], item_vectors=vectors
    )
    assert values[0] == pytest.approx(1.0)  # orthogonal
    assert values[1] == pytest.approx(0.0)  # same direction, different norm
    assert values[2] == pytest.approx((1 + 0 + 1) / 3)
    assert np.isnan(values[3])  # one item: no pairs
    assert values[4] == pytest.approx(1.0)  # a zero vector is similar to nothing
    assert intra_list_diversity([[0, 1], [0, 2], [3, -1]], item_vectors=vectors) == (
        pytest.approx(0.5)
    )


def test_diversity_with_tags_is_one_minus_jaccard() -> None:
    tags = [["a", "b"], ["b", "c"], ["a", "b"], []]
    values = per_user_diversity([[0, 1], [0, 2], [0, 3]], item_tags=tags)
    assert values[0] == pytest.approx(1 - 1 / 3)
    assert values[1] == pytest.approx(0.0)
    assert values[2] == pytest.approx(1.0)
    matrix = tag_matrix(tags)
    assert matrix.shape == (4, 3)
    assert intra_list_diversity([[0, 1]], item_tags=matrix) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="exactly one"):
        intra_list_diversity([[0, 1]])


def test_diversity_batches_agree() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(30, 4))
    recs = np.array([rng.permutation(30)[:6] for _ in range(25)])
    whole = per_user_diversity(recs, item_vectors=vectors)
    tiny = per_user_diversity(recs, item_vectors=vectors, max_batch_entries=1)
    np.testing.assert_allclose(whole, tiny)


# ---------------------------------------------------------------------------------------------
# Ranker metrics
# ---------------------------------------------------------------------------------------------


def _pairwise_auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for y, s in zip(labels, scores, strict=True) if y]
    neg = [s for y, s in zip(labels, scores, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_hand_examples() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert auc([True, False, True], [3, 1, 2]) == 1.0
    with pytest.raises(ValueError, match="positive and one negative"):
        auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="0/1"):
        auc([0, 2], [0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.2, float("nan")])


@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 4)),  # few distinct scores: many ties
        min_size=2,
        max_size=40,
    ).filter(lambda rows: len({y for y, _ in rows}) == 2)
)
def test_auc_matches_pairwise_count(rows: list[tuple[int, int]]) -> None:
    labels = [y for y, _ in rows]
    scores = [s / 4 for _, s in rows]
    assert auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))


def test_gauc_weights_users_and_skips_single_class() -> None:
    users = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    labels = [1, 0, 0, 1, 1, 0, 1, 1, 1]
    scores = [0.9, 0.8, 0.1, 0.2, 0.1, 0.7, 0.5, 0.4, 0.3]
    # user 0: 3 of 4 pairs ordered right over 4 examples; user 1: 0.0 over 2; user 2 is all
    # positive: skipped.
    assert gauc(users, labels, scores) == pytest.approx((0.75 * 4 + 0.0 * 2) / 6)
    groups, values, counts = grouped_auc(users, labels, scores)
    assert list(groups) == [0, 1, 2] and list(counts) == [4, 2, 3]
    assert np.isnan(values[2])
    with pytest.raises(ValueError, match="both"):
        gauc([0, 0, 1], [1, 1, 0], [0.1, 0.2, 0.3])


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 1), st.integers(0, 3)), min_size=1, max_size=40
    )
)
def test_gauc_matches_per_user_brute_force(rows: list[tuple[int, int, int]]) -> None:
    users = [u for u, _, _ in rows]
    labels = [y for _, y, _ in rows]
    scores = [float(s) for _, _, s in rows]
    total = weight = 0.0
    for user in set(users):
        ys = [y for u, y in zip(users, labels, strict=True) if u == user]
        ss = [s for u, s in zip(users, scores, strict=True) if u == user]
        if len(set(ys)) == 2:
            total += _pairwise_auc(ys, ss) * len(ys)
            weight += len(ys)
    if weight == 0:
        with pytest.raises(ValueError):
            gauc(users, labels, scores)
    else:
        assert gauc(users, labels, scores) == pytest.approx(total / weight)


def test_log_loss_values_and_clipping() -> None:
    expected = -(math.log(0.8) + math.log(1 - 0.3)) / 2
    assert log_loss([1, 0], [0.8, 0.3]) == pytest.approx(expected)
    # A confident mistake costs -ln(eps), not infinity.
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7))
    assert log_loss([0], [1.0], eps=1e-3) == pytest.approx(-math.log(1e-3))
    assert log_loss([1, 0], np.array([1.0, 0.0], dtype=np.float32)) < 1e-6
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        log_loss([1], [1.5])
    with pytest.raises(ValueError, match="no examples"):
        log_loss([], [])


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


def _interactions(pairs: list[tuple[int, int]], n_users: int, n_items: int) -> Interactions:
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    items = np.array([i for _, i in pairs], dtype=np.int64)
    return Interactions(
        user=users,
        item=items,
        user_labels=[f"u{u}" for u in range(n_users)],
        item_labels=[f"i{i}" for i in range(n_items)],
    )


class _Scripted:
    """Returns fixed lists per user and records what it was asked."""

    name = "scripted"

    def __init__(self, lists: dict[int, list[int]]) -> None:
        self.lists = lists
        self.calls: list[tuple[list[int], int]] = []
        self.fitted = False

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        self.fitted = True

    def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
        self.calls.append(([int(u) for u in users], k))
        return np.array([(self.lists[int(u)] + [-1] * k)[:k] for u in users], dtype=np.int64)


TRAIN = _interactions([(0, 0), (0, 1), (1, 2), (2, 3), (3, 0)], n_users=4, n_items=6)
TEST = _interactions([(0, 2), (0, 1), (1, 4), (1, 5), (1, 5), (3, 0)], n_users=4, n_items=6)


def test_evaluate_scores_only_users_with_new_test_items() -> None:
    model = _Scripted({0: [2, 3], 1: [5, 3, 4]})
    result = evaluate(
        model, TRAIN.matrix(), TEST, ks=(1, 3), context=FitContext(train=TRAIN), batch_size=1
    )
    # User 0's test item 1 and user 3's item 0 were training items: dropped from the truth, so
    # user 3 (nothing new) and user 2 (no test rows) are not asked.
    assert model.fitted and [users for users, _ in model.calls] == [[0], [1]]
    assert {k for _, k in model.calls} == {3}
    assert list(result.users) == [0, 1]
    assert result.metrics["hit@1"] == 1.0
    assert result.metrics["recall@3"] == 1.0
    assert result.metrics["coverage@1"] == pytest.approx(2 / 6)
    assert result.metrics["coverage@3"] == pytest.approx(4 / 6)
    assert result.fit_seconds is not None and result.recommend_seconds >= 0
    assert result.recommendations is None


def test_evaluate_can_keep_seen_truth_and_skip_fitting() -> None:
    model = _Scripted({0: [2, 3], 1: [5, 3], 3: [1, 2]})
    result = evaluate(
        model,
        TRAIN.matrix(),
        TEST,
        ks=(2,),
        drop_excluded_from_truth=False,
        keep_recommendations=True,
        item_tags=[["x"], ["x"], ["x"], ["y"], [], []],
    )
    assert not model.fitted and result.fit_seconds is None
    assert list(result.users) == [0, 1, 3]
    assert result.metrics["recall@2"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert result.recommendations is not None and result.recommendations.shape == (3, 2)
    # Tag distances: x/y 1, untagged/y 1, x/x 0.
    assert result.metrics["diversity@2"] == pytest.approx(2 / 3)


def test_evaluate_batches_do_not_change_results() -> None:
    lists = {0: [2, 4, 5], 1: [3, 4, 0]}
    one = evaluate(_Scripted(lists), TRAIN.matrix(), TEST, ks=(3,), batch_size=1)
    many = evaluate(_Scripted(lists), TRAIN.matrix(), TEST, ks=(3,), batch_size=100)
    assert one.metrics == many.metrics


@pytest.mark.parametrize(
    ("lists", "message"),
    [
        ({0: [0, 2], 1: [4, 5]}, "excluded"),  # item 0 is in user 0's training row
        ({0: [2, 2], 1: [4, 5]}, "duplicate"),
        ({0: [2, 9], 1: [4, 5]}, "item 9"),
    ],
)
def test_evaluate_rejects_contract_violations(lists: dict[int, list[int]], message: str) -> None:
    with pytest.raises(RecommendationError, match=message):
        evaluate(_Scripted(lists), TRAIN.matrix(), TEST, ks=(2,))


def test_evaluate_rejects_wrong_shape_and_empty_test() -> None:
    class Short(_Scripted):
        def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
            return super().recommend(users, k, exclude)[:, :1]

    with pytest.raises(RecommendationError, match="shape"):
        evaluate(Short({0: [2, 3], 1: [4, 5]}), TRAIN.matrix(), TEST, ks=(2,))
    only_seen = _interactions([(0, 0)], n_users=4, n_items=6)
    with pytest.raises(ValueError, match="no user"):
        evaluate(_Scripted({}), TRAIN.matrix(), only_seen, ks=(2,))

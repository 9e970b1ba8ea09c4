"""The ranker scorer: fails open without a model, combines the heads with the configured objective
weights, and the reasons it enables are derived from those heads."""

from __future__ import annotations

import random
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fyp.config import FypConfig, RankerConfig
from fyp.engine import fold_policy
from fyp.models.ranker import Ranker, train_ranker
from fyp.models.ranker_data import BaseRates, LoggedEvent, build_examples
from fyp.pipeline.contracts import Candidate
from fyp.pipeline.explain import explain
from fyp.scoring.ranker import RankerScorer
from fyp.storage.roles import EventRecord, ItemRecord, ItemStatsRecord, UserStateSnapshot

T0 = 1_700_000_000.0
CONFIG = FypConfig()


@pytest.fixture(scope="module")
def small_ranker() -> Ranker:
    """A ranker trained for one epoch on a random log: enough to exercise serving."""
    rng = random.Random(5)
    items = {
        f"i{k}": ItemRecord(
            f"i{k}", f"c{k % 5}", T0 - 86_400, 15.0 + k, "", (f"t{k % 4}",), None, ()
        )
        for k in range(40)
    }
    events = []
    for n in range(1500):
        item = f"i{rng.randrange(40)}"
        user = f"u{rng.randrange(25)}"
        t = T0 + n * 30.0
        events.append(LoggedEvent(t, user, item, "play", rng.randrange(300, 60_000)))
        if rng.random() < 0.3:
            events.append(LoggedEvent(t + 1, user, item, rng.choice(["like", "finish"]), None))
    examples = build_examples(
        events, items, fold_policy(CONFIG), BaseRates(), prior_plays=20.0, label_window_s=600.0
    )
    config = RankerConfig(embedding_dim=4, experts=2, expert_hidden=8, epochs=1)
    return train_ranker(examples, BaseRates(), config)


class FakeModel:
    """A serving model: the ranker, and a learned source that knows items ``i0``..``i5``."""

    def __init__(self, ranker: Ranker | None) -> None:
        self.ranker = ranker
        self.folded: list[list[tuple[str, float]]] = []

    def user_vector(self, interactions: list[tuple[str, float]]) -> np.ndarray[Any, Any] | None:
        self.folded.append(interactions)
        return np.ones(2, dtype=np.float32) if interactions else None

    def item_scores(self, vector: np.ndarray[Any, Any], item_ids: list[str]) -> list[float | None]:
        return [0.1 * int(i[1:]) if i[1:].isdigit() and int(i[1:]) < 6 else None for i in item_ids]


class FakeData:
    """The gated region handle, as far as the scorer reads it: the viewer's latest events."""

    def __init__(self, history: list[EventRecord]) -> None:
        self.events = SimpleNamespace(recent_for_user=lambda user_id, limit: history[:limit])


CATALOG = SimpleNamespace(
    get_items=lambda ids: {i: ItemRecord(i, "c0", T0 - 3600, 30.0, "", (), None, ()) for i in ids}
)
"""The global catalog, for the durations of history items that are not candidates."""

HISTORY = [
    EventRecord(1, "e1", "viewer", "i2", "play", T0 - 60, 12_000, None),
    EventRecord(2, "e2", "viewer", "i2", "like", T0 - 50, None, None),
]


def candidates(make_candidate: Callable[..., Candidate], n: int = 6) -> list[Candidate]:
    out = [
        make_candidate(
            f"i{k}", f"c{k % 5}", tags=[f"t{k % 4}"], stats=ItemStatsRecord(views=9, plays=9)
        )
        for k in range(n)
    ]
    out.append(make_candidate("brand-new", "new-creator", tags=["t9"]))
    return out


def test_without_a_model_the_feature_is_zero_and_nothing_is_predicted(
    make_query: Any, make_candidate: Any
) -> None:
    scorer = RankerScorer(CONFIG.ranker)
    cands = candidates(make_candidate)
    for model in (None, FakeModel(None)):
        assert scorer.score(make_query(model=model), cands) == [0.0] * len(cands)
    assert not any(k.startswith("ranker_") for c in cands for k in c.features)


def test_scores_are_the_objective_weights_over_the_heads(
    make_query: Any, make_candidate: Any, small_ranker: Ranker
) -> None:
    weights = {"watch_ratio": 2.0, "finish": 0.5, "quick_skip": -1.5, "like": 1.0}
    scorer = RankerScorer(RankerConfig(objective_weights=weights))
    cands = candidates(make_candidate)
    cands.append(make_candidate("no-record", with_item=False))
    query = make_query(model=FakeModel(small_ranker), user_id="u3", data=FakeData(HISTORY))
    scores = scorer.score(query, cands)
    assert len(scores) == len(cands)
    assert scores[-1] == 0.0 and "ranker_finish" not in cands[-1].features
    for cand, score in zip(cands[:-1], scores[:-1], strict=True):
        heads = {t: cand.features[f"ranker_{t}"] for t in small_ranker.tasks}
        assert all(0.0 <= p <= 1.0 for p in heads.values())
        assert score == pytest.approx(sum(w * heads[t] for t, w in weights.items()), abs=1e-5)


def test_the_watch_seconds_term_adds_the_predicted_minutes_watched(
    make_query: Any, make_candidate: Any, small_ranker: Ranker
) -> None:
    """With ``watch_seconds_weight`` the value adds weight * predicted watch ratio * minutes, so
    of two videos equally likely to be watched through, the longer one scores higher."""
    weights = {"watch_ratio": 1.0, "finish": 0.5}
    plain = RankerScorer(RankerConfig(objective_weights=weights))
    timed = RankerScorer(RankerConfig(objective_weights=weights, watch_seconds_weight=2.0))
    query = make_query(model=FakeModel(small_ranker), user_id="u3", data=FakeData(HISTORY))
    base_scores = plain.score(query, candidates(make_candidate))
    cands = candidates(make_candidate)
    scores = timed.score(query, cands)
    for cand, base, score in zip(cands, base_scores, scores, strict=True):
        assert cand.item is not None
        expected = base + 2.0 * cand.features["ranker_watch_ratio"] * cand.item.duration_s / 60
        assert score == pytest.approx(expected, abs=1e-5)


def test_the_batch_prediction_equals_one_candidate_at_a_time(
    make_query: Any, make_candidate: Any, small_ranker: Ranker
) -> None:
    scorer = RankerScorer(CONFIG.ranker)
    query = make_query(
        model=FakeModel(small_ranker), user_id="u1", data=FakeData(HISTORY), catalog=CATALOG
    )
    cands = candidates(make_candidate)
    together = scorer.score(query, cands)
    alone = [scorer.score(query, [c])[0] for c in candidates(make_candidate)]
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_the_viewers_negative_affinity_enters_the_prediction(
    make_query: Any, make_candidate: Any, small_ranker: Ranker
) -> None:
    """Same candidates, a viewer who skipped creator c1: the ranker sees different inputs."""
    scorer = RankerScorer(CONFIG.ranker)
    model = FakeModel(small_ranker)
    data = FakeData(HISTORY)
    neutral = scorer.score(make_query(model=model, data=data), candidates(make_candidate))
    state = UserStateSnapshot(as_of=T0, creator_affinity={"c1": -6.0}, tag_affinity={"t1": -4.0})
    disliked = scorer.score(
        make_query(model=model, state=state, data=data), candidates(make_candidate)
    )
    assert disliked[1] != neutral[1]


def test_the_learned_sources_score_is_an_input_when_the_viewer_has_history(
    make_query: Any, make_candidate: Any, small_ranker: Ranker
) -> None:
    scorer = RankerScorer(CONFIG.ranker, CONFIG.training)
    model = FakeModel(small_ranker)
    with_history = scorer.score(
        make_query(model=model, data=FakeData(HISTORY)), candidates(make_candidate)
    )
    # The viewer folded in with the training preference weights: a 12 s play of a 30 s video
    # (watch ratio) and a like.
    [interactions] = model.folded
    assert interactions[0][0] == "i2" and interactions[0][1] == pytest.approx(12 / 30)
    assert interactions[1] == ("i2", CONFIG.training.event_weights["like"])
    no_history = scorer.score(
        make_query(model=model, data=FakeData([])), candidates(make_candidate)
    )
    assert with_history[:6] != no_history[:6]
    assert with_history[6] == pytest.approx(no_history[6], abs=1e-6), "unknown to ALS either way"


def ranked(make_candidate: Any, **features: float) -> Candidate:
    cand = make_candidate("v1", sources={"trending": 0.2})
    cand.features.update(features)
    return cand


def test_a_dominant_ranker_prediction_is_the_first_reason(
    make_candidate: Any, make_query: Any
) -> None:
    cand = ranked(make_candidate, ranker=0.9, ranker_finish=0.7, ranker_watch_ratio=0.8)
    [item] = explain(make_query(), [cand]).items
    assert item.reasons[0].code == "predicted_watch_through"
    assert "watch it through" in item.reasons[0].text
    assert [r.code for r in item.reasons][1:] == ["trending_in_region"]


def test_ranker_reasons_follow_the_heads_and_need_a_real_push(
    make_candidate: Any, make_query: Any
) -> None:
    def codes(cand: Candidate) -> list[str]:
        [item] = explain(make_query(), [cand]).items
        return [r.code for r in item.reasons]

    long_watch = ranked(make_candidate, ranker=0.6, ranker_finish=0.2, ranker_watch_ratio=0.6)
    assert "predicted_long_watch" in codes(long_watch)
    like = ranked(make_candidate, ranker=0.6, ranker_finish=0.1, ranker_like=0.4)
    assert "predicted_like" in codes(like)
    weak_heads = ranked(make_candidate, ranker=0.6, ranker_finish=0.1, ranker_like=0.05)
    assert codes(weak_heads) == ["trending_in_region"]
    small_push = ranked(make_candidate, ranker=0.05, ranker_finish=0.9)
    assert codes(small_push) == ["trending_in_region"]
    # Another feature lifts the item more: the ranker reason comes after the sources.
    second = ranked(make_candidate, ranker=0.3, ranker_finish=0.9, creator_affinity=0.9)
    assert codes(second)[:2] == ["trending_in_region", "predicted_watch_through"]

"""Scorers: one float per candidate, in order, input untouched; each feature means what it says."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fyp.config import SCORING_FEATURES, FypConfig, ScoringConfig, SourcesConfig
from fyp.engine import fold_policy
from fyp.pipeline.contracts import Candidate
from fyp.pipeline.for_you import for_you_pipeline
from fyp.scoring.features import (
    CreatorAffinityScorer,
    EngagementScorer,
    FreshnessScorer,
    PopularityScorer,
    RetrievalScorer,
    TagAffinityScorer,
)
from fyp.scoring.value_model import ValueModel
from fyp.storage.region import SqlRegionStore
from fyp.storage.roles import ItemStatsRecord, UserStateSnapshot

TAGS = ("cats", "dogs", "food", "music")
SOURCES = ("trending", "fresh", "co_engagement", "following", "interest_tags", "embedding")


def stats_data(totals: ItemStatsRecord) -> Any:
    """A stand-in for a gated handle whose only use here is ``stats.totals()``."""
    return SimpleNamespace(stats=SimpleNamespace(totals=lambda: totals))


@st.composite
def scoring_cases(draw: st.DrawFn) -> tuple[list[dict[str, Any]], UserStateSnapshot]:
    rnd = draw(st.randoms(use_true_random=True))
    size = draw(st.integers(0, 25))
    specs = []
    for k in range(size):
        views = rnd.randint(0, 500)
        specs.append(
            {
                "item_id": f"i{k}",
                "creator_id": f"c{rnd.randrange(4)}",
                "tags": rnd.sample(TAGS, rnd.randint(0, 3)),
                "age_hours": rnd.uniform(0, 500),
                "sources": {s: rnd.random() for s in rnd.sample(SOURCES, rnd.randint(0, 3))},
                "features": {f: rnd.uniform(-1, 1) for f in SCORING_FEATURES if rnd.random() < 0.8},
                "stats": ItemStatsRecord(
                    views=views,
                    finishes=rnd.randint(0, views),
                    likes=rnd.randint(0, views),
                    shares=rnd.randint(0, views // 2 + 1),
                    skips=rnd.randint(0, views),
                )
                if rnd.random() < 0.7
                else None,
                "with_item": rnd.random() < 0.95,
            }
        )
    state = UserStateSnapshot(
        as_of=0.0,
        creator_affinity={f"c{k}": rnd.uniform(-10, 10) for k in range(4) if rnd.random() < 0.6},
        tag_affinity={t: rnd.uniform(-10, 10) for t in TAGS if rnd.random() < 0.6},
    )
    return specs, state


@given(case=scoring_cases())
def test_every_for_you_scorer_returns_one_float_per_candidate_without_touching_them(
    case: tuple[list[dict[str, Any]], UserStateSnapshot],
    make_candidate: Callable[..., Candidate],
    make_query: Any,
) -> None:
    specs, state = case
    totals = ItemStatsRecord(views=1000, finishes=300, likes=50, shares=5, skips=200)
    query = make_query(state=state, data=stats_data(totals))
    cands = [make_candidate(**s) for s in specs]
    before = copy.deepcopy(cands)
    identities = [id(c) for c in cands]
    for scorer in for_you_pipeline(FypConfig()).scorers:
        scores = scorer.score(query, cands)
        assert len(scores) == len(cands), scorer.name
        assert all(isinstance(s, float) and math.isfinite(s) for s in scores), scorer.name
        assert [id(c) for c in cands] == identities, f"{scorer.name} reordered its input"
        assert cands == before, f"{scorer.name} changed a candidate"


@given(
    features=st.lists(
        st.dictionaries(
            st.sampled_from(SCORING_FEATURES), st.floats(-1, 1), min_size=0, max_size=6
        ),
        max_size=10,
    ),
    weights=st.dictionaries(st.sampled_from(SCORING_FEATURES), st.floats(-3, 3)),
)
def test_value_model_is_the_weighted_sum_of_features(
    features: list[dict[str, float]],
    weights: dict[str, float],
    make_candidate: Callable[..., Candidate],
    make_query: Any,
) -> None:
    cands = [make_candidate(f"i{k}", features=f) for k, f in enumerate(features)]
    model = ValueModel(ScoringConfig(weights=weights))
    scores = model.score(make_query(), cands)
    expected = [sum(w * f.get(name, 0.0) for name, w in weights.items()) for f in features]
    assert scores == pytest.approx(expected, abs=1e-12)


def test_value_model_ignores_features_without_a_weight(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cand = make_candidate("i", features={"freshness": 1.0, "rank_by_score": 99.0})
    model = ValueModel(ScoringConfig(weights={"freshness": 0.5}))
    assert model.score(make_query(), [cand]) == [0.5]


def test_engagement_ranks_loved_above_unseen_above_skipped(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    totals = ItemStatsRecord(views=10_000, finishes=3000, likes=500, shares=50, skips=2000)
    loved = make_candidate(
        "loved", stats=ItemStatsRecord(views=100, finishes=80, likes=40, shares=10, skips=2)
    )
    unseen = make_candidate("unseen", views=None)
    skipped = make_candidate("skipped", stats=ItemStatsRecord(views=100, skips=95))
    scorer = EngagementScorer(ScoringConfig())
    scores = scorer.score(make_query(data=stats_data(totals)), [loved, unseen, skipped])
    assert scores[0] > scores[1] > scores[2]
    assert scores[1] == pytest.approx(0.0)
    assert all(-1.0 < s < 1.0 for s in scores)


def test_engagement_pulls_a_small_sample_toward_the_average(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    totals = ItemStatsRecord(views=10_000, finishes=3000, likes=500, shares=50, skips=2000)
    one_like = make_candidate("one", stats=ItemStatsRecord(views=1, finishes=1, likes=1))
    many_likes = make_candidate("many", stats=ItemStatsRecord(views=200, finishes=200, likes=200))
    scores = EngagementScorer(ScoringConfig(prior_views=20)).score(
        make_query(data=stats_data(totals)), [one_like, many_likes]
    )
    assert 0 < scores[0] < scores[1]


@given(ages=st.lists(st.floats(0, 10_000), min_size=2, max_size=10))
def test_freshness_decreases_with_age(
    ages: list[float], make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    ages = sorted(ages)
    cands = [make_candidate(f"i{k}", age_hours=a) for k, a in enumerate(ages)]
    scores = FreshnessScorer(ScoringConfig(freshness_half_life_hours=48)).score(make_query(), cands)
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_freshness_halves_every_half_life(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cands = [make_candidate(f"i{h}", age_hours=h) for h in (0, 48, 96)]
    scores = FreshnessScorer(ScoringConfig(freshness_half_life_hours=48)).score(make_query(), cands)
    assert scores == pytest.approx([1.0, 0.5, 0.25])


def test_retrieval_rises_with_each_source_that_vouches(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    sources = SourcesConfig()
    one = make_candidate("one", sources={"trending": 1.0})
    two = make_candidate("two", sources={"trending": 1.0, "fresh": 1.0})
    weak = make_candidate("weak", sources={"trending": 0.2})
    none = make_candidate("none")
    scores = RetrievalScorer(sources).score(make_query(), [one, two, weak, none])
    assert scores[0] == pytest.approx(sources.trending.prior)
    assert scores[1] == pytest.approx(1 - (1 - sources.trending.prior) * (1 - sources.fresh.prior))
    assert scores[1] > scores[0] > scores[2] > scores[3] == 0.0


def test_popularity_is_log_views_relative_to_the_most_viewed(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cands = [
        make_candidate("a", views=0),
        make_candidate("b", views=9),
        make_candidate("c", views=99),
    ]
    scores = PopularityScorer().score(make_query(), cands)
    assert scores == pytest.approx([0.0, math.log(10) / math.log(100), 1.0])
    assert PopularityScorer().score(make_query(), [make_candidate("z", views=0)]) == [0.0]


def test_affinity_features_turn_negative_after_not_interested(
    make_record: Any,
    make_user: Any,
    make_event: Any,
    make_candidate: Callable[..., Candidate],
    make_query: Any,
    now: float,
) -> None:
    config = FypConfig()
    store = SqlRegionStore("sqlite://", "us", fold_policy(config))
    try:
        record = {"disliked": make_record("disliked", "grumpy", tags=["cats", "loud"])}
        store.upsert_users([make_user("u1")], now)
        store.append([make_event("u1", "disliked", "not_interested", ts=now)], record, now)
        state = store.hydrate("u1", now)
    finally:
        store.close()
    query = make_query(state=state)
    same_creator = make_candidate("other", "grumpy", tags=["dogs"])
    same_tag = make_candidate("cat2", "someone", tags=["cats"])
    unrelated = make_candidate("x", "someone", tags=["dogs"])
    creator = CreatorAffinityScorer(config.scoring).score(query, [same_creator, unrelated])
    tags = TagAffinityScorer(config.scoring).score(query, [same_tag, unrelated])
    assert creator[0] < 0 and creator[1] == 0.0
    assert tags[0] < 0 and tags[1] == 0.0


def test_affinity_features_are_positive_after_likes(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    state = UserStateSnapshot(
        as_of=0.0, creator_affinity={"fav": 4.0}, tag_affinity={"cats": 2.0, "dogs": 2.0}
    )
    scoring = ScoringConfig(affinity_scale=3.0)
    cand = make_candidate("i", "fav", tags=["cats", "dogs"])
    [creator] = CreatorAffinityScorer(scoring).score(make_query(state=state), [cand])
    [tags] = TagAffinityScorer(scoring).score(make_query(state=state), [cand])
    assert creator == pytest.approx(math.tanh(4.0 / 3.0))
    assert tags == pytest.approx(math.tanh((4.0 / math.sqrt(2)) / 3.0))

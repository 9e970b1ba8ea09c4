"""Signals: the one place event types get their meaning (affinity, item stats, training weight)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fyp.config import FypConfig
from fyp.engine import fold_policy
from fyp.signals import (
    QUICK_SKIP_MS,
    combine_decayed,
    decay_factor,
    fold,
    logaddexp,
    preference_weight,
    trend_now,
    watch_ratio,
)

HOUR = 3600.0
CONFIG = FypConfig()
POLICY = fold_policy(CONFIG)
TRAINING = CONFIG.training


def decayed_total(deltas: list[tuple[float, float]], at: float, half_life: float) -> float:
    """Fold ``(delta, ts)`` pairs in the given order, as the store does, and read at ``at``."""
    value, value_ts = 0.0, deltas[0][1]
    for delta, ts in deltas:
        value, value_ts = combine_decayed(value, value_ts, delta, ts, half_life)
    return value * decay_factor(at - value_ts, half_life)


deltas_strategy = st.lists(
    st.tuples(st.floats(-10, 10), st.floats(0, 30 * 24 * HOUR)), min_size=1, max_size=12
)


@given(
    deltas=deltas_strategy,
    order=st.randoms(use_true_random=True),
    half_life=st.floats(HOUR, 30 * 24 * HOUR),
)
def test_combine_decayed_does_not_depend_on_arrival_order(
    deltas: list[tuple[float, float]], order: Any, half_life: float
) -> None:
    shuffled = list(deltas)
    order.shuffle(shuffled)
    at = max(ts for _, ts in deltas) + 1.0
    direct = sum(d * decay_factor(at - ts, half_life) for d, ts in deltas)
    scale = sum(abs(d) for d, _ in deltas) + 1.0
    assert decayed_total(deltas, at, half_life) == pytest.approx(direct, abs=1e-9 * scale)
    assert decayed_total(shuffled, at, half_life) == pytest.approx(direct, abs=1e-9 * scale)


def test_combine_decayed_halves_after_one_half_life() -> None:
    value, ts = combine_decayed(4.0, 0.0, 0.0, 10.0, 10.0)
    assert (value, ts) == (pytest.approx(2.0), 10.0)
    # A late delta is decayed to the stored timestamp instead of moving it back.
    value, ts = combine_decayed(1.0, 10.0, 4.0, 0.0, 10.0)
    assert (value, ts) == (pytest.approx(3.0), 10.0)


@given(a=st.floats(-50, 50), b=st.floats(-50, 50))
def test_logaddexp_matches_the_direct_formula(a: float, b: float) -> None:
    assert logaddexp(a, b) == pytest.approx(math.log(math.exp(a) + math.exp(b)))
    assert logaddexp(a, -math.inf) == a
    assert logaddexp(-math.inf, b) == b


def test_watch_ratio_is_unknown_without_watch_time_or_duration() -> None:
    assert watch_ratio(15_000, 30.0) == 0.5
    assert watch_ratio(None, 30.0) is None
    assert watch_ratio(1000, 0.0) is None


# ---- fold ---------------------------------------------------------------------------------------


@pytest.fixture
def items(make_record: Any) -> dict[str, Any]:
    return {
        "v1": make_record("v1", "alice", tags=["cats", "funny"], duration_s=20.0),
        "v2": make_record("v2", "bob", tags=["cooking"], duration_s=60.0),
        "v3": make_record("v3", "carol", duration_s=10.0),
    }


def test_fold_moves_creator_and_split_tag_affinity(
    items: dict[str, Any], make_event: Any, now: float
) -> None:
    out = fold([make_event("u1", "v1", "like", ts=now)], items, POLICY)
    like = CONFIG.affinity.weights["like"]
    assert out.affinity == [
        ("u1", "c:alice", like, now),
        ("u1", "t:cats", pytest.approx(like / math.sqrt(2)), now),
        ("u1", "t:funny", pytest.approx(like / math.sqrt(2)), now),
    ]


def test_fold_scores_a_play_by_watch_ratio_around_neutral(
    items: dict[str, Any], make_event: Any, now: float
) -> None:
    long_play = make_event("u1", "v2", "play", ts=now, watch_ms=45_000)  # ratio 0.75
    short_play = make_event("u2", "v2", "play", ts=now, watch_ms=6_000)  # ratio 0.1
    out = fold([long_play, short_play], items, POLICY)
    by_user = {(u, k): d for u, k, d, _ in out.affinity}
    neutral = CONFIG.affinity.neutral_watch_ratio
    assert by_user[("u1", "c:bob")] == pytest.approx(0.75 - neutral)
    assert by_user[("u2", "c:bob")] == pytest.approx(0.1 - neutral)
    assert out.stats["v2"].plays == 2
    assert out.stats["v2"].watch_ratio_sum == pytest.approx(0.85)


def test_fold_records_follows_hidden_items_and_mutes(
    items: dict[str, Any], make_event: Any, now: float
) -> None:
    events = [
        make_event("u1", "v1", "follow", ts=now - 100),
        make_event("u1", "v2", "not_interested", ts=now - 50),
        make_event("u1", "v3", "report", ts=now - 10),
        make_event("u1", "v2", "report", ts=now - 60),
    ]
    out = fold(events, items, POLICY)
    mute = CONFIG.affinity.creator_mute_hours * HOUR
    assert out.follows == {("u1", "alice"): now - 100}
    assert set(out.hidden) == {("u1", "v2"), ("u1", "v3")}
    # The latest mute wins, whatever order the events came in.
    assert out.mutes == {("u1", "bob"): now - 50 + mute, ("u1", "carol"): now - 10 + mute}
    assert out.touched == {("u1", "v1"), ("u1", "v2"), ("u1", "v3")}


def test_fold_counts_engagement_and_trending_per_item(
    items: dict[str, Any], make_event: Any, now: float
) -> None:
    kinds = ["impression", "play", "finish", "like", "like", "share", "skip", "not_interested"]
    events = [
        make_event(f"u{k}", "v1", kind, ts=now, watch_ms=10_000) for k, kind in enumerate(kinds)
    ]
    events.append(make_event("u9", "v3", "skip", ts=now))
    out = fold(events, items, POLICY)
    v1 = out.stats["v1"]
    assert (v1.plays, v1.finishes, v1.likes, v1.shares, v1.skips, v1.not_interested) == (
        1,
        1,
        2,
        1,
        1,
        1,
    )
    assert v1.views == 0, "views come from the seen set, not from fold"
    w = CONFIG.sources.trending.engagement_weights
    expected = 0.5 * w["play"] + w["finish"] + 2 * w["like"] + w["share"]
    half_life = CONFIG.sources.trending.half_life_hours * HOUR
    assert trend_now(v1.trend_log, now, half_life) == pytest.approx(expected)
    assert out.stats["v3"].trend_log == -math.inf, "a skip adds no trending weight"
    assert trend_now(out.stats["v3"].trend_log, now, half_life) == 0.0


def test_trending_weight_decays_with_event_age(
    items: dict[str, Any], make_event: Any, now: float
) -> None:
    half_life = CONFIG.sources.trending.half_life_hours * HOUR
    out = fold([make_event("u1", "v2", "like", ts=now - half_life)], items, POLICY)
    like = CONFIG.sources.trending.engagement_weights["like"]
    assert trend_now(out.stats["v2"].trend_log, now, half_life) == pytest.approx(like / 2)


def test_fold_of_nothing_changes_nothing(items: dict[str, Any]) -> None:
    out = fold([], items, POLICY)
    assert not (out.touched or out.affinity or out.follows or out.hidden or out.stats)


# ---- preference weight --------------------------------------------------------------------------


def weight(kind: str, watch_ms: int | None = None, duration_s: float = 30.0) -> float:
    return preference_weight(
        kind, watch_ms, duration_s, TRAINING.event_weights, TRAINING.play_weight
    )


def test_preference_weight_of_a_play_is_its_capped_watch_ratio() -> None:
    assert weight("play", 15_000) == pytest.approx(0.5 * TRAINING.play_weight)
    assert weight("play", 300_000) == pytest.approx(2.0 * TRAINING.play_weight)
    assert weight("play", None) == 0.0


def test_preference_weight_treats_a_quick_skip_as_a_skip_whatever_the_length() -> None:
    skip = TRAINING.event_weights["skip"]
    assert skip < 0
    assert weight("play", QUICK_SKIP_MS - 1) == skip
    assert weight("play", QUICK_SKIP_MS - 1, duration_s=2.5) == skip
    assert weight("play", QUICK_SKIP_MS) > 0


def test_preference_weight_of_explicit_feedback_comes_from_config() -> None:
    assert weight("like") == TRAINING.event_weights["like"] > 0
    assert weight("not_interested") == TRAINING.event_weights["not_interested"] < 0
    assert weight("impression") == 0.0

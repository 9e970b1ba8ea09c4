"""Staged exploration: audiences grow with the evidence, duds retire, Thompson draws share slots."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fyp.config import FreshConfig, SelectorsConfig
from fyp.pipeline.contracts import Candidate
from fyp.selectors.basic import ReserveExploration
from fyp.selectors.exploration import (
    ExplorationPolicy,
    Phase,
    audience_rank,
    p_above,
)
from fyp.storage.roles import ItemStatsRecord

BAR = 0.3
CONFIG = SelectorsConfig()  # stages: 50 views with 20 % of viewers, then everyone up to 200


def _stats(views: int, engaged: int) -> ItemStatsRecord:
    return ItemStatsRecord(views=views, finishes=engaged)


def _region(views: int = 10_000, engaged: int = 3_000) -> Any:
    """A stand-in for the region's data: only the counters the bar is made from."""
    totals = ItemStatsRecord(views=views, finishes=engaged)
    return SimpleNamespace(stats=SimpleNamespace(totals=lambda: totals))


def test_the_posterior_probability_is_the_beta_tail() -> None:
    assert p_above(0, 0, 0.3) == pytest.approx(0.7)  # the uniform prior
    assert p_above(45, 50, 0.3) > 0.999
    assert p_above(2, 50, 0.3) < 0.001
    assert p_above(15, 50, 0.3) == pytest.approx(0.5, abs=0.1)


def test_an_item_moves_through_the_stages_by_its_numbers() -> None:
    policy = ExplorationPolicy(CONFIG)
    fresh = policy.standing(_stats(0, 0), BAR)
    assert (fresh.phase, fresh.stage, fresh.audience) == (Phase.EXPLORING, 0, 0.2)
    # At the first budget: promoted if clearly above the region's rate, held if unclear.
    good = policy.standing(_stats(50, 30), BAR)
    assert (good.phase, good.stage, good.audience) == (Phase.EXPLORING, 1, 1.0)
    unclear = policy.standing(_stats(50, 16), BAR)
    assert unclear.phase is Phase.HELD and unclear.audience == 0.0
    # A clear dud retires as soon as it has enough views to judge, before its budget.
    assert policy.standing(_stats(25, 0), BAR).phase is Phase.RETIRED
    assert policy.standing(_stats(10, 0), BAR).phase is Phase.EXPLORING
    # Past the last budget the item has graduated: no more exploration traffic.
    assert policy.standing(_stats(200, 120), BAR).phase is Phase.GRADUATED


@given(
    views=st.integers(0, 400),
    rate=st.floats(0, 1),
    bar=st.floats(0.01, 0.99),
)
def test_more_engagement_never_lowers_an_items_standing(
    views: int, rate: float, bar: float
) -> None:
    """Monotone in the evidence: with the same views, more engaged views never move an item
    from exploring to retired or lower its audience."""
    policy = ExplorationPolicy(CONFIG)
    engaged = int(rate * views)
    worse = policy.standing(_stats(views, engaged), bar)
    better = policy.standing(_stats(views, min(views, engaged + 1)), bar)
    order = {Phase.RETIRED: 0, Phase.HELD: 1, Phase.EXPLORING: 2, Phase.GRADUATED: 2}
    assert order[better.phase] >= order[worse.phase] or worse.phase is Phase.GRADUATED
    if worse.phase is Phase.EXPLORING and better.phase is Phase.EXPLORING:
        assert better.audience >= worse.audience


def test_audiences_are_stable_and_sized_by_their_share() -> None:
    ranks = [audience_rank("item-7", f"user-{u}") for u in range(20_000)]
    assert ranks == [audience_rank("item-7", f"user-{u}") for u in range(20_000)]
    share = sum(r < 0.2 for r in ranks) / len(ranks)
    assert share == pytest.approx(0.2, abs=0.01)
    # Another item draws another pool: the same viewers are not always the first to see new items.
    other = [audience_rank("item-8", f"user-{u}") < 0.2 for u in range(20_000)]
    both = sum(a and (r < 0.2) for a, r in zip(other, ranks, strict=True)) / len(ranks)
    assert both == pytest.approx(0.04, abs=0.01)


def test_only_the_items_pool_sees_it_in_the_first_stage(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    selector = ReserveExploration(CONFIG, FreshConfig())
    seen_by = 0
    for u in range(2000):
        query = make_query(5, user_id=f"user-{u}", data=_region())
        cands = [make_candidate(f"old{k}", f"c{k}", age_hours=500, score=10 - k) for k in range(8)]
        cands.append(make_candidate("new", "cn", age_hours=1, stats=_stats(10, 3)))
        out = selector.select(query, cands)[: query.n]
        seen_by += any(c.item_id == "new" and c.exploration for c in out)
    assert seen_by / 2000 == pytest.approx(0.2, abs=0.03)
    counters = selector.counters
    assert counters.pages == 2000 and counters.exploration_items == seen_by
    assert counters.share() == pytest.approx(seen_by / (2000 * 5))


def test_retired_and_held_items_get_no_slot(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    selector = ReserveExploration(CONFIG, FreshConfig())
    for u in range(300):
        query = make_query(5, user_id=f"user-{u}", data=_region())
        cands = [make_candidate(f"old{k}", f"c{k}", age_hours=500, score=10 - k) for k in range(8)]
        cands.append(make_candidate("dud", "cd", age_hours=1, stats=_stats(40, 0)))
        cands.append(make_candidate("held", "ch", age_hours=1, stats=_stats(50, 15)))
        out = selector.select(query, cands)[: query.n]
        assert not [c.item_id for c in out if c.item_id in ("dud", "held")]


def test_thompson_draws_give_the_promising_item_most_of_the_slots(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    # Everyone is in the first stage's audience here, so only the draws decide.
    config = SelectorsConfig(exploration_stages=[{"views": 100, "audience": 1.0}])
    selector = ReserveExploration(config, FreshConfig())
    wins: Counter[str] = Counter()
    for r in range(400):
        query = dataclasses.replace(make_query(5, data=_region()), request_id=f"req-{r}")
        cands = [make_candidate(f"old{k}", f"c{k}", age_hours=500, score=10 - k) for k in range(8)]
        cands.append(make_candidate("promising", "cp", age_hours=1, stats=_stats(12, 8)))
        cands.append(make_candidate("unsure", "cu", age_hours=1, stats=_stats(12, 3)))
        out = selector.select(query, cands)[: query.n]
        wins.update(c.item_id for c in out if c.exploration)
    assert sum(wins.values()) == 400
    assert wins["promising"] > 0.8 * 400
    assert wins["unsure"] > 0  # still explored now and then: it is not known to be worse

"""Selectors: each returns a subset of its input without duplicates, and keeps its own promise
(order by score, tag diversity, exploration slots, creator spacing, page size)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fyp.config import FreshConfig, FypConfig, SelectorsConfig, SourcesConfig
from fyp.pipeline.contracts import Candidate, FeedQuery
from fyp.pipeline.for_you import for_you_pipeline
from fyp.selectors.basic import (
    DiversifyTags,
    RankByScore,
    ReserveExploration,
    SpaceCreators,
    TakeN,
)

TAGS = ("cats", "dogs", "food", "music", "travel")
HOUR = 3600.0


@st.composite
def candidate_specs(draw: st.DrawFn, max_size: int = 40) -> list[dict[str, Any]]:
    """Specs of candidates with unique (shuffled) ids and random creators, tags, scores, ages.

    Per-candidate values come from one seeded ``random.Random`` (a single Hypothesis draw), which
    keeps hundreds of examples fast. Scores often tie (ties are broken by item id); ages are whole
    hours so the freshness boundary is exact in the test's own eligibility check.
    """
    size = draw(st.integers(0, max_size))
    n_creators = draw(st.integers(1, 8))
    rnd = draw(st.randoms(use_true_random=True))
    # As in a real catalog the best-scored items tend to be established (old) ones, so fresh
    # items often sit below the page and exploration has work to do.
    stale_above = draw(st.floats(-5.0, 5.0))
    ids = list(range(size))
    rnd.shuffle(ids)
    specs = []
    for k in range(size):
        score = rnd.choice([round(rnd.uniform(-5, 5), 3), float(rnd.randint(-2, 2))])
        specs.append(
            {
                "item_id": f"i{ids[k]:03d}",
                "creator_id": f"c{rnd.randrange(n_creators)}",
                "tags": rnd.sample(TAGS, rnd.randint(0, 3)),
                "score": score,
                "age_hours": rnd.randint(0, 150) + (1000 if score > stale_above else 0),
                "views": rnd.choice([0, rnd.randint(0, 50), rnd.randint(0, 400)]),
            }
        )
    return specs


selector_configs = st.builds(
    SelectorsConfig,
    creator_gap=st.integers(0, 3),
    tag_repeat_penalty=st.floats(0.0, 2.0),
    exploration_slots=st.integers(0, 3),
    exploration_max_views=st.sampled_from([200, 0, 10, 50, 300]),
    exploration_position=st.integers(0, 12),
    # The plain rule (fresh, under the view cap); staged pools: tests/selectors/test_exploration.py
    exploration_pools=st.just(False),
)
fresh_configs = st.builds(FreshConfig, max_age_hours=st.sampled_from([72.0, 1.0, 24.0, 150.0]))
page_sizes = st.integers(1, 30)


def ids(candidates: Sequence[Candidate]) -> list[str]:
    return [c.item_id for c in candidates]


def assert_subset_without_duplicates(out: Sequence[Candidate], inp: Sequence[Candidate]) -> None:
    assert len(set(ids(out))) == len(out), "duplicate candidates in selector output"
    by_id = {c.item_id: c for c in inp}
    for cand in out:
        assert by_id.get(cand.item_id) is cand, f"{cand.item_id} was not in the input"


def assert_creator_gap(out: Sequence[Candidate], gap: int, inp: Sequence[Candidate]) -> None:
    """No creator repeats within ``gap`` positions unless it had to: every candidate of ``inp``
    not yet placed was by a creator of that window (the page is filled rather than cut)."""
    for i, cand in enumerate(out):
        window = {c.creator_id for c in out[max(0, i - gap) : i]}
        if cand.creator_id in window:
            placed = set(ids(out[:i]))
            left = {c.creator_id for c in inp if c.item_id not in placed}
            assert left <= window, (
                f"creator {cand.creator_id} repeats within {gap} positions at {i} while "
                f"{sorted(left - window)} could go there: {ids(out)}"
            )


def is_eligible(cand: Candidate, query: FeedQuery, max_views: int, fresh: FreshConfig) -> bool:
    assert cand.item is not None
    views = cand.stats.views if cand.stats else 0
    age = query.now - cand.item.created_at
    return age <= fresh.max_age_hours * HOUR and views < max_views


# ---- each selector on its own ------------------------------------------------------------------


@given(specs=candidate_specs(), n=page_sizes)
def test_rank_by_score_orders_by_score_then_item_id(
    specs: list[dict[str, Any]], n: int, make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cands = [make_candidate(**s) for s in specs]
    out = RankByScore().select(make_query(n), cands)
    assert_subset_without_duplicates(out, cands)
    assert len(out) == len(cands)
    keys = [(-c.score, c.item_id) for c in out]
    assert keys == sorted(keys)


def greedy_diversify(cands: list[Candidate], penalty: float, n: int) -> list[str]:
    """Reference: the plain O(n^2) greedy the lazy heap must reproduce (ties: earlier first)."""
    window = min(len(cands), max(n * 3, n + 20))
    remaining = list(enumerate(cands[:window]))
    used: Counter[str] = Counter()
    out: list[str] = []
    while remaining:
        pos, best = max(
            remaining,
            key=lambda p: (p[1].score - penalty * sum(used[t] for t in p[1].tags), -p[0]),
        )
        remaining.remove((pos, best))
        out.append(best.item_id)
        used.update(best.tags)
    return out + ids(cands[window:])


@given(specs=candidate_specs(), n=page_sizes, penalty=st.floats(0.0, 2.0))
def test_diversify_tags_matches_the_greedy_reference(
    specs: list[dict[str, Any]],
    n: int,
    penalty: float,
    make_candidate: Callable[..., Candidate],
    make_query: Any,
) -> None:
    cands = RankByScore().select(make_query(n), [make_candidate(**s) for s in specs])
    selector = DiversifyTags(SelectorsConfig(tag_repeat_penalty=penalty))
    out = selector.select(make_query(n), cands)
    assert_subset_without_duplicates(out, cands)
    assert sorted(ids(out)) == sorted(ids(cands))
    if penalty > 0 and len(cands) >= 2:
        assert ids(out) == greedy_diversify(cands, penalty, n)
    else:
        assert ids(out) == ids(cands)


def test_diversify_tags_moves_a_second_topic_up(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cands = [
        make_candidate("a", tags=["cats"], score=1.0),
        make_candidate("b", tags=["cats"], score=0.9),
        make_candidate("c", tags=["dogs"], score=0.8),
    ]
    out = DiversifyTags(SelectorsConfig(tag_repeat_penalty=0.25)).select(make_query(3), cands)
    assert ids(out) == ["a", "c", "b"]


@given(
    specs=candidate_specs(),
    n=page_sizes,
    config=selector_configs,
    fresh=fresh_configs,
)
def test_reserve_exploration_promotes_exactly_the_missing_eligible_items(
    specs: list[dict[str, Any]],
    n: int,
    config: SelectorsConfig,
    fresh: FreshConfig,
    make_candidate: Callable[..., Candidate],
    make_query: Any,
) -> None:
    query = make_query(n)
    cands = RankByScore().select(query, [make_candidate(**s) for s in specs])
    eligible = [is_eligible(c, query, config.exploration_max_views, fresh) for c in cands]
    on_page = sum(eligible[:n])
    below = [c for c, ok in zip(cands[n:], eligible[n:], strict=True) if ok]
    needed = max(0, config.exploration_slots - on_page) if config.exploration_slots else 0
    expected = below[:needed]

    out = ReserveExploration(config, fresh).select(query, cands)

    assert_subset_without_duplicates(out, cands)
    assert sorted(ids(out)) == sorted(ids(cands))
    promoted = [c for c in out if c.exploration]
    assert ids(promoted) == ids(expected)
    # Everything that was not promoted keeps its relative order.
    promoted_ids = set(ids(promoted))
    assert [c for c in out if c.item_id not in promoted_ids] == [
        c for c in cands if c.item_id not in promoted_ids
    ]


@st.composite
def pages_without_exploration(draw: st.DrawFn) -> tuple[int, int, list[dict[str, Any]]]:
    """(n, position, specs): n stale items on the page, at least one fresh one below it."""
    n = draw(page_sizes)
    position = draw(st.integers(0, n - 1))
    specs = draw(candidate_specs())
    page = [{**s, "age_hours": 1000} for s in specs[:n]]
    page += [{"item_id": f"p{k}", "age_hours": 1000} for k in range(n - len(page))]
    below = specs[n:]
    fresh = {"item_id": "fresh", "creator_id": "c0", "age_hours": 0, "views": 0}
    below.insert(draw(st.integers(0, len(below))), fresh)
    return n, position, page + below


@given(
    case=pages_without_exploration(),
    max_views=st.integers(1, 300),
    fresh=fresh_configs,
)
def test_reserve_exploration_places_the_promoted_item_on_the_page(
    case: tuple[int, int, list[dict[str, Any]]],
    max_views: int,
    fresh: FreshConfig,
    make_candidate: Callable[..., Candidate],
    make_query: Any,
) -> None:
    # One slot at a position inside the page. With several slots, or a position past the end of
    # the page, promoted items end up below the page: see tests/_bugs_found.py.
    n, position, specs = case
    config = SelectorsConfig(
        exploration_pools=False,
        exploration_slots=1,
        exploration_position=position,
        exploration_max_views=max_views,
    )
    query = make_query(n)
    cands = [make_candidate(**s) for s in specs]
    expected = next(c for c in cands[n:] if is_eligible(c, query, max_views, fresh))

    out = ReserveExploration(config, fresh).select(query, cands)

    assert [c for c in out if c.exploration] == [expected]
    assert out.index(expected) == position
    assert not any(is_eligible(c, query, max_views, fresh) for c in out[:n] if c is not expected)


def test_reserve_exploration_moves_a_fresh_item_to_the_preferred_position(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    old = [make_candidate(f"old{i}", f"c{i}", age_hours=500, score=10 - i) for i in range(10)]
    new = make_candidate("new", "c99", age_hours=1, views=3, score=-1.0)
    config = SelectorsConfig(exploration_pools=False, exploration_slots=1, exploration_position=3)
    out = ReserveExploration(config, FreshConfig()).select(make_query(10), [*old, new])
    assert ids(out)[:5] == ["old0", "old1", "old2", "new", "old3"]
    assert new.exploration
    assert not any(c.exploration for c in old)


def test_reserve_exploration_leaves_a_page_that_already_explores_alone(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cands = [make_candidate(f"i{i}", age_hours=500, score=-i) for i in range(5)]
    cands.insert(1, make_candidate("fresh_on_page", age_hours=1, score=0.5))
    cands.append(make_candidate("fresh_below", age_hours=1))
    out = ReserveExploration(
        SelectorsConfig(exploration_pools=False, exploration_slots=1), FreshConfig()
    ).select(make_query(3), cands)
    assert out == cands
    assert not any(c.exploration for c in out)


def test_reserve_exploration_ignores_items_with_many_views(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cands = [make_candidate(f"i{i}", age_hours=500) for i in range(3)]
    cands.append(make_candidate("popular_new", age_hours=1, views=10_000))
    config = SelectorsConfig(
        exploration_pools=False, exploration_slots=1, exploration_max_views=200
    )
    out = ReserveExploration(config, FreshConfig()).select(make_query(2), cands)
    assert out == cands
    assert not any(c.exploration for c in out)


@given(specs=candidate_specs(), n=page_sizes, gap=st.integers(0, 3))
def test_space_creators_never_repeats_a_creator_within_the_gap(
    specs: list[dict[str, Any]],
    n: int,
    gap: int,
    make_candidate: Callable[..., Candidate],
    make_query: Any,
) -> None:
    cands = [make_candidate(**s) for s in specs]
    out = SpaceCreators(SelectorsConfig(creator_gap=gap)).select(make_query(n), cands)
    assert_subset_without_duplicates(out, cands)
    assert len(out) == min(n, len(cands))
    assert_creator_gap(out, gap, cands)
    if cands:
        assert out[0] is cands[0]
    if gap == 0:
        assert out == cands[:n]


def test_space_creators_keeps_order_when_creators_alternate(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cands = [make_candidate(f"i{i}", f"c{i % 3}") for i in range(9)]
    out = SpaceCreators(SelectorsConfig(creator_gap=2)).select(make_query(9), cands)
    assert out == cands


def test_space_creators_defers_a_back_to_back_creator(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cands = [make_candidate("a1", "a"), make_candidate("a2", "a"), make_candidate("b1", "b")]
    out = SpaceCreators(SelectorsConfig(creator_gap=1)).select(make_query(3), cands)
    assert ids(out) == ["a1", "b1", "a2"]


def test_space_creators_fills_the_page_when_one_creator_is_left(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    # Was ["a0"]: the selector dropped what it could not space, and a catalog of one creator
    # gave pages of one item.
    cands = [make_candidate(f"a{i}", "a") for i in range(4)]
    out = SpaceCreators(SelectorsConfig(creator_gap=1)).select(make_query(4), cands)
    assert ids(out) == ["a0", "a1", "a2", "a3"]


def test_space_creators_bends_the_gap_for_the_creator_placed_longest_ago(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cands = [make_candidate("a0", "a"), make_candidate("b0", "b")]
    cands += [make_candidate("b1", "b"), make_candidate("a1", "a")]
    out = SpaceCreators(SelectorsConfig(creator_gap=2)).select(make_query(4), cands)
    # After a0, b0 both creators are within the gap; a was placed longest ago, so a1 comes
    # next (two apart from a0) and b1 after it, rather than b1 straight after b0.
    assert ids(out) == ["a0", "b0", "a1", "b1"]


@given(specs=candidate_specs(), n=page_sizes)
def test_take_n_returns_the_first_n(
    specs: list[dict[str, Any]], n: int, make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cands = [make_candidate(**s) for s in specs]
    out = TakeN().select(make_query(n), cands)
    assert out == cands[:n]
    assert len(out) <= n


# ---- the For You chain ---------------------------------------------------------------------------


def for_you_selectors(config: SelectorsConfig, fresh: FreshConfig) -> list[Any]:
    full = FypConfig(selectors=config, sources=SourcesConfig(fresh=fresh))
    return list(for_you_pipeline(full).selectors)


def test_for_you_lists_the_selectors_in_the_documented_order() -> None:
    names = [s.name for s in for_you_selectors(SelectorsConfig(), FreshConfig())]
    assert names == [
        "rank_by_score",
        "diversify_tags",
        "reserve_exploration",
        "space_creators",
        "take_n",
    ]


@given(specs=candidate_specs(), n=page_sizes, config=selector_configs, fresh=fresh_configs)
def test_each_for_you_selector_returns_a_subset_without_duplicates(
    specs: list[dict[str, Any]],
    n: int,
    config: SelectorsConfig,
    fresh: FreshConfig,
    make_candidate: Callable[..., Candidate],
    make_query: Any,
) -> None:
    for selector in for_you_selectors(config, fresh):
        cands = [make_candidate(**s) for s in specs]
        out = selector.select(make_query(n), cands)
        assert_subset_without_duplicates(out, cands)


@settings(max_examples=500)
@given(specs=candidate_specs(), n=page_sizes, config=selector_configs, fresh=fresh_configs)
def test_for_you_selector_chain_keeps_every_invariant(
    specs: list[dict[str, Any]],
    n: int,
    config: SelectorsConfig,
    fresh: FreshConfig,
    make_candidate: Callable[..., Candidate],
    make_query: Any,
) -> None:
    query = make_query(n)
    cands = [make_candidate(**s) for s in specs]
    out = cands
    for selector in for_you_selectors(config, fresh):
        out = selector.select(query, out)

    assert_subset_without_duplicates(out, cands)
    assert len(out) == min(n, len(cands))
    assert_creator_gap(out, config.creator_gap, cands)
    for cand in out:
        if cand.exploration:
            assert is_eligible(cand, query, config.exploration_max_views, fresh)

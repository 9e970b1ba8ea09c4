"""Filters: kept + removed partition the input in order, and each removal carries its reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fyp.engine import Engine
from fyp.filters.basic import DropNotInterested, DropSeen, DropUnavailable
from fyp.governance.policy import Principal
from fyp.pipeline.contracts import Candidate, FilterResult
from fyp.storage.roles import ServedItem, UserStateSnapshot

REGIONS = ("us", "eu", "jp")


@st.composite
def candidate_specs(draw: st.DrawFn) -> list[dict[str, Any]]:
    size = draw(st.integers(0, 30))
    rnd = draw(st.randoms(use_true_random=True))
    return [
        {
            "item_id": f"i{k:02d}",
            "creator_id": f"c{rnd.randrange(5)}",
            "regions": rnd.sample(REGIONS, rnd.randint(0, 2)),
            "with_item": rnd.random() > 0.05,
        }
        for k in range(size)
    ]


def assert_partition(inp: Sequence[Candidate], result: FilterResult) -> None:
    """Every input candidate is either kept or removed, once, and both lists keep input order."""
    removed = [cand for cand, _ in result.removed]
    kept_ids = {id(c) for c in result.kept}
    removed_ids = {id(c) for c in removed}
    assert not kept_ids & removed_ids
    assert kept_ids | removed_ids == {id(c) for c in inp}
    assert result.kept == [c for c in inp if id(c) in kept_ids]
    assert removed == [c for c in inp if id(c) in removed_ids]
    assert len(result.kept) + len(removed) == len(inp)


class FakeState:
    def __init__(self, seen: set[str]) -> None:
        self.seen = seen
        self.asked: list[list[str]] = []

    def seen_among(self, user_id: str, item_ids: Sequence[str]) -> set[str]:
        self.asked.append(list(item_ids))
        return self.seen & set(item_ids)


@given(specs=candidate_specs(), region=st.sampled_from(REGIONS))
def test_drop_unavailable_keeps_exactly_the_items_licensed_in_the_region(
    specs: list[dict[str, Any]],
    region: str,
    make_candidate: Callable[..., Candidate],
    make_query: Any,
) -> None:
    cands = [make_candidate(**s) for s in specs]
    result = DropUnavailable().apply(make_query(region=region), cands)
    assert_partition(cands, result)
    for cand in result.kept:
        assert cand.item is not None
        assert not cand.item.regions or region in cand.item.regions
    for cand, reason in result.removed:
        assert reason == "unavailable_in_region"
        assert cand.item is None or (cand.item.regions and region not in cand.item.regions)


@given(specs=candidate_specs(), seen=st.sets(st.integers(0, 35)))
def test_drop_seen_removes_exactly_the_seen_items(
    specs: list[dict[str, Any]],
    seen: set[int],
    make_candidate: Callable[..., Candidate],
    make_query: Any,
) -> None:
    cands = [make_candidate(**s) for s in specs]
    seen_ids = {f"i{k:02d}" for k in seen}
    state = FakeState(seen_ids)
    result = DropSeen().apply(make_query(data=SimpleNamespace(state=state)), cands)
    assert_partition(cands, result)
    assert {c.item_id for c in result.kept}.isdisjoint(seen_ids)
    assert all(reason == "already_seen" for _, reason in result.removed)
    assert {c.item_id for c, _ in result.removed} == seen_ids & {c.item_id for c in cands}
    assert len(state.asked) == 1, "seen_among is one batched read"


@given(
    specs=candidate_specs(),
    hidden=st.sets(st.integers(0, 35)),
    muted=st.sets(st.integers(0, 6)),
)
def test_drop_not_interested_removes_hidden_items_and_muted_creators(
    specs: list[dict[str, Any]],
    hidden: set[int],
    muted: set[int],
    make_candidate: Callable[..., Candidate],
    make_query: Any,
) -> None:
    cands = [{**s, "with_item": True} for s in specs]
    cands = [make_candidate(**s) for s in cands]
    hidden_ids = frozenset(f"i{k:02d}" for k in hidden)
    muted_ids = frozenset(f"c{k}" for k in muted)
    state = UserStateSnapshot(as_of=0.0, hidden_items=hidden_ids, muted_creators=muted_ids)
    result = DropNotInterested().apply(make_query(state=state), cands)
    assert_partition(cands, result)
    for cand in result.kept:
        assert cand.item_id not in hidden_ids
        assert cand.creator_id not in muted_ids
    for cand, reason in result.removed:
        if cand.item_id in hidden_ids:
            assert reason == "not_interested_item"
        else:
            assert reason == "not_interested_creator"
            assert cand.creator_id in muted_ids


def test_drop_seen_reads_the_regions_seen_set(
    engine: Engine,
    make_item: Any,
    make_user: Any,
    make_event: Any,
    make_candidate: Any,
    make_query: Any,
    now: float,
) -> None:
    engine.put_items([make_item(f"i{k}") for k in range(6)])
    engine.put_users([make_user("u1"), make_user("u2")])
    engine.ingest([make_event("u1", "i0", "play", watch_ms=5000)])
    handle = engine.gate.open("us", Principal.service("us"), "serve_feed")
    handle.state.record_served("u1", "req-1", "untrained", [ServedItem("i3", 0, 1.0, [])], now)
    cands = [make_candidate(f"i{k}") for k in range(6)]

    result = DropSeen().apply(make_query(data=handle, user_id="u1"), cands)

    assert_partition(cands, result)
    assert [c.item_id for c, _ in result.removed] == ["i0", "i3"]
    # Another viewer's history is not this viewer's.
    other = DropSeen().apply(make_query(data=handle, user_id="u2"), cands)
    assert other.kept == cands

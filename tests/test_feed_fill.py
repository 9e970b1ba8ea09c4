"""Full pages: a feed page holds ``min(n, eligible unseen items)`` items, whatever the candidate
sources found, with personalization on or off; no item repeats until the eligible ones run out.

Issue 14, defect 9: forty items, a viewer who watched eight, personalization off -> a page of 0
(only the followed creators and trending fed that feed, and trending held only the eight); with
personalization on a new viewer of a 4-item catalog got 2, then 1, then 0 items for n=5.

"Eligible" is computed here from the rules the filters state, independently of them: available in
the viewer's region, never touched by the viewer (every event marks an item seen, and served items
are seen), not marked not-interested (which also mutes its creator for a week), no blocked tag
(case-insensitive, without ``#``), no keyword filter as a whole word of the caption or a tag.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fyp.config import load_config
from fyp.engine import Engine
from fyp.pipeline.contracts import FeedResult
from fyp.pipeline.trace import StepRecord
from fyp.sources.more_from_catalog import HINT_TTL_S

NOW = 1_700_000_000.0  # conftest's fixed instant: the engine's clock below starts there
WORDS = ("cat", "dog", "food", "music", "travel", "news", "beach")
TAGS = ("cats", "dogs", "cooking", "music", "sports")
REGIONS = ((), (), ("us",), ("eu",), ("us", "eu"))
VIEWER = "viewer"


@dataclass
class ItemSpec:
    item_id: str
    creator_id: str
    age_hours: float
    tags: list[str]
    caption: str
    regions: tuple[str, ...]


@dataclass
class World:
    items: list[ItemSpec]
    region: str
    events: list[tuple[str, str, str, float]]
    """``(user, item, type, ts)``: the viewer's own events, and other viewers' (which make items
    trend in their regions)."""
    personalized: bool
    keyword_filters: list[str]
    blocked_tags: list[str]
    page_sizes: list[int]
    late_items: list[ItemSpec]
    """Published after the first page, some dated before items the viewer has already passed."""


@st.composite
def worlds(draw: st.DrawFn) -> World:
    # One seeded Random for the per-item values keeps each example a single quick draw.
    rnd = draw(st.randoms(use_true_random=True))
    n_items = draw(st.integers(0, 24))
    n_creators = draw(st.integers(1, 5))
    items = [
        ItemSpec(
            f"i{k:02d}",
            f"c{rnd.randrange(n_creators)}",
            # Fresh, a few days old, or far older than the fresh source looks.
            rnd.choice([0.5, rnd.uniform(1, 60), rnd.uniform(100, 5000)]),
            rnd.sample(TAGS, rnd.randint(0, 2)),
            " ".join(rnd.sample(WORDS, rnd.randint(1, 3))),
            rnd.choice(REGIONS),
        )
        for k in range(n_items)
    ]
    late_items = [
        ItemSpec(
            f"late{k}",
            f"c{rnd.randrange(n_creators)}",
            rnd.choice([0.1, rnd.uniform(1, 5000)]),
            rnd.sample(TAGS, rnd.randint(0, 2)),
            " ".join(rnd.sample(WORDS, rnd.randint(1, 3))),
            rnd.choice(REGIONS),
        )
        for k in range(draw(st.integers(0, 3)))
    ]
    ids = [it.item_id for it in items]

    def some(share: float) -> list[str]:
        return [i for i in ids if rnd.random() < share]

    events: list[tuple[str, str, str, float]] = []
    seen_share = draw(st.sampled_from([0.0, 0.2, 0.5, 0.9]))
    for item_id in some(seen_share):
        kind = rnd.choice(["play", "finish", "like", "share", "skip"])
        events.append((VIEWER, item_id, kind, NOW - 60))
    for item_id in some(rnd.random() * 0.15):
        events.append((VIEWER, item_id, "not_interested", NOW - 30))
    for item_id in some(0.1):
        events.append((VIEWER, item_id, "follow", NOW - 20))
    for other in ("other-us", "other-eu"):
        for item_id in some(0.3):
            events.append((other, item_id, "like", NOW - 3600 * rnd.random()))
    keywords = draw(st.lists(st.sampled_from([*WORDS, "Cat", "MUSIC"]), max_size=2, unique=True))
    blocked = draw(st.lists(st.sampled_from([*TAGS, "#Dogs", "COOKING"]), max_size=2, unique=True))
    return World(
        items=items,
        region=draw(st.sampled_from(["us", "eu"])),
        events=events,
        personalized=draw(st.booleans()),
        keyword_filters=keywords,
        blocked_tags=blocked,
        page_sizes=draw(st.lists(st.integers(1, 10), min_size=1, max_size=4)),
        late_items=late_items,
    )


def eligible_items(world: World, items: list[ItemSpec]) -> set[str]:
    """Which of ``items`` the viewer may still be shown, by the filters' stated rules."""
    creator = {it.item_id: it.creator_id for it in world.items + world.late_items}
    own = [(item_id, kind) for user, item_id, kind, _ in world.events if user == VIEWER]
    touched = {item_id for item_id, _ in own}
    hidden = {item_id for item_id, kind in own if kind in ("not_interested", "report")}
    muted = {creator[i] for i in hidden}
    blocked = {t.lower().lstrip("#") for t in world.blocked_tags}
    keywords = {k.lower() for k in world.keyword_filters}
    out = set()
    for it in items:
        tags = {t.lower() for t in it.tags}
        if (
            (not it.regions or world.region in it.regions)
            and it.item_id not in touched
            and it.item_id not in hidden
            and it.creator_id not in muted
            and not blocked & tags
            and not keywords & (set(it.caption.lower().split()) | tags)
        ):
            out.add(it.item_id)
    return out


@pytest.fixture(scope="module")
def data_dirs() -> Iterator[Callable[[], Path]]:
    """Fresh data directories for Hypothesis examples (which cannot use ``tmp_path``)."""
    with tempfile.TemporaryDirectory() as root:
        count = iter(range(1_000_000))
        yield lambda: Path(root) / f"world-{next(count)}"


def put(engine: Engine, items: list[ItemSpec], make: dict[str, Callable[..., Any]]) -> None:
    engine.put_items(
        [
            make["item"](
                it.item_id,
                it.creator_id,
                age_hours=it.age_hours,
                tags=it.tags,
                caption=it.caption,
                regions=it.regions,
            )
            for it in items
        ]
    )


def build(world: World, data_dir: Path, make: dict[str, Callable[..., Any]]) -> Engine:
    engine = Engine(load_config(data_dir), clock=lambda: NOW)
    put(engine, world.items, make)
    users = [(VIEWER, world.region), ("other-us", "us"), ("other-eu", "eu")]
    engine.put_users([make["user"](user_id, region) for user_id, region in users])
    if world.events:
        result = engine.ingest(
            [
                make["event"](user, item_id, kind, ts=ts, watch_ms=20_000)
                for user, item_id, kind, ts in world.events
            ]
        )
        assert result.errors == []
    engine.rights.put_controls(
        VIEWER,
        personalized=world.personalized,
        keyword_filters=world.keyword_filters,
        blocked_tags=world.blocked_tags,
    )
    return engine


@settings(max_examples=40)
@given(world=worlds())
def test_every_page_holds_min_n_and_the_eligible_items_until_they_run_out(
    world: World,
    data_dirs: Callable[[], Path],
    make_item: Callable[..., Any],
    make_user: Callable[..., Any],
    make_event: Callable[..., Any],
) -> None:
    make = {"item": make_item, "user": make_user, "event": make_event}
    engine = build(world, data_dirs(), make)
    try:
        left = eligible_items(world, world.items)
        sizes = iter(world.page_sizes * (len(world.items) + len(world.late_items) + 2))
        pages = 0
        while True:
            n = next(sizes)
            page = [item.item_id for item in engine.feed(VIEWER, n).items]
            assert len(page) == min(n, len(left)), (n, sorted(left), page)
            assert set(page) <= left, f"served ineligible or repeated items {set(page) - left}"
            assert len(set(page)) == len(page)
            left -= set(page)
            pages += 1
            if pages == 1 and world.late_items:
                # New uploads (some dated into what the viewer has passed) join the eligible.
                put(engine, world.late_items, make)
                left |= eligible_items(world, world.late_items)
            elif not page:
                break
        assert not left
    finally:
        engine.close()


# ---- the reported cases, and what the backfill tells and records --------------------------------


def backfill_step(result: FeedResult) -> StepRecord:
    [step] = [s for s in result.trace.steps if s.stage == "backfill"]
    return step


def reopen(engine: Engine, clock: Callable[[], float], **overrides: Any) -> Engine:
    """The same data directory served with other settings."""
    engine.close()
    return Engine(load_config(engine.config.data_dir, **overrides), clock=clock)


def test_non_personalized_feed_of_a_viewer_who_watched_the_trending_items_is_full(
    engine: Engine, make_item: Any, make_user: Any, make_event: Any
) -> None:
    engine.put_items([make_item(f"i{k:02d}", f"c{k % 5}", age_hours=100 + k) for k in range(40)])
    engine.put_users([make_user("u1")])
    engine.ingest([make_event("u1", f"i{k:02d}", "finish", watch_ms=30_000) for k in range(8)])
    engine.rights.put_controls("u1", personalized=False, keyword_filters=[], blocked_tags=[])

    served: list[str] = []
    sizes = []
    for _ in range(5):
        result = engine.feed("u1", 10)
        sizes.append(len(result.items))
        served += [item.item_id for item in result.items]
        for item in result.items:
            assert [r.code for r in item.reasons] == ["more_from_catalog"]
        # Still non-personalized: no source of it reads anything inferred about the viewer.
        used = {s.component for s in result.trace.steps if s.stage in ("sources", "backfill")}
        assert used == {"following", "trending", "hydrate_candidates", "more_from_catalog"}
    assert sizes == [10, 10, 10, 2, 0]  # was [0, ...]
    # Every unseen item once, newest first (the eight trending ones were seen).
    assert served == [f"i{k:02d}" for k in range(8, 40)]


def test_backfill_comes_popular_in_the_region_first_then_newest(
    engine: Engine, clock: Callable[[], float], make_item: Any, make_user: Any, make_event: Any
) -> None:
    engine.put_items([make_item(f"i{k:02d}", f"c{k}", age_hours=100 + k) for k in range(20)])
    engine.put_users([make_user("u1"), make_user("fan")])
    # i17 and i15 are liked in the region; the trending source (k=1 here) takes only the top one.
    engine.ingest(
        [
            make_event("fan", "i17", "like"),
            make_event("fan", "i17", "share"),
            make_event("fan", "i15", "like"),
        ]
    )
    engine = reopen(engine, clock, sources={"trending": {"k": 1}})
    try:
        engine.rights.put_controls("u1", personalized=False, keyword_filters=[], blocked_tags=[])
        result = engine.feed("u1", 4)
        assert [i.item_id for i in result.items] == ["i17", "i15", "i00", "i01"]
        assert [r.code for r in result.items[0].reasons] == ["trending_in_region"]
        assert result.items[1].reasons[0].text == (
            "More from the catalog: popular in your region (us), and new to you, to fill your feed."
        )
        assert "among the newest in your region (us)" in result.items[2].reasons[0].text
    finally:
        engine.close()


def test_a_new_viewer_of_a_tiny_catalog_gets_full_pages(
    engine: Engine, make_item: Any, make_user: Any
) -> None:
    # One creator: the creator-spacing selector used to drop what it could not space.
    engine.put_items([make_item(f"i{k}", "c0", age_hours=1) for k in range(4)])
    engine.put_users([make_user("u1")])
    assert [len(engine.feed("u1", 5).items) for _ in range(3)] == [4, 0, 0]  # was [1, 1, 1]


def test_backfill_is_recorded_and_idle_when_the_sources_fill_the_page(
    engine: Engine, clock: Callable[[], float], make_item: Any, make_user: Any, make_event: Any
) -> None:
    engine.put_items([make_item(f"i{k:02d}", f"c{k}", age_hours=1 + k / 100) for k in range(30)])
    engine.put_users([make_user("u1"), make_user("u2")])
    engine.ingest([make_event("u2", f"i{k:02d}", "skip") for k in range(5)])
    idle = backfill_step(engine.feed("u1", 5))
    assert idle.note == "not needed: the filtered candidates fill the page"
    assert idle.candidates_in == idle.candidates_out
    # The fresh source bounded to its 8 newest items, 5 of them seen: the page is short by 2;
    # the backfill fills it (up to twice the page) and the trace says what it read.
    engine = reopen(engine, clock, sources={"fresh": {"k": 8}})
    try:
        step = backfill_step(engine.feed("u2", 5))
        assert (step.candidates_in, step.candidates_out) == (3, 10)
        assert step.note == (
            "page short by 2 after the filters; read 30 catalog rows newest first, to its end; "
            "offered 30; added 7"
        )
    finally:
        engine.close()


def test_the_walk_passes_a_long_run_of_seen_items_in_few_steps_within_its_bound(
    engine: Engine,
    clock: Callable[[], float],
    make_item: Any,
    make_user: Any,
    make_event: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine.put_items([make_item(f"i{k:04d}", f"c{k % 7}", age_hours=200 + k) for k in range(3000)])
    engine.put_users([make_user("u1")])
    # The viewer has seen the newest 2,500: the walk must get past them.
    engine.ingest([make_event("u1", f"i{k:04d}", "skip") for k in range(2500)])
    engine.rights.put_controls("u1", personalized=False, keyword_filters=[], blocked_tags=[])
    steps: list[int] = []
    scan = engine.catalog.scan_newest

    def counted(region: str, after: Any, limit: int) -> Any:
        steps.append(limit)
        return scan(region, after, limit)

    monkeypatch.setattr(engine.catalog, "scan_newest", counted)
    result = engine.feed("u1", 10)
    assert [i.item_id for i in result.items] == [f"i{k:04d}" for k in range(2500, 2510)]
    # Doubling steps: a handful of round trips, reading at most about twice what it passed.
    assert len(steps) <= 7
    assert sum(steps) <= 2 * 2520
    assert backfill_step(result).removed == {"already_seen": 2500}
    # With a bound below the seen run, the backfill stops there and the trace says so.
    bounded = reopen(engine, clock, sources={"more_from_catalog": {"max_examined": 1000}})
    try:
        result = bounded.feed("u1", 10)
        assert result.items == ()
        note = backfill_step(result).note
        assert note is not None and "stopped at the bound of 1000 entries examined" in note
    finally:
        bounded.close()


def test_switching_the_backfill_off_leaves_the_page_to_the_sources(
    engine: Engine, clock: Callable[[], float], make_item: Any, make_user: Any
) -> None:
    engine.put_items([make_item(f"i{k:02d}", f"c{k}", age_hours=500) for k in range(10)])
    engine.put_users([make_user("u1")])
    engine = reopen(engine, clock, sources={"more_from_catalog": {"enabled": False}})
    try:
        result = engine.feed("u1", 5)
        assert result.items == ()
        assert not [s for s in result.trace.steps if s.stage == "backfill"]
    finally:
        engine.close()


def test_backfill_candidates_go_through_the_viewers_filters(
    engine: Engine, make_item: Any, make_user: Any
) -> None:
    captions = ["my cat sleeps" if k % 3 == 0 else "a dog runs" for k in range(20)]
    engine.put_items(
        [
            make_item(f"i{k:02d}", f"c{k % 4}", age_hours=300, caption=c)
            for k, c in enumerate(captions)
        ]
    )
    engine.put_users([make_user("u1")])
    engine.rights.put_controls("u1", personalized=True, keyword_filters=["CAT"], blocked_tags=[])
    served = [i.item_id for _ in range(6) for i in engine.feed("u1", 4).items]
    assert sorted(served) == [f"i{k:02d}" for k in range(20) if k % 3 != 0]


def test_a_heavy_viewers_next_walk_resumes_past_what_they_have_seen(
    engine: Engine,
    make_item: Any,
    make_user: Any,
    make_event: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine.put_items([make_item(f"i{k:04d}", f"c{k % 7}", age_hours=200 + k) for k in range(3000)])
    engine.put_users([make_user("u1")])
    engine.ingest([make_event("u1", f"i{k:04d}", "skip") for k in range(2000)])
    engine.rights.put_controls("u1", personalized=False, keyword_filters=[], blocked_tags=[])
    rows: list[int] = []
    scan = engine.catalog.scan_newest

    def counted(region: str, after: Any, limit: int) -> Any:
        page = scan(region, after, limit)
        rows.append(page.examined)
        return page

    monkeypatch.setattr(engine.catalog, "scan_newest", counted)
    served: list[str] = []
    for request in range(5):
        rows.clear()
        served += [i.item_id for i in engine.feed("u1", 10).items]
        if request == 0:
            assert sum(rows) >= 2000  # the first walk gets past the 2,000 seen
        else:
            assert sum(rows) <= 400, rows  # the next ones start where that one found items
    assert served == [f"i{k:04d}" for k in range(2000, 2050)]


def test_a_stale_resume_hint_costs_order_never_items(
    engine: Engine, make_item: Any, make_user: Any, make_event: Any
) -> None:
    engine.put_items([make_item(f"i{k:03d}", f"c{k % 7}", age_hours=200 + k) for k in range(300)])
    engine.put_users([make_user("u1")])
    engine.ingest([make_event("u1", f"i{k:03d}", "skip") for k in range(250)])
    engine.rights.put_controls("u1", personalized=False, keyword_filters=[], blocked_tags=[])
    first = [i.item_id for i in engine.feed("u1", 10).items]
    assert first == [f"i{k:03d}" for k in range(250, 260)]
    # An item dated into the stretch the viewer's hint skips (an import of an older video).
    engine.put_items([make_item("imported", "c9", age_hours=200 + 100.5)])
    served = first + [i.item_id for _ in range(6) for i in engine.feed("u1", 10).items]
    assert sorted(served) == sorted([f"i{k:03d}" for k in range(250, 300)] + ["imported"])
    assert engine.feed("u1", 10).items == ()


def test_resume_hints_expire_and_go_with_the_viewers_erasure(
    engine: Engine, clock: Any, make_item: Any, make_user: Any, make_event: Any
) -> None:
    engine.put_items([make_item(f"i{k:03d}", f"c{k % 7}", age_hours=200 + k) for k in range(300)])

    def reader() -> None:
        engine.put_users([make_user("u1")])
        engine.ingest([make_event("u1", f"i{k:03d}", "skip") for k in range(250)])
        engine.rights.put_controls("u1", personalized=False, keyword_filters=[], blocked_tags=[])

    def resumed() -> bool:
        note = backfill_step(engine.feed("u1", 5)).note
        assert note is not None
        return "resuming past what they had seen" in note

    reader()
    assert [resumed(), resumed()] == [False, True]
    # Erased, then the same id signs up again at the same instant (so only the erasure can
    # have dropped the hint): nothing carried over.
    engine.rights.erase("u1")
    reader()
    assert [resumed(), resumed()] == [False, True]
    clock.advance(HINT_TTL_S + 1)  # a hint lives for a reading session at most
    assert [resumed(), resumed()] == [False, True]

"""The serving side's hand-off: a real engine's feed responses and stored events, joined into
labelled examples on the bus (the engine itself is not wired to it yet)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fyp.engine import Engine
from fyp.online.bus import IdempotenceFilter, InProcessBus, drain
from fyp.online.joiner import Example, Joiner, JoinerConfig
from fyp.online.log import OnlineLog, feed_impressions
from fyp.pipeline.contracts import FeedItem, FeedResult, Reason
from fyp.pipeline.trace import Trace
from fyp.types import Event, Item, User, epoch


def test_feeds_and_events_of_a_real_engine_become_examples_on_the_bus(
    engine: Engine,
    clock: Any,
    make_item: Callable[..., Item],
    make_user: Callable[..., User],
    make_event: Callable[..., Event],
) -> None:
    engine.put_items(
        [make_item(f"v{k}", f"c{k % 3}", duration_s=10.0, tags=["t"]) for k in range(12)]
    )
    engine.put_users([make_user("viewer", "eu")])
    bus = InProcessBus()
    log = OnlineLog(Joiner(JoinerConfig(window_s=300.0)), bus, lateness_s=30.0, clock=clock)

    feed = engine.feed("viewer", n=4)
    items = engine.catalog.get_items([i.item_id for i in feed.items])
    assert log.record_feed(feed, {k: r.duration_s for k, r in items.items()}) == 0
    assert log.stats()["open"] == 4

    first, second, third = (i.item_id for i in feed.items[:3])

    def event(item_id: str, kind: str, dt: float, **kw: Any) -> Event:
        e = make_event("viewer", item_id, kind, ts=clock() + dt, **kw)
        return e.model_copy(update={"request_id": feed.request_id})

    events = [
        event(first, "play", 1, watch_ms=10_000),
        event(first, "finish", 10),
        event(first, "like", 11),
        event(second, "play", 12, watch_ms=800),
        event(second, "skip", 13),
        event(third, "play", 14, watch_ms=4_000),
    ]
    stored = engine.ingest(events)
    assert (stored.accepted, stored.errors) == (6, [])
    assert log.record_events(events) == 1  # the skip closes the second item at once
    assert log.record_events(events[:2]) == 0  # a client retry changes nothing

    clock.advance(300 + 29)
    assert log.tick() == 0  # the window has ended, but the watermark lags by lateness_s
    clock.advance(1)
    assert log.tick() == 3

    seen = IdempotenceFilter()
    got: list[Example] = []
    drain(bus, "trainer", "t1", got.extend, seen)
    by_item = {e.item_id: e for e in got}
    assert set(by_item) == {i.item_id for i in feed.items}
    assert by_item[first].finish and by_item[first].like and by_item[first].watch_ratio == 1.0
    assert by_item[second].quick_skip and by_item[second].closed_by == "terminal"
    assert by_item[third].watch_ratio == 0.4 and not by_item[third].quick_skip
    assert all(e.model_version == feed.model_version for e in got)
    assert all(e.ts == epoch(events[0].ts) - 1 for e in got)  # served at the clock's time
    stats = log.stats()
    assert (stats["published"], stats["duplicate_events"], stats["open"]) == (4, 2, 0)
    json.dumps(stats)  # what a stats endpoint would return


def test_impression_features_name_the_score_position_and_reasons() -> None:
    result = FeedResult(
        request_id="r",
        user_id="u",
        region="us",
        model_version="m1",
        algorithm_hash="h",
        items=(
            FeedItem("a", 2.5, (Reason("similar_to:x", "…"), Reason("trending_in_region", "…"))),
            FeedItem("b", 1.0, ()),
        ),
        trace=Trace(),
    )
    a, b = feed_impressions(result, 5.0, {"a": 20.0}, features={"b": {"ctr": 0.1}})
    assert a.features == {
        "score": 2.5,
        "position": 0.0,
        "reason:similar_to": 1.0,
        "reason:trending_in_region": 1.0,
    }
    assert b.features == {"score": 1.0, "position": 1.0, "ctr": 0.1}
    assert (a.duration_s, b.duration_s, b.position, b.model_version) == (20.0, None, 1, "m1")

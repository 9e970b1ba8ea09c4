"""The joiner: labels, windows, terminal events, exactly-once under duplicates, late and orphan
events, the memory cap; and order-independence as a Hypothesis property."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fyp.online.joiner import (
    NEGATIVE,
    TERMINAL,
    Engagement,
    Example,
    Impression,
    Joiner,
    JoinerConfig,
    label,
)
from fyp.types import Event, from_epoch

T0 = 1_700_000_000.0
WINDOW = 600.0


def imp(
    request_id: str = "r1",
    item_id: str = "i1",
    *,
    user_id: str = "u1",
    ts: float = T0,
    position: int = 0,
    duration_s: float | None = 20.0,
) -> Impression:
    return Impression(
        request_id=request_id,
        user_id=user_id,
        item_id=item_id,
        position=position,
        model_version="us-1",
        ts=ts,
        features={"score": 0.5, "pos": float(position)},
        duration_s=duration_s,
    )


def ev(
    event_id: str,
    kind: str,
    *,
    dt: float = 1.0,
    request_id: str | None = "r1",
    item_id: str = "i1",
    user_id: str = "u1",
    watch_ms: int | None = None,
) -> Engagement:
    return Engagement(event_id, user_id, item_id, kind, T0 + dt, watch_ms, request_id)


def test_labels_come_from_the_joined_engagements() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW))
    assert joiner.add_impressions([imp()]) == []
    assert (
        joiner.add_events(
            [
                ev("e1", "play", watch_ms=15_000),
                ev("e2", "play", dt=2.0, watch_ms=5_000),
                ev("e3", "like", dt=3.0),
                ev("e4", "share", dt=4.0),
            ]
        )
        == []
    )
    assert joiner.advance(T0 + WINDOW - 1) == []  # the window is still open
    [example] = joiner.advance(T0 + WINDOW)
    assert example.example_id == "r1/i1"
    assert (example.user_id, example.position, example.model_version) == ("u1", 0, "us-1")
    assert example.features == {"score": 0.5, "pos": 0.0}
    assert example.watch_ms == 15_000
    assert example.watch_ratio == pytest.approx(0.75)
    assert (example.like, example.share, example.follow, example.finish) == (
        True,
        True,
        False,
        False,
    )
    assert (example.quick_skip, example.skip, example.negative) == (False, False, False)
    assert (example.n_events, example.closed_by) == (4, "window")
    assert Example.from_dict(example.to_dict()) == example


def test_an_example_survives_the_bus_wire_format() -> None:
    """On the bus an example is JSON with its ranker inputs packed as float32 (what the ranker
    scored with); a list of numbers, as earlier versions wrote, still decodes."""
    inputs = (0.5, -1.25, 2.0**-15, 1234.5)  # float32-exact
    example = label(replace(imp(), inputs=inputs), [ev("a", "play", watch_ms=5_000)], "window")
    wire = json.loads(json.dumps(example.to_dict()))
    assert isinstance(wire["inputs"], str)
    assert Example.from_dict(wire) == example
    assert Example.from_dict({**wire, "inputs": list(inputs)}) == example
    # A double keeps float32 precision on the wire.
    rounded = Example.from_dict(json.loads(json.dumps(replace(example, inputs=(0.1,)).to_dict())))
    assert rounded.inputs is not None and rounded.inputs[0] == pytest.approx(0.1, rel=1e-7)
    with pytest.raises(ValueError):
        Example.from_dict({**wire, "inputs": "not base64!"})


def test_a_finish_or_a_full_watch_is_a_finish_and_a_short_play_a_quick_skip() -> None:
    full = label(imp(), [ev("a", "play", watch_ms=20_000)], "window")
    assert full.finish and not full.quick_skip and full.watch_ratio == pytest.approx(1.0)
    quick = label(imp(), [ev("a", "play", watch_ms=1_999)], "window")
    assert quick.quick_skip and not quick.finish
    bare_skip = label(imp(), [ev("a", "skip")], "terminal")
    assert bare_skip.quick_skip and bare_skip.skip and bare_skip.watch_ms is None
    slow_skip = label(imp(), [ev("a", "skip", watch_ms=9_000)], "terminal")
    assert slow_skip.skip and not slow_skip.quick_skip
    unknown_length = label(imp(duration_s=None), [ev("a", "play", watch_ms=9_000)], "window")
    assert unknown_length.watch_ratio is None
    nothing = label(imp(), [], "window")
    assert (nothing.watch_ms, nothing.quick_skip, nothing.n_events) == (None, False, 0)
    report = label(imp(), [ev("a", "report")], "window")
    assert report.negative


@pytest.mark.parametrize("kind", sorted(TERMINAL))
def test_a_terminal_engagement_emits_at_once_and_later_events_are_late(kind: str) -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW))
    joiner.add_impressions([imp()])
    joiner.add_events([ev("e1", "play", watch_ms=900)])
    [example] = joiner.add_events([ev("e2", kind, dt=2.0)])
    assert example.closed_by == "terminal"
    assert example.quick_skip
    assert example.negative == (kind == "not_interested")
    # Anything after: a like, the same terminal event again, the impression again: nothing.
    assert joiner.add_events([ev("e3", "like", dt=3.0), ev("e2", kind, dt=2.0)]) == []
    assert joiner.add_impressions([imp()]) == []
    assert joiner.flush() == []
    stats = joiner.stats()
    assert (stats.emitted, stats.emitted_terminal, stats.late_events) == (1, 1, 2)
    assert stats.duplicate_impressions == 1


def test_events_timed_after_the_terminal_one_are_left_out() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW))
    joiner.add_impressions([imp()])
    joiner.add_events([ev("late-like", "like", dt=30.0)])  # arrives first, happened later
    [example] = joiner.add_events([ev("swipe", "skip", dt=2.0)])
    assert not example.like
    assert example.n_events == 1
    assert joiner.stats().out_of_window_events == 1


def test_duplicates_never_count_twice() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW))
    joiner.add_impressions([imp(), imp()])
    joiner.add_events([ev("e1", "like"), ev("e1", "like"), ev("e2", "play", watch_ms=3000)])
    joiner.add_events([ev("e2", "play", watch_ms=3000)])
    [example] = joiner.flush()
    assert example.n_events == 2
    stats = joiner.stats()
    assert (stats.duplicate_impressions, stats.duplicate_events, stats.events) == (1, 2, 2)


def test_late_and_out_of_window_events_are_counted_and_dropped() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW))
    joiner.add_impressions([imp()])
    joiner.add_events([ev("far", "like", dt=WINDOW + 5)])  # outside the window
    [example] = joiner.advance(T0 + WINDOW)
    assert not example.like
    assert joiner.add_events([ev("after", "share", dt=10.0)]) == []  # its example is out
    assert joiner.add_impressions([imp("r9")]) == []  # late impression: window behind watermark
    assert joiner.add_impressions([imp()]) == []  # a re-delivery of the emitted one
    stats = joiner.stats()
    assert (stats.out_of_window_events, stats.late_events, stats.late_impressions) == (1, 1, 1)
    assert stats.duplicate_impressions == 1
    assert stats.emitted == 1


def test_an_event_may_arrive_before_its_impression() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW))
    joiner.add_events([ev("e1", "like"), ev("e2", "skip", dt=2.0)])
    assert joiner.stats().held_orphans == 2
    [example] = joiner.add_impressions([imp()])
    assert example.like and example.skip and example.closed_by == "terminal"
    assert joiner.stats().held_orphans == 0


def test_events_without_their_impression_become_orphans_once_it_cannot_come() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW, max_skew_s=5.0))
    joiner.add_events([ev("lost", "like", request_id="nobody")])
    joiner.advance(T0 + 1 + 5 + WINDOW - 0.5)
    assert joiner.stats().held_orphans == 1  # an impression could still arrive in time
    joiner.advance(T0 + 1 + 5 + WINDOW)
    stats = joiner.stats()
    assert (stats.held_orphans, stats.orphan_events) == (0, 1)
    # An event already too old for any impression is an orphan at once.
    joiner.add_events([ev("ancient", "like", request_id="nobody", dt=-10 * WINDOW)])
    assert joiner.stats().orphan_events == 2


@pytest.mark.parametrize("event_first", [False, True])
def test_an_event_for_another_viewer_does_not_join(event_first: bool) -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW))
    if event_first:
        joiner.add_events([ev("e1", "like", user_id="someone-else")])
    joiner.add_impressions([imp()])
    if not event_first:
        joiner.add_events([ev("e1", "like", user_id="someone-else")])
    [example] = joiner.flush()
    assert not example.like
    assert joiner.stats().orphan_events == 1


def test_events_without_a_request_id_join_the_latest_covering_impression() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW))
    joiner.add_impressions([imp("r1", ts=T0), imp("r2", ts=T0 + 100)])
    joiner.add_events([ev("e1", "like", dt=150.0, request_id=None)])
    joiner.add_events([ev("e0", "share", dt=50.0, request_id=None)])
    by_id = {e.example_id: e for e in joiner.flush()}
    assert by_id["r2/i1"].like and not by_id["r2/i1"].share
    assert by_id["r1/i1"].share and not by_id["r1/i1"].like


def test_the_watermark_can_follow_event_time() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW, lateness_s=60.0))
    joiner.add_impressions([imp()])
    joiner.add_events([ev("e1", "like")])
    assert joiner.add_impressions([imp("r2", ts=T0 + WINDOW + 59)]) == []
    [example] = joiner.add_impressions([imp("r3", ts=T0 + WINDOW + 60)])
    assert example.example_id == "r1/i1" and example.like
    assert joiner.watermark == T0 + WINDOW


def test_full_joiner_closes_the_oldest_impression_first() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW, max_open=2))
    joiner.add_impressions([imp("r1", ts=T0 + 2), imp("r2", ts=T0)])
    [example] = joiner.add_impressions([imp("r3", ts=T0 + 1)])
    assert example.example_id == "r2/i1" and example.closed_by == "capacity"
    assert joiner.stats().open == 2
    # Its key is remembered: a late duplicate neither reopens nor re-emits it.
    assert joiner.add_impressions([imp("r2", ts=T0)]) == []
    assert joiner.add_events([ev("e1", "like", request_id="r2", dt=-1.0)]) == []
    assert {e.example_id for e in joiner.flush()} == {"r1/i1", "r3/i1"}
    assert joiner.stats().emitted_capacity == 1


def test_the_orphan_buffer_is_bounded() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW, max_orphans=3))
    joiner.add_events([ev(f"e{i}", "like", dt=float(i), request_id=f"x{i}") for i in range(5)])
    stats = joiner.stats()
    assert (stats.held_orphans, stats.orphan_events) == (3, 2)


def test_api_events_are_accepted_as_they_are() -> None:
    event = Event(
        event_id="api-1",
        user_id="u1",
        item_id="i1",
        type="play",
        ts=from_epoch(T0 + 3),
        watch_ms=4000,
        request_id="r1",
    )
    impression_event = event.model_copy(update={"event_id": "api-2", "type": "impression"})
    joiner = Joiner(JoinerConfig(window_s=WINDOW))
    joiner.add_impressions([imp()])
    joiner.add_events([event, impression_event])
    [example] = joiner.flush()
    assert example.watch_ms == 4000
    assert joiner.stats().ignored_events == 1


# ---- properties ---------------------------------------------------------------------------------

KINDS = ["play", "finish", "like", "share", "comment", "follow", "skip", "not_interested", "report"]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[Impression], list[list[Engagement]], list[Engagement]]:
    """Impressions, each with its events in event-time order, and events of no impression."""
    n = draw(st.integers(1, 6))
    impressions: list[Impression] = []
    streams: list[list[Engagement]] = []
    eid = 0
    for k in range(n):
        user = draw(st.sampled_from(["u1", "u2"]))
        item = draw(st.sampled_from(["i1", "i2", "i3"]))
        ts = T0 + draw(st.integers(0, 300))
        impressions.append(imp(f"r{k}", item, user_id=user, ts=ts, position=k))
        offsets = sorted(
            set(draw(st.lists(st.integers(-10, int(WINDOW) + 60), max_size=5)))
        )  # strictly increasing times; some fall outside the window
        stream = []
        for off in offsets:
            kind = draw(st.sampled_from(KINDS))
            watch = draw(st.none() | st.integers(0, 40_000)) if kind in ("play", "skip") else None
            stream.append(Engagement(f"e{eid}", user, item, kind, ts + off, watch, f"r{k}"))
            eid += 1
        streams.append(stream)
    orphans = [
        Engagement(f"o{j}", "u1", "i1", "like", T0 + draw(st.integers(0, 300)), None, f"gone{j}")
        for j in range(draw(st.integers(0, 2)))
    ]
    return impressions, streams, orphans


def expected(
    impressions: Sequence[Impression], streams: Sequence[Sequence[Engagement]], skew: float
) -> dict[str, Example]:
    """What the joiner must emit, computed directly from the definition."""
    out = {}
    for im, stream in zip(impressions, streams, strict=True):
        inside = [e for e in stream if im.ts - skew <= e.ts < im.ts + WINDOW]
        terminal = [e.ts for e in inside if e.type in TERMINAL]
        cutoff = min(terminal, default=math.inf)
        joined = [e for e in inside if e.ts <= cutoff]
        ex = label(im, joined, "terminal" if terminal else "window")
        out[ex.example_id] = ex
    return out


@given(world=worlds(), data=st.data())
def test_any_interleaving_with_duplicates_yields_the_same_examples(
    world: tuple[list[Impression], list[list[Engagement]], list[Engagement]], data: st.DataObject
) -> None:
    impressions, streams, orphans = world
    # Per impression, its events stay in event-time order; the impression goes anywhere in them.
    queues: list[list[Impression | Engagement]] = []
    for im, stream in zip(impressions, streams, strict=True):
        at = data.draw(st.integers(0, len(stream)))
        queues.append([*stream[:at], im, *stream[at:]])
    queues += [[o] for o in orphans]
    arrival: list[Impression | Engagement] = []
    while any(queues):
        q = data.draw(st.sampled_from([q for q in queues if q]))
        arrival.append(q.pop(0))
    # Re-deliveries of anything, anywhere after the original.
    for dup in data.draw(st.lists(st.sampled_from(list(arrival)), max_size=6)):
        first = arrival.index(dup)
        arrival.insert(data.draw(st.integers(first + 1, len(arrival))), dup)

    joiner = Joiner(JoinerConfig(window_s=WINDOW))
    emitted: list[Example] = []
    for x in arrival:
        if isinstance(x, Impression):
            emitted += joiner.add_impressions([x])
        else:
            emitted += joiner.add_events([x])
    emitted += joiner.flush()

    ids = [e.example_id for e in emitted]
    assert len(ids) == len(set(ids)), "an example was emitted twice"
    assert {e.example_id: e for e in emitted} == expected(
        impressions, streams, joiner.config.max_skew_s
    )
    stats = joiner.stats()
    assert stats.orphan_events == len(orphans)
    assert (stats.open, stats.held_orphans) == (0, 0)


@given(
    world=worlds(),
    cap=st.integers(1, 3),
    orphan_cap=st.integers(0, 3),
    order=st.randoms(use_true_random=False),
)
def test_memory_caps_hold_and_each_impression_is_emitted_once(
    world: tuple[list[Impression], list[list[Engagement]], list[Engagement]],
    cap: int,
    orphan_cap: int,
    order: object,
) -> None:
    impressions, streams, orphans = world
    arrival: list[Impression | Engagement] = [
        *impressions,
        *(e for s in streams for e in s),
        *orphans,
        *impressions[:2],
    ]
    order.shuffle(arrival)  # type: ignore[attr-defined]
    joiner = Joiner(JoinerConfig(window_s=WINDOW, max_open=cap, max_orphans=orphan_cap))
    emitted: list[Example] = []
    for x in arrival:
        if isinstance(x, Impression):
            emitted += joiner.add_impressions([x])
        else:
            emitted += joiner.add_events([x])
        stats = joiner.stats()
        assert stats.open <= cap
        assert stats.held_orphans <= orphan_cap
    emitted += joiner.flush()
    ids = [e.example_id for e in emitted]
    assert sorted(ids) == sorted(f"{i.request_id}/{i.item_id}" for i in impressions)


def test_the_next_play_closes_the_viewing_the_viewer_left() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW, close_on_next_play=True))
    joiner.add_impressions([imp(item_id="i1"), imp(item_id="i2", position=1)])
    assert joiner.add_events([ev("a1", "play", item_id="i1", watch_ms=12_000)]) == []
    assert joiner.add_events([ev("a2", "like", dt=2.0, item_id="i1")]) == []
    [done] = joiner.add_events([ev("b1", "play", dt=5.0, item_id="i2", watch_ms=3_000)])
    assert (done.item_id, done.closed_by, done.like, done.watch_ms) == (
        "i1",
        "next_play",
        True,
        12_000,
    )
    # A like of the left item reported after the next play is late, never a second example.
    assert joiner.add_events([ev("a3", "share", dt=6.0, item_id="i1")]) == []
    assert joiner.stats().late_events == 1
    # The viewing in progress stays open; it closes with the viewer's next play in a new request.
    joiner.add_impressions([imp("r2", "i9", ts=T0 + 30)])
    [second] = joiner.add_events(
        [ev("c1", "play", dt=31.0, request_id="r2", item_id="i9", watch_ms=1_000)]
    )
    assert (second.item_id, second.closed_by) == ("i2", "next_play")
    assert joiner.stats().emitted_next_play == 2


def test_an_impression_never_played_is_not_closed_by_the_next_play() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW, close_on_next_play=True))
    joiner.add_impressions([imp(item_id="i1"), imp(item_id="i2", position=1)])
    assert joiner.add_events([ev("b1", "play", dt=5.0, item_id="i2", watch_ms=3_000)]) == []
    assert joiner.stats().open == 2


def test_forgetting_a_viewer_drops_their_open_impressions_and_held_events() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW))
    joiner.add_impressions([imp(item_id="i1"), imp("r5", "i1", user_id="u2")])
    joiner.add_events([ev("x1", "play", request_id="r7", item_id="i4", watch_ms=1_000)])
    assert joiner.forget_user("u1") == 2  # one open impression, one held orphan
    stats = joiner.stats()
    assert (stats.open, stats.held_orphans, stats.forgotten) == (1, 0, 2)
    assert [e.user_id for e in joiner.flush()] == ["u2"]


def test_with_next_play_closing_a_not_interested_after_a_skip_still_labels_the_viewing() -> None:
    joiner = Joiner(JoinerConfig(window_s=WINDOW, close_on_next_play=True, terminal=NEGATIVE))
    joiner.add_impressions([imp(item_id="i1"), imp(item_id="i2", position=1)])
    assert joiner.add_events([ev("a1", "play", item_id="i1", watch_ms=900)]) == []
    assert joiner.add_events([ev("a2", "skip", dt=1.5, item_id="i1")]) == []  # stays open
    [done] = joiner.add_events([ev("a3", "not_interested", dt=2.0, item_id="i1")])
    assert (done.skip, done.quick_skip, done.negative, done.closed_by) == (
        True,
        True,
        True,
        "terminal",
    )
    # A skip alone is closed by the viewer's next play.
    assert joiner.add_events([ev("b1", "play", dt=3.0, item_id="i2", watch_ms=500)]) == []
    assert joiner.add_events([ev("b2", "skip", dt=3.6, item_id="i2")]) == []
    joiner.add_impressions([imp("r2", "i7", ts=T0 + 10)])
    [second] = joiner.add_events(
        [ev("c1", "play", dt=11.0, request_id="r2", item_id="i7", watch_ms=4_000)]
    )
    assert (second.item_id, second.skip, second.negative) == ("i2", True, False)
    assert joiner.stats().late_events == 0

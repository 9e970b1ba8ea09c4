"""Bus conformance: the same tests on the in-process bus and on Redis Streams (the Redis ones run
when FYP_TEST_REDIS_URL is set, each on a fresh stream key deleted afterwards); then the joiner's
examples through the bus, surviving a consumer that dies before it acks."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from fyp.errors import InvalidInput
from fyp.online.bus import (
    Bus,
    IdempotenceFilter,
    InProcessBus,
    RedisStreamBus,
    drain,
    drain_payloads,
    open_bus,
    publish_examples,
)
from fyp.online.joiner import Engagement, Example, Impression, Joiner, JoinerConfig

REDIS_ENV = "FYP_TEST_REDIS_URL"
T0 = 1_700_000_000.0

MakeBus = Callable[..., Bus]


@pytest.fixture(params=["memory", "redis"])
def make_bus(request: pytest.FixtureRequest) -> Iterator[MakeBus]:
    """``(max_len=None) -> Bus``: a fresh bus of the parametrised kind, removed afterwards."""
    made: list[Bus] = []
    if request.param == "redis":
        url = os.environ.get(REDIS_ENV)
        if not url:
            pytest.skip(f"Redis bus tests need {REDIS_ENV} (e.g. redis://127.0.0.1:6379/0)")

        def factory(max_len: int | None = None) -> Bus:
            bus = RedisStreamBus(url, f"fyp-test-{uuid.uuid4().hex}", max_len=max_len)
            made.append(bus)
            return bus
    else:

        def factory(max_len: int | None = None) -> Bus:
            bus = InProcessBus(max_len=max_len)
            made.append(bus)
            return bus

    yield factory
    for bus in made:
        if isinstance(bus, RedisStreamBus):
            bus.delete()
        bus.close()


def payloads(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"n": i, "tag": f"p{i}"} for i in range(start, start + n)]


def test_entries_come_back_in_order_with_their_ids(make_bus: MakeBus) -> None:
    bus = make_bus()
    ids = bus.publish(payloads(5))
    assert len(set(ids)) == 5
    got = bus.consume("g", "c1", max_count=3)
    assert [m.payload for m in got] == payloads(3)
    assert [m.id for m in got] == ids[:3]
    assert [m.payload["n"] for m in bus.consume("g", "c1", max_count=10)] == [3, 4]
    assert bus.consume("g", "c1") == []
    assert bus.publish([]) == []


def test_consumers_of_one_group_share_and_each_group_sees_everything(make_bus: MakeBus) -> None:
    bus = make_bus()
    bus.publish(payloads(6))
    a = bus.consume("trainer", "a", max_count=4)
    b = bus.consume("trainer", "b", max_count=4)
    assert sorted(m.payload["n"] for m in a + b) == list(range(6))
    assert not {m.id for m in a} & {m.id for m in b}
    # Another group, created after the entries were published, still reads them all.
    assert [m.payload["n"] for m in bus.consume("shadow", "x", max_count=10)] == list(range(6))


def test_entries_stay_pending_until_acked(make_bus: MakeBus) -> None:
    bus = make_bus()
    bus.publish(payloads(4))
    got = bus.consume("g", "c1", max_count=10)
    assert bus.pending("g") == 4
    assert bus.ack("g", [got[0].id, got[1].id]) == 2
    assert bus.ack("g", [got[0].id]) == 0  # acking twice counts once
    assert bus.pending("g") == 2
    assert bus.pending("other") == 0


def test_a_live_consumer_reclaims_what_a_dead_one_left_pending(make_bus: MakeBus) -> None:
    bus = make_bus()
    bus.publish(payloads(5))
    taken = bus.consume("g", "doomed", max_count=5)
    bus.ack("g", [m.id for m in taken[:2]])
    # Entries pending for less than the idle threshold stay with their consumer.
    assert bus.reclaim("g", "rescuer", min_idle_ms=600_000) == []
    rescued = bus.reclaim("g", "rescuer", min_idle_ms=0)
    assert [m.payload["n"] for m in rescued] == [2, 3, 4]
    assert [m.id for m in rescued] == [m.id for m in taken[2:]]
    # New entries are not redelivered by reclaim, and acked ones never are.
    assert bus.consume("g", "rescuer") == []
    bus.ack("g", [m.id for m in rescued])
    assert bus.pending("g") == 0
    assert bus.reclaim("g", "rescuer", min_idle_ms=0) == []


def test_reclaim_respects_max_count(make_bus: MakeBus) -> None:
    bus = make_bus()
    bus.publish(payloads(7))
    bus.consume("g", "doomed", max_count=7)
    first = bus.reclaim("g", "r", min_idle_ms=0, max_count=3)
    assert len(first) == 3
    with pytest.raises(InvalidInput):
        bus.reclaim("g", "r", min_idle_ms=0, max_count=0)


def test_a_blocked_consumer_wakes_for_a_publish(make_bus: MakeBus) -> None:
    bus = make_bus()
    bus.consume("g", "c1")  # creates the group before the publish
    got: list[object] = []
    reader = threading.Thread(
        target=lambda: got.extend(bus.consume("g", "c1", max_count=1, block_ms=20_000))
    )
    reader.start()
    bus.publish(payloads(1))
    reader.join()
    assert len(got) == 1
    assert bus.consume("g", "c1", block_ms=1) == []


def test_max_len_keeps_the_newest_entries(make_bus: MakeBus) -> None:
    bus = make_bus(max_len=3)
    bus.publish(payloads(2))
    early = bus.consume("g", "c1", max_count=2)
    bus.publish(payloads(4, start=2))
    assert len(bus) == 3
    assert [m.payload["n"] for m in bus.consume("late", "x", max_count=10)] == [3, 4, 5]
    # Trimmed entries pending for a dead consumer are not redelivered.
    assert early and bus.reclaim("g", "rescuer", min_idle_ms=0) == []


def test_open_bus_by_url_scheme() -> None:
    assert isinstance(open_bus("memory://"), InProcessBus)
    with pytest.raises(InvalidInput):
        open_bus("kafka://somewhere")
    url = os.environ.get(REDIS_ENV)
    if url:
        bus = open_bus(url, key=f"fyp-test-{uuid.uuid4().hex}")
        assert isinstance(bus, RedisStreamBus)
        bus.close()


# ---- the joiner's examples through the bus ------------------------------------------------------


def joined_examples(n: int) -> list[Example]:
    joiner = Joiner(JoinerConfig(window_s=60.0))
    joiner.add_impressions(
        Impression(f"r{i}", f"u{i % 3}", f"i{i}", i, "us-1", T0 + i, {"score": i / n}, 10.0)
        for i in range(n)
    )
    skipped = joiner.add_events(
        Engagement(f"e{i}", f"u{i % 3}", f"i{i}", "skip", T0 + i + 1, 900, f"r{i}")
        for i in range(0, n, 4)
    )
    return skipped + joiner.flush()


def test_examples_survive_a_consumer_that_dies_before_acking(make_bus: MakeBus) -> None:
    bus = make_bus()
    examples = joined_examples(20)
    assert len(examples) == 20
    publish_examples(bus, examples)
    publish_examples(bus, examples[:3])  # a re-publish (say, a joiner restarted): no double count

    learned: list[str] = []
    seen = IdempotenceFilter()

    def learn(batch: list[Example]) -> None:
        learned.extend(e.example_id for e in batch)

    # Consumer "a" learns from its first 5 examples (and records them as seen, as the trainer's
    # state would) but dies before acking them.
    taken = bus.consume("trainer", "a", max_count=5)
    learn([Example.from_dict(m.payload) for m in taken])
    for m in taken:
        seen.add(m.payload["example_id"])

    # Consumer "b" crashes inside its handler: nothing acked, nothing marked seen.
    def crash(batch: list[Example]) -> None:
        raise RuntimeError("trainer died mid-batch")

    with pytest.raises(RuntimeError):
        drain(bus, "trainer", "b", crash, seen, max_count=6)
    assert bus.pending("trainer") == 11

    # Consumer "c" takes over everything pending and reads the rest.
    result = drain(bus, "trainer", "c", learn, seen, max_count=100, reclaim_idle_ms=0)
    assert result.delivered == 23
    assert result.skipped_duplicates == 5 + 3
    assert bus.pending("trainer") == 0
    assert sorted(learned) == sorted(e.example_id for e in examples)
    assert len(learned) == len(set(learned))
    # Round-tripped through JSON, the examples are what the joiner emitted.
    restored = [Example.from_dict(m.payload) for m in bus.consume("audit", "x", max_count=100)]
    assert restored[:20] == examples


def test_an_entry_without_an_example_id_is_refused_and_stays_pending() -> None:
    bus = InProcessBus()
    bus.publish([{"example_id": "r1/i1", "user_id": "u1"}, {"user_id": "u2"}])
    handled: list[Mapping[str, Any]] = []
    with pytest.raises(InvalidInput, match="example_id"):
        drain_payloads(bus, "trainer", "a", handled.extend, IdempotenceFilter())
    assert handled == []
    assert bus.pending("trainer") == 2


def test_idempotence_filter_is_bounded() -> None:
    seen = IdempotenceFilter(capacity=2)
    for i in range(3):
        seen.add(f"x{i}")
    assert len(seen) == 2
    assert "x0" not in seen and "x2" in seen


def test_the_in_process_bus_drops_what_every_group_acked_after_a_while() -> None:
    """It kept ``max_len`` entries (50,000 by default, about 0.8 KB each) of examples long since
    learned from; an entry every group acked now goes a minute after it was published."""
    now = [0.0]
    bus = InProcessBus(max_len=1000, clock=lambda: now[0], keep_acked_s=60.0)
    bus.publish([{"n": n} for n in range(100)])
    bus.ack("a", [m.id for m in bus.consume("a", "c", max_count=100)])
    bus.ack("b", [m.id for m in bus.consume("b", "c", max_count=50)])
    assert len(bus) == 100  # not a minute old yet
    now[0] = 61.0
    bus.publish([{"n": 100}])
    assert len(bus) == 51  # b has not taken 50-99 yet; 100 is new
    assert [m.payload["n"] for m in bus.consume("b", "c", max_count=100)][:2] == [50, 51]
    assert len(bus) == 51  # delivered to b, not acked: kept
    bus.ack("b", [str(n) for n in range(50, 101)])
    bus.ack("a", [m.id for m in bus.consume("a", "c")])
    assert len(bus) == 1  # the newest one stays its minute
    now[0] = 122.0
    bus.ack("a", [])
    assert len(bus) == 0
    bus.publish([{"n": 101}])
    assert [m.payload["n"] for m in bus.consume("late", "c")] == [101]

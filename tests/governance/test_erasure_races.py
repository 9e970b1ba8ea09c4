"""Erasure against everything else at once: it must win every race.

Each round creates a cohort of users with some history, then lets writer threads hammer them
(event batches, feeds, controls, interest resets), half of them through a second engine on the
same databases (as a second server process would), while eraser threads erase the whole cohort in
parallel in one region. Afterwards, for every erased user:

* no row mentions them in any column of any table of the region's database;
* exactly one receipt and exactly one ``erase_user`` audit entry exist, the receipt's entry is the
  one in the log, and the log verifies;
* every write that started after the receipt arrived was refused;
* no in-memory online state of either engine (the joiner) holds them.

Seeded (the op mix and the users each thread picks); the interleaving is the scheduler's. The
rounds add up to ``ERASURES_SQLITE`` erasures on SQLite and ``ERASURES_POSTGRES`` on PostgreSQL
per run. Before the fix, rows outlived the erasure for every user of a round, and parallel
erasures answered 500 without an audit entry.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fyp.config import FypConfig, load_config
from fyp.engine import Engine
from fyp.errors import FypError, NotFound
from fyp.governance.policy import Principal
from fyp.governance.rights import subject_hash
from fyp.storage.sql import rows_naming
from fyp.types import Event, Item, User, from_epoch

NOW = 1_700_000_000.0
ERASURES_SQLITE = 1_000
ERASURES_POSTGRES = 200
COHORT = 50
"""Users erased in parallel per round."""
WRITERS = 4
ERASERS = 4
REGION = "us"


@dataclass
class Op:
    kind: str
    user_id: str
    started: float
    ended: float = 0.0
    acknowledged: bool = False
    """The write was accepted (an event stored, a page recorded, controls stored)."""


@dataclass
class Round:
    ops: list[Op] = field(default_factory=list)
    receipts: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    """user -> (when the receipt arrived, the receipt)."""
    erase_errors: list[str] = field(default_factory=list)
    erased_by: dict[str, int] = field(default_factory=dict)
    """user -> the index of the engine that erased them."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _items() -> list[Item]:
    return [
        Item(
            item_id=f"i{k}",
            creator_id=f"c{k % 7}",
            created_at=from_epoch(NOW - 3600 - k),
            duration_s=20.0,
            tags=[("cooking", "pets", "travel")[k % 3]],
            caption=f"video {k}",
        )
        for k in range(60)
    ]


_event_ids = itertools.count()


def _event(user_id: str, rng: random.Random) -> Event:
    return Event(
        event_id=f"r{next(_event_ids)}",
        user_id=user_id,
        item_id=f"i{rng.randrange(60)}",
        type=rng.choice(("play", "like", "finish", "skip", "share")),
        ts=from_epoch(NOW - rng.random() * 100),
        watch_ms=rng.randrange(1, 20_000),
    )


def _write(engines: list[Engine], user_id: str, rng: random.Random, record: Round) -> None:
    """One write about ``user_id`` through one of the engines, logged with its outcome."""
    engine = rng.choice(engines)
    kind = rng.choice(("events", "events", "feed", "controls", "interests"))
    op = Op(kind, user_id, time.monotonic())
    try:
        if kind == "events":
            result = engine.ingest([_event(user_id, rng) for _ in range(rng.randint(1, 3))])
            op.acknowledged = result.accepted > 0
        elif kind == "feed":
            op.acknowledged = bool(engine.feed(user_id, 3).items)
        elif kind == "controls":
            engine.rights.put_controls(user_id, rng.random() < 0.5, ["spoiler"], ["pets"])
            op.acknowledged = True
        else:
            engine.rights.delete_interests(user_id)
            op.acknowledged = True
    except NotFound:
        pass
    op.ended = time.monotonic()
    with record.lock:
        record.ops.append(op)


def _race(engines: list[Engine], cohort: list[str], seed: int) -> Round:
    record = Round()
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        try:
            while not stop.is_set():
                _write(engines, rng.choice(cohort), rng, record)
        except BaseException as exc:  # a writer must never see anything but NotFound
            failures.append(exc)

    queue = list(cohort)
    random.Random(seed).shuffle(queue)
    queue_lock = threading.Lock()

    def eraser(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        while True:
            with queue_lock:
                if not queue:
                    return
                user_id = queue.pop()
            time.sleep(rng.random() * 0.004)  # let some writes about them start first
            by = rng.randrange(len(engines))
            try:
                receipt = engines[by].rights.erase(user_id)
            except FypError as exc:
                with record.lock:
                    record.erase_errors.append(f"{user_id}: {type(exc).__name__}: {exc}")
                continue
            with record.lock:
                record.receipts[user_id] = (time.monotonic(), receipt)
                record.erased_by[user_id] = by

    writers = [threading.Thread(target=writer, args=(k,)) for k in range(WRITERS)]
    erasers = [threading.Thread(target=eraser, args=(k,)) for k in range(ERASERS)]
    for thread in writers:
        thread.start()
    time.sleep(0.02)
    for thread in erasers:
        thread.start()
    for thread in erasers:
        thread.join()
    time.sleep(0.02)  # writes that began before the last receipt, and some after it
    stop.set()
    for thread in writers:
        thread.join()
    assert not failures, failures
    return record


def _check_round(engines: list[Engine], region_url: str, cohort: list[str], record: Round) -> None:
    assert not record.erase_errors, record.erase_errors[:5]
    assert set(record.receipts) == set(cohort), "every erasure answered with a receipt"
    erased = set(cohort)
    leftovers = rows_naming(region_url, erased)
    assert not +leftovers, f"rows of erased users remain: {dict(leftovers)}"
    for user_id, (arrived, _) in record.receipts.items():
        late = [
            op
            for op in record.ops
            if op.user_id == user_id and op.started > arrived and op.acknowledged
        ]
        assert not late, f"{user_id}: writes accepted after the erasure receipt: {late[:3]}"
    # The erasing process forgets the user in memory at once; the other one when its background
    # sync sees the region's erasure mark move (called here in place of that loop).
    for index, engine in enumerate(engines):
        mine = {u for u, by in record.erased_by.items() if by == index}
        for join in engine._joins.values():
            held = [u for u in mine if join.joiner.holds(u)]
            assert not held, f"engine {index}'s joiner holds users it erased: {held[:5]}"
    for engine in engines:
        engine.catch_up_erasures()
        for join in engine._joins.values():
            assert not erased & join.joiner.users(), "a joiner holds erased users after sync"
    acknowledged = Counter(op.kind for op in record.ops if op.acknowledged)
    assert acknowledged["events"] and acknowledged["feed"], "the writes really raced"


def _check_audit(engine: Engine, receipts: dict[str, dict[str, Any]]) -> None:
    handle = engine.gate.open(REGION, Principal.auditor(REGION), "audit")
    report = handle.audit.verify()
    assert report.ok, report.problems[:3]
    log = engine.gate.audit_log(REGION)
    entries = [r for r in log.tail(log.count()) if r.action == "erase_user"]
    by_subject = Counter(r.detail["subject"] for r in entries)
    subjects = {subject_hash(REGION, u) for u in receipts}
    assert all(by_subject[s] == 1 for s in subjects), "one audit entry per erasure"
    assert set(by_subject) == subjects, "and none without an erasure"
    for user_id, receipt in receipts.items():
        entry, _ = log.leaf(receipt["audit"]["seq"])
        assert entry.action == "erase_user"
        assert entry.detail["subject"] == subject_hash(REGION, user_id)
        assert entry.detail["rows"] == receipt["rows_deleted"]


def _run(config: FypConfig, region_url: str, erasures: int) -> None:
    primary = Engine(config)
    secondary = Engine(config)  # a second process on the same databases
    engines = [primary, secondary]
    receipts: dict[str, dict[str, Any]] = {}
    try:
        primary.put_items(_items())
        seed_rng = random.Random(7)
        for round_no in range(erasures // COHORT):
            cohort = [f"race{round_no}-{k}" for k in range(COHORT)]
            primary.put_users([User(user_id=u, region=REGION) for u in cohort])
            history = [_event(u, seed_rng) for u in cohort for _ in range(3)]
            assert primary.ingest(history).accepted == len(history)
            record = _race(engines, cohort, seed=round_no)
            _check_round(engines, region_url, cohort, record)
            receipts.update({u: r for u, (_, r) in record.receipts.items()})
            for engine in engines:
                assert all(engine.gate.locate(user_id) is None for user_id in cohort)
        assert len(receipts) >= erasures
        _check_audit(primary, receipts)
    finally:
        secondary.close()
        primary.close()


def test_erasure_wins_every_race_on_sqlite(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    _run(config, f"sqlite:///{config.data_dir / 'region-us.db'}", ERASURES_SQLITE)


@pytest.mark.postgres
def test_erasure_wins_every_race_on_postgres(
    pg_schema_url: Callable[[str], str], tmp_path: Path
) -> None:
    region_url = pg_schema_url("region-us")
    config = load_config(
        tmp_path,
        catalog_url=pg_schema_url("catalog"),
        regions=[
            {"name": "us", "storage_url": region_url},
            {"name": "eu", "storage_url": pg_schema_url("region-eu")},
        ],
    )
    _run(config, region_url, ERASURES_POSTGRES)

"""Every cache and queue a serving process keeps has a bound that holds (docs/TRUST.md, "Memory
bounds"). Bounds tested elsewhere: the joiner's open impressions and held events
(tests/online/test_online_joiner.py), the bus (tests/online/test_online_bus.py), the idempotence
filter and erased viewers of a trainer (tests/online/test_online_trainer.py), the data-key cache
(tests/storage/test_encryption.py), the text-embedding cache (tests/models/test_models_text.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import Column, MetaData, String, Table

from fyp.api.app import create_app
from fyp.api.limits import InFlightLimit
from fyp.bounded import RecentSet
from fyp.config import load_config
from fyp.engine import RETRAIN_REPORTS_KEPT, Engine
from fyp.governance.gate import Gate
from fyp.models.training import TrainReport
from fyp.online.embedding_table import EmbeddingTable, TableConfig
from fyp.online.joiner import Impression, Joiner, JoinerConfig
from fyp.storage import catalog as catalog_module
from fyp.storage import region as region_module
from fyp.storage.catalog import SqlCatalog
from fyp.storage.sql import MAX_COMPILED_STATEMENTS, Database, meta_table
from fyp.types import Item

# ---- the database layer ----------------------------------------------------------------------


def test_compiled_statements_stay_bounded_when_each_call_builds_its_statement(
    tmp_path: Path,
) -> None:
    """``Database.executemany`` kept every compiled statement keyed by the statement object;
    callers that build ``table.insert()`` per call (the feed's pair lookups, every event
    batch) leaked one compiled statement each time (measured by bench/memory_growth.py)."""
    metadata = MetaData()
    meta_table(metadata)
    rows = Table("rows", metadata, Column("a", String(20), primary_key=True))
    db = Database(f"sqlite:///{tmp_path / 'x.db'}", metadata, kind="test", version=1)
    try:
        for k in range(MAX_COMPILED_STATEMENTS + 50):
            with db.write() as conn:
                db.executemany(conn, rows.insert(), [{"a": f"r{k}"}])
        assert db.cached_statements <= MAX_COMPILED_STATEMENTS
        with db.read() as conn:
            assert conn.execute(rows.select()).all()[-1] == (f"r{MAX_COMPILED_STATEMENTS + 49}",)
    finally:
        db.close()


def test_a_statement_built_once_is_compiled_once(tmp_path: Path) -> None:
    metadata = MetaData()
    meta_table(metadata)
    rows = Table("rows", metadata, Column("a", String(20), primary_key=True))
    insert = rows.insert()
    db = Database(f"sqlite:///{tmp_path / 'x.db'}", metadata, kind="test", version=1)
    try:
        for k in range(20):
            with db.write() as conn:
                db.executemany(conn, insert, [{"a": f"r{k}"}])
        assert db.cached_statements == 1
    finally:
        db.close()


# ---- storage caches ----------------------------------------------------------------------------


def test_the_item_stats_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(region_module, "_STATS_CACHE_MAX", 100)
    engine = Engine(load_config(tmp_path))
    try:
        store = engine.gate._stores["us"]
        for start in range(0, 1000, 50):
            store.stats([f"i{k}" for k in range(start, start + 50)])
            assert len(store._stats_cache) <= 100 + 50
    finally:
        engine.close()


def test_the_catalog_caches_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "NEWEST_CACHE_MAX", 10)
    catalog = SqlCatalog(f"sqlite:///{tmp_path / 'catalog.db'}", cache_size=20)
    try:
        catalog.upsert_items(
            [
                Item(item_id=f"v{k}", creator_id=f"c{k}", duration_s=10.0, tags=[f"t{k}"])
                for k in range(100)
            ]
        )
        for k in range(100):
            assert catalog.get_item(f"v{k}") is not None
            catalog.items_by_tags([f"t{k}"], 5)
            assert len(catalog._cache) <= 20
            assert len(catalog._newest_cache) <= 10 + 1
    finally:
        catalog.close()


def test_the_home_region_cache_is_bounded(tmp_path: Path) -> None:
    engine = Engine(load_config(tmp_path))
    try:
        gate: Gate = engine.gate
        bound = 1_000_001  # cleared when it would grow past a million routes
        largest = 0
        for k in range(bound + 1):
            gate.remember(f"u{k}", "us")
            if k % 1000 == 0 or k >= bound - 2:
                largest = max(largest, len(gate._home))
        assert largest == bound
        assert len(gate._home) <= bound
    finally:
        engine.close()


# ---- learning while serving ---------------------------------------------------------------------


def _impression(request: int, item: int = 0) -> Impression:
    return Impression(
        request_id=f"r{request}",
        user_id="viewer",
        item_id=f"i{item}",
        position=item,
        model_version="v1",
        ts=1000.0 + request,
    )


def test_the_joiner_remembers_a_bounded_number_of_emitted_impressions() -> None:
    """Emitted impressions were remembered for a window and a wait, however many arrived; with
    one open at a time every new impression emits the previous one (closed by capacity)."""
    joiner = Joiner(JoinerConfig(max_open=1, max_closed=10))
    for request in range(100):
        joiner.add_impressions([_impression(request)])
    assert len(joiner._closed) == 10
    assert len(joiner._closed_heap) == 10
    # The newest emitted keys are the ones remembered: a redelivery of one is a duplicate.
    joiner.add_impressions([_impression(98)])
    assert joiner.stats().duplicate_impressions == 1


def test_an_embedding_table_holds_at_most_max_rows_and_max_pending() -> None:
    clock = iter(np.arange(10_000, dtype=np.float64).tolist())
    table = EmbeddingTable(
        TableConfig(dim=4, min_count=2, max_rows=50, max_pending=30), clock=lambda: next(clock)
    )
    for k in range(400):
        table.observe([f"id{k}", f"id{k}"])  # admitted (seen twice)
        table.observe([f"once{k}"])  # below the filter: a pending counter
        assert len(table) <= 50
        assert table.pending_count <= 30
    assert "id399" in table and "id0" not in table  # least recently used went first
    assert "once399" in table.pending()


def test_recent_set_forgets_the_oldest_first() -> None:
    members: RecentSet[str] = RecentSet(3)
    for name in "abcde":
        members.add(name)
    assert list(members) == ["c", "d", "e"]
    members.add("c")  # added again: newest
    members.add("f")
    assert list(members) == ["e", "c", "f"]


def test_the_retrainer_keeps_a_bounded_history(tmp_path: Path) -> None:
    engine = Engine(load_config(tmp_path))
    try:
        report = TrainReport(region="us", version=None, events=0, users=0, items=0, seconds=0)
        for _ in range(RETRAIN_REPORTS_KEPT + 5):
            engine.retrainer.reports.append(report)
        assert len(engine.retrainer.reports) == RETRAIN_REPORTS_KEPT
    finally:
        engine.close()


# ---- requests in flight ------------------------------------------------------------------------


def test_requests_beyond_the_in_flight_bound_are_refused_at_once() -> None:
    """Requests waiting for a feed slot or a worker thread queued without bound; beyond
    ``server.max_in_flight`` one is now refused at once with a problem and Retry-After."""
    release = asyncio.Event()
    entered = 0

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal entered
        entered += 1
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limited = InFlightLimit(slow_app, limit=2)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=limited)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = [asyncio.create_task(client.get("/v1/regions")) for _ in range(2)]
            while entered < 2:
                await asyncio.sleep(0)
            refused = await client.get("/v1/regions")
            release.set()
            done = await asyncio.gather(*first)
            after = await client.get("/v1/regions")
            return [refused, *done, after]

    refused, *served, after = asyncio.run(scenario())
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:fyp:problem:overloaded"
    assert refused.headers["retry-after"] == "1"
    assert [r.status_code for r in served] == [200, 200]
    assert after.status_code == 200
    assert limited.in_flight == 0 and limited.refused == 1


def test_the_app_applies_the_configured_in_flight_bound(tmp_path: Path) -> None:
    engine = Engine(load_config(tmp_path, server={"max_in_flight": 7}))
    try:
        app = create_app(engine, background_training=False, close_engine=False)
        [limit] = [m for m in app.user_middleware if m.cls is InFlightLimit]
        assert limit.kwargs == {"limit": 7}
    finally:
        engine.close()

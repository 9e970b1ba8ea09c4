"""The whole engine on PostgreSQL: the same code path as SQLite, storage chosen by URL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fyp.config import load_config
from fyp.engine import Engine
from fyp.types import Event, Item, User, from_epoch

T0 = 1_700_000_000.0


def test_engine_runs_on_postgres(pg_schema_url: Callable[[str], str], tmp_path: Path) -> None:
    config = load_config(
        tmp_path,
        catalog_url=pg_schema_url("catalog"),
        regions=[
            {"name": "us", "storage_url": pg_schema_url("region-us")},
            {"name": "eu", "storage_url": pg_schema_url("region-eu")},
        ],
        training={"min_events": 20},
    )
    engine = Engine(config, clock=lambda: T0 + 3600)
    try:
        topics = ["cooking", "pets", "travel"]
        items = [
            Item(
                item_id=f"v{i}",
                creator_id=f"c{i % 9}",
                created_at=from_epoch(T0 - i * 60),
                duration_s=20.0,
                tags=[topics[i % 3]],
            )
            for i in range(90)
        ]
        assert engine.put_items(items).created == 90
        users = [User(user_id=f"u{k}", region="us" if k % 2 else "eu") for k in range(10)]
        assert engine.put_users(users).created == 10
        events = [
            Event(
                event_id=f"e{k}-{i}",
                user_id=f"u{k}",
                item_id=f"v{i}",
                type="like",
                ts=from_epoch(T0),
            )
            for k in range(10)
            for i in range(k % 3, 90, 9)
        ]
        first = engine.ingest(events)
        assert (first.accepted, first.duplicates, first.errors) == (len(events), 0, [])
        assert engine.ingest(events[:5]).duplicates == 5
        reports = engine.train()
        assert all(r.version is not None for r in reports), reports
        feed = engine.feed("u1", 5)
        assert feed.region == "us"
        assert feed.model_version == engine.model_versions()["us"] != "untrained"
        liked = {e.item_id for e in events if e.user_id == "u1"}
        served = {i.item_id for i in feed.items}
        assert served and not served & liked
        # u1 likes items of topic index 1 ("pets"): the page leans there.
        assert sum(engine.get_item(i).tags == ("pets",) for i in served) >= 3
    finally:
        engine.close()

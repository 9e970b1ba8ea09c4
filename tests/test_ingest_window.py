"""The ingest window (issue 14, defect 4) at every door events and items come through: the rule
itself (``IngestConfig.refusal``), ``Engine.ingest``/``put_items``, ``fyp import``, and the
histories the project imports itself (simulated worlds, 1990s datasets)."""

from __future__ import annotations

import csv
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fyp.cli import main
from fyp.config import IngestConfig, load_config
from fyp.engine import Engine
from fyp.errors import ConfigError, InvalidInput
from fyp.ingest import import_file
from fyp.sim.world import WorldConfig, build_world, write_world
from fyp.types import Event, Item, User, from_epoch

NOW = 1_700_000_000.0
FLOOR = datetime(1990, 1, 1, tzinfo=UTC)


# ---- the rule ---------------------------------------------------------------------------------


def test_the_window_is_floor_to_now_plus_skew_inclusive() -> None:
    window = IngestConfig()
    assert window.max_future_skew_s == 300.0 and window.min_event_time == FLOOR
    assert window.refusal("ts", from_epoch(NOW + 300), NOW) is None
    assert window.refusal("ts", FLOOR, NOW) is None
    ahead = window.refusal("ts", from_epoch(NOW + 300.5), NOW)
    assert ahead is not None and ahead.startswith("ts: ") and "ahead of the server clock" in ahead
    early = window.refusal("ts", FLOOR - timedelta(microseconds=1), NOW)
    assert early is not None and "ingest.min_event_time" in early


def test_the_window_is_configurable(tmp_path: Path) -> None:
    (tmp_path / "fyp.toml").write_text(
        "[ingest]\nmax_future_skew_s = 0\nmin_event_time = 1970-01-01T00:00:00Z\n"
    )
    window = load_config(tmp_path).ingest
    assert window.refusal("ts", from_epoch(0), NOW) is None
    assert window.refusal("ts", from_epoch(NOW + 1), NOW) is not None
    with pytest.raises(ConfigError):
        load_config(tmp_path, ingest={"max_future_skew_s": -1})


# ---- the engine -------------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    eng = Engine(load_config(tmp_path / "data"), clock=lambda: NOW)
    eng.put_items([Item(item_id="v1", creator_id="c1", created_at=from_epoch(NOW), duration_s=9)])
    eng.put_users([User(user_id="u1", region="us")])
    yield eng
    eng.close()


def _like(event_id: str, ts: datetime) -> Event:
    return Event(event_id=event_id, user_id="u1", item_id="v1", type="like", ts=ts)


def test_engine_ingest_refuses_per_row_and_stores_the_rest(engine: Engine) -> None:
    events = [
        _like("ok", from_epoch(NOW)),
        _like("future", datetime(9000, 12, 31, tzinfo=UTC)),
        _like("ancient", datetime(2, 1, 1, tzinfo=UTC)),
        _like("old-history", datetime(1997, 9, 20, tzinfo=UTC)),
    ]
    result = engine.ingest(events)
    assert result.accepted == 2
    assert [i for i, _ in result.errors] == [1, 2]
    stored = {e["event_id"] for e in engine.rights.export("u1")["events"]}
    assert stored == {"ok", "old-history"}


def test_engine_put_items_refuses_the_whole_batch(engine: Engine) -> None:
    good = Item(item_id="v2", creator_id="c1", created_at=from_epoch(NOW), duration_s=9)
    future = Item(item_id="v3", creator_id="c1", created_at=from_epoch(NOW + 86_400), duration_s=9)
    with pytest.raises(InvalidInput) as raised:
        engine.put_items([good, future])
    assert "'v3'" in raised.value.detail
    assert raised.value.extra["errors"][0]["field"] == "items.1.created_at"
    assert engine.catalog.get_item("v2") is None
    # An item that omits created_at is stamped on receipt, whatever the clocks say.
    assert engine.put_items([Item(item_id="v4", creator_id="c1", duration_s=9)]).created == 1


# ---- fyp import -------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_fyp_import_keeps_1990s_history_and_reports_rows_outside_the_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the command line, on the wall clock: a MovieLens-100k-aged history lands, a row
    dated 9000, one dated 1969 and one an hour ahead are reported by line."""
    data = tmp_path / "data"
    item_times = ["1995-01-01T00:00:00Z", "9000-01-01T00:00:00Z", "1996-01-01T00:00:00Z"]
    items = _write_csv(
        tmp_path / "items.csv",
        [
            {"item_id": f"m{n}", "creator_id": "studio", "created_at": at, "duration_s": "90"}
            for n, at in enumerate(item_times, 1)
        ],
    )
    users = _write_csv(tmp_path / "users.csv", [{"user_id": "rater1", "region": "us"}])
    hour_ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    rows = [
        ("m1", "like", "874965758"),  # 1997-09-22, about MovieLens 100k's first rating
        ("m1", "like", "9000-12-31T00:00:00Z"),
        ("m3", "finish", "1998-04-22T23:10:38Z"),
        ("m3", "like", "-14182940"),  # 1969-07-20
        ("m3", "like", hour_ahead),
    ]
    events = _write_csv(
        tmp_path / "events.csv",
        [
            {"event_id": f"r{n}", "user_id": "rater1", "item_id": i, "type": t, "ts": ts}
            for n, (i, t, ts) in enumerate(rows, 1)
        ],
    )
    common = ["--data-dir", str(data), "--quiet"]
    assert main(["import", "items", str(items), *common]) == 2  # 2: some records failed
    assert main(["import", "users", str(users), *common]) == 0
    assert main(["import", "events", str(events), *common]) == 2
    err = capsys.readouterr().err
    # CSV rows are named by their line in the file (the header is line 1).
    assert "line 3: item 'm2': created_at: 9000-01-01" in err
    assert "line 3: ts: 9000-12-31" in err and "ahead of the server clock" in err
    assert "line 5: ts: 1969-07-20" in err and "ingest.min_event_time" in err
    assert "line 6: ts: " in err
    engine = Engine(load_config(data))
    try:
        assert engine.catalog.get_item("m2") is None
        assert {i for i in ("m1", "m3") if engine.catalog.get_item(i)} == {"m1", "m3"}
        stored = {e["event_id"] for e in engine.rights.export("rater1")["events"]}
        assert stored == {"r1", "r3"}
    finally:
        engine.close()


# ---- the project's own histories --------------------------------------------------------------


def test_a_world_ahead_of_the_wall_clock_imports_with_its_own_clock(tmp_path: Path) -> None:
    """A simulated world whose "now" is a month ahead of the wall clock: on the wall clock its
    recent events are refused (the window works); an engine on the world's clock, the way bench/
    runs worlds, imports all of it."""
    ahead = time.time() + 30 * 86_400
    world = build_world(WorldConfig(seed=5, n_creators=10, n_items=120, n_viewers=12, now=ahead))
    files = write_world(world, tmp_path / "input")

    def imported(engine: Engine) -> tuple[int, int]:
        """Events accepted, and records refused across the three files."""
        try:
            reports = [import_file(engine, k, files[k]) for k in ("items", "users", "events")]
            return reports[2].accepted, sum(r.error_count for r in reports)
        finally:
            engine.close()

    accepted, refused = imported(Engine(load_config(tmp_path / "wall")))
    assert refused > 0 and accepted < len(world.history)  # the window works on the wall clock
    on_world_clock = imported(Engine(load_config(tmp_path / "world"), clock=lambda: world.now))
    assert on_world_clock == (len(world.history), 0)


def test_the_demo_world_and_stored_items_keep_their_times(tmp_path: Path) -> None:
    """``fyp demo`` builds its world on the wall clock and imports it on the wall clock."""
    world = build_world(WorldConfig(seed=9, n_creators=8, n_items=80, n_viewers=8))
    files = write_world(world, tmp_path / "input")
    engine = Engine(load_config(tmp_path / "data"))
    try:
        reports = [import_file(engine, k, files[k]) for k in ("items", "users", "events")]
        assert [r.error_count for r in reports] == [0, 0, 0]
        assert reports[2].accepted == len(world.history)
        first = json.loads(files["items"].read_text().splitlines()[0])
        record = engine.catalog.get_item(first["item_id"])
        assert record is not None
        assert record.created_at == datetime.fromisoformat(first["created_at"]).timestamp()
    finally:
        engine.close()

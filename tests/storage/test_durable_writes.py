"""Which writes wait for the disk (SQLite ``synchronous=FULL``) and which do not (``NORMAL``).

Every acknowledged write survives a crash of the process either way (tests/test_durability.py
kills a real server); FULL is what survives a power loss. docs/TRUST.md ("Durability") says
which write uses which and why; this pins it, so a change shows up here and in that table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fyp.config import load_config
from fyp.engine import Engine
from fyp.governance.policy import Principal
from fyp.storage import sql
from fyp.types import Event, Item, User

T0 = 1_790_000_000.0


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(load_config(tmp_path), clock=lambda: T0 + 60)
    eng.put_items(
        [Item(item_id=f"v{i}", creator_id="c", created_at=T0, duration_s=20) for i in range(30)]
    )
    eng.put_users([User(user_id=u, region="us") for u in ("ann", "bob", "cat")])
    eng.ingest(
        [
            Event(event_id=f"e{i}", user_id="ann", item_id=f"v{i}", type="like", ts=T0)
            for i in range(5)
        ]
    )
    yield eng
    eng.close()


def _writes(monkeypatch: pytest.MonkeyPatch, action: Callable[[], Any]) -> set[tuple[str, bool]]:
    """(database, durable) of every write transaction ``action`` opened; the database is named
    by its file (``catalog``, ``region-us``, ``region-us-audit``)."""
    seen: set[tuple[str, bool]] = set()
    original = sql.Database.write

    def write(self: sql.Database, durable: bool = False) -> contextlib.AbstractContextManager[Any]:
        seen.add((Path(self.url.split("///", 1)[-1]).stem, durable))
        return original(self, durable)

    with monkeypatch.context() as patch:
        patch.setattr(sql.Database, "write", write)
        action()
    return seen


def test_acknowledged_writes_of_data_wait_for_the_disk(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users, items, controls and interest resets used NORMAL: acknowledged, then lost to a
    power cut (a user who then "does not exist", personalization silently back on)."""
    cases: dict[str, tuple[Callable[[], Any], str]] = {
        "events": (
            lambda: engine.ingest(
                [Event(event_id="x1", user_id="bob", item_id="v1", type="play", ts=T0)]
            ),
            "region-us",
        ),
        "users": (lambda: engine.put_users([User(user_id="dan", region="us")]), "region-us"),
        "items": (
            lambda: engine.put_items(
                [Item(item_id="w1", creator_id="c", created_at=T0, duration_s=9)]
            ),
            "catalog",
        ),
        "controls": (lambda: engine.rights.put_controls("bob", False, ["x"], []), "region-us"),
        "interests": (lambda: engine.rights.delete_interests("ann"), "region-us"),
        "erasure": (lambda: engine.rights.erase("cat"), "region-us"),
    }
    for name, (action, database) in cases.items():
        writes = {durable for db, durable in _writes(monkeypatch, action) if db == database}
        assert writes == {True}, f"{name}: writes to {database} with durable={writes}"


def test_the_audit_records_of_rights_and_signed_heads_wait_for_the_disk(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export's or erasure's audit entry is acknowledged by its ``seq`` (and a signed head
    may be handed to a monitor): they must outlive a power loss like the act they record."""
    export = _writes(monkeypatch, lambda: engine.rights.export("ann"))
    assert ("region-us-audit", True) in export
    erase = _writes(monkeypatch, lambda: engine.rights.erase("bob"))
    assert ("region-us-audit", True) in erase
    engine.gate.open("us", Principal.service("us"), "serve_feed")  # the log grows
    head = _writes(monkeypatch, lambda: engine.gate.sign_audit_head("us"))
    assert head == {("region-us-audit", True)}


def test_per_request_records_stay_normal(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The access decision of every open and the served-feed log are written on every request;
    a flush each would cost every feed a disk round trip. They reach the disk with the next
    durable write to their file (one WAL) or the next signed head (at most 10 s later)."""
    opened = _writes(
        monkeypatch, lambda: engine.gate.open("us", Principal.service("us"), "serve_feed")
    )
    assert opened == {("region-us-audit", False)}
    feed = _writes(monkeypatch, lambda: engine.feed("ann", 5))
    assert ("region-us", False) in feed and ("region-us", True) not in feed

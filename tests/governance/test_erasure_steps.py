"""Erasure step by step: what holds between its steps, after a crash between them, and when two
erasures meet (the races themselves are in ``test_erasure_races.py``)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fyp.api.app import create_app
from fyp.config import load_config
from fyp.engine import Engine
from fyp.errors import Conflict, NotFound
from fyp.governance.policy import Principal
from fyp.governance.rights import subject_hash
from fyp.storage.models import ModelStore
from fyp.storage.region import ERASED_TABLES

LOCAL = ("127.0.0.1", 40000)


@pytest.fixture
def engine(tmp_path: Path, clock: Any, make_item: Any, make_user: Any, make_event: Any) -> Any:
    eng = Engine(load_config(tmp_path), clock=clock)
    eng.put_items([make_item(f"v{k}", f"c{k % 3}", tags=["pets"]) for k in range(12)])
    eng.put_users([make_user("ana", "us"), make_user("bo", "us")])
    assert eng.ingest([make_event("ana", f"v{k}", "like") for k in range(4)]).accepted == 4
    yield eng
    eng.close()


def _order(engine: Engine, user_id: str, claim: str | None = "c1") -> Any:
    """The first step of an erasure, as ``UserRightsService.erase`` takes it."""
    handle = engine.gate.open("us", Principal.service("us"), "erase_user")
    pending = handle.rights.begin_erasure(user_id, engine.clock(), claim)
    assert pending is not None
    return handle, pending


def _erase_entries(engine: Engine, user_id: str) -> list[Any]:
    log = engine.gate.audit_log("us")
    subject = subject_hash("us", user_id)
    return [
        r
        for r in log.tail(log.count())
        if r.action == "erase_user" and r.detail["subject"] == subject
    ]


def test_once_ordered_no_write_about_the_user_is_accepted_and_reads_find_no_user(
    engine: Engine, make_event: Any, make_user: Any
) -> None:
    _, pending = _order(engine, "ana")
    assert pending.rows["users"] == 1 and pending.rows["events"] == 4
    result = engine.ingest([make_event("ana", "v5", "like"), make_event("bo", "v5", "like")])
    assert result.accepted == 1 and [i for i, _ in result.errors] == [0]
    with pytest.raises(NotFound):
        engine.feed("ana", 3)
    with pytest.raises(NotFound):
        engine.rights.put_controls("ana", False, [], [])
    with pytest.raises(NotFound):
        engine.rights.export("ana")
    with pytest.raises(NotFound):
        engine.rights.erase("ana")  # a repeat finds no user, it does not erase twice
    with pytest.raises(Conflict):
        engine.put_users([make_user("ana", "us")])
    # The counts taken when the erasure was ordered are still exactly what is there.
    handle = engine.gate.open("us", Principal.service("us"), "erase_user")
    assert handle.rights.finish_erasure(pending.erasure_id) == pending.rows
    # Afterwards the id is free again, as a new user with nothing of the old one.
    engine.put_users([make_user("ana", "us")])
    exported = engine.rights.export("ana")
    assert exported["events"] == [] and exported["served"] == []


def test_an_erasure_ordered_by_a_process_that_died_is_finished_at_the_next_start(
    engine: Engine, tmp_path: Path, clock: Any
) -> None:
    _order(engine, "ana", claim=None)  # ordered; the process dies before the audit entry
    engine.close()
    restarted = Engine(load_config(tmp_path), clock=clock)
    try:
        assert restarted.gate.oldest_pending_erasure("us") is None
        assert [e.detail["rows"]["events"] for e in _erase_entries(restarted, "ana")] == [4]
        assert restarted.rights.export("bo")["profile"]["user_id"] == "bo"
        handle = restarted.gate.open("us", Principal.auditor("us"), "audit")
        assert handle.audit.verify().ok
    finally:
        restarted.close()


def test_a_process_that_died_after_recording_leaves_one_audit_entry(
    engine: Engine, tmp_path: Path, clock: Any
) -> None:
    handle, pending = _order(engine, "ana", claim="dead")
    handle.record(
        "erase_user",
        {"subject": subject_hash("us", "ana"), "erasure": pending.erasure_id, "rows": pending.rows},
    )
    engine.close()  # died between the audit entry and the deletion
    clock.advance(60.0)  # its claim is stale by the time another process looks
    restarted = Engine(load_config(tmp_path), clock=clock)
    try:
        assert restarted.gate.oldest_pending_erasure("us") is None
        assert len(_erase_entries(restarted, "ana")) == 1
        with pytest.raises(NotFound):
            restarted.get_user("ana")
    finally:
        restarted.close()


def test_a_fresh_claim_of_a_live_process_is_left_to_it(engine: Engine) -> None:
    _order(engine, "ana", claim="alive")
    # The background sync finishes only erasures older than its threshold...
    assert engine.resume_erasures(older_than_s=30.0) == 0
    assert engine.gate.oldest_pending_erasure("us") is not None
    # ...and a start finishes it, waiting for the live claim to go stale first.
    engine.clock.advance(60.0)  # type: ignore[attr-defined]
    assert engine.resume_erasures() == 1
    assert len(_erase_entries(engine, "ana")) == 1


def test_a_repeated_delete_answers_404_and_records_nothing(engine: Engine) -> None:
    with TestClient(
        create_app(engine, background_training=False, close_engine=False), client=LOCAL
    ) as client:
        first = client.delete("/v1/users/ana")
        assert first.status_code == 200
        assert first.json()["rows_deleted"]["events"] == 4
        second = client.delete("/v1/users/ana")
        assert second.status_code == 404
        assert second.headers["content-type"].startswith("application/problem+json")
    assert len(_erase_entries(engine, "ana")) == 1


def test_parallel_erasures_in_one_region_each_answer_with_their_own_receipt(
    engine: Engine, make_user: Any, make_event: Any
) -> None:
    users = [f"p{k}" for k in range(24)]
    engine.put_users([make_user(u, "us") for u in users])
    engine.ingest([make_event(u, "v1", "play", watch_ms=1000) for u in users])
    receipts: dict[str, Any] = {}
    errors: list[BaseException] = []

    def erase(user_id: str) -> None:
        try:
            receipts[user_id] = engine.rights.erase(user_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=erase, args=(u,)) for u in users + users[:6]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(receipts) == set(users)
    assert len(errors) == 6 and all(isinstance(e, NotFound) for e in errors), errors
    assert len({r["audit"]["seq"] for r in receipts.values()}) == len(users)
    for user_id in users:
        assert len(_erase_entries(engine, user_id)) == 1
        assert sum(receipts[user_id]["rows_deleted"].values()) > 0


def test_concurrent_erasure_marks_never_fail_and_never_move_back(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    errors: list[BaseException] = []

    def mark(k: int) -> None:
        try:
            for i in range(40):
                store.mark_erasure(1_000.0 + k * 100 + i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=mark, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.last_erasure() == 1_000.0 + 7 * 100 + 39
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.endswith(".tmp")]


def test_every_table_erasure_counts_is_one_it_deletes(engine: Engine) -> None:
    receipt = engine.rights.erase("ana")
    assert set(receipt["rows_deleted"]) == set(ERASED_TABLES)

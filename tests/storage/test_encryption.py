"""Encryption at rest: sealed columns, keys bound to their user, rotation, crypto-shredding.

Every test runs on SQLite and, when ``FYP_TEST_POSTGRES_URL`` is set, on PostgreSQL (the store is
the same code on both). What is asserted is what lies in the database: the raw rows hold no
personal value in plaintext, a ciphertext moved to another user or row does not open, rotation
changes only the wrapped keys, and an erased user's rows cannot be read back from a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import text

from fyp.config import FypConfig
from fyp.engine import fold_policy
from fyp.errors import CiphertextInvalid, KeyUnavailable
from fyp.storage.envelope import (
    DataKey,
    Kek,
    KeyFile,
    Keyring,
    associated_data,
    kek_id,
)
from fyp.storage.region import REGION_SCHEMA_VERSION, SqlRegionStore
from fyp.storage.roles import ItemRecord, ServedItem, UserControls
from fyp.types import Event, User, from_epoch

POLICY = fold_policy(FypConfig())
SECRET_ITEM = "item-secretly-watched"
SECRET_ATTR = "attr-very-private"
SECRET_WORD = "keyword-private-topic"
SECRET_REASON = "reason-code-private"
SECRET_REQUEST = "request-private-7"
SEALED_TABLES = ("users", "events", "feed_log", "user_controls", "user_keys")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/region-us.db"
    make: Callable[[str], str] = request.getfixturevalue("pg_schema_url")
    return make("region-us")


@pytest.fixture
def key_file(tmp_path: Path) -> KeyFile:
    return KeyFile(tmp_path / "keys" / "kek-us.json", "us")


@pytest.fixture
def items(make_record: Any) -> dict[str, ItemRecord]:
    return {
        SECRET_ITEM: make_record(SECRET_ITEM, "alice", tags=["cats"]),
        "v2": make_record("v2", "bob", tags=["cooking"]),
    }


def open_store(url: str, keys: KeyFile | Keyring | None) -> SqlRegionStore:
    return SqlRegionStore(url, "us", POLICY, keys=keys)


def fill(store: SqlRegionStore, items: dict[str, ItemRecord], now: float) -> None:
    store.upsert_users(
        [
            User(user_id="u1", region="us", attributes={"note": SECRET_ATTR}),
            User(user_id="u2", region="us", attributes={"note": "other"}),
        ],
        now,
    )
    events = [
        Event(
            event_id=f"e{i}",
            user_id=user,
            item_id=SECRET_ITEM if i % 2 else "v2",
            type="like" if i % 3 else "play",
            ts=from_epoch(now - 100 + i),
            watch_ms=1000 * i,
            request_id=SECRET_REQUEST,
        )
        for i, user in enumerate(["u1", "u1", "u1", "u2", "u2", "u1"])
    ]
    store.append(events, items, now)
    store.put_controls("u1", UserControls(True, (SECRET_WORD,), ("cooking",)), now)
    store.record_served(
        "u1", "r1", "m1", [ServedItem(SECRET_ITEM, 0, 1.0, [{"code": SECRET_REASON}])], now
    )


@pytest.fixture
def store(
    url: str, key_file: KeyFile, items: dict[str, ItemRecord], now: float
) -> Iterator[SqlRegionStore]:
    s = open_store(url, key_file)
    fill(s, items, now)
    yield s
    s.close()


def raw(store: SqlRegionStore, query: str, **params: Any) -> list[Any]:
    with store.db.engine.connect() as conn:
        return list(conn.execute(text(query), params).all())


def raw_dump(store: SqlRegionStore, tables: tuple[str, ...] = SEALED_TABLES) -> bytes:
    """Every value of the tables, as bytes (what a copy of the database holds)."""
    out = bytearray()
    for table in tables:
        for row in raw(store, f"SELECT * FROM {table}"):
            for value in row:
                out += (
                    bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                )
                out += b"\x00"
    return bytes(out)


def assert_sealed(store: SqlRegionStore) -> None:
    dump = raw_dump(store)
    for secret in (SECRET_ATTR, SECRET_WORD, SECRET_REASON, SECRET_REQUEST):
        assert secret.encode() not in dump, secret
    # Which items a user watched is sealed in the event log; served items (feed_log.item_id) and
    # seen items stay plaintext derived state, like follows and affinities.
    assert SECRET_ITEM.encode() not in raw_dump(store, ("users", "events", "user_controls"))


def event_blob(store: SqlRegionStore, event_id: str) -> bytes:
    [(blob,)] = raw(store, "SELECT payload FROM events WHERE event_id = :e", e=event_id)
    return bytes(blob)


def test_personal_values_are_sealed_and_read_back_unchanged(
    store: SqlRegionStore, now: float
) -> None:
    assert_sealed(store)
    # ...while every read path returns the values as written.
    assert store.get_user("u1").attributes == {"note": SECRET_ATTR}  # type: ignore[union-attr]
    recent = store.recent_for_user("u1", 10)
    assert [e.event_id for e in recent] == ["e5", "e2", "e1", "e0"]
    assert recent[0].item_id == SECRET_ITEM and recent[0].type == "like"
    assert recent[0].watch_ms == 5000 and recent[0].request_id == SECRET_REQUEST
    scanned = [e for batch in store.scan(100, batch=4) for e in batch]
    assert [e.event_id for e in scanned] == [f"e{i}" for i in range(6)]
    assert [e.user_id for e in scanned] == ["u1", "u1", "u1", "u2", "u2", "u1"]
    assert scanned[3].item_id == SECRET_ITEM and scanned[3].type == "play"
    assert store.controls("u1").keyword_filters == (SECRET_WORD,)
    assert store.hydrate("u1", now).recent_positives == (SECRET_ITEM, "v2")
    exported = store.export_user("u1")
    assert exported is not None
    assert exported["users"][0]["attributes"] == {"note": SECRET_ATTR}
    assert [e["item_id"] for e in exported["events"]] == [
        SECRET_ITEM if i % 2 else "v2" for i in (0, 1, 2, 5)
    ]
    assert set(exported["events"][0]) == {
        "seq",
        "event_id",
        "user_id",
        "item_id",
        "type",
        "ts",
        "watch_ms",
        "request_id",
        "received_at",
    }
    assert exported["feed_log"][0]["reasons"] == [{"code": SECRET_REASON}]
    assert exported["user_controls"][0]["keyword_filters"] == [SECRET_WORD]
    assert "user_keys" not in exported, "the wrapped key is not the user's data"


def test_a_ciphertext_moved_to_another_user_or_row_does_not_open(store: SqlRegionStore) -> None:
    # u2's event e3 gets u1's sealed payload of e1: the associated data names user and event.
    with store.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE events SET payload = :p WHERE event_id = 'e3'"),
            {"p": event_blob(store, "e1")},
        )
    store.forget_keys()
    with pytest.raises(CiphertextInvalid, match="e3"):
        list(store.scan(100))
    with pytest.raises(CiphertextInvalid, match="e3"):
        store.recent_for_user("u2", 10)
    assert len(store.recent_for_user("u1", 10)) == 4
    # Within one user too: the payload of e0 does not pass for e2's.
    with store.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE events SET payload = :p WHERE event_id = 'e2'"),
            {"p": event_blob(store, "e0")},
        )
    with pytest.raises(CiphertextInvalid, match="e2"):
        store.recent_for_user("u1", 10)
    # Attributes copied from u1 to u2 do not open as u2's either.
    [(attrs,)] = raw(store, "SELECT attributes FROM users WHERE user_id = 'u1'")
    with store.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE users SET attributes = :a WHERE user_id = 'u2'"), {"a": bytes(attrs)}
        )
    with pytest.raises(CiphertextInvalid):
        store.get_user("u2")
    # A wrapped data key copied to another user does not unwrap: it is bound to its user.
    [(wrapped,)] = raw(store, "SELECT wrapped_dek FROM user_keys WHERE user_id = 'u1'")
    with store.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE user_keys SET wrapped_dek = :w WHERE user_id = 'u2'"),
            {"w": bytes(wrapped)},
        )
    store.forget_keys()
    with pytest.raises(CiphertextInvalid, match="wrapped data key"):
        store.get_user("u2")
    assert store.get_user("u1") is not None


def test_the_associated_data_is_unambiguous() -> None:
    assert associated_data("k", "us", "ab", "c") != associated_data("k", "us", "a", "bc")
    key = DataKey(os.urandom(32))
    sealed = key.seal(b"x", associated_data("events.payload", "us", "u1", "e1"))
    with pytest.raises(InvalidTag):
        key.open(sealed, associated_data("events.payload", "eu", "u1", "e1"))
    assert key.open(sealed, associated_data("events.payload", "us", "u1", "e1")) == b"x"


def test_a_wrong_missing_or_corrupt_key_file_is_a_clear_error(
    url: str, key_file: KeyFile, items: dict[str, ItemRecord], now: float, tmp_path: Path
) -> None:
    first = open_store(url, key_file)
    fill(first, items, now)
    first.close()
    good = key_file.path.read_bytes()
    kid = json.loads(good)["keys"][0]["id"]

    def problem() -> str:
        s = open_store(url, key_file)
        try:
            assert s.key_problem is not None
            assert s.has_users(["u1"]) == {"u1"}, "non-personal lookups still answer"
            for call in (
                lambda: s.get_user("u1"),
                lambda: s.recent_for_user("u1", 5),
                lambda: list(s.scan(10)),
                lambda: s.export_user("u1"),
            ):
                with pytest.raises(KeyUnavailable):
                    call()
            return s.key_problem
        finally:
            s.close()

    key_file.path.unlink()
    assert "missing" in problem() and kid in problem()
    assert not key_file.path.exists(), "no new key is made for a region whose data needs the old"
    KeyFile(key_file.path, "us").save(Keyring("us", [Kek.generate(1)]))
    assert "does not hold KEK " + kid in problem()
    key_file.path.write_text("{not json")
    key_file.path.chmod(0o600)
    assert "corrupt" in problem()
    doc = json.loads(good)
    doc["keys"][0]["key"] = Keyring.ephemeral("us").newest.key.hex()[:44]
    key_file.path.write_text(json.dumps(doc))
    assert "corrupt" in problem()
    doc = json.loads(good)
    doc["keys"][0]["key"] = "AAAAAAAA" + doc["keys"][0]["key"][8:]  # same length, other bytes
    key_file.path.write_text(json.dumps(doc))
    assert "other bytes" in problem()
    doc = json.loads(good)
    doc["region"] = "eu"
    key_file.path.write_text(json.dumps(doc))
    assert "belongs to region 'eu'" in problem()
    key_file.path.write_bytes(good)
    key_file.path.chmod(0o644)
    assert "readable by others" in problem()
    key_file.path.chmod(0o600)
    again = open_store(url, key_file)
    try:
        assert again.key_problem is None
        assert again.get_user("u1").attributes == {"note": SECRET_ATTR}  # type: ignore[union-attr]
    finally:
        again.close()


def test_rotation_rewraps_only_the_data_keys(
    store: SqlRegionStore, url: str, key_file: KeyFile, tmp_path: Path, now: float
) -> None:
    old_file = tmp_path / "old-kek.json"
    shutil.copy2(key_file.path, old_file)
    old_kek = store.key_status()[0].id

    def rows() -> dict[str, list[Any]]:
        return {
            "events": raw(store, "SELECT seq, event_id, user_id, ts, payload FROM events"),
            "users": raw(store, "SELECT * FROM users ORDER BY user_id"),
            "feed_log": raw(store, "SELECT * FROM feed_log"),
            "user_controls": raw(store, "SELECT * FROM user_controls"),
        }

    before = rows()
    wrapped = dict(raw(store, "SELECT user_id, wrapped_dek FROM user_keys"))
    report = store.rotate_kek(now, batch=1)
    assert report.rewrapped == 2 and report.retired == [old_kek] and not report.resumed
    assert rows() == before, "no encrypted row changes"
    after = dict(raw(store, "SELECT user_id, wrapped_dek FROM user_keys"))
    assert set(after) == set(wrapped) and all(after[u] != wrapped[u] for u in wrapped)
    assert {k for (k,) in raw(store, "SELECT kek_id FROM user_keys")} == {report.new_kek}
    # The old KEK is gone from the key file, and everything still reads, in a new process too.
    assert [k["id"] for k in json.loads(key_file.path.read_text())["keys"]] == [report.new_kek]
    store.forget_keys()
    assert store.get_user("u1").attributes == {"note": SECRET_ATTR}  # type: ignore[union-attr]
    fresh = open_store(url, key_file)
    try:
        assert fresh.key_problem is None
        assert [e.event_id for batch in fresh.scan(100) for e in batch] == [
            f"e{i}" for i in range(6)
        ]
        assert fresh.controls("u1").keyword_filters == (SECRET_WORD,)
        statuses = {k.id: k for k in fresh.key_status()}
        assert statuses[report.new_kek].active and statuses[report.new_kek].data_keys == 2
        assert statuses[old_kek].retired_at is not None and not statuses[old_kek].in_file
    finally:
        fresh.close()
    # A key file holding only the retired KEK no longer opens the region.
    stale = open_store(url, KeyFile(old_file, "us"))
    try:
        assert stale.key_problem is not None and report.new_kek in stale.key_problem
    finally:
        stale.close()


def test_an_interrupted_rotation_resumes_and_keeps_every_key_readable(
    store: SqlRegionStore, url: str, key_file: KeyFile, now: float, make_user: Any
) -> None:
    store.upsert_users([make_user(f"x{i}") for i in range(7)], now)
    old_kek = store.key_status()[0].id
    with pytest.raises(InterruptedError):
        store.rotate_kek(now, batch=3, stop_after_batches=1)
    # Half-way: both KEKs listed and registered, old and new wrapped keys both read.
    keks = {k.id: k for k in store.key_status()}
    assert len(keks) == 2 and all(k.in_file and k.registered for k in keks.values())
    assert sorted(k.data_keys for k in keks.values()) == [3, 6]
    middle = open_store(url, key_file)
    try:
        assert middle.key_problem is None
        assert middle.get_user("u1").attributes == {"note": SECRET_ATTR}  # type: ignore[union-attr]
        assert middle.get_user("x6") is not None
        # A user created mid-rotation gets a data key under the new KEK.
        middle.upsert_users([make_user("late")], now)
    finally:
        middle.close()
    new_kek = next(k for k in keks if k != old_kek)
    [(late,)] = raw(store, "SELECT kek_id FROM user_keys WHERE user_id = 'late'")
    assert late == new_kek
    report = store.rotate_kek(now, batch=3)
    assert report.resumed and report.new_kek == new_kek and report.retired == [old_kek]
    assert report.rewrapped == 6
    assert {k for (k,) in raw(store, "SELECT kek_id FROM user_keys")} == {new_kek}
    assert store.get_user("x0") is not None


def test_erasure_shreds_the_users_rows_in_any_copy(
    tmp_path: Path, key_file: KeyFile, items: dict[str, ItemRecord], now: float
) -> None:
    """A copy of the region database made before an erasure: the erased user's rows in it cannot
    be read with the live keys afterwards (their data key is gone); once the KEK is rotated, not
    even the wrapped key the copy itself carries opens."""
    path = tmp_path / "region-us.db"
    store = open_store(f"sqlite:///{path}", key_file)
    fill(store, items, now)
    backup = tmp_path / "backup.db"
    with sqlite3.connect(path) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)  # a consistent copy of the file, WAL included
    live.close()
    copy.close()

    def copied(query: str) -> list[Any]:
        con = sqlite3.connect(backup)
        try:
            return list(con.execute(query))
        finally:
            con.close()

    sealed_events = copied("SELECT event_id, payload FROM events WHERE user_id = 'u1'")
    [(sealed_attrs,)] = copied("SELECT attributes FROM users WHERE user_id = 'u1'")
    [(kid, wrapped)] = copied("SELECT kek_id, wrapped_dek FROM user_keys WHERE user_id = 'u1'")
    assert len(sealed_events) == 4

    def open_with_live_keys() -> list[bytes]:
        """Decrypt the copy's rows with the data key the live region holds for u1."""
        [(live_kid, live_wrapped)] = raw(
            store, "SELECT kek_id, wrapped_dek FROM user_keys WHERE user_id = 'u1'"
        ) or [(None, None)]
        if live_wrapped is None:
            raise KeyError("the live region holds no data key for u1")
        ring = key_file.load()
        key = DataKey(ring.unwrap(live_kid, "u1", bytes(live_wrapped)))
        out = [key.open(sealed_attrs, associated_data("users.attributes", "us", "u1"))]
        out += [
            key.open(blob, associated_data("events.payload", "us", "u1", event_id))
            for event_id, blob in sealed_events
        ]
        return out

    before = open_with_live_keys()
    assert json.loads(before[0]) == {"note": SECRET_ATTR}
    assert SECRET_ITEM in json.loads(before[2])
    counts = store.erase_user("u1")
    assert counts["user_keys"] == 1 and counts["events"] == 4
    with pytest.raises(KeyError):
        open_with_live_keys()
    # The copy still carries u1's wrapped key: it opens under the KEK of its time, until that KEK
    # is rotated out. After `fyp keys rotate`, the live keyring cannot unwrap it either.
    assert key_file.load().unwrap(kid, "u1", wrapped)
    report = store.rotate_kek(now)
    assert report.retired == [kid]
    with pytest.raises(KeyUnavailable):
        key_file.load().unwrap(kid, "u1", wrapped)
    # u2, not erased, is still readable from the live region after the rotation.
    assert store.get_user("u2").attributes == {"note": "other"}  # type: ignore[union-attr]
    store.close()


def test_an_erased_and_recreated_user_gets_a_new_key_in_every_process(
    url: str, key_file: KeyFile, items: dict[str, ItemRecord], now: float, make_user: Any
) -> None:
    first = open_store(url, key_file)
    second = open_store(url, key_file)
    try:
        fill(first, items, now)
        assert second.get_user("u1") is not None  # second now caches u1's data key
        first.erase_user("u1")
        first.upsert_users([User(user_id="u1", region="us", attributes={"n": 2})], now)
        # second's cached key is stale: reads retry with the stored key, writes never use it.
        assert second.get_user("u1").attributes == {"n": 2}  # type: ignore[union-attr]
        second.put_controls("u1", UserControls(False, ("w",), ()), now)
        assert first.controls("u1").keyword_filters == ("w",)
    finally:
        first.close()
        second.close()


def test_the_data_key_cache_is_bounded_and_forgets_erased_users(
    url: str, key_file: KeyFile, now: float, make_user: Any
) -> None:
    store = SqlRegionStore(url, "us", POLICY, keys=key_file, dek_cache=5)
    try:
        store.upsert_users([make_user(f"u{i}") for i in range(20)], now)
        assert store.cached_keys == 5
        for i in range(20):
            assert store.get_user(f"u{i}") is not None
        assert store.cached_keys == 5
        store.erase_user("u19")
        assert store.cached_keys == 4
    finally:
        store.close()


def test_kek_ids_name_the_key_bytes() -> None:
    kek = Kek.generate(1)
    assert kek.id == kek_id(kek.key) and kek_id(os.urandom(32)) != kek.id


def test_a_plaintext_version_2_region_is_encrypted_in_place(
    url: str, key_file: KeyFile, now: float
) -> None:
    """A database written by the previous release (plaintext rows) is upgraded at open."""
    bare = SqlRegionStore(url, "us", POLICY, keys=Keyring.ephemeral("us"))
    with bare.db.engine.begin() as conn:
        for table in ("events", "users", "feed_log", "user_controls", "user_keys", "region_keks"):
            conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(text("UPDATE fyp_meta SET value = '2' WHERE key = 'region.schema_version'"))
        conn.execute(
            text(
                "CREATE TABLE users (user_id VARCHAR(128) PRIMARY KEY, attributes "
                "TEXT NOT NULL, created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL)"
            )
        )
        seq = "INTEGER" if url.startswith("sqlite") else "BIGSERIAL"
        conn.execute(
            text(
                f"CREATE TABLE events (seq {seq} PRIMARY KEY, event_id VARCHAR(128) NOT NULL "
                "UNIQUE, user_id VARCHAR(128) NOT NULL, item_id VARCHAR(128) NOT NULL, type "
                "VARCHAR(16) NOT NULL, ts FLOAT NOT NULL, watch_ms BIGINT, request_id "
                "VARCHAR(128), received_at FLOAT NOT NULL)"
            )
        )
        conn.execute(text("CREATE INDEX ix_events_user_ts ON events (user_id, ts)"))
        conn.execute(
            text(
                "CREATE TABLE feed_log (request_id VARCHAR(64) NOT NULL, position INTEGER NOT "
                "NULL, user_id VARCHAR(128) NOT NULL, item_id VARCHAR(128) NOT NULL, score FLOAT "
                "NOT NULL, model_version VARCHAR(128) NOT NULL, reasons TEXT NOT NULL, ts FLOAT "
                "NOT NULL, PRIMARY KEY (request_id, position))"
            )
        )
        conn.execute(
            text(
                "CREATE TABLE user_controls (user_id VARCHAR(128) PRIMARY KEY, personalized "
                "BOOLEAN NOT NULL, keyword_filters TEXT NOT NULL, blocked_tags TEXT NOT NULL, "
                "interests_reset_at FLOAT, updated_at FLOAT NOT NULL)"
            )
        )
        conn.execute(
            text("INSERT INTO users VALUES ('u1', :a, 1, 1), ('u2', '{}', 1, 1)"),
            {"a": json.dumps({"note": SECRET_ATTR})},
        )
        for i in range(12):
            conn.execute(
                text(
                    "INSERT INTO events (event_id, user_id, item_id, type, ts, watch_ms, "
                    "request_id, received_at) VALUES (:e, :u, :i, :t, :ts, :w, :r, 1)"
                ),
                {
                    "e": f"e{i}",
                    "u": "u1" if i % 3 else "u2",
                    "i": SECRET_ITEM,
                    "t": "like" if i % 2 else "skip",
                    "ts": now - 50 + i,
                    "w": None if i % 2 else 700,
                    "r": SECRET_REQUEST if i == 4 else None,
                },
            )
        conn.execute(
            text(
                "INSERT INTO feed_log VALUES ('r1', 0, 'u1', 'v', 1.0, 'm', :reasons, 1), "
                "('r1', 1, 'u1', 'w', 0.5, 'm', '[]', 1)"
            ),
            {"reasons": json.dumps([{"code": SECRET_REASON}])},
        )
        conn.execute(
            text("INSERT INTO user_controls VALUES ('u1', false, :k, '[\"cats\"]', NULL, 1)"),
            {"k": json.dumps([SECRET_WORD])},
        )
    bare.close()
    store = open_store(url, key_file)
    try:
        assert store.key_problem is None
        assert raw(store, "SELECT value FROM fyp_meta WHERE key = 'region.schema_version'") == [
            (str(REGION_SCHEMA_VERSION),)
        ]
        assert_sealed(store)
        columns = [c for (c,) in raw(store, "SELECT event_id FROM events ORDER BY seq")]
        assert columns == [f"e{i}" for i in range(12)]
        scanned = [e for batch in store.scan(100) for e in batch]
        assert [(e.event_id, e.user_id, e.item_id, e.type, e.watch_ms) for e in scanned] == [
            (
                f"e{i}",
                "u1" if i % 3 else "u2",
                SECRET_ITEM,
                "like" if i % 2 else "skip",
                None if i % 2 else 700,
            )
            for i in range(12)
        ]
        assert scanned[4].request_id == SECRET_REQUEST
        assert store.get_user("u1").attributes == {"note": SECRET_ATTR}  # type: ignore[union-attr]
        assert store.controls("u1") == UserControls(False, (SECRET_WORD,), ("cats",))
        exported = store.export_user("u1")
        assert exported is not None
        assert [r["reasons"] for r in exported["feed_log"]] == [[{"code": SECRET_REASON}], []]
        # New writes land in the upgraded tables like in a new database.
        store.upsert_users([User(user_id="u3", region="us", attributes={"a": 1})], now)
        assert store.get_user("u3").attributes == {"a": 1}  # type: ignore[union-attr]
        assert store.key_status()[0].data_keys == 3
    finally:
        store.close()


def test_an_upgrade_that_cannot_get_its_key_leaves_the_database_alone(
    tmp_path: Path, now: float
) -> None:
    path = tmp_path / "region-us.db"
    store = SqlRegionStore(f"sqlite:///{path}", "us", POLICY, keys=Keyring.ephemeral("us"))
    store.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE fyp_meta SET value = '2' WHERE key = 'region.schema_version'")
    con.commit()
    con.close()
    broken = KeyFile(tmp_path / "kek.json", "us")
    broken.path.write_text("garbage")
    broken.path.chmod(0o600)
    again = SqlRegionStore(f"sqlite:///{path}", "us", POLICY, keys=broken)
    try:
        assert again.key_problem is not None and "corrupt" in again.key_problem
    finally:
        again.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM fyp_meta").fetchall() == [("2",)]
    con.close()


def test_a_process_started_before_a_rotation_follows_it(
    store: SqlRegionStore, url: str, key_file: KeyFile, now: float, make_user: Any
) -> None:
    """Another process rotated the KEK and deleted the old one: this process reloads the key file
    when it meets a data key wrapped by the new KEK, and wraps new users' keys by it."""
    other = open_store(url, key_file)
    try:
        report = other.rotate_kek(now)
    finally:
        other.close()
    store.forget_keys()  # as after an eviction from the cache
    assert store.get_user("u1").attributes == {"note": SECRET_ATTR}  # type: ignore[union-attr]
    store.upsert_users([make_user("newcomer")], now)
    [(kid,)] = raw(store, "SELECT kek_id FROM user_keys WHERE user_id = 'newcomer'")
    assert kid == report.new_kek
    again = open_store(url, key_file)
    try:
        assert again.get_user("newcomer") is not None
    finally:
        again.close()

"""Users' rights through the HTTP API: export, erasure (with its audited receipt), controls and
inferred interests, each taking effect on the very next request."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fyp.api.app import create_app
from fyp.config import load_config
from fyp.engine import Engine
from fyp.governance import merkle
from fyp.governance.keys import Verifier
from fyp.governance.policy import Principal
from fyp.storage.audit import TreeHead

T0 = 1_700_000_000.0
LOCAL = ("127.0.0.1", 40000)
TOPICS = ["cooking", "pets", "travel", "music"]


def _items(n: int) -> list[dict[str, Any]]:
    return [
        {
            "item_id": f"v{i}",
            "creator_id": f"creator{i % 9}",
            "created_at": T0 - i * 600,
            "duration_s": 20,
            "caption": f"clip number {i} about {TOPICS[i % 4]}",
            "tags": [TOPICS[i % 4], f"extra{i % 5}"],
        }
        for i in range(n)
    ]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(load_config(tmp_path), clock=lambda: T0 + 3600)
    yield eng
    eng.close()


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine, background_training=False), client=LOCAL) as c:
        assert c.put("/v1/items", json={"items": _items(160)}).status_code == 200
        users = [{"user_id": "alice", "region": "eu", "attributes": {"lang": "fr"}}]
        users.append({"user_id": "bob", "region": "eu"})
        assert c.put("/v1/users", json={"users": users}).status_code == 200
        # alice loves cooking: she finishes and likes cooking videos, and follows one creator.
        events = []
        for n, i in enumerate(range(0, 40, 4)):
            for kind in ("play", "finish", "like"):
                events.append(
                    {
                        "event_id": f"a-{n}-{kind}",
                        "user_id": "alice",
                        "item_id": f"v{i}",
                        "type": kind,
                        "ts": T0 + n,
                        **({"watch_ms": 20_000} if kind == "play" else {}),
                    }
                )
        events.append(
            {"event_id": "a-f", "user_id": "alice", "item_id": "v1", "type": "follow", "ts": T0}
        )
        body = c.post("/v1/events", json={"events": events}).json()
        assert not body["errors"]
        yield c


def _codes(feed: dict[str, Any]) -> set[str]:
    return {r["code"].split(":")[0] for item in feed["items"] for r in item["reasons"]}


def test_export_holds_everything_about_the_user(client: TestClient) -> None:
    served = client.get("/v1/users/alice/feed?n=5").json()
    export = client.get("/v1/users/alice/export")
    assert export.status_code == 200
    body = export.json()
    assert body["user_id"] == "alice" and body["region"] == "eu"
    assert body["profile"]["attributes"] == {"lang": "fr"}
    assert len(body["events"]) == 31
    assert {e["type"] for e in body["events"]} == {"play", "finish", "like", "follow"}
    assert [f["creator_id"] for f in body["online_state"]["follows"]] == ["creator1"]
    interests = {(i["kind"], i["key"]) for i in body["inferred_interests"] if i["weight"] > 0}
    assert ("tag", "cooking") in interests
    shown = {row["item_id"] for row in body["served"]}
    assert shown == {item["item_id"] for item in served["items"]}
    assert all(row["reasons"] for row in body["served"])
    assert body["audit_seq"] > 0
    assert "bob" not in str(body)


def test_erasure_removes_the_user_everywhere_and_returns_a_verifiable_receipt(
    client: TestClient, engine: Engine, tmp_path: Path
) -> None:
    client.get("/v1/users/alice/feed?n=5")
    response = client.delete("/v1/users/alice")
    assert response.status_code == 200
    receipt = response.json()
    assert receipt["rows_deleted"]["events"] == 31
    assert receipt["rows_deleted"]["users"] == 1 and receipt["rows_deleted"]["feed_log"] == 5
    audit = receipt["audit"]
    head = TreeHead.from_json(audit["tree_head"])
    verifier = Verifier.from_hex(engine.gate.audit_log("eu").verifier.hex())
    assert verifier.valid(head.message(), head.signature)
    merkle.verify_inclusion(
        audit["seq"] - 1,
        head.size,
        bytes.fromhex(audit["leaf_hash"]),
        [bytes.fromhex(p) for p in audit["audit_path"]],
        head.root,
    )
    # Gone from the API at once...
    for path in ("", "/feed", "/export", "/controls", "/interests"):
        assert client.get(f"/v1/users/alice{path}").status_code == 404, path
    assert client.delete("/v1/users/alice").status_code == 404
    # ...and from every table of the region's database, whatever its name.
    con = sqlite3.connect(tmp_path / "region-eu.db")
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for table in tables:
        for column in [r[1] for r in con.execute(f"PRAGMA table_info({table})")]:
            hits = con.execute(f"SELECT count(*) FROM {table} WHERE {column} = 'alice'")
            assert hits.fetchone()[0] == 0, (table, column)
    # The audit log names the subject only by a hash, and still verifies.
    log = sqlite3.connect(tmp_path / "region-eu-audit.db")
    assert not [r for r in log.execute("SELECT * FROM audit") if "alice" in str(r)]
    assert engine.gate.open("eu", Principal.auditor("eu"), "audit").audit.verify().ok
    # bob is untouched.
    assert client.get("/v1/users/bob/feed?n=3").status_code == 200


def test_personalization_off_takes_effect_on_the_next_request(client: TestClient) -> None:
    personal = client.get("/v1/users/alice/feed?n=10&trace=true").json()
    sources = {s["component"] for s in personal["trace"]["steps"] if s["stage"] == "sources"}
    assert "interest_tags" in sources
    off = client.patch("/v1/users/alice/controls", json={"personalized": False})
    assert off.status_code == 200 and off.json()["personalized"] is False
    plain = client.get("/v1/users/alice/feed?n=10&trace=true").json()
    steps = plain["trace"]["steps"]
    found = {s["component"] for s in steps if s["stage"] == "sources"} - {"hydrate_candidates"}
    assert found == {"following", "trending"}
    assert {s["component"] for s in steps if s["stage"] == "scorers"} == {"plain_order"}
    # Past the followed creators and the region's trending items, the page is filled from the
    # catalog (popular in the region, then newest): nothing about the viewer is inferred.
    assert {s["component"] for s in steps if s["stage"] == "backfill"} == {"more_from_catalog"}
    assert _codes(plain) <= {"followed_creator", "trending_in_region", "more_from_catalog"}
    assert len(plain["items"]) == 10
    first = plain["items"][0]
    assert [r["code"] for r in first["reasons"]] == ["followed_creator"]
    client.patch("/v1/users/alice/controls", json={"personalized": True})
    again = client.get("/v1/users/alice/feed?n=10&trace=true").json()
    assert "interest_tags" in {s["component"] for s in again["trace"]["steps"]}


def test_keyword_filters_and_blocked_tags_apply_to_the_next_page(client: TestClient) -> None:
    controls = {
        "personalized": True,
        "keyword_filters": ["Cooking", *(f"word{i}" for i in range(199))],
        "blocked_tags": ["#pets"],
    }
    stored = client.put("/v1/users/alice/controls", json=controls).json()
    assert len(stored["keyword_filters"]) == 200 and stored["blocked_tags"] == ["pets"]
    assert client.get("/v1/users/alice/controls").json() == stored
    for _ in range(3):
        feed = client.get("/v1/users/alice/feed?n=10&details=true").json()
        assert feed["items"]
        for item in feed["items"]:
            assert "cooking" not in item["item"]["caption"]
            assert "pets" not in item["item"]["tags"]


def test_filters_beyond_the_limits_are_refused(client: TestClient) -> None:
    whole = {"personalized": True, "keyword_filters": [], "blocked_tags": []}
    too_many = whole | {"keyword_filters": [f"w{i}" for i in range(501)]}
    response = client.put("/v1/users/alice/controls", json=too_many)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    too_long = client.put("/v1/users/alice/controls", json=whole | {"blocked_tags": ["x" * 101]})
    assert too_long.status_code == 422
    unknown = client.put("/v1/users/alice/controls", json=whole | {"personalised": False})
    assert unknown.status_code == 422
    assert client.put("/v1/users/ghost/controls", json=whole).status_code == 404


def test_interests_can_be_viewed_and_deleted(client: TestClient) -> None:
    interests = client.get("/v1/users/alice/interests").json()["interests"]
    tags = {i["key"]: i["weight"] for i in interests if i["kind"] == "tag"}
    assert tags["cooking"] > 0
    one = client.delete("/v1/users/alice/interests?tag=cooking").json()
    assert one == {"user_id": "alice", "removed": 1, "tag": "cooking"}
    left = client.get("/v1/users/alice/interests").json()["interests"]
    assert "cooking" not in {i["key"] for i in left if i["kind"] == "tag"}
    reset = client.delete("/v1/users/alice/interests").json()
    assert reset["removed"] > 0
    assert client.get("/v1/users/alice/interests").json()["interests"] == []
    # After a reset, the feed no longer builds on what came before it.
    feed = client.get("/v1/users/alice/feed?n=10&trace=true").json()
    assert not _codes(feed) & {"similar_to", "interest_tag", "learned_taste", "liked_creator"}

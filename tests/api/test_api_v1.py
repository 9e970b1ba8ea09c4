"""API v1 through HTTP (httpx via Starlette's TestClient) against the real app and engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fyp.api.app import MAX_BODY_BYTES, create_app
from fyp.config import load_config
from fyp.engine import Engine

T0 = 1_700_000_000.0
LOCAL = ("127.0.0.1", 40000)
PROBLEM = "application/problem+json"


def _items(n: int, prefix: str = "v", creators: int = 7) -> list[dict[str, Any]]:
    topics = ["cooking", "pets", "travel", "music"]
    return [
        {
            "item_id": f"{prefix}{i}",
            "creator_id": f"creator{i % creators}",
            "created_at": T0 - i * 600,
            "duration_s": 15 + i % 30,
            "caption": f"clip number {i} about {topics[i % 4]}",
            "tags": [f"#{topics[i % 4].title()}", f"extra{i % 5}"],
        }
        for i in range(n)
    ]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    engine = Engine(load_config(tmp_path), clock=lambda: T0 + 3600)
    with TestClient(create_app(engine), client=LOCAL) as c:
        yield c


@pytest.fixture
def seeded(client: TestClient) -> TestClient:
    assert client.put("/v1/items", json={"items": _items(120)}).status_code == 200
    users = [{"user_id": "alice", "region": "eu"}, {"user_id": "bob", "region": "us"}]
    assert client.put("/v1/users", json={"users": users}).status_code == 200
    return client


def _assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:fyp:problem:{slug}"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


def test_health_and_regions(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["regions"] == ["us", "eu"]
    regions = client.get("/v1/regions").json()["regions"]
    assert [r["name"] for r in regions] == ["us", "eu"]
    assert all(r["model_version"] == "untrained" for r in regions)


def test_items_upsert_then_get_and_update(client: TestClient) -> None:
    first = client.put("/v1/items", json={"items": _items(3)})
    assert first.json() == {"created": 3, "updated": 0}
    changed = _items(3)
    changed[0]["caption"] = "a new caption"
    again = client.put("/v1/items", json={"items": changed})
    assert again.json() == {"created": 0, "updated": 3}
    item = client.get("/v1/items/v0").json()
    assert item["caption"] == "a new caption"
    assert item["tags"] == ["cooking", "extra0"]  # normalized: no '#', lowercase


def test_bad_item_batch_is_refused_whole(client: TestClient) -> None:
    batch = _items(3)
    batch[1]["duration_s"] = -4
    batch[2]["created_at"] = "yesterday"
    body = _assert_problem(client.put("/v1/items", json={"items": batch}), 422, "invalid-input")
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"items.1.duration_s", "items.2.created_at"}
    # Nothing is half-written: the valid item of the batch was not stored either.
    _assert_problem(client.get("/v1/items/v0"), 404, "not-found")


def test_unknown_fields_and_oversized_batches_are_invalid(client: TestClient) -> None:
    item = _items(1)[0] | {"colour": "red"}
    _assert_problem(client.put("/v1/items", json={"items": [item]}), 422, "invalid-input")
    _assert_problem(client.put("/v1/items", json={"items": _items(1001)}), 422, "invalid-input")
    _assert_problem(client.put("/v1/items", json={"items": []}), 422, "invalid-input")


def test_malformed_json_is_a_problem(client: TestClient) -> None:
    response = client.put(
        "/v1/items", content=b"{not json", headers={"content-type": "application/json"}
    )
    _assert_problem(response, 422, "invalid-input")


def test_users_create_get_and_region_conflict(client: TestClient) -> None:
    created = client.put("/v1/users", json={"users": [{"user_id": "alice", "region": "eu"}]})
    assert created.json() == {"created": 1, "updated": 0}
    user = client.get("/v1/users/alice").json()
    assert user["region"] == "eu" and user["attributes"] == {}
    updated = client.put(
        "/v1/users",
        json={"users": [{"user_id": "alice", "region": "eu", "attributes": {"plan": "free"}}]},
    )
    assert updated.json() == {"created": 0, "updated": 1}
    assert client.get("/v1/users/alice").json()["attributes"] == {"plan": "free"}
    moved = client.put("/v1/users", json={"users": [{"user_id": "alice", "region": "us"}]})
    _assert_problem(moved, 409, "conflict")
    unknown = client.put("/v1/users", json={"users": [{"user_id": "carol", "region": "mars"}]})
    _assert_problem(unknown, 422, "invalid-input")
    _assert_problem(client.get("/v1/users/carol"), 404, "not-found")


def test_invalid_path_ids_are_refused(client: TestClient) -> None:
    _assert_problem(client.get("/v1/users/bad%20id"), 422, "invalid-input")
    _assert_problem(client.get("/v1/items/" + "x" * 200), 422, "invalid-input")


def test_events_land_per_event_and_are_idempotent(seeded: TestClient) -> None:
    events = [
        {"event_id": "e1", "user_id": "alice", "item_id": "v1", "type": "like", "ts": T0},
        {"event_id": "e2", "user_id": "alice", "item_id": "nope", "type": "like", "ts": T0},
        {"event_id": "e3", "user_id": "ghost", "item_id": "v1", "type": "like", "ts": T0},
        {"event_id": "e4", "user_id": "bob", "item_id": "v2", "type": "dance", "ts": T0},
        {
            "event_id": "e5",
            "user_id": "bob",
            "item_id": "v2",
            "type": "play",
            "watch_ms": 9000,
            "ts": "2023-11-14T22:00:00Z",
        },
        {"event_id": "e1", "user_id": "alice", "item_id": "v1", "type": "like", "ts": T0},
    ]
    body = seeded.post("/v1/events", json={"events": events}).json()
    assert body["accepted"] == 2
    assert body["duplicates"] == 1
    assert [e["index"] for e in body["errors"]] == [1, 2, 3]
    assert "unknown item" in body["errors"][0]["detail"]
    assert "unknown user" in body["errors"][1]["detail"]
    assert "type" in body["errors"][2]["detail"]
    replay = seeded.post("/v1/events", json={"events": events[:1] + events[4:5]}).json()
    assert replay == {"accepted": 0, "duplicates": 2, "errors": []}


def test_feed_shape_reasons_and_no_repeats(seeded: TestClient) -> None:
    served: set[str] = set()
    for _ in range(5):
        response = seeded.get("/v1/users/alice/feed?n=10")
        assert response.status_code == 200
        feed = response.json()
        assert feed["region"] == "eu" and feed["user_id"] == "alice"
        assert len(feed["request_id"]) == 32
        assert feed["model_version"] == "untrained"
        assert len(feed["algorithm_hash"]) == 16
        assert 1 <= len(feed["items"]) <= 10
        for entry in feed["items"]:
            assert entry["reasons"], entry
            assert all(r["code"] and r["text"] for r in entry["reasons"])
            assert "item" not in entry or entry["item"] is None
        ids = [entry["item_id"] for entry in feed["items"]]
        assert not served.intersection(ids)
        served.update(ids)


def test_feed_details_and_trace(seeded: TestClient) -> None:
    feed = seeded.get("/v1/users/bob/feed?n=3&details=true&trace=true").json()
    assert all(entry["item"]["item_id"] == entry["item_id"] for entry in feed["items"])
    stages = [step["stage"] for step in feed["trace"]["steps"]]
    order = ["gates", "hydrators", "sources", "filters", "scorers", "selectors", "explain"]
    firsts = [stages.index(stage) for stage in order]
    assert firsts == sorted(firsts)
    assert stages[-1] == "side_effects"


def test_feed_errors(seeded: TestClient) -> None:
    _assert_problem(seeded.get("/v1/users/nobody/feed"), 404, "not-found")
    _assert_problem(seeded.get("/v1/users/alice/feed?n=0"), 422, "invalid-input")
    _assert_problem(seeded.get("/v1/users/alice/feed?n=101"), 422, "invalid-input")
    _assert_problem(seeded.get("/v1/nothing-here"), 404, "not-found")
    _assert_problem(seeded.delete("/v1/items"), 405, "method-not-allowed")


def test_feed_follows_events_posted_through_the_api(seeded: TestClient) -> None:
    # Like four cooking clips: the next page leans to cooking.
    cooking = [f"v{i}" for i in range(0, 40, 4)][:4]
    events = [
        {"event_id": f"like-{i}", "user_id": "bob", "item_id": item, "type": "like", "ts": T0}
        for i, item in enumerate(cooking)
    ]
    assert seeded.post("/v1/events", json={"events": events}).json()["accepted"] == 4
    feed = seeded.get("/v1/users/bob/feed?n=10&details=true").json()
    cooking_share = sum("cooking" in e["item"]["tags"] for e in feed["items"]) / len(feed["items"])
    assert cooking_share >= 0.5  # the catalog is 25 % cooking
    assert not set(cooking) & {e["item_id"] for e in feed["items"]}


def test_train_endpoint_reports_each_region(seeded: TestClient) -> None:
    reports = seeded.post("/v1/train").json()["reports"]
    assert {r["region"] for r in reports} == {"us", "eu"}
    assert all(r["version"] is None and r["skipped_reason"] for r in reports)


def test_payload_too_large(client: TestClient) -> None:
    response = client.put(
        "/v1/items",
        content=b"x",
        headers={"content-type": "application/json", "content-length": str(MAX_BODY_BYTES + 1)},
    )
    _assert_problem(response, 413, "payload-too-large")


def test_openapi_docs_and_page(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/items", "/v1/users", "/v1/events", "/v1/users/{user_id}/feed"):
        assert path in spec["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "For You" in page.text


def test_api_key_required_when_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FYP_API_KEY", "s3cret-key")
    engine = Engine(load_config(tmp_path))
    remote = ("203.0.113.9", 5555)
    with TestClient(create_app(engine), client=remote) as c:
        assert c.get("/healthz").status_code == 200
        missing = _assert_problem(c.get("/v1/regions"), 401, "unauthenticated")
        assert "Bearer" in missing["detail"]
        wrong = c.get("/v1/regions", headers={"Authorization": "Bearer nope"})
        _assert_problem(wrong, 401, "unauthenticated")
        right = c.get("/v1/regions", headers={"Authorization": "Bearer s3cret-key"})
        assert right.status_code == 200


def test_without_key_only_loopback_is_served(tmp_path: Path) -> None:
    engine = Engine(load_config(tmp_path))
    with TestClient(create_app(engine), client=("198.51.100.7", 5555)) as c:
        _assert_problem(c.get("/v1/regions"), 403, "access-denied")
        assert c.get("/healthz").status_code == 200


def test_a_running_server_learns_without_being_asked(tmp_path: Path) -> None:
    """The background retrainer picks up posted events and serves a new model; no restart."""
    import time

    config = load_config(
        tmp_path,
        training={
            "check_interval_s": 0.05,
            "retrain_min_new_events": 30,
            "min_events": 30,
            "factors": 4,
            "iterations": 2,
        },
    )
    engine = Engine(config)
    with TestClient(create_app(engine, background_training=True), client=LOCAL) as c:
        assert c.put("/v1/items", json={"items": _items(60)}).status_code == 200
        users = [{"user_id": f"u{k}", "region": "us"} for k in range(6)]
        assert c.put("/v1/users", json={"users": users}).status_code == 200
        before = c.get("/v1/users/u0/feed?n=3").json()["model_version"]
        assert before == "untrained"
        events = [
            {
                "event_id": f"bg-{k}-{i}",
                "user_id": f"u{k}",
                "item_id": f"v{i}",
                "type": "like",
                "ts": T0,
            }
            for k in range(6)
            for i in range(k, 60, 6)
        ]
        assert c.post("/v1/events", json={"events": events}).json()["accepted"] == 60
        deadline = time.monotonic() + 60  # a liveness bound, not a performance claim
        version = before
        while version == "untrained" and time.monotonic() < deadline:
            time.sleep(0.05)
            version = c.get("/healthz").json()["model_versions"]["us"]
        assert version.startswith("us-")
        feed = c.get("/v1/users/u1/feed?n=3").json()
        assert feed["model_version"] == version


def test_every_response_says_how_long_the_server_took(seeded: TestClient) -> None:
    for response in (seeded.get("/healthz"), seeded.get("/v1/users/alice/feed?n=2")):
        timing = response.headers["server-timing"]
        assert timing.startswith("app;dur=")
        assert float(timing.split("=", 1)[1]) >= 0.0
    assert "server-timing" in seeded.get("/v1/users/ghost/feed").headers

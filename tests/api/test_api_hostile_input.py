"""Hostile input through the HTTP API (issue 14, defects 3, 4, 10 and 11): timestamps out of range
or outside the ingest window, partial control documents, coerced booleans, ids with a trailing
newline, an empty region. Each answer is a per-row error or a problem document, never a 500, and
nothing invalid reaches storage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fyp.api.app import create_app
from fyp.config import load_config
from fyp.engine import Engine
from fyp.governance.policy import Principal

T0 = 1_700_000_000.0
"""The server's (fake) clock: 2023-11-14T22:13:20Z."""
LOCAL = ("127.0.0.1", 40000)
PROBLEM = "application/problem+json"

OUT_OF_RANGE = [1e20, 1e17, -1e17, "9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00"]
"""Timestamps that no datetime can hold once in UTC (they used to answer 500)."""
OUTSIDE_WINDOW = [
    "9000-12-31T00:00:00Z",
    T0 + 3600,  # an hour ahead of the server clock
    "1969-07-20T20:17:00Z",  # before the floor (1990 by default)
    0,
]
"""Representable timestamps that the ingest window refuses."""


def _item(i: int, creator: str = "c0", created_at: Any = T0 - 3600) -> dict[str, Any]:
    return {
        "item_id": f"v{i}",
        "creator_id": creator,
        "created_at": created_at,
        "duration_s": 20,
        "caption": f"clip {i}",
        "tags": ["cooking"],
    }


def _like(event_id: str, item: str, ts: Any, user: str = "alice") -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "item_id": item, "type": "like", "ts": ts}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(load_config(tmp_path), clock=lambda: T0)
    yield eng
    eng.close()


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine, close_engine=False), client=LOCAL) as c:
        items = [_item(i, creator=f"c{i % 3}") for i in range(12)]
        assert c.put("/v1/items", json={"items": items}).status_code == 200
        users = [{"user_id": "alice", "region": "us"}, {"user_id": "bob", "region": "us"}]
        assert c.put("/v1/users", json={"users": users}).status_code == 200
        yield c


def _problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:fyp:problem:{slug}"
    return body


def _stored_event_ids(client: TestClient, user: str = "alice") -> set[str]:
    return {e["event_id"] for e in client.get(f"/v1/users/{user}/export").json()["events"]}


# ---- defect 3: out-of-range timestamps --------------------------------------------------------


@pytest.mark.parametrize("ts", OUT_OF_RANGE)
def test_an_out_of_range_timestamp_is_a_row_error_and_the_rest_of_the_batch_lands(
    client: TestClient, ts: Any
) -> None:
    events = [_like("good", "v1", T0 - 60), _like("bad", "v2", ts)]
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 1
    assert [e["index"] for e in body["errors"]] == [1]
    assert "ts" in body["errors"][0]["detail"]
    assert _stored_event_ids(client) == {"good"}


@pytest.mark.parametrize("created_at", OUT_OF_RANGE)
def test_an_item_with_an_out_of_range_created_at_is_a_422(
    client: TestClient, created_at: Any
) -> None:
    body = _problem(
        client.put("/v1/items", json={"items": [_item(50), _item(51, created_at=created_at)]}),
        422,
        "invalid-input",
    )
    assert "created_at" in body["detail"]
    _problem(client.get("/v1/items/v50"), 404, "not-found")  # nothing half-written


# ---- defect 4: the ingest window --------------------------------------------------------------


@pytest.mark.parametrize("ts", OUTSIDE_WINDOW)
def test_an_event_outside_the_ingest_window_is_refused_per_row(client: TestClient, ts: Any) -> None:
    events = [_like("good", "v1", T0), _like("bad", "v2", ts)]
    body = client.post("/v1/events", json={"events": events}).json()
    assert body["accepted"] == 1
    [error] = body["errors"]
    assert error["index"] == 1
    assert "ts" in error["detail"]
    # Refused by the ingest window, or before it by the range every timestamp must lie in.
    assert any(
        reason in error["detail"] for reason in ("ahead of the server clock", "before", "years")
    )
    assert _stored_event_ids(client) == {"good"}


def test_events_within_the_allowed_skew_and_old_history_are_accepted(client: TestClient) -> None:
    events = [
        _like("skewed", "v1", T0 + 120),  # a client clock two minutes fast
        _like("history", "v2", "1997-09-20T12:00:00Z"),  # MovieLens 100k is this old
        _like("floor", "v3", "1990-01-01T00:00:00Z"),
    ]
    body = client.post("/v1/events", json={"events": events}).json()
    assert body == {"accepted": 3, "duplicates": 0, "errors": []}


def test_a_like_dated_9999_does_not_take_over_trending_or_freeze_affinity(
    client: TestClient, engine: Engine
) -> None:
    """The reported takeover: one far-future like made its item the region's top trending item
    (score 2,020,271 against at most 1,758) and froze the user's creator affinity."""
    ordinary = [_like(f"b{i}", f"v{i}", T0 - 600 + i, user="bob") for i in (3, 4, 5)]
    assert client.post("/v1/events", json={"events": ordinary}).json()["accepted"] == 3
    takeover = client.post(
        "/v1/events", json={"events": [_like("far", "v9", "9000-12-31T00:00:00Z")]}
    ).json()
    assert takeover["accepted"] == 0 and [e["index"] for e in takeover["errors"]] == [0]

    handle = engine.gate.open("us", Principal.service("us"), "serve_feed")
    trending = [item for item, _ in handle.stats.trending(20)]
    assert "v9" not in trending
    assert set(trending) == {"v3", "v4", "v5"}
    assert "far" not in _stored_event_ids(client)
    # alice's affinity for v9's creator (c0) is built by her real events only, and grows with them.
    assert client.post("/v1/events", json={"events": [_like("a1", "v6", T0)]}).json()["accepted"]
    first = _creator_weight(client, "c0")
    assert client.post("/v1/events", json={"events": [_like("a2", "v0", T0)]}).json()["accepted"]
    assert _creator_weight(client, "c0") > first > 0


def _creator_weight(client: TestClient, creator: str) -> float:
    interests = client.get("/v1/users/alice/interests").json()["interests"]
    return next(i["weight"] for i in interests if i["kind"] == "creator" and i["key"] == creator)


@pytest.mark.parametrize("created_at", ["9000-12-31T00:00:00Z", T0 + 3600, "1969-07-20T20:17:00Z"])
def test_an_item_dated_outside_the_window_is_a_422(client: TestClient, created_at: Any) -> None:
    items = [_item(60), _item(61, created_at=created_at)]
    body = _problem(client.put("/v1/items", json={"items": items}), 422, "invalid-input")
    assert "created_at" in body["detail"] and "v61" in body["detail"]
    _problem(client.get("/v1/items/v60"), 404, "not-found")


def test_an_item_without_created_at_is_stamped_and_accepted(client: TestClient) -> None:
    item = _item(70)
    del item["created_at"]
    assert client.put("/v1/items", json={"items": [item]}).status_code == 200


# ---- defect 10: PUT replaces the whole document, PATCH merges ---------------------------------

FULL = {"personalized": True, "keyword_filters": ["spoiler"], "blocked_tags": ["pets"]}


@pytest.mark.parametrize(
    "partial",
    [
        {"personalized": False},
        {"keyword_filters": []},
        {"personalized": False, "blocked_tags": []},
        {},
    ],
)
def test_put_controls_requires_the_whole_document(client: TestClient, partial: Any) -> None:
    assert client.put("/v1/users/alice/controls", json=FULL).status_code == 200
    body = _problem(client.put("/v1/users/alice/controls", json=partial), 422, "invalid-input")
    assert "required" in body["detail"].lower()
    stored = client.get("/v1/users/alice/controls").json()
    assert stored["keyword_filters"] == ["spoiler"] and stored["blocked_tags"] == ["pets"]


def test_patch_controls_changes_only_the_fields_given(client: TestClient) -> None:
    assert client.put("/v1/users/alice/controls", json=FULL).status_code == 200
    off = client.patch("/v1/users/alice/controls", json={"personalized": False})
    assert off.status_code == 200, off.text
    assert off.json() | {"interests_reset_at": None} == {
        "user_id": "alice",
        "personalized": False,
        "keyword_filters": ["spoiler"],
        "blocked_tags": ["pets"],
        "interests_reset_at": None,
    }
    tags = client.patch("/v1/users/alice/controls", json={"blocked_tags": ["#Travel", "#Travel"]})
    assert tags.json()["blocked_tags"] == ["Travel"]
    assert tags.json()["personalized"] is False and tags.json()["keyword_filters"] == ["spoiler"]
    assert client.get("/v1/users/alice/controls").json() == tags.json()
    unchanged = client.patch("/v1/users/alice/controls", json={})
    assert unchanged.status_code == 200 and unchanged.json() == tags.json()


def test_patch_controls_has_the_same_validation_and_limits(client: TestClient) -> None:
    route = "/v1/users/alice/controls"
    for body in (
        {"keyword_filters": [f"w{i}" for i in range(501)]},
        {"blocked_tags": ["x" * 101]},
        {"personalised": False},
        {"blocked_tags": None},
    ):
        _problem(client.patch(route, json=body), 422, "invalid-input")
    assert client.get(route).json()["blocked_tags"] == []
    ghost = client.patch("/v1/users/ghost/controls", json={"personalized": False})
    _problem(ghost, 404, "not-found")
    _problem(client.patch("/v1/users/bad%0A/controls", json={}), 422, "invalid-input")


# ---- defect 11 --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["put", "patch"])
@pytest.mark.parametrize("value", ["no", "false", 0, 1, None, [], "true"])
def test_controls_booleans_are_strict(client: TestClient, method: str, value: Any) -> None:
    body = {**FULL, "personalized": value}
    response = getattr(client, method)("/v1/users/alice/controls", json=body)
    _problem(response, 422, "invalid-input")
    assert client.get("/v1/users/alice/controls").json()["personalized"] is True


@pytest.mark.parametrize(
    "path",
    [
        "/v1/users/alice%0A",
        "/v1/users/alice%0A/feed",
        "/v1/users/alice%0A/export",
        "/v1/users/alice%0A/controls",
        "/v1/users/alice%0A/interests",
        "/v1/items/v1%0A",
    ],
)
def test_an_id_with_a_trailing_newline_is_refused(client: TestClient, path: str) -> None:
    body = _problem(client.get(path), 422, "invalid-input")
    assert "\\n" in body["detail"]


def test_a_body_id_with_a_trailing_newline_is_refused(client: TestClient) -> None:
    body = client.post("/v1/events", json={"events": [_like("e\n", "v1", T0)]}).json()
    assert body["accepted"] == 0 and body["errors"][0]["index"] == 0
    users = {"users": [{"user_id": "carol\n", "region": "us"}]}
    _problem(client.put("/v1/users", json=users), 422, "invalid-input")
    users = {"users": [{"user_id": "carol", "region": "us\n"}]}
    _problem(client.put("/v1/users", json=users), 422, "invalid-input")


@pytest.mark.parametrize("tag", ["", "   ", "#", "cooking\nx", "a,b"])
def test_an_invalid_interest_tag_is_refused(client: TestClient, tag: str) -> None:
    response = client.delete("/v1/users/alice/interests", params={"tag": tag})
    _problem(response, 422, "invalid-input")


@pytest.mark.parametrize("query", ["region=", "region=%20", "region=us%0A", "region=US"])
def test_train_with_an_empty_or_malformed_region_is_a_422(client: TestClient, query: str) -> None:
    _problem(client.post(f"/v1/train?{query}"), 422, "invalid-input")


def test_train_with_an_unknown_region_is_a_422_like_put_users(client: TestClient) -> None:
    _problem(client.post("/v1/train?region=mars"), 422, "invalid-input")
    _problem(
        client.put("/v1/users", json={"users": [{"user_id": "x", "region": "mars"}]}),
        422,
        "invalid-input",
    )
    reports = client.post("/v1/train?region=us").json()["reports"]
    assert [r["region"] for r in reports] == ["us"]


def test_an_over_long_id_is_refused_without_echoing_it_whole(client: TestClient) -> None:
    response = client.get("/v1/users/" + "a" * 60_000)
    body = _problem(response, 422, "invalid-input")
    assert len(response.content) < 2_000
    assert "60000 characters" in body["detail"]

"""Two deployments, one per region, over the same data: every cross-region attempt through every
public API is refused, recorded in the target region's log, and changes nothing there.

The route list is read from the app itself, so an endpoint added later about a user fails this
test until it is listed with a request that exercises it.
"""

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
from fyp.storage.roles import AuditRecord

T0 = 1_700_000_000.0
LOCAL = ("127.0.0.1", 40000)
PROBLEM = "application/problem+json"


def _items(n: int) -> list[dict[str, Any]]:
    return [
        {
            "item_id": f"v{i}",
            "creator_id": f"creator{i % 7}",
            "created_at": T0 - i * 600,
            "duration_s": 20,
            "caption": f"clip {i}",
            "tags": [f"topic{i % 4}"],
        }
        for i in range(60)
    ]


def _events(user_id: str, tag: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{user_id}-{tag}-{i}",
            "user_id": user_id,
            "item_id": f"v{i}",
            "type": "finish",
            "ts": T0 + i,
            "watch_ms": 20_000,
        }
        for i in range(n)
    ]


@pytest.fixture
def deployments(tmp_path: Path) -> Iterator[tuple[TestClient, TestClient, Engine, Engine]]:
    us = Engine(load_config(tmp_path, serving_region="us"), clock=lambda: T0 + 3600)
    eu = Engine(load_config(tmp_path, serving_region="eu"), clock=lambda: T0 + 3600)
    with (
        TestClient(create_app(us, background_training=False), client=LOCAL) as us_client,
        TestClient(create_app(eu, background_training=False), client=LOCAL) as eu_client,
    ):
        assert eu_client.put("/v1/items", json={"items": _items(60)}).status_code == 200
        eve = {"user_id": "eve", "region": "eu", "attributes": {"lang": "de"}}
        assert eu_client.put("/v1/users", json={"users": [eve]}).status_code == 200
        assert (
            eu_client.post("/v1/events", json={"events": _events("eve", "a", 6)}).json()["accepted"]
            == 6
        )
        sam = {"user_id": "sam", "region": "us"}
        assert us_client.put("/v1/users", json={"users": [sam]}).status_code == 200
        assert (
            us_client.post("/v1/events", json={"events": _events("sam", "a", 4)}).json()["accepted"]
            == 4
        )
        yield us_client, eu_client, us, eu
    us.close()
    eu.close()


# Every public route that concerns one user, with a request that exercises it for ``eve``.
USER_ROUTES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/v1/users/{user_id}"): {},
    ("GET", "/v1/users/{user_id}/feed"): {"params": {"n": 5}},
    ("GET", "/v1/users/{user_id}/export"): {},
    ("DELETE", "/v1/users/{user_id}"): {},
    ("GET", "/v1/users/{user_id}/controls"): {},
    ("PUT", "/v1/users/{user_id}/controls"): {
        "json": {"personalized": False, "keyword_filters": ["x"], "blocked_tags": []}
    },
    ("PATCH", "/v1/users/{user_id}/controls"): {"json": {"blocked_tags": ["y"]}},
    ("GET", "/v1/users/{user_id}/interests"): {},
    ("DELETE", "/v1/users/{user_id}/interests"): {},
}

# Routes that take users or regions in their body or query; each is attempted cross-region too.
BODY_ROUTES: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/v1/users"): {"json": {"users": [{"user_id": "eve", "region": "eu"}]}},
    ("POST", "/v1/events"): {"json": {"events": _events("eve", "b", 3)}},
    ("POST", "/v1/train"): {"params": {"region": "eu"}},
}

# Routes that carry no personal data, and why.
NOT_PERSONAL = {
    ("GET", "/healthz"): "liveness",
    ("GET", "/v1/regions"): "the configured region names",
    ("PUT", "/v1/items"): "the global catalog",
    ("GET", "/v1/items/{item_id}"): "the global catalog",
    ("GET", "/v1/transparency"): "the live configuration",
    ("GET", "/v1/audit/{region}/head"): "a signed tree head: a size and hashes",
    ("GET", "/v1/audit/{region}/consistency"): "a consistency proof: sizes and hashes",
}


def _routes(client: TestClient) -> set[tuple[str, str]]:
    """The public API as the app publishes it (its OpenAPI document)."""
    paths = client.get("/openapi.json").json()["paths"]
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


def _eu_log(engine: Engine) -> list[AuditRecord]:
    handle = engine.gate.open("eu", Principal.auditor("eu"), "audit")
    return handle.audit.tail(100_000)


def test_every_public_route_is_covered(
    deployments: tuple[TestClient, TestClient, Engine, Engine],
) -> None:
    us_client = deployments[0]
    routes = _routes(us_client)
    classified = set(USER_ROUTES) | set(BODY_ROUTES) | set(NOT_PERSONAL)
    assert routes - classified == set(), "a new route must be classified and tested here"
    assert set(USER_ROUTES) | set(BODY_ROUTES) <= routes


def test_every_cross_region_attempt_is_refused_recorded_and_harmless(
    deployments: tuple[TestClient, TestClient, Engine, Engine],
) -> None:
    us_client, eu_client, _, eu_engine = deployments
    before_export = eu_client.get("/v1/users/eve/export").json()
    before_controls = eu_client.get("/v1/users/eve/controls").json()
    log_before = len(_eu_log(eu_engine))

    attempts = {**USER_ROUTES, **BODY_ROUTES}
    for (method, path), kwargs in attempts.items():
        response = us_client.request(method, path.replace("{user_id}", "eve"), **kwargs)
        assert response.status_code == 403, (method, path, response.text)
        assert response.headers["content-type"].startswith(PROBLEM)
        problem = response.json()
        assert problem["type"] == "urn:fyp:problem:access-denied", problem
        assert "export" in problem["detail"] or "cross-region" in problem["detail"], problem

    # Each refusal is in eu's own log, as a deny naming the us service.
    new = _eu_log(eu_engine)[log_before:]
    denies = [r for r in new if r.decision == "deny" and r.principal == "service:us"]
    assert len(denies) >= len(attempts)
    assert {r.purpose for r in denies} >= {
        "serve_feed",
        "export_user",
        "erase_user",
        "manage_controls",
        "ingest",
        "manage_users",
        "train",
    }
    assert all(r.detail["principal_region"] == "us" for r in denies)
    assert not [r for r in new if r.principal == "service:us" and r.decision == "allow"]

    # Nothing about eve changed: no erasure, no controls, no events from the refused batch.
    after_export = eu_client.get("/v1/users/eve/export").json()
    assert len(after_export["events"]) == len(before_export["events"]) == 6
    assert after_export["profile"]["attributes"] == {"lang": "de"}
    assert eu_client.get("/v1/users/eve/controls").json() == before_controls
    assert eu_client.get("/v1/users/eve/feed", params={"n": 5}).status_code == 200


def test_a_mixed_batch_is_refused_whole(
    deployments: tuple[TestClient, TestClient, Engine, Engine],
) -> None:
    us_client, _, us_engine, _ = deployments
    batch = _events("sam", "mixed", 3) + _events("eve", "mixed", 3)
    response = us_client.post("/v1/events", json={"events": batch})
    assert response.status_code == 403
    # sam's half of the batch was not stored either: the doors are decided before any write.
    handle = us_engine.gate.open("us", Principal.service("us"), "export_user")
    exported = handle.rights.export_user("sam")
    assert exported is not None
    assert not [e for e in exported["events"] if "mixed" in e["event_id"]]
    assert len(exported["events"]) == 4


def test_each_deployment_serves_its_own_region(
    deployments: tuple[TestClient, TestClient, Engine, Engine],
) -> None:
    us_client, eu_client, us_engine, eu_engine = deployments
    assert us_client.get("/v1/users/sam/feed", params={"n": 5}).status_code == 200
    assert eu_client.get("/v1/users/eve/feed", params={"n": 5}).status_code == 200
    # A pinned deployment holds only its own region's model slot.
    assert set(us_engine.model_versions()) == {"us"}
    assert set(eu_engine.model_versions()) == {"eu"}


def test_a_named_exception_opens_one_purpose_and_is_logged_as_an_export(tmp_path: Path) -> None:
    """The exception path: one justified purpose crosses; everything else stays refused."""
    policy = Path(__file__).parents[2] / "src/fyp/governance/default_policy.toml"
    custom = tmp_path / "policy.toml"
    custom.write_text(
        policy.read_text()
        + """
[[exception]]
name = "eu data subject asked the us support desk for their export"
justification = "Ticket DSR-42, approved by the eu data protection officer"
ids = ["service:us"]
purposes = ["export_user"]
from_regions = ["us"]
to_regions = ["eu"]
expires = 2099-01-01
"""
    )
    eu = Engine(load_config(tmp_path), clock=lambda: T0 + 3600)
    us = Engine(
        load_config(tmp_path, serving_region="us", policy_file=custom), clock=lambda: T0 + 3600
    )
    try:
        with (
            TestClient(create_app(eu, background_training=False), client=LOCAL) as eu_client,
            TestClient(create_app(us, background_training=False), client=LOCAL) as us_client,
        ):
            assert eu_client.put("/v1/items", json={"items": _items(60)}).status_code == 200
            eve = {"user_id": "eve", "region": "eu"}
            assert eu_client.put("/v1/users", json={"users": [eve]}).status_code == 200
            assert us_client.get("/v1/users/eve/export").status_code == 200
            assert us_client.get("/v1/users/eve/feed").status_code == 403
            assert us_client.delete("/v1/users/eve").status_code == 403
            records = _eu_log(eu)
            exports = [r for r in records if r.principal == "service:us" and r.action == "export"]
            assert exports and all(r.decision == "allow" for r in exports)
            assert {r.purpose for r in exports} == {"export_user"}
            assert exports[0].detail["rule"] == (
                "eu data subject asked the us support desk for their export"
            )
    finally:
        us.close()
        eu.close()

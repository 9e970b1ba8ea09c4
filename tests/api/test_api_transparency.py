"""GET /v1/transparency is generated from the running configuration, so it cannot drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from fyp.api.app import create_app
from fyp.config import load_config
from fyp.engine import Engine

LOCAL = ("127.0.0.1", 40000)


def _report(tmp_path: Path, **overrides: object) -> dict[str, Any]:
    engine = Engine(load_config(tmp_path, **overrides))
    with TestClient(create_app(engine, background_training=False), client=LOCAL) as client:
        response = client.get("/v1/transparency")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_the_report_publishes_the_live_weights_sources_and_rules(tmp_path: Path) -> None:
    body = _report(tmp_path)
    config = load_config(tmp_path)
    assert body["algorithm_hash"] == config.algorithm_hash
    ranking = body["ranking"]["value_model"]
    assert {f["feature"]: f["weight"] for f in ranking} == config.scoring.weights
    assert {s["name"] for s in body["candidate_sources"] if s["enabled"]} == {
        "trending",
        "fresh",
        "co_engagement",
        "following",
        "interest_tags",
        "embedding",
        "content_tower",
        "more_from_catalog",
    }
    text = " ".join(body["text"])
    assert "a share (+3)" in text and "marking not interested (-4)" in text
    assert "tag_affinity (weight 1.5)" in text


def test_changing_the_configuration_changes_the_report(tmp_path: Path) -> None:
    body = _report(
        tmp_path,
        scoring={"weights": {"retrieval": 2.0, "freshness": 0.7}},
        selectors={"creator_gap": 3, "exploration_slots": 2},
        sources={"fresh": {"enabled": False}},
    )
    text = " ".join(body["text"])
    assert "retrieval (weight 2), freshness (weight 0.7)." in text
    assert "tag_affinity" not in text
    assert "within 4 consecutive items" in text
    assert "reserves 2 slot(s)" in text
    assert "fresh (" not in text
    assert body["diversity"] == {"creator_gap": 3, "tag_repeat_penalty": 0.25}

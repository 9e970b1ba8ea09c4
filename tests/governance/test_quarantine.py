"""A region whose audit log or key fails its startup check stops serving personal data; the
other regions carry on, and nothing about the broken region is silently allowed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fyp.api.app import create_app
from fyp.config import load_config
from fyp.engine import Engine
from fyp.errors import RegionQuarantined
from fyp.governance.policy import Principal

LOCAL = ("127.0.0.1", 40000)


@pytest.fixture
def data_dir(tmp_path: Path, make_user: Any) -> Path:
    engine = Engine(load_config(tmp_path))
    engine.put_users([make_user("ana", "us"), make_user("eli", "eu")])
    engine.sign_audit_heads()
    engine.close()
    return tmp_path


def _check_serving(data_dir: Path, broken: str, healthy: str, who: dict[str, str]) -> None:
    engine = Engine(load_config(data_dir))
    try:
        assert broken in engine.gate.quarantined and healthy not in engine.gate.quarantined
        with pytest.raises(RegionQuarantined):
            engine.gate.open(broken, Principal.service(broken), "serve_feed")
        with pytest.raises(RegionQuarantined):
            engine.gate.sign_audit_head(broken)
        assert broken not in engine.sign_audit_heads()
        # An auditor can still read the log to investigate.
        engine.gate.open(broken, Principal.auditor(broken), "audit")
        with TestClient(create_app(engine, background_training=False), client=LOCAL) as client:
            health = client.get("/healthz").json()
            assert health["status"] == "degraded" and broken in health["quarantined"]
            response = client.get(f"/v1/users/{who[broken]}")
            assert response.status_code == 503
            assert response.json()["type"] == "urn:fyp:problem:region-quarantined"
            assert client.get(f"/v1/users/{who[healthy]}").status_code == 200
    finally:
        engine.close()


def test_a_replaced_signing_key_quarantines_only_that_region(data_dir: Path) -> None:
    (data_dir / "keys" / "audit-eu.ed25519").unlink()  # a new key is made at the next start
    _check_serving(data_dir, "eu", "us", {"eu": "eli", "us": "ana"})


def test_removed_audit_entries_quarantine_only_that_region(data_dir: Path) -> None:
    con = sqlite3.connect(data_dir / "region-us-audit.db")
    con.execute("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)")
    con.commit()
    con.close()
    _check_serving(data_dir, "us", "eu", {"eu": "eli", "us": "ana"})


def test_a_rewritten_tree_quarantines_only_that_region(data_dir: Path) -> None:
    con = sqlite3.connect(data_dir / "region-us-audit.db")
    # A subtree root on the path to the signed root (the full `verify` also catches leaf edits).
    con.execute("UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = 1 AND idx = 0")
    con.commit()
    con.close()
    _check_serving(data_dir, "us", "eu", {"eu": "eli", "us": "ana"})


def test_an_intact_engine_quarantines_nothing(data_dir: Path) -> None:
    engine = Engine(load_config(data_dir))
    try:
        assert engine.gate.quarantined == {}
    finally:
        engine.close()


def _with_region_policy(data_dir: Path, text: str) -> None:
    (data_dir / "eu-policy.toml").write_text(text)
    (data_dir / "fyp.toml").write_text(
        '[[regions]]\nname = "us"\n\n[[regions]]\nname = "eu"\npolicy_file = "eu-policy.toml"\n'
    )


def test_a_malformed_region_policy_stops_only_that_region(data_dir: Path) -> None:
    _with_region_policy(
        data_dir, "version = 1\n[[allow]]\nname = 'typo'\npurposes = ['serve_fed']\n"
    )
    engine = Engine(load_config(data_dir))
    try:
        reason = engine.gate.quarantined["eu"]
        assert "access policy" in reason and "eu-policy.toml" in reason
        assert "us" not in engine.gate.quarantined
        # Nothing about eu is allowed, not even to an auditor: there is no policy to allow it.
        decision = engine.gate._policy.decide(Principal.auditor("eu"), "eu", "audit")
        assert not decision.allowed and "no valid policy" in decision.reason
        with TestClient(create_app(engine, background_training=False), client=LOCAL) as client:
            health = client.get("/healthz").json()
            assert health["status"] == "degraded" and "eu" in health["quarantined"]
            response = client.get("/v1/users/eli")
            assert response.status_code == 503
            assert response.json()["type"] == "urn:fyp:problem:region-quarantined"
            assert client.get("/v1/users/ana").status_code == 200
    finally:
        engine.close()


def test_a_region_policy_governs_that_region_only(data_dir: Path) -> None:
    """eu's own reviewed file may be stricter: here it lets the service route and manage users,
    but not serve feeds; us keeps the shared policy."""
    _with_region_policy(
        data_dir,
        """version = 1
[[allow]]
name = "eu services: routing and reading profiles only"
kinds = ["service"]
purposes = ["route", "read_user", "manage_users"]
""",
    )
    engine = Engine(load_config(data_dir))
    try:
        assert not engine.gate.quarantined
        with TestClient(create_app(engine, background_training=False), client=LOCAL) as client:
            assert client.get("/v1/users/eli").status_code == 200
            refused = client.get("/v1/users/eli/feed")
            assert refused.status_code == 403
            assert refused.json()["type"] == "urn:fyp:problem:access-denied"
            assert client.get("/v1/users/ana/feed").status_code == 200
        denies = [
            r
            for r in engine.gate.audit_log("eu").tail(20)
            if r.decision == "deny" and r.purpose == "serve_feed"
        ]
        assert denies
    finally:
        engine.close()

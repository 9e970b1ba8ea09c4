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

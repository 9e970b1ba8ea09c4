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
from fyp.governance.keys import Verifier
from fyp.governance.policy import Principal
from fyp.governance.witness import LocalHeadSource, witness

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
    (size,) = con.execute("SELECT max(tree_size) FROM audit_heads").fetchone()
    # The largest complete subtree under the signed root, whatever the size (the full `verify`
    # also catches leaf edits).
    level = size.bit_length() - 1
    con.execute(f"UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = {level} AND idx = 0")
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


# ---- a damaged audit log at start and while serving (issue 14, defects 6 and 7) ---------------


@pytest.fixture
def busy_dir(tmp_path: Path, make_user: Any) -> Path:
    """Two regions with a few dozen audit entries each, all covered by a signed head."""
    engine = Engine(load_config(tmp_path))
    engine.put_users([make_user("ana", "us"), make_user("eli", "eu")])
    for _ in range(25):
        engine.gate.locate("nobody")
    engine.sign_audit_heads()
    engine.close()
    return tmp_path


def _us_log(data_dir: Path, *statements: str) -> int:
    """Run ``statements`` on the us audit log; returns its last entry before them."""
    con = sqlite3.connect(data_dir / "region-us-audit.db")
    (last,) = con.execute("SELECT max(seq) FROM audit").fetchone()
    for statement in statements:
        con.execute(statement.format(last=last))
    con.commit()
    con.close()
    return int(last)


def _serve_after_the_checks(data_dir: Path) -> tuple[dict[str, Any], int, int]:
    """Start a server (its background audit check included) and wait for the check; returns
    /healthz and the status codes of a us and an eu user's profile."""
    engine = Engine(load_config(data_dir))
    with TestClient(create_app(engine, background_training=False), client=LOCAL) as client:
        engine.audit_check.wait()
        health = client.get("/healthz").json()
        us = client.get("/v1/users/ana")
        if us.status_code == 503:
            assert us.json()["type"] == "urn:fyp:problem:region-quarantined"
        return health, us.status_code, client.get("/v1/users/eli").status_code


def test_the_tampering_of_the_issue_quarantines_only_that_region(busy_dir: Path) -> None:
    # Before the fix the engine did not start at all, for any region: the first open appended
    # an entry whose tree node already existed (sqlite3.IntegrityError).
    last = _us_log(
        busy_dir, "delete from audit where seq={last}", "update audit_state set size={last}-1"
    )
    health, us, eu = _serve_after_the_checks(busy_dir)
    assert (us, eu) == (503, 200)
    assert health["status"] == "degraded" and set(health["quarantined"]) == {"us"}
    assert "entries after it were removed" in health["quarantined"]["us"]
    assert health["audit_check"] == {"us": "skipped", "eu": "verified"}
    assert last > 25


ENGINE_TAMPERINGS = {
    # (statements, caught by the O(log n) check at start rather than the full one after it)
    "edited middle row": (["UPDATE audit SET decision = 'deny' WHERE seq = 10"], False),
    "deleted tail, tree and counter too": (
        [
            "DELETE FROM audit WHERE seq > 20",
            "DELETE FROM audit_nodes WHERE (idx + 1) * (1 << level) > 20",
            "UPDATE audit_state SET size = 20",
        ],
        True,
    ),
    "deleted middle row": (["DELETE FROM audit WHERE seq = 10"], True),
    "duplicated seq": (
        [
            "CREATE TABLE audit_copy AS SELECT * FROM audit",
            "DROP TABLE audit",
            "ALTER TABLE audit_copy RENAME TO audit",
            "INSERT INTO audit SELECT * FROM audit WHERE seq = 10",
        ],
        True,
    ),
    "bad node row off the right edge": (
        ["UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = 1 AND idx = 2"],
        False,
    ),
    "node row of the next append removed": (
        ["DELETE FROM audit_nodes WHERE level = 0 AND idx = {last} - 1"],
        True,
    ),
    "counter lost": (["DELETE FROM audit_state"], True),
}


@pytest.mark.parametrize("name", sorted(ENGINE_TAMPERINGS))
def test_a_damaged_log_quarantines_its_region_and_the_others_serve(
    busy_dir: Path, name: str
) -> None:
    statements, at_start = ENGINE_TAMPERINGS[name]
    _us_log(busy_dir, *statements)
    engine = Engine(load_config(busy_dir))
    try:
        assert ("us" in engine.gate.quarantined) == at_start
        assert "eu" not in engine.gate.quarantined
    finally:
        engine.close()
    health, us, eu = _serve_after_the_checks(busy_dir)
    assert (us, eu) == (503, 200)
    assert set(health["quarantined"]) == {"us"}
    expected = "skipped" if at_start else "failed"
    assert health["audit_check"] == {"us": expected, "eu": "verified"}
    if not at_start:
        assert "full audit log check failed: first bad entry #" in health["quarantined"]["us"]


def test_damage_found_by_an_append_while_serving_quarantines_the_region(busy_dir: Path) -> None:
    engine = Engine(load_config(busy_dir))
    with TestClient(create_app(engine, background_training=False), client=LOCAL) as client:
        engine.audit_check.wait()
        assert client.get("/v1/users/ana").status_code == 200
        # Someone plants the tree node the next entry would add: that append cannot happen.
        con = sqlite3.connect(busy_dir / "region-us-audit.db")
        (size,) = con.execute("SELECT size FROM audit_state").fetchone()
        con.execute("INSERT INTO audit_nodes VALUES (0, ?, zeroblob(32))", (size,))
        con.commit()
        con.close()
        refused = client.get("/v1/users/ana")
        assert refused.status_code == 503
        assert refused.json()["type"] == "urn:fyp:problem:region-quarantined"
        health = client.get("/healthz").json()
        assert "audit log damaged" in health["quarantined"]["us"]
        assert client.get("/v1/users/ana").status_code == 503
        assert client.get("/v1/users/eli").status_code == 200


def _witness_us(data_dir: Path, heads: Path) -> int:
    """A witness keeps the us log's current head; returns its size."""
    config = load_config(data_dir)
    source = LocalHeadSource(config)
    verifier = Verifier.from_key_file(config.audit_key_path("us"))
    try:
        outcome = witness(source, "us", verifier, heads)
    finally:
        source.close()
    assert outcome.ok and outcome.head is not None
    return outcome.head.size


def test_a_witness_file_lets_the_start_catch_a_truncation_with_its_heads(
    busy_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    heads = tmp_path_factory.mktemp("witness") / "heads.jsonl"
    size = _witness_us(busy_dir, heads)
    keep = size - 6
    _us_log(
        busy_dir,
        f"DELETE FROM audit WHERE seq > {keep}",
        f"DELETE FROM audit_nodes WHERE (idx + 1) * (1 << level) > {keep}",
        f"UPDATE audit_state SET size = {keep}",
        "DELETE FROM audit_heads",
    )
    # Nothing in the log remembers the removed entries: without the witness it starts clean...
    health, us, _ = _serve_after_the_checks(busy_dir)
    assert us == 200 and health["audit_check"]["us"] == "verified"
    # ...with the witness's file (where the deployment cannot write it), it does not.
    (busy_dir / "fyp.toml").write_text(f'audit_witness_file = "{heads}"\n')
    health, us, eu = _serve_after_the_checks(busy_dir)
    assert (us, eu) == (503, 200)
    reason = health["quarantined"]["us"]
    assert f"the latest witnessed tree head covers {size} entries" in reason, reason


def test_a_witness_file_that_is_not_heads_stops_every_region(
    busy_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    heads = tmp_path_factory.mktemp("witness") / "heads.jsonl"
    heads.write_text("not json\n")
    (busy_dir / "fyp.toml").write_text(f'audit_witness_file = "{heads}"\n')
    engine = Engine(load_config(busy_dir))
    try:
        assert set(engine.gate.quarantined) == {"us", "eu"}
        assert "audit witness file cannot be used" in engine.gate.quarantined["eu"]
    finally:
        engine.close()

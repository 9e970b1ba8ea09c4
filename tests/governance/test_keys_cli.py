"""``fyp keys list|status|rotate`` and the engine's key checks: a region whose key-encryption key
is missing, corrupt or wrong serves no personal data; the other regions carry on."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fyp.api.app import create_app
from fyp.cli import main
from fyp.config import load_config
from fyp.engine import Engine
from fyp.errors import RegionQuarantined
from fyp.governance.policy import Principal
from fyp.storage.envelope import Kek, KeyFile, Keyring

LOCAL = ("127.0.0.1", 40000)


@pytest.fixture
def data_dir(tmp_path: Path, make_item: Any, make_user: Any, make_event: Any, now: float) -> Path:
    engine = Engine(load_config(tmp_path))
    engine.put_items([make_item("v1", "c1", tags=["cats"]), make_item("v2", "c2")])
    engine.put_users(
        [make_user("ana", "us"), make_user("eli", "eu", plan="pro"), make_user("ida", "eu")]
    )
    engine.ingest(
        [
            make_event("eli", "v1", "like", ts=now),
            make_event("eli", "v2", "skip", ts=now + 1),
            make_event("ana", "v1", "like", ts=now),
        ]
    )
    engine.sign_audit_heads()
    engine.close()
    return tmp_path


def _quarantined(data_dir: Path, broken: str, cause: str) -> None:
    engine = Engine(load_config(data_dir))
    try:
        reason = engine.gate.quarantined.get(broken, "")
        assert "encryption key check failed" in reason and cause in reason, reason
        assert set(engine.gate.quarantined) == {broken}
        with pytest.raises(RegionQuarantined):
            engine.gate.open(broken, Principal.service(broken), "serve_feed")
        engine.gate.open(broken, Principal.auditor(broken), "audit")  # the log stays readable
        with TestClient(create_app(engine, background_training=False), client=LOCAL) as client:
            health = client.get("/healthz").json()
            assert health["status"] == "degraded" and broken in health["quarantined"]
            response = client.get("/v1/users/eli")
            assert response.status_code == 503
            assert response.json()["type"] == "urn:fyp:problem:region-quarantined"
            assert client.get("/v1/users/ana").json()["attributes"] == {}
            assert client.get("/v1/users/ana/feed?n=2").status_code == 200
    finally:
        engine.close()


def test_a_missing_kek_quarantines_only_its_region(data_dir: Path) -> None:
    (data_dir / "keys" / "kek-eu.json").unlink()
    _quarantined(data_dir, "eu", "is missing")
    assert not (data_dir / "keys" / "kek-eu.json").exists(), "no new key replaces the lost one"


def test_a_corrupt_kek_quarantines_only_its_region(data_dir: Path) -> None:
    path = data_dir / "keys" / "kek-eu.json"
    path.write_text(path.read_text()[:-40])
    _quarantined(data_dir, "eu", "is corrupt")


def test_a_wrong_kek_quarantines_only_its_region(data_dir: Path) -> None:
    KeyFile(data_dir / "keys" / "kek-eu.json", "eu").save(Keyring("eu", [Kek.generate(1)]))
    _quarantined(data_dir, "eu", "does not hold KEK")


def test_another_regions_kek_quarantines_the_region(data_dir: Path) -> None:
    us = (data_dir / "keys" / "kek-us.json").read_text()
    (data_dir / "keys" / "kek-eu.json").write_text(us)
    _quarantined(data_dir, "eu", "belongs to region 'us'")


def test_rotate_from_the_command_line_is_audited_and_keeps_every_row_readable(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data-dir", str(data_dir)]
    db = data_dir / "region-eu.db"

    def rows(query: str) -> list[Any]:
        con = sqlite3.connect(db)
        try:
            return list(con.execute(query))
        finally:
            con.close()

    events_before = rows("SELECT * FROM events ORDER BY seq")
    users_before = rows("SELECT * FROM users ORDER BY user_id")
    assert main(["keys", "status", *args]) == 0
    out = capsys.readouterr().out
    assert "eu: ok, KEK v1" in out and "2 data keys" in out
    assert main(["keys", "rotate", *args]) == 1  # --region is required
    assert main(["keys", "rotate", "--region", "eu", "--operator", "dana", "-q", *args]) == 0
    out = capsys.readouterr().out
    assert "eu: KEK v2" in out and "2 re-wrapped" in out
    assert rows("SELECT * FROM events ORDER BY seq") == events_before
    assert rows("SELECT * FROM users ORDER BY user_id") == users_before
    assert main(["keys", "list", "--region", "eu", *args]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1:4:2] for line in listed] == [["v1", "retired"], ["v2", "active"]]
    assert "not in file" in listed[0] and "2 data keys" in listed[1]
    keys = json.loads((data_dir / "keys" / "kek-eu.json").read_text())["keys"]
    assert [k["version"] for k in keys] == [2]
    # The rotation is in eu's audit log, under the operator's name; the log still verifies.
    engine = Engine(load_config(data_dir))
    try:
        handle = engine.gate.open("eu", Principal.auditor("eu"), "audit")
        [entry] = [r for r in handle.audit.tail(50) if r.action == "kek_rotation"]
        assert entry.principal == "operator:dana@eu" and entry.purpose == "manage_keys"
        assert entry.detail["rewrapped"] == 2 and entry.detail["new_version"] == 2
        assert handle.audit.verify().ok
        assert engine.gate.quarantined == {}
        assert engine.get_user("eli").attributes == {"plan": "pro"}
        exported = engine.rights.export("eli")
        assert [e["type"] for e in exported["events"]] == ["like", "skip"]
        receipt = engine.rights.erase("eli")
        assert receipt["rows_deleted"]["user_keys"] == 1
    finally:
        engine.close()
    assert main(["keys", "status", "--region", "eu", *args]) == 0
    out = capsys.readouterr().out
    assert "1 data keys" in out and "until you rotate" in out
    assert main(["keys", "rotate", "--region", "eu", "-q", *args]) == 0
    assert main(["keys", "status", "--region", "eu", *args]) == 0
    out = capsys.readouterr().out
    assert "KEK v3" in out and "until you rotate" not in out


def test_status_names_a_quarantined_region(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (data_dir / "keys" / "kek-eu.json").unlink()
    assert main(["keys", "status", "--data-dir", str(data_dir)]) == 3
    out = capsys.readouterr().out
    assert "us: ok" in out and "eu: QUARANTINED" in out and "is missing" in out
    assert main(["keys", "rotate", "--region", "eu", "--data-dir", str(data_dir)]) == 1

"""The witness endpoints (``/v1/audit/{region}/head`` and ``/consistency``), and a witness that
polls them over HTTP (issue 14, defect 7)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fyp.api.app import create_app
from fyp.cli import main
from fyp.config import load_config
from fyp.engine import Engine
from fyp.governance import merkle
from fyp.governance.witness import HttpHeadSource, read_heads, witness
from fyp.storage.audit import TreeHead, audit, row_leaf

LOCAL = ("127.0.0.1", 40000)
PROBLEM = "application/problem+json"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, Engine]]:
    engine = Engine(load_config(tmp_path))
    with TestClient(create_app(engine, background_training=False), client=LOCAL) as client:
        yield client, engine


def _grow(client: TestClient, n: int) -> None:
    for i in range(n):  # each lookup is a gated, recorded open in every region
        client.get(f"/v1/users/nobody{i}")


def _problem(response: Any, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["type"] == f"urn:fyp:problem:{slug}"


def test_heads_are_signed_fresh_and_proofs_link_them(
    served: tuple[TestClient, Engine],
) -> None:
    client, engine = served
    _grow(client, 5)
    first = TreeHead.from_json(client.get("/v1/audit/us/head").json())
    verifier = engine.gate.audit_log("us").verifier
    assert first.region == "us" and verifier.valid(first.message(), first.signature)
    count_before = engine.gate.audit_log("us").count()
    again = TreeHead.from_json(client.get("/v1/audit/us/head").json())
    assert again == first  # the log did not grow: the same head, nothing signed or recorded
    assert engine.gate.audit_log("us").count() == count_before
    _grow(client, 7)
    second = TreeHead.from_json(client.get("/v1/audit/us/head").json())
    assert second.size > first.size and verifier.valid(second.message(), second.signature)
    body = client.get(
        "/v1/audit/us/consistency", params={"first": first.size, "second": second.size}
    ).json()
    assert (body["region"], body["first"], body["second"]) == ("us", first.size, second.size)
    proof = [bytes.fromhex(h) for h in body["proof"]]
    merkle.verify_consistency(first.size, second.size, first.root, second.root, proof)


def test_bad_requests_get_problems(served: tuple[TestClient, Engine]) -> None:
    client, _ = served
    _grow(client, 3)
    size = client.get("/v1/audit/us/head").json()["tree_size"]
    consistency = "/v1/audit/us/consistency"
    _problem(client.get(consistency, params={"first": 1, "second": size + 1}), 404, "not-found")
    _problem(client.get(consistency, params={"first": 3, "second": 2}), 422, "invalid-input")
    _problem(client.get(consistency, params={"first": 0, "second": 2}), 422, "invalid-input")
    _problem(client.get("/v1/audit/mars/head"), 404, "not-found")
    _problem(client.get("/v1/audit/mars/consistency?first=1&second=1"), 404, "not-found")


def test_the_endpoints_need_the_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FYP_API_KEY", "s3cret-key")
    engine = Engine(load_config(tmp_path))
    with TestClient(create_app(engine), client=("203.0.113.9", 5555)) as client:
        _problem(client.get("/v1/audit/us/head"), 401, "unauthenticated")
        good = client.get("/v1/audit/us/head", headers={"Authorization": "Bearer s3cret-key"})
        assert good.status_code == 200


def test_a_quarantined_region_signs_no_head_for_a_witness(tmp_path: Path) -> None:
    engine = Engine(load_config(tmp_path))
    engine.gate.locate("nobody")
    engine.sign_audit_heads()
    engine.close()
    con = sqlite3.connect(tmp_path / "region-eu-audit.db")
    con.execute("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)")
    con.commit()
    con.close()
    engine = Engine(load_config(tmp_path))
    with TestClient(create_app(engine, background_training=False), client=LOCAL) as client:
        _problem(client.get("/v1/audit/eu/head"), 503, "region-quarantined")
        assert client.get("/v1/audit/us/head").status_code == 200


def test_a_witness_polling_over_http_keeps_heads_and_refuses_a_rewrite(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    heads = tmp_path_factory.mktemp("witness") / "heads.jsonl"
    engine = Engine(load_config(tmp_path))
    pinned = engine.gate.audit_log("us").verifier
    with TestClient(create_app(engine, background_training=False), client=LOCAL) as client:
        source = HttpHeadSource(client)
        for n in (3, 0, 9):
            _grow(client, n)
            outcome = witness(source, "us", pinned, heads)
            assert outcome.ok, outcome.problem
        kept = read_heads(heads)
        assert len(kept) == 2 and kept[0].size < kept[1].size
        # The operator rewrites an entry the witness has seen and rebuilds the tree in place.
        con = sqlite3.connect(tmp_path / "region-us-audit.db")
        con.execute("UPDATE audit SET principal = 'nobody' WHERE seq = 2")
        con.execute("DELETE FROM audit_nodes")
        con.execute("DELETE FROM audit_heads")
        con.commit()
        con.close()
        log = engine.gate.audit_log("us")
        with log.db.write() as conn:  # the attacker's rebuild, with fyp's own code
            rows = conn.execute(select(audit).order_by(audit.c.seq)).all()
            log._add_leaves(conn, 0, [row_leaf(r) or b"" for r in rows])
        _grow(client, 2)
        outcome = witness(source, "us", pinned, heads)
        assert not outcome.ok and "not an extension" in (outcome.problem or "")
        assert len(read_heads(heads)) == 2


def test_the_witness_command_polls_a_server(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    heads = tmp_path_factory.mktemp("witness") / "heads.jsonl"
    elsewhere = tmp_path_factory.mktemp("witness-host")  # the witness's host has no fyp data
    engine = Engine(load_config(tmp_path))
    key = engine.gate.audit_log("eu").verifier.hex()
    with TestClient(create_app(engine, background_training=False), client=LOCAL) as client:

        class Polling(HttpHeadSource):
            def close(self) -> None:  # the test's client outlives the command
                pass

        def connect(base_url: str, api_key: str | None, timeout_s: float = 30.0) -> Polling:
            assert (base_url, api_key) == ("https://fyp.example", "k3y")
            return Polling(client)

        monkeypatch.setattr(HttpHeadSource, "connect", staticmethod(connect))

        def witness_eu(pinned: str) -> int:
            argv = ["audit", "witness", "--url", "https://fyp.example", "--api-key", "k3y"]
            argv += ["--region", "eu", "--public-key", pinned, "--heads", str(heads)]
            return main([*argv, "--data-dir", str(elsewhere)])

        _grow(client, 2)
        assert witness_eu(key) == 0
        _grow(client, 2)
        assert witness_eu(key) == 0
        assert "consistent with size" in capsys.readouterr().out
        assert [h.region for h in read_heads(heads)] == ["eu", "eu"]
        _grow(client, 2)
        assert witness_eu(engine.gate.audit_log("us").verifier.hex()) == 3
        assert "not signed by the pinned key" in capsys.readouterr().out
        assert len(read_heads(heads)) == 2
    assert not list(elsewhere.iterdir())  # nothing was made on the witness's host

"""``fyp user export|erase``: an operator of the user's home region carries out the request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fyp.cli import main
from fyp.config import load_config
from fyp.engine import Engine
from fyp.governance.policy import Principal


def test_export_then_erase_from_the_command_line(
    tmp_path: Path,
    make_item: Any,
    make_user: Any,
    make_event: Any,
    now: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = Engine(load_config(tmp_path))
    engine.put_items([make_item("v1", "c1"), make_item("v2", "c2")])
    engine.put_users([make_user("zoe", "eu")])
    engine.ingest(
        [make_event("zoe", "v1", "like", ts=now), make_event("zoe", "v2", "skip", ts=now)]
    )
    engine.close()
    out = tmp_path / "zoe.json"
    args = ["--data-dir", str(tmp_path), "--operator", "dana"]
    assert main(["user", "export", "zoe", "--out", str(out), *args]) == 0
    exported = json.loads(out.read_text())
    assert exported["user_id"] == "zoe" and len(exported["events"]) == 2
    assert main(["user", "erase", "zoe", *args]) == 0
    receipt = json.loads(capsys.readouterr().out)
    assert receipt["rows_deleted"]["events"] == 2
    assert main(["user", "erase", "zoe", *args]) == 1  # gone: a clear "no user" error
    engine = Engine(load_config(tmp_path))
    try:
        log = engine.gate.open("eu", Principal.auditor("eu"), "audit").audit.tail(50)
        by_dana = {(r.purpose, r.action) for r in log if r.principal == "operator:dana@eu"}
        assert {("export_user", "open"), ("export_user", "export_user")} <= by_dana
        assert {("erase_user", "open"), ("erase_user", "erase_user")} <= by_dana
    finally:
        engine.close()

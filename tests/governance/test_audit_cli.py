"""``fyp audit``: verify, tail, head, sign, proof and key on a real data directory."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from fyp.cli import main
from fyp.config import load_config
from fyp.engine import Engine
from fyp.governance import merkle
from fyp.governance.keys import Verifier
from fyp.storage.audit import TreeHead


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    engine = Engine(load_config(tmp_path))
    for _ in range(30):
        engine.gate.locate("nobody")  # asks both regions, and each asking is audited
    engine.sign_audit_heads()
    engine.close()
    return tmp_path


def test_verify_passes_on_an_untouched_log(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "verify", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "us: ok" in out and "eu: ok" in out


def test_verify_names_the_altered_entry_and_fails(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    con = sqlite3.connect(data_dir / "region-us-audit.db")
    con.execute("UPDATE audit SET principal = 'someone-else' WHERE seq = 12")
    con.commit()
    con.close()
    assert main(["audit", "verify", "--region", "us", "--data-dir", str(data_dir)]) == 3
    out = capsys.readouterr().out
    assert "us: FAILED (first bad entry #12)" in out
    assert "entry #12 was altered" in out


def test_a_pinned_key_that_is_not_the_regions_fails_verification(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = "11" * 32
    args = ["audit", "verify", "--region", "eu", "--public-key", stranger]
    assert main([*args, "--data-dir", str(data_dir)]) == 3
    assert "invalid signature" in capsys.readouterr().out


def test_proof_output_verifies_with_the_published_key(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "key", "--region", "us", "--data-dir", str(data_dir)]) == 0
    region, _, key_hex = capsys.readouterr().out.strip().split("\t")
    assert region == "us"
    args = ["audit", "proof", "--region", "us", "--seq", "9", "--data-dir", str(data_dir)]
    assert main(args) == 0
    proof = json.loads(capsys.readouterr().out)
    head = TreeHead.from_json(proof["tree_head"])
    assert Verifier.from_hex(key_hex).valid(head.message(), head.signature)
    merkle.verify_inclusion(
        8,
        head.size,
        bytes.fromhex(proof["leaf_hash"]),
        [bytes.fromhex(p) for p in proof["audit_path"]],
        head.root,
    )


def test_tail_lists_decisions_and_sign_advances_the_head(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "head", "--region", "eu", "--data-dir", str(data_dir)]) == 0
    before = json.loads(capsys.readouterr().out)
    assert main(["audit", "tail", "--region", "eu", "-n", "2", "--data-dir", str(data_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("eu\t#") for line in lines)
    assert main(["audit", "sign", "--region", "eu", "--data-dir", str(data_dir)]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["tree_size"] > before["tree_size"]

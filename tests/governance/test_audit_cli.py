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
from fyp.storage.audit import SqlAuditLog, TreeHead


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


# ---- a verifier that only reads, and never crashes on a damaged log (issue 14, defect 6) ------


def _audit_rows(data_dir: Path) -> dict[str, list[list[tuple[object, ...]]]]:
    found: dict[str, list[list[tuple[object, ...]]]] = {}
    for region in ("us", "eu"):
        con = sqlite3.connect(data_dir / f"region-{region}-audit.db")
        found[region] = [
            con.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("audit", "audit_nodes", "audit_heads", "audit_state")
        ]
        con.close()
    return found


def _sql(data_dir: Path, region: str, *statements: str) -> None:
    con = sqlite3.connect(data_dir / f"region-{region}-audit.db")
    for statement in statements:
        con.execute(statement)
    con.commit()
    con.close()


def _last_seq(data_dir: Path, region: str) -> int:
    con = sqlite3.connect(data_dir / f"region-{region}-audit.db")
    (last,) = con.execute("SELECT max(seq) FROM audit").fetchone()
    con.close()
    return int(last)


def test_verify_only_reads_and_records_the_check_after_it(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _audit_rows(data_dir)
    for _ in range(2):
        assert main(["audit", "verify", "--no-record", "--data-dir", str(data_dir)]) == 0
    assert _audit_rows(data_dir) == before  # not one entry, node, head or counter changed
    capsys.readouterr()
    assert main(["audit", "verify", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    after = _audit_rows(data_dir)
    for region in ("us", "eu"):
        entries = after[region][0]
        assert entries[:-1] == before[region][0]  # exactly one entry more, at the end
        seq, _, principal, purpose, action, decision, detail = entries[-1]
        assert (purpose, action, decision) == ("audit", "verify", "allow")
        assert principal.startswith("auditor:") and principal.endswith(f"@{region}")
        assert json.loads(detail)["entries"] == seq - 1  # the check saw the log before it
        assert f"recorded as entry #{seq}" in out
    # ... and the log with that entry verifies too.
    assert main(["audit", "verify", "--no-record", "--data-dir", str(data_dir)]) == 0


def test_the_tampering_of_the_issue_fails_cleanly_with_the_first_bad_entry(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = _last_seq(data_dir, "us")
    _sql(
        data_dir,
        "us",
        f"delete from audit where seq={last}",
        f"update audit_state set size={last - 1}",
    )
    before = _audit_rows(data_dir)
    assert main(["audit", "verify", "--data-dir", str(data_dir)]) == 3
    out = capsys.readouterr().out
    assert f"us: FAILED (first bad entry #{last})" in out
    assert f"entries from #{last} on were removed" in out
    assert "eu: ok" in out
    after = _audit_rows(data_dir)
    assert after["us"] == before["us"]  # nothing is appended to a log that failed


# (SQL on the us log, the first bad entry; N is the last entry, H the size of the signed head)
CLI_TAMPERINGS = {
    "edited middle row": (["UPDATE audit SET decision = 'deny' WHERE seq = 12"], "12"),
    "edited middle row, its hashes rebuilt up to the root": (
        ["UPDATE audit SET purpose = 'train' WHERE seq = 12", "REBUILD"],
        "1",
    ),
    "deleted tail": (
        [
            "DELETE FROM audit WHERE seq > 20",
            "DELETE FROM audit_nodes WHERE (idx + 1) * (1 << level) > 20",
            "UPDATE audit_state SET size = 20",
        ],
        "21",
    ),
    "duplicated seq": (["DUPLICATE 7"], "7"),
    "bad node row": (
        ["UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = 3 AND idx = 1"],
        "9",
    ),
    "missing node row": (["DELETE FROM audit_nodes WHERE level = 1 AND idx = 4"], "9"),
}


def _tamper(data_dir: Path, statements: list[str]) -> None:
    for statement in statements:
        if statement == "REBUILD":  # the tree rebuilt from the edited entries (no key needed)
            _sql(data_dir, "us", "DELETE FROM audit_nodes", "DELETE FROM audit_state")
            SqlAuditLog(f"sqlite:///{data_dir / 'region-us-audit.db'}", "us").close()
        elif statement.startswith("DUPLICATE"):
            seq = statement.split()[1]
            _sql(
                data_dir,
                "us",
                "CREATE TABLE audit_copy AS SELECT * FROM audit",
                "DROP TABLE audit",
                "ALTER TABLE audit_copy RENAME TO audit",
                f"INSERT INTO audit SELECT * FROM audit WHERE seq = {seq}",
            )
        else:
            _sql(data_dir, "us", statement)


@pytest.mark.parametrize("name", sorted(CLI_TAMPERINGS))
def test_verify_names_the_first_bad_entry_of_every_tampering(
    data_dir: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    statements, first_bad = CLI_TAMPERINGS[name]
    _tamper(data_dir, statements)
    assert main(["audit", "verify", "--data-dir", str(data_dir)]) == 3
    out = capsys.readouterr().out
    assert f"us: FAILED (first bad entry #{first_bad})" in out, out
    assert "eu: ok" in out


def test_a_missing_key_file_fails_verification_instead_of_making_a_key(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = data_dir / "keys" / "audit-eu.ed25519"
    key.unlink()
    assert main(["audit", "verify", "--region", "eu", "--data-dir", str(data_dir)]) == 3
    assert "cannot read the signing key" in capsys.readouterr().out
    assert not key.exists()


# ---- witnesses: heads kept outside the log (issue 14, defect 7) ---------------------------------


def _pinned(data_dir: Path, capsys: pytest.CaptureFixture[str], region: str = "us") -> str:
    assert main(["audit", "key", "--region", region, "--data-dir", str(data_dir)]) == 0
    return capsys.readouterr().out.strip().split("\t")[2]


def _grow(data_dir: Path, times: int) -> None:
    engine = Engine(load_config(data_dir))
    for _ in range(times):
        engine.gate.locate("nobody")
    engine.sign_audit_heads()
    engine.close()


def test_a_witness_keeps_consistent_heads_and_catches_a_truncation_the_log_cannot(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _pinned(data_dir, capsys)
    heads = tmp_path_factory.mktemp("witness") / "heads.jsonl"
    witness = ["audit", "witness", "--region", "us", "--public-key", key, "--heads", str(heads)]
    witness += ["--data-dir", str(data_dir)]
    assert main(witness) == 0
    first = json.loads(heads.read_text().splitlines()[0])
    assert main(witness) == 0  # nothing new: nothing appended
    assert len(heads.read_text().splitlines()) == 1
    _grow(data_dir, 10)
    assert main(witness) == 0
    assert f"consistent with size {first['tree_size']}" in capsys.readouterr().out
    kept = [json.loads(line) for line in heads.read_text().splitlines()]
    assert [h["tree_size"] for h in kept] == sorted({h["tree_size"] for h in kept})
    assert len(kept) == 2
    # The careful attacker: entries after the first witnessed head, their tree nodes, the
    # counter and every signed head of the log, removed together.
    size = first["tree_size"]
    _sql(
        data_dir,
        "us",
        f"DELETE FROM audit WHERE seq > {size}",
        f"DELETE FROM audit_nodes WHERE (idx + 1) * (1 << level) > {size}",
        f"UPDATE audit_state SET size = {size}",
        "DELETE FROM audit_heads",
    )
    capsys.readouterr()
    # Locally nothing remembers them, so the log alone verifies clean (docs/TRUST.md says so)...
    assert (
        main(["audit", "verify", "--region", "us", "--no-record", "--data-dir", str(data_dir)]) == 0
    )
    # ...but not against the witness's heads,
    against = ["audit", "verify", "--region", "us", "--against", str(heads)]
    assert main([*against, "--public-key", key, "--data-dir", str(data_dir)]) == 3
    out = capsys.readouterr().out
    assert f"us: FAILED (first bad entry #{size + 1})" in out
    assert f"a witnessed tree head covers {kept[1]['tree_size']} entries" in out
    # and the witness itself refuses the shorter log once it is signed again, keeping nothing.
    _grow(data_dir, 0)
    engine = Engine(load_config(data_dir))
    engine.gate.sign_audit_head("us")
    engine.close()
    assert main(witness) == 3
    assert "truncated or rolled back" in capsys.readouterr().out
    assert len(heads.read_text().splitlines()) == 2


def test_a_witness_refuses_a_head_under_another_key_and_a_rewritten_log(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _pinned(data_dir, capsys)
    heads = tmp_path_factory.mktemp("witness") / "heads.jsonl"
    witness = ["audit", "witness", "--region", "us", "--heads", str(heads)]
    witness += ["--data-dir", str(data_dir)]
    assert main([*witness, "--public-key", _pinned(data_dir, capsys, "eu")]) == 3
    assert "not signed by the pinned key" in capsys.readouterr().out
    assert not heads.read_text()
    assert main([*witness, "--public-key", key]) == 0
    # The operator, who holds the key, edits entry 5, rebuilds the tree, adds entries and
    # signs a new head: a valid signature, but not an extension of the head the witness kept.
    _tamper(data_dir, ["UPDATE audit SET principal = 'nobody' WHERE seq = 5", "REBUILD"])
    _sql(data_dir, "us", "DELETE FROM audit_heads")
    _grow(data_dir, 3)
    capsys.readouterr()
    assert (
        main(["audit", "verify", "--region", "us", "--no-record", "--data-dir", str(data_dir)]) == 0
    )
    assert main([*witness, "--public-key", key]) == 3
    assert "not an extension" in capsys.readouterr().out
    assert len(heads.read_text().splitlines()) == 1
    against = ["audit", "verify", "--region", "us", "--against", str(heads), "--no-record"]
    assert main([*against, "--data-dir", str(data_dir)]) == 3
    assert "us: FAILED (first bad entry #1)" in capsys.readouterr().out


def test_a_heads_file_that_is_not_heads_is_a_clear_error(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    heads = tmp_path_factory.mktemp("witness") / "heads.jsonl"
    heads.write_text('{"region": "us", "tree_size": 3}\n')
    against = ["audit", "verify", "--against", str(heads), "--data-dir", str(data_dir)]
    assert main(against) == 1
    assert f"{heads}:1: not a tree head" in capsys.readouterr().err

"""The audit log's Merkle tree: proofs against signed heads, and verify() against tampering."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fyp.errors import SchemaMismatch
from fyp.governance import merkle
from fyp.governance.keys import Signer, Verifier
from fyp.storage.audit import AUDIT_SCHEMA_VERSION, SqlAuditLog, TreeHead


def _log(path: Path, entries: int, signer: Signer | None = None) -> SqlAuditLog:
    log = SqlAuditLog(f"sqlite:///{path}", "us", signer)
    for i in range(entries):
        log.append(f"svc-{i % 3}", "serve_feed", "open", "allow", {"reason": f"r{i}"}, 1000.0 + i)
    return log


def _sql(path: Path, statement: str, *args: object) -> None:
    con = sqlite3.connect(path)
    con.execute(statement, args)
    con.commit()
    con.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


def test_seq_is_gap_free_and_proofs_verify_against_signed_heads(db: Path) -> None:
    log = _log(db, 21)
    head = log.sign_head(2000.0)
    assert head.size == 21
    assert log.verifier.valid(head.message(), head.signature)
    for seq in (1, 2, 8, 16, 21):
        record, leaf = log.leaf(seq)
        assert record.seq == seq and record.detail == {"reason": f"r{seq - 1}"}
        size, path = log.inclusion_proof(seq, head.size)
        merkle.verify_inclusion(seq - 1, size, leaf, path, head.root)
    log.append("op", "audit", "open", "deny", {}, 3000.0)
    newer = log.sign_head(3001.0)
    size, proof = log.consistency_proof(head.size, newer.size)
    merkle.verify_consistency(head.size, size, head.root, newer.root, proof)
    assert [h.size for h in log.heads()] == [21, 22]
    assert log.verify().ok


def test_the_stored_tree_matches_a_tree_rebuilt_from_the_entries(db: Path) -> None:
    log = _log(db, 37)
    leaves = [log.leaf(seq)[1] for seq in range(1, 38)]
    for n in (1, 2, 5, 16, 37):
        assert log.root(n) == (n, merkle.root_from_leaves(leaves[:n]))


def test_a_head_round_trips_through_json_and_a_pinned_public_key(db: Path) -> None:
    log = _log(db, 3)
    head = log.sign_head(5.0)
    again = TreeHead.from_json(head.to_json())
    pinned = Verifier.from_hex(log.verifier.hex())
    assert again == head and pinned.valid(again.message(), again.signature)
    forged = TreeHead(**{**again.__dict__, "size": 4})
    assert not pinned.valid(forged.message(), forged.signature)


def test_proofs_for_sizes_the_log_does_not_have_are_refused(db: Path) -> None:
    log = _log(db, 5)
    with pytest.raises(merkle.ProofError):
        log.inclusion_proof(3, 6)
    with pytest.raises(merkle.ProofError):
        log.inclusion_proof(6, 5)
    with pytest.raises(merkle.ProofError):
        log.consistency_proof(4, 9)
    _, path = log.inclusion_proof(3, 4)  # a proof for size 4 does not verify against size 5
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(2, 5, log.leaf(3)[1], path, log.root(5)[1])


def test_an_entry_edited_in_place_is_named(db: Path) -> None:
    log = _log(db, 12)
    log.sign_head(1.0)
    _sql(db, "UPDATE audit SET decision = 'deny' WHERE seq = 7")
    report = log.verify()
    assert not report.ok
    assert report.first_bad_seq == 7
    assert any("#7 was altered" in p for p in report.problems)


def test_a_removed_entry_is_named(db: Path) -> None:
    log = _log(db, 12)
    _sql(db, "DELETE FROM audit WHERE seq = 5")
    report = log.verify()
    assert report.first_bad_seq == 5
    assert any("#5 is removed" in p for p in report.problems)


def test_reordered_entries_are_named(db: Path) -> None:
    log = _log(db, 12)
    con = sqlite3.connect(db)
    rows = {r[0]: r[1:] for r in con.execute("SELECT seq, ts, principal, detail FROM audit")}
    for seq, other in ((4, 9), (9, 4)):  # swap the contents of entries 4 and 9
        ts, principal, detail = rows[other]
        con.execute(
            "UPDATE audit SET ts = ?, principal = ?, detail = ? WHERE seq = ?",
            (ts, principal, detail, seq),
        )
    con.commit()
    con.close()
    report = log.verify()
    assert report.first_bad_seq == 4
    assert {p for p in report.problems if "altered" in p} == {
        "entry #4 was altered after it was written",
        "entry #9 was altered after it was written",
    }


def test_truncation_is_caught_by_the_signed_head(db: Path) -> None:
    log = _log(db, 10)
    log.sign_head(1.0)
    # A careful attacker drops the last three entries and every trace of them in the tree.
    _sql(db, "DELETE FROM audit WHERE seq > 7")
    _sql(db, "DELETE FROM audit_nodes WHERE idx * (1 << level) + (1 << level) > 7")
    _sql(db, "UPDATE audit_state SET size = 7")
    report = log.verify()
    assert report.first_bad_seq == 8
    assert any("truncated" in p and "covers 10" in p for p in report.problems)


def test_rewritten_hashes_are_caught_by_the_signed_head(db: Path) -> None:
    log = _log(db, 16)
    log.sign_head(1.0)  # a monitor holds this head
    _log(db, 0)  # (reopening changes nothing)
    _sql(db, 'UPDATE audit SET detail = \'{"reason": "nothing to see"}\' WHERE seq = 11')
    # The attacker rebuilds every stored hash from the edited entries...
    _sql(db, "DELETE FROM audit_nodes")
    _sql(db, "DELETE FROM audit_state")
    rebuilt = SqlAuditLog(f"sqlite:///{db}", "us", log.signer)
    # ...so the entries and the tree agree again, but the signed head of size 16 does not.
    report = rebuilt.verify()
    assert not report.ok
    assert report.first_bad_seq == 1
    assert any("signed root of size 16" in p for p in report.problems)
    # A head the attacker signs now only helps if they also hold the key, which a monitor pins.
    assert rebuilt.verify(Verifier.from_hex(Signer.generate().verifier.hex())).problems


def test_a_head_signed_by_another_key_is_rejected(db: Path) -> None:
    log = _log(db, 4)
    log.sign_head(1.0)
    stranger = Signer.generate().verifier
    report = log.verify(stranger)
    assert any("invalid signature" in p for p in report.problems)


def test_a_version_1_log_gets_its_tree_when_opened(db: Path) -> None:
    con = sqlite3.connect(db)
    con.executescript(
        """
        CREATE TABLE fyp_meta (key VARCHAR(200) PRIMARY KEY, value VARCHAR(200) NOT NULL);
        INSERT INTO fyp_meta VALUES ('audit.schema_version', '1');
        CREATE TABLE audit (seq INTEGER PRIMARY KEY, ts FLOAT NOT NULL,
            principal VARCHAR(200) NOT NULL, purpose VARCHAR(64) NOT NULL,
            action VARCHAR(200) NOT NULL, decision VARCHAR(16) NOT NULL, detail TEXT NOT NULL);
        INSERT INTO audit VALUES (1, 1.5, 'svc', 'train', 'open', 'allow', '{}');
        INSERT INTO audit VALUES (2, 2.5, 'op', 'audit', 'open', 'deny', '{"reason": "x"}');
        INSERT INTO audit VALUES (3, 3.5, 'svc', 'route', 'open', 'allow', '{}');
        """
    )
    con.commit()
    con.close()
    log = SqlAuditLog(f"sqlite:///{db}", "us")
    assert log.size() == 3
    assert log.append("svc", "train", "open", "allow", {}, 4.0) == 4
    assert log.verify().ok
    meta = dict(sqlite3.connect(db).execute("SELECT key, value FROM fyp_meta").fetchall())
    assert meta["audit.schema_version"] == str(AUDIT_SCHEMA_VERSION)


def test_a_version_1_log_with_a_gap_is_refused(db: Path) -> None:
    con = sqlite3.connect(db)
    con.executescript(
        """
        CREATE TABLE fyp_meta (key VARCHAR(200) PRIMARY KEY, value VARCHAR(200) NOT NULL);
        INSERT INTO fyp_meta VALUES ('audit.schema_version', '1');
        CREATE TABLE audit (seq INTEGER PRIMARY KEY, ts FLOAT NOT NULL,
            principal VARCHAR(200) NOT NULL, purpose VARCHAR(64) NOT NULL,
            action VARCHAR(200) NOT NULL, decision VARCHAR(16) NOT NULL, detail TEXT NOT NULL);
        INSERT INTO audit VALUES (1, 1.5, 'svc', 'train', 'open', 'allow', '{}');
        INSERT INTO audit VALUES (3, 3.5, 'svc', 'route', 'open', 'allow', '{}');
        """
    )
    con.commit()
    con.close()
    with pytest.raises(SchemaMismatch, match="missing"):
        SqlAuditLog(f"sqlite:///{db}", "us")


def test_the_signing_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit-us.ed25519"
    first = Signer.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Signer.load_or_create(path).verifier.hex() == first.verifier.hex()


def test_appending_in_batches_builds_the_same_tree_as_one_by_one(tmp_path: Path) -> None:
    one = SqlAuditLog(f"sqlite:///{tmp_path / 'one.db'}", "us")
    many = SqlAuditLog(f"sqlite:///{tmp_path / 'many.db'}", "us")
    entries = [("svc", "train", "open", "allow", {"i": i}, float(i)) for i in range(45)]
    for entry in entries:
        one.append(*entry)
    seqs: list[int] = []
    for start, end in ((0, 3), (3, 4), (4, 17), (17, 32), (32, 45)):  # odd cuts across subtrees
        seqs += many.append_many(entries[start:end])
    assert seqs == list(range(1, 46))
    assert one.root() == many.root()
    assert many.verify().ok

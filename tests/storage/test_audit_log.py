"""The audit log's Merkle tree: proofs against signed heads, and verify() against tampering."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fyp.errors import AuditLogDamaged
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
    # It still opens (an engine must start and quarantine only this region), but says why it
    # cannot take an entry, and refuses one rather than build a tree over the gap.
    log = SqlAuditLog(f"sqlite:///{db}", "us")
    assert log.problem is not None and "missing" in log.problem
    assert log.quick_check() == log.problem
    with pytest.raises(AuditLogDamaged, match="missing"):
        log.append("svc", "train", "open", "allow", {}, 4.0)


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


# ---- damage of every kind: verify names it and never raises; quick_check catches the tail ----


def _rows(path: Path) -> list[list[tuple[object, ...]]]:
    """Every row of every audit table, to show that a check wrote nothing."""
    con = sqlite3.connect(path)
    tables = ("audit", "audit_nodes", "audit_heads", "audit_state", "fyp_meta")
    rows = [sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables]
    con.close()
    return rows


def _without_primary_key(path: Path) -> None:
    """Rebuild the entries table without its key, as someone who wants duplicates would."""
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE audit_copy AS SELECT * FROM audit;
        DROP TABLE audit;
        ALTER TABLE audit_copy RENAME TO audit;
        """
    )
    con.commit()
    con.close()


# (what the attacker runs, the first bad entry verify must name, whether quick_check sees it)
TAMPERINGS = {
    # The exact tampering of issue 14: the last entry removed and the counter set back.
    "last entry removed, counter set back": (
        ["DELETE FROM audit WHERE seq = 20", "UPDATE audit_state SET size = 19"],
        20,
        True,
    ),
    "middle entry edited": (["UPDATE audit SET decision = 'deny' WHERE seq = 9"], 9, False),
    "middle entry edited, its leaf hash rewritten": (
        [
            "UPDATE audit SET principal = 'x' WHERE seq = 9",
            "UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = 0 AND idx = 8",
        ],
        9,
        False,
    ),
    "middle entry removed": (["DELETE FROM audit WHERE seq = 11"], 11, True),
    "tail removed with its tree and counter, below the signed head": (
        [
            "DELETE FROM audit WHERE seq > 14",
            "DELETE FROM audit_nodes WHERE (idx + 1) * (1 << level) > 14",
            "UPDATE audit_state SET size = 14",
        ],
        15,
        True,
    ),
    "tail removed, nodes left behind": (
        ["DELETE FROM audit WHERE seq > 17", "UPDATE audit_state SET size = 17"],
        18,
        True,
    ),
    "counter set back only": (["UPDATE audit_state SET size = 18"], 19, True),
    "counter lost": (["DELETE FROM audit_state"], 21, True),
    "inner tree node zeroed": (
        ["UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = 2 AND idx = 1"],
        5,
        False,
    ),
    "tree node of the right edge deleted": (
        ["DELETE FROM audit_nodes WHERE level = 4 AND idx = 0"],
        1,
        True,
    ),
    "tree node with a short hash": (
        ["UPDATE audit_nodes SET hash = x'00' WHERE level = 1 AND idx = 2"],
        5,
        False,
    ),
    "extra tree node past the end": (
        ["INSERT INTO audit_nodes VALUES (0, 20, zeroblob(32))"],
        21,
        True,
    ),
    "signed head deleted, entry edited": (
        ["DELETE FROM audit_heads", "UPDATE audit SET action = 'x' WHERE seq = 3"],
        3,
        False,
    ),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_every_tampering_is_named_by_verify_and_nothing_is_written(db: Path, name: str) -> None:
    statements, first_bad, startup_sees_it = TAMPERINGS[name]
    log = _log(db, 20)
    log.sign_head(1.0)  # covers all 20
    for statement in statements:
        _sql(db, statement)
    before = _rows(db)
    report = log.verify()
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.problems
    assert _rows(db) == before
    # A fresh reader that opens nothing for writing finds the same.
    reader = SqlAuditLog(f"sqlite:///{db}", "us", read_only=True)
    again = reader.verify(log.verifier)
    assert (again.first_bad_seq, again.problems) == (report.first_bad_seq, report.problems)
    reader.close()
    assert (log.quick_check() is not None) == startup_sees_it, log.quick_check()
    assert _rows(db) == before


def test_duplicated_entries_are_named(db: Path) -> None:
    log = _log(db, 12)
    log.sign_head(1.0)
    _without_primary_key(db)
    _sql(db, "INSERT INTO audit SELECT * FROM audit WHERE seq = 6")
    report = log.verify()
    assert report.first_bad_seq == 6
    assert report.problems == ["entry #6 appears more than once"]
    assert log.quick_check() is not None


def test_a_malformed_row_is_reported_not_raised(db: Path) -> None:
    log = _log(db, 12)
    log.sign_head(1.0)
    _without_primary_key(db)  # so seq and detail may hold anything
    _sql(db, "UPDATE audit SET detail = x'00ff' WHERE seq = 4")
    _sql(db, "UPDATE audit SET seq = 'four' WHERE seq = 5")
    _sql(db, "UPDATE audit_heads SET signature = 'forged'")
    report = log.verify()
    assert report.first_bad_seq == 4
    assert "entry #4 is malformed (a field of the wrong type)" in report.problems
    assert any("malformed number ('four')" in p for p in report.problems)
    assert any("signed tree head is malformed" in p for p in report.problems)
    assert log.quick_check() is not None


def test_a_missing_table_is_a_problem_not_a_crash(db: Path) -> None:
    log = _log(db, 5)
    _sql(db, "DROP TABLE audit_nodes")
    report = log.verify()
    assert not report.ok and "could not be read" in report.problems[0]
    assert "could not be read" in (log.quick_check() or "")


def test_an_append_to_a_damaged_log_is_refused_and_reported_once(db: Path) -> None:
    log = _log(db, 9)
    _sql(db, "DELETE FROM audit WHERE seq = 9")
    _sql(db, "UPDATE audit_state SET size = 8")
    seen: list[str] = []
    log.on_damaged = seen.append
    with pytest.raises(AuditLogDamaged, match="run `fyp audit verify`"):
        log.append("svc", "train", "open", "allow", {}, 50.0)
    assert len(seen) == 1 and log.problem == seen[0]
    with pytest.raises(AuditLogDamaged):  # and every later one, without touching the database
        log.append("svc", "train", "open", "allow", {}, 51.0)
    assert log.count() == 8


def test_witnessed_heads_catch_a_truncation_that_removed_the_logs_own_heads(db: Path) -> None:
    log = _log(db, 10)
    kept = [log.sign_head(1.0)]  # a witness copies this head out of the log
    for i in range(6):
        log.append("svc", "route", "open", "allow", {"i": i}, 2000.0 + i)
    kept.append(log.sign_head(2.0))
    # The careful attacker: the last 9 entries, their tree nodes, the counter and every head.
    _sql(db, "DELETE FROM audit WHERE seq > 7")
    _sql(db, "DELETE FROM audit_nodes WHERE (idx + 1) * (1 << level) > 7")
    _sql(db, "UPDATE audit_state SET size = 7")
    _sql(db, "DELETE FROM audit_heads")
    assert log.verify().ok  # nothing local remembers the removed entries
    assert log.quick_check() is None
    report = log.verify(witnessed=kept)
    assert report.witnessed_checked == 2 and report.first_bad_seq == 8
    assert any(
        "a witnessed tree head covers 10 entries, only 7 remain" in p for p in report.problems
    )


def test_witnessed_heads_catch_a_rewrite_under_the_same_key(db: Path) -> None:
    log = _log(db, 16)
    witnessed = log.sign_head(1.0)
    # Whoever holds the key and the database rewrites an entry, rebuilds every hash and signs
    # a fresh head: the log is self-consistent again, only an outside copy can tell.
    _sql(db, "UPDATE audit SET principal = 'nobody' WHERE seq = 5")
    _sql(db, "DELETE FROM audit_nodes")
    _sql(db, "DELETE FROM audit_state")
    _sql(db, "DELETE FROM audit_heads")
    rebuilt = SqlAuditLog(f"sqlite:///{db}", "us", log.signer)
    rebuilt.sign_head(2.0)
    assert rebuilt.verify().ok and rebuilt.quick_check() is None
    report = rebuilt.verify(witnessed=[witnessed])
    assert report.first_bad_seq == 1
    assert any("no longer produce the witnessed root of size 16" in p for p in report.problems)


def test_a_witnessed_head_of_another_region_or_key_is_refused(db: Path) -> None:
    log = _log(db, 4)
    head = log.sign_head(1.0)
    other_region = TreeHead(**{**head.__dict__, "region": "eu"})
    stranger = Signer.generate()
    foreign = TreeHead(
        **{
            **head.__dict__,
            "key_id": stranger.verifier.key_id,
            "signature": stranger.sign(head.message()),
        }
    )
    report = log.verify(witnessed=[other_region, foreign])
    assert report.witnessed_checked == 2
    assert any("is for region 'eu'" in p for p in report.problems)
    assert any(
        "witnessed tree head of size 4 has an invalid signature" in p for p in report.problems
    )


@given(
    size=st.integers(min_value=0, max_value=70),
    cuts=st.lists(st.integers(min_value=1, max_value=70), max_size=4),
    tamper=st.sampled_from(["none", "edit", "remove", "node"]),
    where=st.integers(min_value=1, max_value=70),
)
def test_the_streamed_check_agrees_with_a_tree_built_in_memory(
    tmp_path_factory: pytest.TempPathFactory,
    size: int,
    cuts: list[int],
    tamper: str,
    where: int,
) -> None:
    path = tmp_path_factory.mktemp("prop") / "audit.db"
    log = SqlAuditLog(f"sqlite:///{path}", "us")
    entries = [("svc", "route", "open", "allow", {"i": i}, float(i)) for i in range(size)]
    for start, end in itertools.pairwise([0, *sorted(c for c in cuts if c < size), size]):
        log.append_many(entries[start:end])
        log.sign_head(float(end))
    report = log.verify()
    leaves = [log.leaf(seq)[1] for seq in range(1, size + 1)]
    assert report.ok and report.entries == size
    assert report.root == merkle.root_from_leaves(leaves).hex()
    if size and tamper != "none":
        seq = min(where, size)
        if tamper == "edit":
            _sql(path, "UPDATE audit SET action = 'x' WHERE seq = ?", seq)
        elif tamper == "remove":
            _sql(path, "DELETE FROM audit WHERE seq = ?", seq)
        else:
            _sql(
                path,
                "UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = 0 AND idx = ?",
                seq - 1,
            )
        damaged = log.verify()
        assert not damaged.ok and damaged.first_bad_seq == seq, damaged.problems
    log.close()

"""A region's audit log over SQL: append-only, a Merkle tree over it, signed tree heads.

Every gate decision is appended here. The log lives apart from the region's data so that the
append on every request never waits behind a feed's or an import's write transaction (SQLite has
one writer per database file).

Tamper evidence (RFC 9162 shape, see :mod:`fyp.governance.merkle`): entry ``seq`` is leaf
``seq - 1`` of a Merkle tree. Each append stores the entry's leaf hash and the roots of the
complete subtrees it closes (``audit_nodes``; one more row per append on average), so tree heads
and proofs cost O(log n) lookups. ``sign_head`` signs the current (size, root) with the region's
Ed25519 key and keeps it in ``audit_heads``; monitors keep copies. ``verify`` recomputes everything
from the entries themselves and names the first entry that was altered, removed or reordered, and
any signed head the log no longer matches (which is how a rewrite of the hashes, or a truncation,
shows).

Appends are serialised by a one-row counter (``UPDATE … RETURNING``), which also makes ``seq``
gap-free on PostgreSQL, where identity sequences may skip numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    bindparam,
    func,
    select,
    update,
)

from fyp.errors import SchemaMismatch
from fyp.governance import merkle
from fyp.governance.keys import Signer, Verifier, tree_head_message
from fyp.storage.roles import AuditRecord
from fyp.storage.sql import Database, insert_ignore, meta_table

AUDIT_SCHEMA_VERSION: Final = 2
"""2: the Merkle tree (``audit_nodes``), signed heads (``audit_heads``) and the append counter."""

_VERIFY_BATCH: Final = 20_000

metadata = MetaData()
meta_table(metadata)

audit = Table(
    "audit",
    metadata,
    # Assigned from ``audit_state``, not by the database: seq must be gap-free (leaf seq - 1).
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("ts", Float, nullable=False),
    Column("principal", String(200), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("action", String(200), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("detail", Text, nullable=False),
)

audit_nodes = Table(
    "audit_nodes",
    metadata,
    # The root of the complete subtree of 2**level leaves starting at leaf idx * 2**level.
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    sqlite_with_rowid=False,
)

audit_heads = Table(
    "audit_heads",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("timestamp_ms", BigInteger, nullable=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)

audit_state = Table(
    "audit_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
)


# Built once: ``Database.executemany`` caches compiled statements by identity, and the append is on
# every request's path.
_INSERT_ENTRY: Final = audit.insert()
_INSERT_NODE: Final = audit_nodes.insert()
_GROW: Final = (
    update(audit_state)
    .where(audit_state.c.id == 1)
    .values(size=audit_state.c.size + bindparam("n"))
    .returning(audit_state.c.size)
)

_NODE: Final = select(audit_nodes.c.hash).where(
    audit_nodes.c.level == bindparam("level"), audit_nodes.c.idx == bindparam("idx")
)

AuditEntry = tuple[str, str, str, str, Mapping[str, Any], float]
"""(principal, purpose, action, decision, detail, timestamp)."""


def entry_bytes(
    seq: int, ts: float, principal: str, purpose: str, action: str, decision: str, detail: str
) -> bytes:
    """The canonical bytes of an entry: what its leaf hash covers (``detail`` as stored)."""
    return json.dumps(
        [seq, ts, principal, purpose, action, decision, detail],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


@dataclass(frozen=True)
class TreeHead:
    """A signed statement: the region's log had ``size`` entries with this root at this time."""

    region: str
    size: int
    timestamp_ms: int
    root: bytes
    key_id: str
    signature: bytes

    def message(self) -> bytes:
        return tree_head_message(self.region, self.size, self.timestamp_ms, self.root)

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "tree_size": self.size,
            "timestamp_ms": self.timestamp_ms,
            "root_hash": self.root.hex(),
            "key_id": self.key_id,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TreeHead:
        return cls(
            region=str(data["region"]),
            size=int(data["tree_size"]),
            timestamp_ms=int(data["timestamp_ms"]),
            root=bytes.fromhex(str(data["root_hash"])),
            key_id=str(data["key_id"]),
            signature=bytes.fromhex(str(data["signature"])),
        )


@dataclass
class VerifyReport:
    """What ``verify`` found. ``ok`` only when every check passed."""

    region: str
    entries: int
    heads_checked: int = 0
    root: str = ""
    problems: list[str] = field(default_factory=list)
    first_bad_seq: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, problem: str, seq: int | None = None) -> None:
        self.problems.append(problem)
        if seq is not None and (self.first_bad_seq is None or seq < self.first_bad_seq):
            self.first_bad_seq = seq


def _closed_subtrees(index: int) -> list[tuple[int, int]]:
    """Left siblings needed to close the complete subtrees that leaf ``index`` finishes."""
    siblings: list[tuple[int, int]] = []
    level, idx = 0, index
    while idx & 1:
        siblings.append((level, idx - 1))
        level += 1
        idx >>= 1
    return siblings


class SqlAuditLog:
    """:class:`fyp.storage.roles.AuditLog` over SQL, with a Merkle tree and signed heads."""

    def __init__(self, url: str, region: str = "default", signer: Signer | None = None) -> None:
        self.region = region
        self.signer = signer if signer is not None else Signer.generate()
        self.db = Database(url, metadata, kind="audit", version=AUDIT_SCHEMA_VERSION)
        self._init_state()

    @property
    def verifier(self) -> Verifier:
        return self.signer.verifier

    # ---- appending ------------------------------------------------------------------------------

    def append(
        self,
        principal: str,
        purpose: str,
        action: str,
        decision: str,
        detail: Mapping[str, Any],
        now: float,
        durable: bool = False,
    ) -> int:
        return self.append_many([(principal, purpose, action, decision, detail, now)], durable)[0]

    def append_many(self, entries: Sequence[AuditEntry], durable: bool = False) -> list[int]:
        """Append entries in one transaction, in order; returns their ``seq`` numbers.

        ``durable`` waits for the disk before returning (the record of an export or erasure
        must survive a power loss with the act it records); the access decisions of every
        request do not, and reach the disk with the next durable write or signed head."""
        if not entries:
            return []
        with self.db.write(durable=durable) as conn:
            last = int(conn.execute(_GROW, {"n": len(entries)}).scalar_one())
            first = last - len(entries) + 1
            rows: list[dict[str, Any]] = []
            leaves: list[bytes] = []
            for seq, (principal, purpose, action, decision, detail, now) in enumerate(
                entries, first
            ):
                text = json.dumps(dict(detail), sort_keys=True, default=str)
                rows.append(
                    {
                        "seq": seq,
                        "ts": now,
                        "principal": principal,
                        "purpose": purpose,
                        "action": action,
                        "decision": decision,
                        "detail": text,
                    }
                )
                leaves.append(
                    merkle.leaf_hash(
                        entry_bytes(seq, now, principal, purpose, action, decision, text)
                    )
                )
            self.db.executemany(conn, _INSERT_ENTRY, rows)
            self._add_leaves(conn, first - 1, leaves)
        return list(range(first, last + 1))

    def _add_leaves(self, conn: Connection, start: int, leaves: Sequence[bytes]) -> None:
        """Store leaves ``start, start+1, …`` and every complete subtree root they close."""
        # Left siblings older than this batch come from the table; newer ones from ``made``.
        older = {
            key
            for i in range(start, start + len(leaves))
            for key in _closed_subtrees(i)
            if (key[1] << key[0]) < start
        }
        known: dict[tuple[int, int], bytes] = {}
        for level, idx in older:  # at most one per tree level: the right edge of the tree
            found = conn.execute(_NODE, {"level": level, "idx": idx}).scalar()
            if found is not None:
                known[(level, idx)] = bytes(found)
        made: list[dict[str, Any]] = []
        for index, leaf in enumerate(leaves, start):
            known[(0, index)] = leaf
            made.append({"level": 0, "idx": index, "hash": leaf})
            current = leaf
            for level, idx in _closed_subtrees(index):
                left = known.get((level, idx))
                if left is None:
                    raise SchemaMismatch(
                        f"audit log of region {self.region!r} lacks tree node ({level}, {idx}); "
                        "run `fyp audit verify`"
                    )
                current = merkle.node_hash(left, current)
                known[(level + 1, idx >> 1)] = current
                made.append({"level": level + 1, "idx": idx >> 1, "hash": current})
        self.db.executemany(conn, _INSERT_NODE, made)

    def _init_state(self) -> None:
        """Create the append counter; build the tree for entries written before it existed."""
        with self.db.write() as conn:
            if conn.execute(select(audit_state.c.size).where(audit_state.c.id == 1)).first():
                return
            count, top = conn.execute(select(func.count(), func.max(audit.c.seq))).one()
            count = int(count or 0)
            if count and int(top) != count:
                raise SchemaMismatch(
                    f"audit log of region {self.region!r} has {count} entries but its last is "
                    f"#{top}: entries are missing, so no tree can be built over it"
                )
            # Entries from schema version 1 get their leaves and subtree roots now, in order.
            done = 0
            for batch in _batches(conn.execute(select(audit).order_by(audit.c.seq))):
                self._add_leaves(conn, done, [_row_leaf(row) for row in batch])
                done += len(batch)
            conn.execute(insert_ignore(self.db, audit_state).values(id=1, size=count))

    # ---- tree heads and proofs ------------------------------------------------------------------

    def size(self) -> int:
        with self.db.read() as conn:
            return self._size(conn)

    @staticmethod
    def _size(conn: Connection) -> int:
        value = conn.execute(select(audit_state.c.size).where(audit_state.c.id == 1)).scalar()
        return int(value or 0)

    def _subtree(self, conn: Connection) -> merkle.SubtreeHash:
        cache: dict[tuple[int, int], bytes] = {}

        def complete(start: int, end: int) -> bytes:
            level = (end - start).bit_length() - 1
            key = (level, start >> level)
            if key not in cache:
                found = conn.execute(
                    select(audit_nodes.c.hash).where(
                        audit_nodes.c.level == key[0], audit_nodes.c.idx == key[1]
                    )
                ).scalar()
                if found is None:
                    raise merkle.ProofError(f"tree node {key} is missing from the audit log")
                cache[key] = bytes(found)
            return cache[key]

        return merkle.subtree_from(complete)

    def root(self, size: int | None = None) -> tuple[int, bytes]:
        """The tree size (the current one by default) and its root hash."""
        with self.db.read() as conn:
            current = self._size(conn)
            n = current if size is None else size
            if not 0 <= n <= current:
                raise merkle.ProofError(f"the log has {current} entries, not {n}")
            return n, merkle.empty_root() if n == 0 else self._subtree(conn)(0, n)

    def sign_head(self, now: float) -> TreeHead:
        """Sign the current tree head and keep it (one head per size; a repeat returns it)."""
        size, root = self.root()
        head = TreeHead(
            region=self.region,
            size=size,
            timestamp_ms=int(now * 1000),
            root=root,
            key_id=self.verifier.key_id,
            signature=b"",
        )
        head = TreeHead(**{**head.__dict__, "signature": self.signer.sign(head.message())})
        # Durable: a head handed out must never cover entries a power loss could take back (a
        # monitor would see a truncated log); flushing it flushes every entry it covers too.
        with self.db.write(durable=True) as conn:
            conn.execute(
                insert_ignore(self.db, audit_heads).values(
                    tree_size=head.size,
                    timestamp_ms=head.timestamp_ms,
                    root=head.root,
                    key_id=head.key_id,
                    signature=head.signature,
                )
            )
        return self.head(size) or head

    def head(self, size: int | None = None) -> TreeHead | None:
        """The signed head of ``size`` entries, or the latest one; ``None`` if never signed."""
        query = select(audit_heads)
        query = (
            query.where(audit_heads.c.tree_size == size)
            if size is not None
            else query.order_by(audit_heads.c.tree_size.desc()).limit(1)
        )
        with self.db.read() as conn:
            row = conn.execute(query).first()
        return None if row is None else self._head(row)

    def heads(self) -> list[TreeHead]:
        with self.db.read() as conn:
            rows = conn.execute(select(audit_heads).order_by(audit_heads.c.tree_size)).all()
        return [self._head(row) for row in rows]

    def _head(self, row: Any) -> TreeHead:
        return TreeHead(
            self.region,
            row.tree_size,
            row.timestamp_ms,
            bytes(row.root),
            row.key_id,
            bytes(row.signature),
        )

    def leaf(self, seq: int) -> tuple[AuditRecord, bytes]:
        """Entry ``seq`` and its leaf hash, recomputed from the entry as stored."""
        with self.db.read() as conn:
            row = conn.execute(select(audit).where(audit.c.seq == seq)).first()
        if row is None:
            raise merkle.ProofError(f"no audit entry #{seq}")
        return _record(row), _row_leaf(row)

    def inclusion_proof(self, seq: int, size: int | None = None) -> tuple[int, list[bytes]]:
        """The audit path of entry ``seq`` in the tree of ``size`` entries (current by default)."""
        with self.db.read() as conn:
            current = self._size(conn)
            n = current if size is None else size
            if n > current:
                raise merkle.ProofError(f"the log has {current} entries, not {n}")
            return n, merkle.inclusion_proof(seq - 1, n, self._subtree(conn))

    def consistency_proof(self, first: int, second: int | None = None) -> tuple[int, list[bytes]]:
        with self.db.read() as conn:
            current = self._size(conn)
            n = current if second is None else second
            if n > current:
                raise merkle.ProofError(f"the log has {current} entries, not {n}")
            return n, merkle.consistency_proof(first, n, self._subtree(conn))

    # ---- verification ---------------------------------------------------------------------------

    def quick_check(self, verifier: Verifier | None = None) -> str | None:
        """A startup check in O(log n): the latest signed head verifies under the region's key
        and still matches the stored tree, and no entry past it is missing. Returns the problem,
        or ``None``. (``verify`` is the full check, from every entry.)"""
        verifier = verifier or self.verifier
        head = self.head()
        if head is None:
            return None
        if head.key_id != verifier.key_id or not verifier.valid(head.message(), head.signature):
            return (
                f"the latest signed tree head (size {head.size}) does not verify under the "
                f"region's key {verifier.key_id}: the key file was replaced or the head forged"
            )
        with self.db.read() as conn:
            size = self._size(conn)
            count = int(conn.execute(select(func.count()).select_from(audit)).scalar_one())
            if size < head.size or count != size:
                return (
                    f"the log holds {count} entries and counts {size}, but a signed head covers "
                    f"{head.size}: entries were removed"
                )
            try:
                root = self._subtree(conn)(0, head.size)
            except merkle.ProofError as exc:
                return f"the stored tree is incomplete: {exc}"
        if root != head.root:
            return f"the stored tree no longer produces the signed root of size {head.size}"
        return None

    def verify(self, verifier: Verifier | None = None) -> VerifyReport:
        """Recompute the whole tree from the entries and check it against everything stored.

        Finds: an entry edited in place (its leaf differs from the stored one), entries removed or
        reordered (``seq`` not 1, 2, 3, …), a stored subtree root that disagrees, a signed head
        whose signature fails or whose root the entries no longer produce (the trace of rewritten
        hashes), and a head covering more entries than remain (truncation).
        """
        verifier = verifier or self.verifier
        with self.db.read() as conn:
            stored_leaves = {
                row.idx: bytes(row.hash)
                for row in conn.execute(
                    select(audit_nodes.c.idx, audit_nodes.c.hash).where(audit_nodes.c.level == 0)
                )
            }
            leaves: list[bytes] = []
            report = VerifyReport(self.region, 0)
            expected = 1
            for batch in _batches(conn.execute(select(audit).order_by(audit.c.seq))):
                for row in batch:
                    if row.seq != expected:
                        what = "removed" if row.seq > expected else "duplicated or reordered"
                        report.fail(
                            f"entry #{expected} is {what} (found #{row.seq} in its place)", expected
                        )
                        expected = row.seq
                    leaf = _row_leaf(row)
                    if stored_leaves.get(row.seq - 1, leaf) != leaf:
                        report.fail(f"entry #{row.seq} was altered after it was written", row.seq)
                    leaves.append(leaf)
                    expected += 1
            report.entries = len(leaves)
            counted = self._size(conn)
            heads = conn.execute(select(audit_heads).order_by(audit_heads.c.tree_size)).all()
        if counted != len(leaves):
            report.fail(
                f"the append counter says {counted} entries, {len(leaves)} are present",
                min(counted, len(leaves)) + 1,
            )
        levels = _levels(leaves)
        subtree = merkle.subtree_from(lambda s, e: levels[(e - s).bit_length() - 1][s // (e - s)])
        report.root = (merkle.root_from_leaves(leaves) if leaves else merkle.empty_root()).hex()
        previous_good = 0
        for row in heads:
            head = self._head(row)
            report.heads_checked += 1
            if head.key_id != verifier.key_id or not verifier.valid(head.message(), head.signature):
                report.fail(f"tree head of size {head.size} has an invalid signature")
                continue
            if head.size > len(leaves):
                report.fail(
                    f"log truncated: a signed tree head covers {head.size} entries, "
                    f"only {len(leaves)} remain",
                    len(leaves) + 1,
                )
                continue
            root = merkle.empty_root() if head.size == 0 else subtree(0, head.size)
            known = report.first_bad_seq
            if root != head.root and known is not None and previous_good < known <= head.size:
                report.fail(f"the entries no longer produce the signed root of size {head.size}")
            elif root != head.root:
                report.fail(
                    f"the entries no longer produce the signed root of size {head.size}: an entry "
                    f"between #{previous_good + 1} and #{head.size} was altered, removed or "
                    "reordered and the hashes rewritten",
                    previous_good + 1,
                )
            else:
                previous_good = head.size
        return report

    # ---- reading --------------------------------------------------------------------------------

    def tail(self, limit: int) -> list[AuditRecord]:
        with self.db.read() as conn:
            rows = conn.execute(select(audit).order_by(audit.c.seq.desc()).limit(limit)).all()
        return [_record(row) for row in reversed(rows)]

    def count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(audit)).scalar_one())

    def close(self) -> None:
        self.db.close()


def _row_leaf(row: Any) -> bytes:
    return merkle.leaf_hash(
        entry_bytes(
            row.seq, row.ts, row.principal, row.purpose, row.action, row.decision, row.detail
        )
    )


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        seq=row.seq,
        ts=row.ts,
        principal=row.principal,
        purpose=row.purpose,
        action=row.action,
        decision=row.decision,
        detail=json.loads(row.detail),
    )


def _batches(result: Any) -> Iterator[Sequence[Any]]:
    while batch := result.fetchmany(_VERIFY_BATCH):
        yield batch


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every complete subtree root, level by level (level 0 = the leaves)."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append(
            [merkle.node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        )
    return levels

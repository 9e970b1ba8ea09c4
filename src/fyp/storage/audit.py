"""A region's audit log over SQL: append-only, a Merkle tree over it, signed tree heads.

Every gate decision is appended here. The log lives apart from the region's data so that the
append on every request never waits behind a feed's or an import's write transaction (SQLite has
one writer per database file).

Tamper evidence (RFC 9162 shape, see :mod:`fyp.governance.merkle`): entry ``seq`` is leaf
``seq - 1`` of a Merkle tree. Each append stores the entry's leaf hash and the roots of the
complete subtrees it closes (``audit_nodes``; one more row per append on average), so tree heads
and proofs cost O(log n) lookups. ``sign_head`` signs the current (size, root) with the region's
Ed25519 key and keeps it in ``audit_heads``; monitors keep copies (``fyp.governance.witness``).
``verify`` (:mod:`fyp.storage.audit_verify`) recomputes everything from the entries themselves and
names the first entry that was altered, removed or duplicated, and any signed or witnessed head
the log no longer matches (which is how a rewrite of the hashes, or a truncation, shows);
``quick_check`` is the cheap check at startup. Neither writes.

Appends are serialised by a one-row counter (``UPDATE … RETURNING``), which also makes ``seq``
gap-free on PostgreSQL, where identity sequences may skip numbers.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

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
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from fyp.errors import AuditLogDamaged, FypError, SchemaMismatch
from fyp.governance import merkle
from fyp.governance.keys import Signer, Verifier, tree_head_message
from fyp.storage.roles import AuditRecord
from fyp.storage.sql import Database, insert_ignore, meta_table

if TYPE_CHECKING:
    from fyp.storage.audit_verify import VerifyReport

AUDIT_SCHEMA_VERSION: Final = 2
"""2: the Merkle tree (``audit_nodes``), signed heads (``audit_heads``) and the append counter."""

_BATCH: Final = 20_000

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


# ``json.dumps`` with options builds an encoder per call; the full check encodes every entry.
_ENTRY_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def entry_bytes(
    seq: int, ts: float, principal: str, purpose: str, action: str, decision: str, detail: str
) -> bytes:
    """The canonical bytes of an entry: what its leaf hash covers (``detail`` as stored)."""
    return _ENTRY_ENCODER.encode([seq, ts, principal, purpose, action, decision, detail]).encode()


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

    def __init__(
        self,
        url: str,
        region: str = "default",
        signer: Signer | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        """Open the log at ``url``.

        ``read_only`` opens it for checking only: no table is created or upgraded, nothing is
        written, and without a ``signer`` nothing can be signed (verify with a pinned key).
        A log that cannot be brought to a state it can append to (its counter lost and its tree
        not rebuildable) still opens: :attr:`problem` says why, and ``quick_check`` reports it.
        """
        self.region = region
        self.read_only = read_only
        self._signer = signer if signer is not None or read_only else Signer.generate()
        self.problem: str | None = None
        """Why this log cannot take appends (found at open or at a failed append), or ``None``."""
        self.on_damaged: Callable[[str], None] | None = None
        """Called with the reason when an append finds the log damaged (the engine quarantines
        the region)."""
        self.db = Database(
            url, metadata, kind="audit", version=AUDIT_SCHEMA_VERSION, prepare=not read_only
        )
        if not read_only:
            try:
                self._init_state()
            except (FypError, SQLAlchemyError, self._dbapi.DatabaseError) as exc:
                self.problem = f"the log could not be opened for appending: {_reason(exc)}"

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            raise SchemaMismatch(f"the audit log of region {self.region!r} is open read-only")
        return self._signer

    @property
    def verifier(self) -> Verifier:
        return self.signer.verifier

    @property
    def _dbapi(self) -> Any:
        # Bulk inserts go through the driver's own cursor (Database.executemany), so its
        # errors arrive unwrapped by SQLAlchemy.
        return self.db.engine.dialect.loaded_dbapi

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
        if self.problem is not None:
            raise AuditLogDamaged(
                f"the audit log of region {self.region!r} is damaged: {self.problem}"
            )
        try:
            return self._append(entries, durable)
        except (SchemaMismatch, IntegrityError, self._dbapi.IntegrityError) as exc:
            # Only a damaged log makes a gap-free append fail this way: the counter points at an
            # entry or tree node that already exists, or a node the append needs is gone.
            # Nothing was written (one transaction), and nothing more can be recorded until the
            # log is repaired, so the region stops rather than act unrecorded.
            self.problem = f"an append failed: {_reason(exc)}; run `fyp audit verify`"
            if self.on_damaged is not None:
                self.on_damaged(self.problem)
            raise AuditLogDamaged(
                f"the audit log of region {self.region!r} is damaged: {self.problem}"
            ) from exc

    def _append(self, entries: Sequence[AuditEntry], durable: bool) -> list[int]:
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
                value = hash_value(found)
                if value is None:
                    state = "missing from" if found is None else "malformed in"
                    raise merkle.ProofError(f"tree node {key} is {state} the audit log")
                cache[key] = value
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

    def quick_check(
        self, verifier: Verifier | None = None, witnessed: TreeHead | None = None
    ) -> str | None:
        """The startup check: O(log n) lookups plus a count. Returns the problem, or ``None``.

        Checks that the log can take its next append and that its latest signed head still
        holds: the counter matches the entries (numbered 1..size, none missing, none extra),
        the stored tree has no node past the last entry (the trace of removed tail entries) and
        every node the current root and the next append need, the last entry still has its leaf
        hash, and the latest signed head verifies under the region's key and matches the stored
        tree. ``witnessed``, the latest head a witness kept outside the log, is checked the same
        way, so a log truncated or rewritten together with its own heads fails too. An entry
        edited in the middle of the log is beyond this check; ``verify`` finds that.
        """
        if self.problem is not None:
            return self.problem
        verifier = verifier or self.verifier
        try:
            with snapshot(self.db) as conn:
                return self._quick_check(conn, verifier, witnessed)
        except (SQLAlchemyError, merkle.ProofError) as exc:
            return f"the log could not be read: {_reason(exc)}"

    def _quick_check(
        self, conn: Connection, verifier: Verifier, witnessed: TreeHead | None
    ) -> str | None:
        size = conn.execute(select(audit_state.c.size).where(audit_state.c.id == 1)).scalar()
        if not isinstance(size, int) or size < 0:
            return f"the append counter is missing or malformed ({size!r})"
        # Three queries, not one: SQLite counts a table without reading its rows, and finds the
        # ends through the key, but only when each is asked alone.
        count = conn.execute(select(func.count()).select_from(audit)).scalar()
        low = conn.execute(select(func.min(audit.c.seq))).scalar()
        high = conn.execute(select(func.max(audit.c.seq))).scalar()
        if count != size or (size and (low != 1 or high != size)):
            return (
                f"the log holds {count} entries numbered #{low} to #{high}, and its counter says "
                f"{size}: entries were removed, added or renumbered"
            )
        nodes = audit_nodes.c
        for level in range(size.bit_length() + 1):
            beyond = conn.execute(
                select(nodes.idx).where(nodes.level == level, nodes.idx >= size >> level).limit(1)
            ).scalar()
            if beyond is not None:
                return (
                    f"the stored tree holds node ({level}, {beyond}) past the last entry "
                    f"#{size}: entries after it were removed"
                )
        above = conn.execute(
            select(nodes.level).where(nodes.level > size.bit_length()).limit(1)
        ).scalar()
        if above is not None:
            return f"the stored tree holds a node at level {above}, above any of {size} entries"
        subtree = self._subtree(conn)  # raises ProofError naming a missing node
        if size:
            last = conn.execute(select(audit).where(audit.c.seq == size)).one()
            stored = hash_value(conn.execute(_NODE, {"level": 0, "idx": size - 1}).scalar())
            if stored is None or row_leaf(last) != stored:
                return f"the last entry #{size} no longer matches its stored leaf hash"
            subtree(0, size)
        row = conn.execute(
            select(audit_heads).order_by(audit_heads.c.tree_size.desc()).limit(1)
        ).first()
        heads: list[tuple[str, TreeHead]] = []
        if row is not None:
            head = stored_head(self.region, row)
            if head is None:
                return f"the latest signed tree head (size {row.tree_size!r}) is malformed"
            heads.append(("latest signed", head))
        if witnessed is not None:
            heads.append(("latest witnessed", witnessed))
        for kind, head in heads:
            if (
                head.region != self.region
                or head.key_id != verifier.key_id
                or not verifier.valid(head.message(), head.signature)
            ):
                return (
                    f"the {kind} tree head (size {head.size}) does not verify under the "
                    f"region's key {verifier.key_id}: the key file was replaced or the head forged"
                )
            if head.size > size:
                return (
                    f"the {kind} tree head covers {head.size} entries, but the log holds {size}: "
                    "entries were removed"
                )
            root = merkle.empty_root() if head.size == 0 else subtree(0, head.size)
            if root != head.root:
                return f"the stored tree no longer produces the {kind} root of size {head.size}"
        return None

    def verify(
        self,
        verifier: Verifier | None = None,
        witnessed: Sequence[TreeHead] = (),
        stop: threading.Event | None = None,
    ) -> VerifyReport:
        """Recompute the whole tree from the entries and check it against everything stored.

        Finds: an entry edited in place (its leaf differs from the stored one), entries removed,
        duplicated or malformed, a stored tree node that is missing, extra (the trace of removed
        tail entries) or disagrees with the entries, an append counter that does not match, and
        a signed head whose signature fails, whose root the entries no longer produce (the trace
        of rewritten hashes) or that covers more entries than remain (truncation). ``witnessed``
        heads, kept outside the log by a witness, are checked the same way: they catch a
        truncation or rewrite that also removed the log's own heads. Reads one snapshot, never
        writes, never raises on a damaged log; ``stop`` interrupts it (the report says so).
        """
        from fyp.storage.audit_verify import verify_log

        if verifier is None and self._signer is not None:
            verifier = self._signer.verifier
        return verify_log(self.db, self.region, verifier, witnessed, stop)

    # ---- reading --------------------------------------------------------------------------------

    def tail(self, limit: int) -> list[AuditRecord]:
        with self.db.read() as conn:
            rows = conn.execute(select(audit).order_by(audit.c.seq.desc()).limit(limit)).all()
        return [_record(row) for row in reversed(rows)]

    def count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(audit)).scalar_one())

    def find_recent(self, action: str, key: str, value: str, since: float) -> int | None:
        """The newest entry of ``action`` whose detail has ``key == value``, looking back to the
        entries written at ``since`` (newest first, a page at a time: a recent one costs little)."""
        cursor: int | None = None
        with self.db.read() as conn:
            while True:
                query = select(audit.c.seq, audit.c.ts, audit.c.action, audit.c.detail)
                if cursor is not None:
                    query = query.where(audit.c.seq < cursor)
                rows = conn.execute(query.order_by(audit.c.seq.desc()).limit(1_000)).all()
                if not rows:
                    return None
                for row in rows:
                    if row.ts < since:
                        return None
                    if row.action == action and json.loads(row.detail).get(key) == value:
                        return int(row.seq)
                cursor = int(rows[-1].seq)

    def close(self) -> None:
        self.db.close()


@contextlib.contextmanager
def snapshot(db: Database) -> Iterator[Connection]:
    """A read-only connection that sees one committed state of the database throughout.

    SQLite connections here run without an implicit transaction (each statement its own
    snapshot), so a deferred ``BEGIN`` pins the first read's state until the end; PostgreSQL
    gets a repeatable-read, read-only transaction.
    """
    with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        with conn.begin() as transaction:
            # (An in-memory database is one connection shared by every thread: a transaction
            # opened here would swallow the writers' own, so it reads as they write.)
            if db.dialect == "sqlite" and not isinstance(db.engine.pool, StaticPool):
                conn.exec_driver_sql("BEGIN")
            try:
                yield conn
            finally:
                transaction.rollback()  # nothing was written; end the snapshot


def hash_value(value: Any) -> bytes | None:
    """A stored hash as 32 bytes, or ``None`` when the column holds anything else."""
    if type(value) is not bytes:
        if not isinstance(value, bytearray | memoryview):
            return None
        value = bytes(value)
    return value if len(value) == merkle.HASH_SIZE else None


def row_leaf(row: Sequence[Any]) -> bytes | None:
    """The leaf hash of an entry row as stored (its columns in table order), or ``None`` when
    the row is malformed."""
    seq, ts, principal, purpose, action, decision, detail = row
    if (
        type(seq) is not int
        or type(ts) not in (float, int)
        or type(principal) is not str
        or type(purpose) is not str
        or type(action) is not str
        or type(decision) is not str
        or type(detail) is not str
    ):
        return None
    return merkle.leaf_hash(entry_bytes(seq, ts, principal, purpose, action, decision, detail))


def stored_head(region: str, row: Any) -> TreeHead | None:
    """A row of ``audit_heads`` as a :class:`TreeHead`, or ``None`` when it is malformed."""
    root, signature = hash_value(row.root), row.signature
    if (
        root is None
        or not isinstance(row.tree_size, int)
        or row.tree_size < 0
        or not isinstance(row.timestamp_ms, int)
        or not 0 <= row.timestamp_ms < 2**64
        or not isinstance(row.key_id, str)
        or not isinstance(signature, bytes | bytearray | memoryview)
    ):
        return None
    return TreeHead(region, row.tree_size, row.timestamp_ms, root, row.key_id, bytes(signature))


def _reason(exc: BaseException) -> str:
    """An exception as one line (a driver error without SQLAlchemy's wrapping and SQL)."""
    if isinstance(exc, FypError):
        return exc.detail
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def _row_leaf(row: Any) -> bytes:
    leaf = row_leaf(row)
    if leaf is None:
        raise merkle.ProofError(f"audit entry #{row[0]!r} is malformed")
    return leaf


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
    while batch := result.fetchmany(_BATCH):
        yield batch

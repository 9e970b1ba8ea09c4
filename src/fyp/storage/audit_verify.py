"""The full check of a region's audit log: every entry, every stored tree node, every tree head.

:meth:`fyp.storage.audit.SqlAuditLog.verify` runs this. It reads one consistent snapshot of the
log and never writes, so it can run on a live log (appends after the snapshot are not its
business), on a copy, or in a server's background thread. It streams: the entries in ``seq``
order and each level of the stored tree in index order are read side by side while the tree is
rebuilt leaf by leaf, keeping only the right edge of the tree (one hash per level), so memory
stays O(log n) whatever the size of the log.

It never raises on a damaged log. Whatever it finds (an entry edited, removed, duplicated or
malformed; a stored tree node missing, extra or disagreeing with the entries; a counter that
does not match; a signed head that fails its signature, covers entries that are gone, or whose
root the entries no longer produce) becomes a line of the :class:`VerifyReport`, with the first
entry affected.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, Select, or_, select
from sqlalchemy.exc import SQLAlchemyError

from fyp.governance import merkle
from fyp.governance.keys import Verifier
from fyp.storage.audit import (
    TreeHead,
    audit,
    audit_heads,
    audit_nodes,
    audit_state,
    hash_value,
    row_leaf,
    snapshot,
    stored_head,
)
from fyp.storage.sql import Database

MAX_LISTED: Final = 50
"""Problems listed in a report; a damaged log can have millions, and the first ones matter."""

_STREAM_BATCH: Final = 5_000
_STOP_EVERY: Final = 8_192
_MISSING: Final = object()


@dataclass
class VerifyReport:
    """What the full check found. ``ok`` only when it ran to the end and every check passed."""

    region: str
    entries: int
    heads_checked: int = 0
    witnessed_checked: int = 0
    """Heads from outside the log (a witness's HEADS file) checked against it."""
    root: str = ""
    problems: list[str] = field(default_factory=list)
    unlisted: int = 0
    """Problems found beyond the first ``MAX_LISTED``."""
    first_bad_seq: int | None = None
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and not self.interrupted

    def fail(self, problem: str, seq: int | None = None) -> None:
        if len(self.problems) < MAX_LISTED:
            self.problems.append(problem)
        else:
            self.unlisted += 1
        if seq is not None and (self.first_bad_seq is None or seq < self.first_bad_seq):
            self.first_bad_seq = seq

    def summary(self) -> str:
        """One line: the first bad entry when one is known, else the first problem."""
        if self.interrupted:
            return "the check was interrupted before it finished"
        if not self.problems:
            return "ok"
        where = f"first bad entry #{self.first_bad_seq}: " if self.first_bad_seq else ""
        more = len(self.problems) - 1 + self.unlisted
        return where + self.problems[0] + (f" (and {more} more)" if more else "")


def _entries_text(first: int, last: int) -> str:
    return f"#{first}" if first == last else f"#{first}-#{last}"


_cursor_names = itertools.count()


def _stream(conn: Connection, query: Select[Any]) -> Generator[tuple[Any, ...], None, None]:
    """The rows of ``query`` as plain tuples, fetched in batches through the driver's own
    cursor: SQLAlchemy's row objects cost more than the check itself on millions of rows.
    PostgreSQL gets a server-side cursor, so the rows are not all sent at once."""
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    raw: Any = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        cursor = raw.cursor(name=f"fyp_audit_check_{next(_cursor_names)}")
    else:
        cursor = raw.cursor()
    try:
        cursor.execute(sql)
        while rows := cursor.fetchmany(_STREAM_BATCH):
            yield from rows
    finally:
        cursor.close()


class _Level:
    """The stored nodes of one tree level, read in index order as the rebuild reaches them."""

    def __init__(self, conn: Connection, level: int) -> None:
        nodes = audit_nodes.c
        query = select(nodes.idx, nodes.hash).where(nodes.level == level).order_by(nodes.idx)
        self._rows = _stream(conn, query)
        self.close = self._rows.close
        self._next: tuple[Any, ...] | None = next(self._rows, None)

    def take(self, idx: int) -> object:
        """The stored hash of node ``idx`` (``None`` if malformed), or ``_MISSING``.

        Rows before ``idx`` are passed over: they belong to entries already reported removed.
        """
        found = self._next
        while found is not None and (type(found[0]) is not int or found[0] < idx):
            if type(found[0]) is not int:
                return _MISSING  # non-numeric indexes sort last; the extra-node check names them
            found = self._next = next(self._rows, None)
        if found is None or found[0] != idx:
            return _MISSING
        self._next = next(self._rows, None)
        return hash_value(found[1])


class _Check:
    def __init__(
        self,
        conn: Connection,
        report: VerifyReport,
        verifier: Verifier | None,
        witnessed: Sequence[TreeHead],
        stop: threading.Event | None,
    ) -> None:
        self.conn = conn
        self.report = report
        self.verifier = verifier
        self.stop = stop
        self.levels: dict[int, _Level] = {}
        self.closing: list[Callable[[], None]] = []
        self.edge: list[tuple[int, bytes, bool]] = []
        """(level, hash, tainted) of the complete subtrees over the leaves so far, largest
        first; tainted: a problem inside the subtree is already reported."""
        self.size = 0
        self.aligned = True
        """Whether leaf ``i`` is entry ``i + 1``; after a gap the stored tree cannot be compared."""
        self.good_sizes = [0]
        """Sizes of the heads that held so far, ascending (the empty tree always holds)."""
        heads: list[tuple[int, str, Any]] = []
        for row in conn.execute(select(audit_heads).order_by(audit_heads.c.tree_size)):
            heads.append((_size_of(row.tree_size), "stored", row))
        heads += [(h.size, "witnessed", h) for h in witnessed]
        heads.sort(key=lambda h: h[0])
        self.heads = heads
        self.next_head = 0

    # ---- the rebuild ---------------------------------------------------------------------------

    def compare(self, level: int, idx: int, computed: bytes) -> bool:
        """Compare a rebuilt node with the stored one; report and return False if they differ."""
        cursor = self.levels.get(level)
        if cursor is None:
            cursor = self.levels[level] = _Level(self.conn, level)
        stored = cursor.take(idx)
        if stored == computed:
            return True
        first, last = (idx << level) + 1, (idx + 1) << level
        span = f"entries {_entries_text(first, last)}"
        if stored is _MISSING:
            self.report.fail(f"the stored tree node ({level}, {idx}) of {span} is missing", first)
        elif stored is None:
            self.report.fail(f"the stored tree node ({level}, {idx}) of {span} is malformed", first)
        else:
            self.report.fail(
                f"the stored tree node ({level}, {idx}) disagrees with {span}: an entry there was "
                "altered and its leaf hash rewritten, or the node itself was",
                first,
            )
        return False

    def add_leaf(self, leaf: bytes, tainted: bool) -> None:
        """Add the next leaf; ``tainted`` when a problem with it is already reported, so that
        the nodes above it, which then differ from the stored ones too, are not reported again."""
        index = self.size
        self.size += 1
        self.edge.append((0, leaf, tainted))
        while len(self.edge) > 1 and self.edge[-2][0] == self.edge[-1][0]:
            (level, left, left_tainted), (_, right, right_tainted) = self.edge[-2], self.edge[-1]
            node = merkle.node_hash(left, right)
            del self.edge[-2:]
            below = left_tainted or right_tainted
            if self.aligned and not below:
                below = not self.compare(level + 1, index >> (level + 1), node)
            self.edge.append((level + 1, node, below))

    def root(self) -> bytes:
        if not self.edge:
            return merkle.empty_root()
        value = self.edge[-1][1]
        for _, left, _ in reversed(self.edge[:-1]):
            value = merkle.node_hash(left, value)
        return value

    # ---- heads ---------------------------------------------------------------------------------

    def check_heads_at(self, size: int) -> None:
        """Check the heads of ``size`` entries (and malformed ones, sorted first)."""
        while self.next_head < len(self.heads) and self.heads[self.next_head][0] <= size:
            _, origin, head = self.heads[self.next_head]
            self.next_head += 1
            self.check_head(origin, head)

    def check_head(self, origin: str, row: Any) -> None:
        report = self.report
        if origin == "stored":
            report.heads_checked += 1
            head = stored_head(report.region, row)
            kind = "signed"
        else:
            report.witnessed_checked += 1
            head = row
            kind = "witnessed"
        label = f"{kind} tree head"
        if head is None or head.size < 0:
            report.fail(f"a {label} is malformed (size {getattr(row, 'tree_size', row)!r})")
            return
        if head.region != report.region:
            report.fail(f"a {label} of size {head.size} is for region {head.region!r}")
            return
        if self.verifier is None:
            report.fail(f"the {label} of size {head.size} cannot be checked: no public key")
            return
        if head.key_id != self.verifier.key_id or not self.verifier.valid(
            head.message(), head.signature
        ):
            report.fail(f"the {label} of size {head.size} has an invalid signature")
            return
        if head.size > self.size:
            report.fail(
                f"log truncated: a {label} covers {head.size} entries, only {self.size} remain",
                self.size + 1,
            )
            return
        if self.root() == head.root:
            self.good_sizes.append(head.size)
            return
        # A head that held at a smaller size vouches for the entries up to it; one of the same
        # size that held (re-signed after a rewrite, say) vouches for nothing here.
        good = max((size for size in self.good_sizes if size < head.size), default=0)
        known = report.first_bad_seq
        if known is not None and good < known <= head.size:
            report.fail(f"the entries no longer produce the {kind} root of size {head.size}")
        else:
            report.fail(
                f"the entries no longer produce the {kind} root of size {head.size}: an "
                f"entry between #{good + 1} and #{head.size} was altered, removed "
                "or reordered and the hashes rewritten",
                good + 1,
            )

    # ---- the whole check -----------------------------------------------------------------------

    def run(self) -> None:
        report = self.report
        self.check_heads_at(0)
        rows = _stream(self.conn, select(*audit.c).order_by(audit.c.seq))
        self.closing.append(rows.close)
        last_seq = 0
        leaves = self.levels[0] = _Level(self.conn, 0)
        for count, row in enumerate(rows, 1):
            if self.stop is not None and count % _STOP_EVERY == 0 and self.stop.is_set():
                report.interrupted = True
                return
            seq = row[0]
            if type(seq) is not int or seq < 1:
                report.fail(f"an entry has a malformed number ({seq!r})", last_seq + 1)
                self.aligned = False
                continue
            if seq == last_seq:
                report.fail(f"entry #{seq} appears more than once", seq)
                continue
            if seq > last_seq + 1:
                what = (
                    f"entry #{last_seq + 1} is removed"
                    if seq == last_seq + 2
                    else f"entries {_entries_text(last_seq + 1, seq - 1)} are removed"
                )
                report.fail(f"{what} (found #{seq} in its place)", last_seq + 1)
                self.aligned = False
            last_seq = seq
            leaf = row_leaf(row)
            if leaf is None:
                report.fail(f"entry #{seq} is malformed (a field of the wrong type)", seq)
                self.aligned = False
                continue
            stored = leaves.take(seq - 1)
            if stored is _MISSING or stored is None:
                state = "missing" if stored is _MISSING else "malformed"
                report.fail(f"the stored leaf hash of entry #{seq} is {state}", seq)
            elif stored != leaf:
                report.fail(f"entry #{seq} was altered after it was written", seq)
            self.add_leaf(leaf, tainted=stored != leaf)
            if self.next_head < len(self.heads) and self.heads[self.next_head][0] <= self.size:
                self.check_heads_at(self.size)
        report.entries = self.size
        report.root = self.root().hex()
        while self.next_head < len(self.heads):  # heads past the end: truncation
            self.check_heads_at(self.heads[self.next_head][0])
        self.check_counter(last_seq)
        self.check_extra_nodes(last_seq)

    def check_counter(self, last_seq: int) -> None:
        value = self.conn.execute(select(audit_state.c.size).where(audit_state.c.id == 1)).scalar()
        if value is None:
            self.report.fail("the append counter (audit_state) is missing", last_seq + 1)
        elif not isinstance(value, int):
            self.report.fail(f"the append counter holds {value!r}", last_seq + 1)
        elif value != last_seq:
            why = (
                "entries after it were removed"
                if value > last_seq
                else "the next append would collide with an entry"
            )
            self.report.fail(
                f"the append counter says {value} entries, the last entry is #{last_seq}: {why}",
                min(value, last_seq) + 1,
            )

    def check_extra_nodes(self, last_seq: int) -> None:
        """Stored nodes over leaves past the last entry: the trace of removed tail entries."""
        nodes = audit_nodes.c
        # Level 0 is compared with the entries' numbers (it survives gaps); the levels above
        # only while the rebuild is aligned with the stored tree.
        top = last_seq.bit_length() if self.aligned else 0
        for level in range(top + 1):
            limit = (last_seq if level == 0 else self.size) >> level
            found = None
            for beyond in (nodes.idx >= limit, nodes.idx < 0):
                found = (
                    found
                    or self.conn.execute(
                        select(nodes.idx).where(nodes.level == level, beyond).order_by(nodes.idx)
                    ).first()
                )
            if found is None:
                continue
            idx = found.idx
            if isinstance(idx, int) and idx >= limit:
                first = max((idx << level) + 1, last_seq + 1)
                self.report.fail(
                    f"the stored tree holds node ({level}, {idx}) over entries past the last "
                    f"one (#{last_seq}): entries from #{first} on were removed",
                    first,
                )
            else:
                self.report.fail(f"the stored tree has a node ({level}, {idx!r})")
        if self.aligned:
            higher = self.conn.execute(
                select(nodes.level, nodes.idx).where(or_(nodes.level > top, nodes.level < 0))
            ).first()
            if higher is not None:
                self.report.fail(
                    f"the stored tree has a node ({higher.level!r}, {higher.idx!r}) above any "
                    f"the {last_seq} entries make"
                )


def _size_of(value: Any) -> int:
    return value if isinstance(value, int) else -1


def verify_log(
    db: Database,
    region: str,
    verifier: Verifier | None,
    witnessed: Sequence[TreeHead] = (),
    stop: threading.Event | None = None,
) -> VerifyReport:
    """Run the full check on the log in ``db``; see the module docstring."""
    report = VerifyReport(region, 0)
    try:
        with snapshot(db) as conn:
            check = _Check(conn, report, verifier, witnessed, stop)
            try:
                check.run()
            finally:
                # Server-side cursors must close inside the transaction that opened them.
                for close in [*check.closing, *(level.close for level in check.levels.values())]:
                    close()
    except (SQLAlchemyError, db.engine.dialect.loaded_dbapi.Error) as exc:
        # A table dropped or unreadable is damage like any other: reported, never raised.
        # (The rows are read through the driver's cursor, so its errors come unwrapped.)
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        report.fail(f"the audit log could not be read: {reason}", None)
    return report

"""SQL plumbing shared by the catalog and the regional stores.

Databases are opened by URL (``sqlite:///path``, ``sqlite://`` for memory, ``postgresql://…``), and
every table set carries a schema version checked at open: an fyp that finds a newer schema refuses
to touch it rather than corrupt it. SQL is SQLAlchemy Core and portable; the only dialect-specific
statements are the two upsert forms, and both SQLite and PostgreSQL spell them the same way, and
``one_of`` (membership in a list of ids passed as one parameter).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    any_,
    column,
    create_engine,
    event,
    func,
    inspect,
    literal,
    select,
    table,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnClause

from fyp.errors import BackendUnavailable, ConfigError, SchemaMismatch


def meta_table(metadata: MetaData) -> Table:
    """The key/value table holding ``schema_kind`` and ``schema_version``."""
    return Table(
        "fyp_meta",
        metadata,
        Column("key", String(64), primary_key=True),
        Column("value", String(256), nullable=False),
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run while one writer commits; NORMAL sync is durable against process
    # crashes, and durable writes (ingestion) switch to FULL per transaction, see Database.write().
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA cache_size=-16384")  # 16 MiB page cache per connection
    cursor.execute("PRAGMA mmap_size=268435456")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()
    # Let SQLAlchemy's "begin" hook below emit BEGIN, so writes can take the lock up front.
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock up front (no deadlock-prone lock upgrade). Readers run without
    # an explicit transaction: each SELECT sees a committed snapshot, and the feed's many small
    # reads skip a BEGIN/COMMIT round each.
    if conn.get_execution_options().get("fyp_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_sql_engine(url: str) -> Engine:
    """Create an engine for ``url``; the driver is chosen by scheme and imported lazily.

    ``memory://`` is a private in-memory database (SQLite), for tests and throwaway engines.
    """
    if url == "memory://":
        url = "sqlite://"
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"not a database URL: {url!r}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, pool_size=4, max_overflow=8)
        else:
            engine = create_engine(
                "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
            )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_size=8, max_overflow=16, pool_pre_ping=True)
    raise ConfigError(f"unsupported database URL scheme {parsed.drivername!r} in {url!r}")


MAX_COMPILED_STATEMENTS = 256
"""Compiled bulk-write statements kept per database, least recently used dropped first. fyp's
own statements come in a few dozen shapes; the cache is keyed by the statement object, so a
caller that builds ``table.insert()`` afresh per call adds an entry each time (and compiles it
again anyway): unbounded, that leaked one compiled statement per feed and per event batch."""

SHAREABLE: dict[str, set[str]] = {"region": {"region", "audit"}, "audit": {"region", "audit"}}
"""Kinds of fyp table sets that may live in one database (a region's data and its audit log);
any other kind wants a database of its own."""


class Database:
    """An engine plus the discipline fyp uses with it.

    ``read()`` yields a connection in a read transaction. ``write()`` yields one in a write
    transaction that commits on success and rolls back on any error, so a batch is never
    half-written. Writers in this process take a lock first (SQLite has one writer anyway, and
    waiting on a Python lock is cheaper than on SQLite's busy handler).
    """

    def __init__(
        self,
        url: str,
        metadata: MetaData,
        kind: str,
        version: int,
        upgrade: Callable[[Database, Connection, int], None] | None = None,
        prepare: bool = True,
    ) -> None:
        """Open ``url`` and bring its ``kind`` tables to ``version``.

        ``upgrade(db, conn, stored)`` runs when the database holds an older version of the tables,
        after new tables were created and in the same transaction (a failed upgrade leaves the
        database as it was). With ``prepare=False`` the database is only checked (kind, not
        newer), never changed: for a store that cannot upgrade it now (its key is unavailable).
        """
        self.url = url
        self.engine = create_sql_engine(url)
        self.dialect = self.engine.dialect.name
        self._write_lock = threading.Lock()
        self._compiled: OrderedDict[tuple[Insert, tuple[str, ...]], Any] = OrderedDict()
        self._compiled_lock = threading.Lock()
        self._metadata = metadata
        self._meta = metadata.tables["fyp_meta"]
        self.stored_version = 0
        """The schema version found at open (0 for a new database)."""
        self._ensure_schema(kind, version, upgrade, prepare)

    def _ensure_schema(
        self,
        kind: str,
        version: int,
        upgrade: Callable[[Database, Connection, int], None] | None,
        prepare: bool,
    ) -> None:
        try:
            with self.engine.connect() as conn:
                tables = set(inspect(conn).get_table_names())
                has_meta = "fyp_meta" in tables
                found: dict[str, str] = {}
                if tables and not has_meta:
                    raise SchemaMismatch(
                        f"{self.url} holds tables ({', '.join(sorted(tables)[:5])}) but is not an "
                        "fyp database; point fyp at an empty database of its own"
                    )
                if has_meta:
                    rows = conn.execute(select(self._meta.c.key, self._meta.c.value))
                    found = {str(k): str(v) for k, v in rows}
        except OperationalError as exc:
            raise BackendUnavailable(f"cannot open database {self.url}: {exc.orig}") from exc
        kinds = {k.removesuffix(".schema_version") for k in found if k.endswith(".schema_version")}
        if kinds and not kinds <= SHAREABLE.get(kind, {kind}):
            raise SchemaMismatch(
                f"{self.url} holds an fyp {'/'.join(sorted(kinds))} database, "
                f"which cannot also hold the {kind!r} tables"
            )
        key = f"{kind}.schema_version"
        stored = int(found.get(key, "0"))
        if stored > version:
            raise SchemaMismatch(
                f"{self.url} has {kind} schema version {stored}, newer than this fyp's {version}; "
                "upgrade fyp instead of opening it with an older release"
            )
        self.stored_version = stored
        if not prepare:
            return
        with self.write() as conn:
            # New tables of a newer schema appear here, then the in-place upgrade of older ones.
            self._metadata.create_all(conn)
            if 0 < stored < version and upgrade is not None:
                upgrade(self, conn, stored)
            if key not in found:
                conn.execute(self._meta.insert(), [{"key": key, "value": str(version)}])
            elif stored < version:
                conn.execute(
                    self._meta.update().where(self._meta.c.key == key).values(value=str(version))
                )

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads. On SQLite each statement reads its own committed snapshot."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def write(self, durable: bool = False) -> Iterator[Connection]:
        """A write transaction; ``durable`` waits for the disk (fsync) before returning."""
        with self._write_lock, self.engine.connect() as conn:
            conn = conn.execution_options(fyp_write=True)
            if self.dialect == "sqlite":
                # Outside any transaction (SQLite refuses the pragma inside one), on the raw
                # connection so SQLAlchemy does not open a transaction for it.
                raw = conn.connection.driver_connection
                assert raw is not None
                raw.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            with conn.begin():
                yield conn

    @property
    def cached_statements(self) -> int:
        """Compiled statements kept for :meth:`executemany` (at most
        ``MAX_COMPILED_STATEMENTS``)."""
        return len(self._compiled)

    def executemany(
        self, conn: Connection, stmt: Insert, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Run ``stmt`` once per row through the driver's own ``executemany``.

        For bulk writes (ingestion batches): SQLAlchemy's per-row parameter processing costs more
        than SQLite's insert itself. The statement is compiled once per statement object and
        column set (a statement built once, such as a module constant, is not compiled again);
        values must already be of the column's Python type (no type processing happens here).
        """
        if not rows:
            return
        keys = tuple(rows[0])
        with self._compiled_lock:
            compiled = self._compiled.get((stmt, keys))
            if compiled is not None:
                self._compiled.move_to_end((stmt, keys))
        if compiled is None:
            compiled = stmt.compile(dialect=self.engine.dialect, column_keys=list(keys))
            with self._compiled_lock:
                self._compiled[(stmt, keys)] = compiled
                while len(self._compiled) > MAX_COMPILED_STATEMENTS:
                    self._compiled.popitem(last=False)
        params: list[Any]
        if compiled.positional:
            order = compiled.positiontup or ()
            params = [tuple(row[k] for k in order) for row in rows]
        else:
            params = list(rows)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(compiled.string, params)
        finally:
            cursor.close()

    def close(self) -> None:
        self.engine.dispose()


# Statement objects are immutable and cost more to build than to run on a hot path, so each
# (dialect, table, shape) is built once.


@functools.cache
def _insert_ignore(dialect: str, table: Table) -> Insert:
    module: Any = pg_dialect if dialect == "postgresql" else sqlite_dialect
    return module.insert(table).on_conflict_do_nothing()  # type: ignore[no-any-return]


@functools.cache
def _upsert(
    dialect: str, table: Table, keys: tuple[str, ...], update: tuple[str, ...], add: bool
) -> Insert:
    module: Any = pg_dialect if dialect == "postgresql" else sqlite_dialect
    stmt = module.insert(table)
    if add:
        values = {c: table.c[c] + stmt.excluded[c] for c in update}
    else:
        values = {c: stmt.excluded[c] for c in update}
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=list(keys), set_=values
    )


def insert_ignore(db: Database, table: Table) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING`` for the database's dialect."""
    return _insert_ignore(db.dialect, table)


def upsert(db: Database, table: Table, keys: Sequence[str], update: Sequence[str]) -> Insert:
    """``INSERT … ON CONFLICT (keys) DO UPDATE SET col = excluded.col`` for ``update`` columns."""
    return _upsert(db.dialect, table, tuple(keys), tuple(update), False)


def insert_or_add(db: Database, table: Table, keys: Sequence[str], add: Sequence[str]) -> Insert:
    """``INSERT … ON CONFLICT (keys) DO UPDATE SET col = table.col + excluded.col``: counters."""
    return _upsert(db.dialect, table, tuple(keys), tuple(add), True)


def chunked(values: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    """Split long ``IN (...)`` lists: SQLite caps bound parameters per statement."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def one_of(db: Database, column: Any, values: Sequence[str]) -> ColumnElement[bool]:
    """``column IN (values)`` with the whole list bound as one parameter.

    A plain ``IN`` list makes SQLAlchemy expand and rename one parameter per value on every
    execution, which costs more than the query itself for the few hundred ids a feed request
    looks up. SQLite reads the list with ``json_each`` (probing the index once per value);
    PostgreSQL compares against an array with ``= ANY``.
    """
    if db.dialect == "postgresql":
        return column == any_(literal(list(values), pg_dialect.ARRAY(String())))  # type: ignore[no-any-return]
    listed = func.json_each(literal(json.dumps(list(values)))).table_valued("value")
    return column.in_(select(listed.c.value))  # type: ignore[no-any-return]


def rows_by(rows: Sequence[Mapping[str, Any]], key: str) -> dict[Any, Mapping[str, Any]]:
    return {row[key]: row for row in rows}


def rows_naming(url: str, values: Iterable[str]) -> Counter[tuple[str, str]]:
    """Rows whose text equals one of ``values``, counted by (table, column), over every text
    column of every table of the database at ``url``, whatever the tables are called: how a test
    or an operator shows that an erased user's id is nowhere in a region's database."""
    wanted = sorted(set(values))
    found: Counter[tuple[str, str]] = Counter()
    if not wanted:
        return found
    engine = create_sql_engine(url)
    try:
        with engine.connect() as conn:
            inspector = inspect(conn)
            for name in inspector.get_table_names():
                for described in inspector.get_columns(name):
                    if not isinstance(described["type"], String):
                        continue
                    target: ColumnClause[Any] = column(described["name"])
                    source = table(name, target)
                    for part in chunked(wanted):
                        query = select(func.count()).select_from(source).where(target.in_(part))
                        hits = int(conn.execute(query).scalar_one())
                        if hits:
                            found[(name, described["name"])] += hits
    finally:
        engine.dispose()
    return found

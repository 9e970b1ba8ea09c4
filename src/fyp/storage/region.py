"""One region's personal data over SQL: users, events, online state and item stats.

A :class:`SqlRegionStore` implements the regional data roles (``Users``, ``EventLog``,
``UserState``, ``ItemStats``) over one database, because an event must change the log, the viewer's
state and the item stats in a single transaction. Nothing outside ``fyp.storage`` and
``fyp.governance`` constructs one: the rest of fyp reaches it through a gate handle.

Personal values are encrypted at rest with the user's data key (see :mod:`fyp.storage.envelope`):
a user's attributes, each event's payload (item, type, watch time, request id; ``seq``,
``event_id``, ``user_id`` and ``ts`` stay plaintext for indexing and ordering), the reasons of each
served item and the user's keyword filters and blocked tags. Every read path decrypts here, so
callers see the same records as before. Derived state (seen items, follows, hidden items, muted
creators, affinities, item stats) stays plaintext; erasure deletes it with the rows.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    inspect,
    select,
    text,
)

from fyp.errors import CiphertextInvalid, Conflict, KeyUnavailable, NotFound
from fyp.signals import (
    Folded,
    FoldPolicy,
    StatsDelta,
    combine_decayed,
    decay_factor,
    fold,
    logaddexp,
)
from fyp.storage.envelope import (
    DataKey,
    DataKeyCache,
    KekStatus,
    KeyFile,
    Keyring,
    RotationReport,
    associated_data,
    new_data_key,
)
from fyp.storage.roles import (
    AppendResult,
    EventRecord,
    Interest,
    ItemRecord,
    ItemStatsRecord,
    PendingErasure,
    ServedItem,
    UpsertResult,
    UserControls,
    UserRecord,
    UserStateSnapshot,
)
from fyp.storage.sql import (
    Database,
    chunked,
    insert_ignore,
    insert_or_add,
    meta_table,
    one_of,
    upsert,
)
from fyp.types import POSITIVE_EVENT_TYPES, Event, User, epoch, from_epoch

REGION_SCHEMA_VERSION: Final = 4
"""2: ``user_controls`` (users' own settings: personalization, filters, interest resets).
3: encryption at rest: ``user_keys`` (wrapped per-user data keys), ``region_keks`` (the KEK
versions the region's data keys are wrapped by), sealed attributes, event payloads, served reasons
and filters. An older database is upgraded in place (its plaintext rows encrypted) at open.
4: ``pending_erasures`` (an erasure between its two transactions, see ``begin_erasure``)."""
STATS_CACHE_TTL_S: Final = 120.0
_STATS_CACHE_MAX: Final = 500_000

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants a 64-bit identity.
# Tables keyed by (user, thing) are WITHOUT ROWID on SQLite: the primary key is the table, so each
# write updates one B-tree instead of two and a user's rows sit together on disk.
_SEQ = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData()
meta_table(metadata)

users = Table(
    "users",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("attributes", LargeBinary, nullable=False),  # sealed JSON object
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    sqlite_with_rowid=False,
)

events = Table(
    "events",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("event_id", String(128), nullable=False, unique=True),
    Column("user_id", String(128), nullable=False),
    Column("ts", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    # Sealed JSON [item_id, type, watch_ms, request_id], bound to (region, user_id, event_id).
    Column("payload", LargeBinary, nullable=False),
    Index("ix_events_user_ts", "user_id", "ts"),
)

seen = Table(
    "seen",
    metadata,
    Column("user_id", String(128), nullable=False),
    Column("item_id", String(128), nullable=False),
    Column("ts", Float, nullable=False),
    PrimaryKeyConstraint("user_id", "item_id"),
    sqlite_with_rowid=False,
)

follows = Table(
    "follows",
    metadata,
    Column("user_id", String(128), nullable=False),
    Column("creator_id", String(128), nullable=False),
    Column("ts", Float, nullable=False),
    PrimaryKeyConstraint("user_id", "creator_id"),
    sqlite_with_rowid=False,
)

hidden_items = Table(
    "hidden_items",
    metadata,
    Column("user_id", String(128), nullable=False),
    Column("item_id", String(128), nullable=False),
    Column("ts", Float, nullable=False),
    PrimaryKeyConstraint("user_id", "item_id"),
    sqlite_with_rowid=False,
)

muted_creators = Table(
    "muted_creators",
    metadata,
    Column("user_id", String(128), nullable=False),
    Column("creator_id", String(128), nullable=False),
    Column("until", Float, nullable=False),
    PrimaryKeyConstraint("user_id", "creator_id"),
    sqlite_with_rowid=False,
)

affinity = Table(
    "affinity",
    metadata,
    Column("user_id", String(128), nullable=False),
    Column("key", String(200), nullable=False),
    Column("weight", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    PrimaryKeyConstraint("user_id", "key"),
    sqlite_with_rowid=False,
)

feed_log = Table(
    "feed_log",
    metadata,
    Column("request_id", String(64), nullable=False),
    Column("position", Integer, nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("item_id", String(128), nullable=False),
    Column("score", Float, nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("reasons", LargeBinary, nullable=False),  # sealed JSON list
    Column("ts", Float, nullable=False),
    PrimaryKeyConstraint("request_id", "position"),
    Index("ix_feed_log_user_ts", "user_id", "ts"),
    sqlite_with_rowid=False,
)

user_controls = Table(
    "user_controls",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("personalized", Boolean, nullable=False),
    Column("keyword_filters", LargeBinary, nullable=False),  # sealed JSON list
    Column("blocked_tags", LargeBinary, nullable=False),  # sealed JSON list
    Column("interests_reset_at", Float),
    Column("updated_at", Float, nullable=False),
    sqlite_with_rowid=False,
)

# Each user's data key, wrapped by one of the region's KEKs (AES-GCM, bound to region and user).
user_keys = Table(
    "user_keys",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("kek_id", String(32), nullable=False),
    Column("wrapped_dek", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_user_keys_kek", "kek_id"),
    sqlite_with_rowid=False,
)

# The KEK versions this region's data keys have been wrapped by (ids only, never the keys). The
# newest one not retired wraps new data keys, whatever process creates them.
region_keks = Table(
    "region_keks",
    metadata,
    Column("kek_id", String(32), primary_key=True),
    Column("version", Integer, nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("retired_at", Float),
)

# An erasure between the transaction that orders it (``begin_erasure``: from then on no write about
# the user is accepted) and the one that deletes the user's rows (``finish_erasure``, which deletes
# this row too). ``rows`` counts what the deletion will remove: nothing can be added in between.
# The audit entry of the erasure is written in between, ahead of the deletion; ``audit_claim``
# names the one process that writes it (the one that ordered the erasure, unless its claim went
# stale: it died, and another process finishes the erasure).
pending_erasures = Table(
    "pending_erasures",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("erasure_id", String(32), nullable=False, unique=True),
    Column("requested_at", Float, nullable=False),
    Column("rows", Text, nullable=False),  # JSON object: table -> rows about the user
    Column("audit_claim", String(64)),
    Column("claimed_at", Float),
    sqlite_with_rowid=False,
)

# Every table holding rows about one person, keyed by ``user_id``: what export reads and erasure
# deletes. A new per-user table must be added here (tests check that erasure leaves no row behind).
PERSONAL_TABLES: Final = (
    "users",
    "events",
    "seen",
    "follows",
    "hidden_items",
    "muted_creators",
    "affinity",
    "feed_log",
    "user_controls",
)

ERASED_TABLES: Final = ("user_keys", *PERSONAL_TABLES)
"""What erasure deletes, the data key first: any copy of the user's sealed rows is unreadable
(and then the ``pending_erasures`` row that ordered it)."""

_RECENT_SCAN_MAX: Final = 5_000
"""Newest events of a user looked through for their recent positives (they are sealed, so the
type is known only after decryption)."""
_MIGRATE_BATCH: Final = 5_000


class _Retry(Exception):
    """Rolls a transaction back to try again."""


_COUNTERS: Final = ("views", "plays", "finishes", "likes", "shares", "skips", "not_interested")

item_stats = Table(
    "item_stats",
    metadata,
    Column("item_id", String(128), primary_key=True),
    *(Column(name, BigInteger, nullable=False, default=0) for name in _COUNTERS),
    Column("watch_ratio_sum", Float, nullable=False, default=0.0),
    Column("trend_log", Float),
    Index("ix_item_stats_trend", "trend_log"),
    sqlite_with_rowid=False,
)

# The region's sums over item_stats, kept in step by the same transactions, so that reading them
# (the engagement feature's priors) costs one row instead of a scan over every item.
stats_totals = Table(
    "stats_totals",
    metadata,
    Column("id", Integer, primary_key=True),
    *(Column(name, BigInteger, nullable=False, default=0) for name in _COUNTERS),
    Column("watch_ratio_sum", Float, nullable=False, default=0.0),
)


# Scratch table for key lookups by pairs (per connection; TEMP tables are private to it).
_pairs = Table(
    "fyp_pairs",
    MetaData(),
    Column("a", String(200), nullable=False),
    Column("b", String(200), nullable=False),
)
_CREATE_PAIRS: Final = "CREATE TEMP TABLE IF NOT EXISTS fyp_pairs (a VARCHAR(200), b VARCHAR(200))"
_INSERT_PAIRS: Final = _pairs.insert()
# Built once: ``Database.executemany`` caches compiled statements by identity.
_INSERT_EVENTS: Final = events.insert()
_INSERT_SEEN: Final = seen.insert()
"""Built once: ``Database.executemany`` compiles a statement object once (feeds and ingestion
fill the pairs table on every call)."""


def _pairs_present(
    db: Database,
    conn: Connection,
    first: Any,
    second: Any,
    pairs: Sequence[tuple[str, str]],
    *extra: Any,
) -> list[tuple[str, str, tuple[Any, ...]]]:
    """Stored rows whose (first, second) key is among ``pairs``, with ``extra`` column values.

    The pairs go into a per-connection temporary table that is joined on the composite primary
    key: one cheap statement however many pairs and users a batch spans (a row-value ``IN`` would
    scan the table, and one expression per pair costs more to build than to run).
    """
    wanted = list(dict.fromkeys(pairs))
    if not wanted:
        return []
    conn.exec_driver_sql(_CREATE_PAIRS)
    conn.execute(_pairs.delete())
    db.executemany(conn, _INSERT_PAIRS, [{"a": a, "b": b} for a, b in wanted])
    table = first.table
    query = select(first, second, *extra).select_from(
        table.join(_pairs, and_(first == _pairs.c.a, second == _pairs.c.b))
    )
    found = [(row[0], row[1], tuple(row[2:])) for row in conn.execute(query)]
    conn.execute(_pairs.delete())
    return found


_STATS_FIELDS: Final = (*_COUNTERS, "watch_ratio_sum")


def _stats_record(values: Sequence[Any]) -> ItemStatsRecord:
    """An ``ItemStatsRecord`` from values in ``_STATS_FIELDS`` order."""
    counters = {name: int(value) for name, value in zip(_COUNTERS, values, strict=False)}
    return ItemStatsRecord(**counters, watch_ratio_sum=float(values[len(_COUNTERS)]))


_NO_STATS: Final = ItemStatsRecord()
"""Cached marker for "this item has no stats row yet"."""


def _pending(row: Any) -> PendingErasure:
    return PendingErasure(
        erasure_id=row.erasure_id,
        user_id=row.user_id,
        requested_at=float(row.requested_at),
        rows={str(k): int(v) for k, v in json.loads(row.rows).items()},
    )


def _reset_at(conn: Connection, user_id: str) -> float:
    value = conn.execute(
        select(user_controls.c.interests_reset_at).where(user_controls.c.user_id == user_id)
    ).scalar()
    return float("-inf") if value is None else float(value)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _ad_attributes(region: str, user_id: str) -> bytes:
    return associated_data("users.attributes", region, user_id)


def _ad_event(region: str, user_id: str, event_id: str) -> bytes:
    return associated_data("events.payload", region, user_id, event_id)


def _ad_reasons(region: str, user_id: str, request_id: str, position: int) -> bytes:
    return associated_data("feed_log.reasons", region, user_id, request_id, str(position))


def _ad_control(region: str, user_id: str, column: str) -> bytes:
    return associated_data(f"user_controls.{column}", region, user_id)


def _length_prefixed(part: str) -> bytes:
    data = part.encode()
    return len(data).to_bytes(4, "big") + data


_decode_json = json.JSONDecoder().decode

_EVENT_COLUMNS: Final = (
    events.c.seq,
    events.c.event_id,
    events.c.user_id,
    events.c.ts,
    events.c.payload,
)


class SqlRegionStore:
    """All regional roles over one SQL database (see the module docstring)."""

    def __init__(
        self,
        url: str,
        region: str,
        policy: FoldPolicy,
        stats_ttl_s: float = STATS_CACHE_TTL_S,
        *,
        keys: KeyFile | Keyring | None = None,
        dek_cache: int | None = None,
    ) -> None:
        """Open the region's database with its keys.

        ``keys`` is the region's key file (what the engine passes), a keyring held in memory, or
        ``None`` for a fresh in-memory keyring (tests and throwaway databases: rows written under
        it cannot be read by another store). A key that is missing, corrupt or not the one the
        database's data keys are wrapped by does not raise here: ``key_problem`` says what is
        wrong, every operation on personal data raises ``KeyUnavailable``, and the engine
        quarantines the region.
        """
        self.region = region
        self.policy = policy
        self._key_file = keys if isinstance(keys, KeyFile) else None
        self._ring: Keyring | None = None
        if isinstance(keys, Keyring):
            self._ring = keys
        elif keys is None:
            self._ring = Keyring.ephemeral(region)
        self._ring_lock = threading.Lock()
        self._deks = DataKeyCache() if dek_cache is None else DataKeyCache(dek_cache)
        self._event_ad_prefix = associated_data("events.payload", region, "")[:-4]
        self.key_problem: str | None = None
        # Item stats are read for hundreds of candidates per feed and tolerate a few seconds of
        # staleness, so they are cached; this process's own writes update the cache on commit.
        self._stats_ttl = stats_ttl_s
        self._stats_cache: dict[str, tuple[float, ItemStatsRecord]] = {}
        self._stats_lock = threading.Lock()
        try:
            self.db = Database(
                url, metadata, kind="region", version=REGION_SCHEMA_VERSION, upgrade=self._upgrade
            )
        except KeyUnavailable as exc:
            # The upgrade of an older database needs the key: leave the database untouched.
            self._fail_keys(exc.detail)
            self.db = Database(
                url, metadata, kind="region", version=REGION_SCHEMA_VERSION, prepare=False
            )
            return
        if self.key_problem is None:
            try:
                with self.db.write() as conn:
                    self._check_keyring(conn)
            except KeyUnavailable as exc:
                self._fail_keys(exc.detail)

    # ---- keys -----------------------------------------------------------------------------------

    def _fail_keys(self, problem: str) -> None:
        self.key_problem = problem
        self._ring = None
        self._deks.clear()

    def _keyring(self) -> Keyring:
        if self._ring is None:
            raise KeyUnavailable(self.key_problem or f"region {self.region!r} has no keyring")
        return self._ring

    def _check_keyring(self, conn: Connection) -> Keyring:
        """Load (or, for a region with no data keys yet, create) the keyring and check that it
        holds every KEK the database's data keys are wrapped by; register the active KEK."""
        registered = {
            row.kek_id: row
            for row in conn.execute(
                select(region_keks.c.kek_id, region_keks.c.version, region_keks.c.retired_at)
            )
        }
        in_use: dict[str, int] = dict(
            conn.execute(
                select(user_keys.c.kek_id, func.count()).group_by(user_keys.c.kek_id)
            ).all()
        )
        needed = {k for k, row in registered.items() if row.retired_at is None} | set(in_use)
        where = f"region {self.region!r}"
        if self._key_file is not None:
            where += f": key file {self._key_file.path}"
            if not self._key_file.exists():
                if needed:
                    raise KeyUnavailable(
                        f"{where} is missing, and the region's data keys are wrapped by KEK "
                        f"{', '.join(sorted(needed))}; restore the key file from its backup "
                        "(without it the region's encrypted data cannot be read)"
                    )
                ring = self._key_file.create()
            else:
                ring = self._key_file.load()
        else:
            ring = self._keyring()
        if ring.region != self.region:
            raise KeyUnavailable(f"{where}: the keyring is region {ring.region!r}'s")
        absent = needed - ring.ids
        if absent:
            users = sum(in_use.get(k, 0) for k in absent)
            raise KeyUnavailable(
                f"{where} does not hold KEK {', '.join(sorted(absent))}, which wraps the data "
                f"keys of {users:,} user(s): a wrong or outdated key file"
            )
        if not [k for k, row in registered.items() if row.retired_at is None]:
            newest = ring.newest
            conn.execute(
                insert_ignore(self.db, region_keks),
                [{"kek_id": newest.id, "version": newest.version, "created_at": newest.created_at}],
            )
        self._ring = ring
        return ring

    def _ring_with(self, kid: str) -> Keyring:
        """The keyring, once reloaded from its file when it lacks ``kid`` (another process may
        have rotated the region's KEK)."""
        ring = self._keyring()
        if kid in ring:
            return ring
        if self._key_file is not None:
            with self._ring_lock:
                ring = self._key_file.load()
                self._ring = ring
            if kid in ring:
                return ring
        raise KeyUnavailable(
            f"region {self.region!r}: KEK {kid} is not in the keyring"
            + (f" ({self._key_file.path})" if self._key_file else "")
        )

    def _active_kek(self, conn: Connection) -> str:
        """The KEK that wraps new data keys: the newest registered one not retired.

        On PostgreSQL the row is share-locked until the transaction ends, so a rotation cannot
        retire it while a data key wrapped by it is being written.
        """
        query = (
            select(region_keks.c.kek_id)
            .where(region_keks.c.retired_at.is_(None))
            .order_by(region_keks.c.version.desc())
            .limit(1)
        )
        if self.db.dialect == "postgresql":
            query = query.with_for_update(read=True)
        kid = conn.execute(query).scalar()
        if kid is None:
            raise KeyUnavailable(f"region {self.region!r}: no active KEK is registered")
        return str(kid)

    def _stored_keys(
        self, conn: Connection, user_ids: Sequence[str]
    ) -> dict[str, tuple[str, bytes]]:
        found: dict[str, tuple[str, bytes]] = {}
        for part in chunked(list(user_ids)):
            query = select(user_keys.c.user_id, user_keys.c.kek_id, user_keys.c.wrapped_dek)
            for user_id, kid, wrapped in conn.execute(
                query.where(one_of(self.db, user_keys.c.user_id, part))
            ):
                found[user_id] = (kid, bytes(wrapped))
        return found

    def _unwrap(self, user_id: str, kid: str, wrapped: bytes) -> DataKey:
        return DataKey(self._ring_with(kid).unwrap(kid, user_id, wrapped), wrapped)

    def _write_keys(
        self, conn: Connection, user_ids: Iterable[str], now: float
    ) -> dict[str, DataKey]:
        """Each user's data key, created (and wrapped by the active KEK) for users without one.

        Inside the caller's write transaction, and always checked against the stored wrapped
        key: a key cached before another process erased and re-created the user is never used
        to seal new rows.
        """
        ids = sorted(set(user_ids))
        stored = self._stored_keys(conn, ids)
        missing = [u for u in ids if u not in stored]
        if missing:
            kid = self._active_kek(conn)
            ring = self._ring_with(kid)
            rows = [
                {
                    "user_id": u,
                    "kek_id": kid,
                    "wrapped_dek": ring.wrap(kid, u, new_data_key()),
                    "created_at": now,
                }
                for u in missing
            ]
            conn.execute(insert_ignore(self.db, user_keys), rows)
            stored.update(self._stored_keys(conn, missing))
        out: dict[str, DataKey] = {}
        for user_id in ids:
            kid, wrapped = stored[user_id]
            key = self._deks.get(user_id)
            if key is None or key.wrapped != wrapped:
                key = self._unwrap(user_id, kid, wrapped)
                self._deks.put(user_id, key)
            out[user_id] = key
        return out

    def _read_keys(self, conn: Connection, user_ids: Iterable[str]) -> dict[str, DataKey]:
        """Data keys of those users that have one (from the cache, else unwrapped)."""
        self._keyring()
        out: dict[str, DataKey] = {}
        missing: list[str] = []
        for user_id in set(user_ids):
            key = self._deks.get(user_id)
            if key is None:
                missing.append(user_id)
            else:
                out[user_id] = key
        if missing:
            for user_id, (kid, wrapped) in self._stored_keys(conn, missing).items():
                key = self._unwrap(user_id, kid, wrapped)
                self._deks.put(user_id, key)
                out[user_id] = key
        return out

    def _open(
        self,
        conn: Connection,
        keys: dict[str, DataKey],
        user_id: str,
        sealed: bytes,
        ad: bytes,
        what: str,
    ) -> bytes:
        key = keys.get(user_id)
        if key is not None:
            try:
                return key.open(sealed, ad)
            except InvalidTag:
                pass
        # A cached key may be stale (the user was erased and created again by another process).
        self._deks.evict([user_id])
        stored = self._stored_keys(conn, [user_id]).get(user_id)
        if stored is None:
            raise CiphertextInvalid(
                f"region {self.region!r}: {what}: its user has no data key (erased?)"
            )
        fresh = self._unwrap(user_id, *stored)
        self._deks.put(user_id, fresh)
        keys[user_id] = fresh
        try:
            return fresh.open(sealed, ad)
        except InvalidTag as exc:
            raise CiphertextInvalid(
                f"region {self.region!r}: {what} does not open under its user's data key "
                "(altered, or moved from another user or row)"
            ) from exc

    def _event(self, conn: Connection, keys: dict[str, DataKey], row: Any) -> EventRecord:
        return self._events(conn, keys, [row])[0]

    def _events(
        self, conn: Connection, keys: dict[str, DataKey], rows: Sequence[Any]
    ) -> list[EventRecord]:
        """Decrypt rows of ``_EVENT_COLUMNS`` (the training read's inner loop: kept lean)."""
        prefix = self._event_ad_prefix
        by_user: dict[str, bytes] = {}
        out: list[EventRecord] = []
        append = out.append
        for seq, event_id, user_id, ts, payload in rows:
            head = by_user.get(user_id)
            if head is None:
                head = by_user[user_id] = prefix + _length_prefixed(user_id)
            ad = head + _length_prefixed(event_id)
            key = keys.get(user_id)
            try:
                if key is None:
                    raise InvalidTag
                plain = key.open(payload, ad)
            except InvalidTag:
                plain = self._open(conn, keys, user_id, payload, ad, f"event {event_id!r}")
            item_id, type_, watch_ms, request_id = _decode_json(plain.decode())
            append(EventRecord(seq, event_id, user_id, item_id, type_, ts, watch_ms, request_id))
        return out

    def _seal_event(self, key: DataKey, ev: Event) -> bytes:
        payload = json.dumps([ev.item_id, ev.type, ev.watch_ms, ev.request_id]).encode()
        return key.seal(payload, _ad_event(self.region, ev.user_id, ev.event_id))

    def _controls(self, conn: Connection, user_id: str) -> UserControls:
        row = conn.execute(select(user_controls).where(user_controls.c.user_id == user_id)).first()
        if row is None:
            return UserControls()
        keys = self._read_keys(conn, [user_id])
        lists = {
            column: tuple(
                json.loads(
                    self._open(
                        conn,
                        keys,
                        user_id,
                        getattr(row, column),
                        _ad_control(self.region, user_id, column),
                        f"the {column} of a user",
                    )
                )
            )
            for column in ("keyword_filters", "blocked_tags")
        }
        return UserControls(
            personalized=bool(row.personalized),
            keyword_filters=lists["keyword_filters"],
            blocked_tags=lists["blocked_tags"],
            interests_reset_at=row.interests_reset_at,
        )

    # ---- upgrade of an older, plaintext database ----------------------------------------------

    def _upgrade(self, db: Database, conn: Connection, stored: int) -> None:
        """Encrypt a version 1-2 database in place, in the transaction of the schema upgrade."""
        if stored >= 3:
            return
        self.db = db
        self._check_keyring(conn)
        now = time.time()
        columns = {
            table: {c["name"]: c for c in inspect(conn).get_columns(table)}
            for table in ("users", "events", "feed_log", "user_controls")
        }
        binary = "BYTEA" if self.db.dialect == "postgresql" else "BLOB"

        def to_binary(table: str, column: str) -> None:
            # SQLite stores a BLOB in a TEXT column as is; PostgreSQL needs the column's type.
            if self.db.dialect == "postgresql" and not isinstance(
                columns[table][column]["type"], LargeBinary
            ):
                conn.exec_driver_sql(
                    f"ALTER TABLE {table} ALTER COLUMN {column} TYPE BYTEA "
                    f"USING convert_to({column}, 'UTF8')"
                )

        def text_of(value: Any) -> str:
            return bytes(value).decode() if isinstance(value, bytes | memoryview) else str(value)

        to_binary("users", "attributes")
        self._rewrite(
            conn,
            "SELECT user_id, attributes FROM users WHERE user_id > :c ORDER BY user_id LIMIT :n",
            lambda row: row.user_id,
            "UPDATE users SET attributes = :v WHERE user_id = :k",
            lambda key, row: key.seal(
                text_of(row.attributes).encode(), _ad_attributes(self.region, row.user_id)
            ),
            now,
        )
        if "payload" not in columns["events"]:
            conn.exec_driver_sql(f"ALTER TABLE events ADD COLUMN payload {binary}")
            self._rewrite(
                conn,
                "SELECT seq, event_id, user_id, item_id, type, watch_ms, request_id FROM events "
                "WHERE seq > :c ORDER BY seq LIMIT :n",
                lambda row: row.seq,
                "UPDATE events SET payload = :v WHERE seq = :k",
                lambda key, row: key.seal(
                    json.dumps([row.item_id, row.type, row.watch_ms, row.request_id]).encode(),
                    _ad_event(self.region, row.user_id, row.event_id),
                ),
                now,
                cursor=0,
            )
            for column in ("item_id", "type", "watch_ms", "request_id"):
                conn.exec_driver_sql(f"ALTER TABLE events DROP COLUMN {column}")
            if self.db.dialect == "postgresql":
                conn.exec_driver_sql("ALTER TABLE events ALTER COLUMN payload SET NOT NULL")
        to_binary("feed_log", "reasons")
        self._rewrite(
            conn,
            "SELECT request_id || '/' || CAST(position AS VARCHAR(12)) AS k, request_id, "
            "position, user_id, reasons FROM feed_log "
            "WHERE request_id || '/' || CAST(position AS VARCHAR(12)) > :c ORDER BY k LIMIT :n",
            lambda row: row.k,
            "UPDATE feed_log SET reasons = :v "
            "WHERE request_id || '/' || CAST(position AS VARCHAR(12)) = :k",
            lambda key, row: key.seal(
                text_of(row.reasons).encode(),
                _ad_reasons(self.region, row.user_id, row.request_id, row.position),
            ),
            now,
        )
        for column in ("keyword_filters", "blocked_tags"):
            to_binary("user_controls", column)
            self._rewrite(
                conn,
                f"SELECT user_id, {column} AS v FROM user_controls WHERE user_id > :c "
                "ORDER BY user_id LIMIT :n",
                lambda row: row.user_id,
                f"UPDATE user_controls SET {column} = :v WHERE user_id = :k",
                self._control_sealer(column, text_of),
                now,
            )

    def _control_sealer(
        self, column: str, text_of: Callable[[Any], str]
    ) -> Callable[[DataKey, Any], bytes]:
        def seal(key: DataKey, row: Any) -> bytes:
            return key.seal(text_of(row.v).encode(), _ad_control(self.region, row.user_id, column))

        return seal

    def _rewrite(
        self,
        conn: Connection,
        read: str,
        key_of: Callable[[Any], Any],
        write: str,
        seal: Callable[[DataKey, Any], bytes],
        now: float,
        cursor: Any = "",
    ) -> None:
        """Seal every row ``read`` returns (in key order, in batches) with ``write``."""
        while True:
            rows = conn.execute(text(read), {"c": cursor, "n": _MIGRATE_BATCH}).all()
            if not rows:
                return
            keys = self._write_keys(conn, {row.user_id for row in rows}, now)
            conn.execute(
                text(write),
                [{"k": key_of(row), "v": seal(keys[row.user_id], row)} for row in rows],
            )
            cursor = key_of(rows[-1])

    # ---- KEK rotation -----------------------------------------------------------------------

    def key_status(self) -> list[KekStatus]:
        """Every KEK the key file or the database knows, with the data keys each one wraps."""
        ring = self._key_file.load() if self._key_file is not None else self._keyring()
        with self.db.read() as conn:
            registered = {
                row.kek_id: row
                for row in conn.execute(
                    select(
                        region_keks.c.kek_id,
                        region_keks.c.version,
                        region_keks.c.created_at,
                        region_keks.c.retired_at,
                    )
                )
            }
            counts: dict[str, int] = dict(
                conn.execute(
                    select(user_keys.c.kek_id, func.count()).group_by(user_keys.c.kek_id)
                ).all()
            )
        live = [row for row in registered.values() if row.retired_at is None]
        active = max(live, key=lambda row: row.version).kek_id if live else None
        out: list[KekStatus] = []
        for kid in sorted(set(registered) | ring.ids):
            kek = ring.get(kid)
            row = registered.get(kid)
            known: Any = kek if kek is not None else row
            out.append(
                KekStatus(
                    id=kid,
                    version=int(known.version),
                    created_at=float(known.created_at),
                    in_file=kek is not None,
                    registered=row is not None,
                    active=kid == active,
                    retired_at=None if row is None else row.retired_at,
                    data_keys=int(counts.get(kid, 0)),
                )
            )
        return sorted(out, key=lambda k: k.version)

    def rotate_kek(
        self,
        now: float,
        batch: int = 2_000,
        progress: Callable[[int], None] | None = None,
        stop_after_batches: int | None = None,
    ) -> RotationReport:
        """Make a new KEK version the active one, re-wrap every data key under it, retire the
        old versions and drop them from the key file. Event and profile rows are not touched.

        Each batch of re-wrapped keys commits on its own, and every step can be repeated: run
        again after an interruption, it resumes the rotation it finds under way instead of
        starting another (``stop_after_batches`` interrupts on purpose, for tests).
        """
        if self._key_file is None:
            raise KeyUnavailable(f"region {self.region!r}: rotation needs the region's key file")
        started = time.perf_counter()
        with self._ring_lock:
            ring = self._key_file.load()
            with self.db.read() as conn:
                registered = {
                    row.kek_id: row
                    for row in conn.execute(
                        select(
                            region_keks.c.kek_id, region_keks.c.version, region_keks.c.retired_at
                        )
                    )
                }
            live = sorted(
                (r for r in registered.values() if r.retired_at is None), key=lambda r: r.version
            )
            top = max((r.version for r in registered.values()), default=0)
            unregistered = [k for k in ring.keks if k.id not in registered and k.version > top]
            if len(live) > 1:
                new, resumed = ring.get(live[-1].kek_id), True  # re-wrap under way
            elif unregistered:
                new, resumed = unregistered[-1], True  # the new key was written, not registered
            else:
                ring, new = ring.with_new_version(now)
                self._key_file.save(ring)  # the key is on disk before anything depends on it
                resumed = False
            if new is None:
                raise KeyUnavailable(
                    f"region {self.region!r}: the active KEK {live[-1].kek_id} is not in "
                    f"{self._key_file.path}"
                )
            self._ring = ring
            with self.db.write(durable=True) as conn:
                conn.execute(
                    insert_ignore(self.db, region_keks),
                    [{"kek_id": new.id, "version": new.version, "created_at": new.created_at}],
                )
        rewrapped = 0
        batches = 0
        while True:
            cursor: str | None = ""
            while cursor is not None:
                if stop_after_batches is not None and batches >= stop_after_batches:
                    raise InterruptedError(f"stopped after {batches} batch(es), as asked")
                done, cursor = self._rewrap_batch(new.id, cursor, batch)
                batches += 1
                rewrapped += done
                if progress is not None and done:
                    progress(rewrapped)
            retired = self._retire_old_keks(new.id, now)
            if retired is not None:
                break
        with self._ring_lock:
            ring = self._key_file.load()
            with self.db.read() as conn:
                gone = set(
                    conn.execute(
                        select(region_keks.c.kek_id).where(region_keks.c.retired_at.is_not(None))
                    ).scalars()
                )
            kept = ring.only(ring.ids - gone)
            if kept.ids != ring.ids:
                self._key_file.save(kept)
            self._ring = kept
        return RotationReport(
            region=self.region,
            new_kek=new.id,
            new_version=new.version,
            retired=sorted(retired),
            rewrapped=rewrapped,
            resumed=resumed,
            seconds=time.perf_counter() - started,
        )

    def _rewrap_batch(self, kid: str, cursor: str, batch: int) -> tuple[int, str | None]:
        """Re-wrap up to ``batch`` data keys after ``cursor`` (by user id) under KEK ``kid``."""
        with self.db.write(durable=True) as conn:
            rows = conn.execute(
                select(user_keys.c.user_id, user_keys.c.kek_id, user_keys.c.wrapped_dek)
                .where(user_keys.c.user_id > cursor)
                .order_by(user_keys.c.user_id)
                .limit(batch)
            ).all()
            if not rows:
                return 0, None
            ring = self._ring_with(kid)
            changes = [
                {
                    "u": row.user_id,
                    "old": bytes(row.wrapped_dek),
                    "k": kid,
                    "w": ring.wrap(
                        kid,
                        row.user_id,
                        self._ring_with(row.kek_id).unwrap(
                            row.kek_id, row.user_id, bytes(row.wrapped_dek)
                        ),
                    ),
                }
                for row in rows
                if row.kek_id != kid
            ]
            if changes:
                conn.execute(
                    user_keys.update()
                    .where(
                        user_keys.c.user_id == bindparam("u"),
                        user_keys.c.wrapped_dek == bindparam("old"),
                    )
                    .values(kek_id=bindparam("k"), wrapped_dek=bindparam("w")),
                    changes,
                )
        return len(changes), rows[-1].user_id if len(rows) == batch else None

    def _retire_old_keks(self, kid: str, now: float) -> list[str] | None:
        """Retire every KEK but ``kid`` if no data key is wrapped by one any more; else ``None``
        (a data key was written under an old KEK meanwhile: re-wrap again)."""
        try:
            with self.db.write(durable=True) as conn:
                # Lock the old versions' rows first: a writer that read one as active holds it.
                old = list(
                    conn.execute(
                        region_keks.update()
                        .where(region_keks.c.kek_id != kid, region_keks.c.retired_at.is_(None))
                        .values(retired_at=now)
                        .returning(region_keks.c.kek_id)
                    ).scalars()
                )
                left = conn.execute(
                    select(func.count()).select_from(user_keys).where(user_keys.c.kek_id != kid)
                ).scalar_one()
                if left:
                    raise _Retry
        except _Retry:
            return None
        return old

    def forget_keys(self) -> None:
        """Drop every unwrapped data key held in memory."""
        self._deks.clear()

    @property
    def cached_keys(self) -> int:
        return len(self._deks)

    # ---- Users ----------------------------------------------------------------------------------

    def upsert_users(self, batch: Sequence[User], now: float) -> UpsertResult:
        """Create or update users, all or none. A user being erased cannot be written until the
        erasure finishes (``Conflict``); afterwards the id is free to be created again."""
        latest = {u.user_id: u for u in batch}
        ids = sorted(latest)
        with self.db.write(durable=True) as conn:
            existing = self._lock_users(conn, ids, exclusive=True)
            erasing = self._being_erased(conn, sorted(existing))
            if erasing:
                raise Conflict(
                    f"user(s) {sorted(erasing)[:5]} are being erased; create them again once "
                    "their erasure has finished"
                )
            keys = self._write_keys(conn, ids, now)
            sealed = {
                u.user_id: keys[u.user_id].seal(
                    _dumps(u.attributes), _ad_attributes(self.region, u.user_id)
                )
                for u in latest.values()
            }
            new_rows = [
                {
                    "user_id": user_id,
                    "attributes": sealed[user_id],
                    "created_at": now,
                    "updated_at": now,
                }
                for user_id in ids
                if user_id not in existing
            ]
            created: set[str] = set()
            if new_rows:
                # Another process may create the same id meanwhile (PostgreSQL): the row it
                # wrote is then updated below instead of failing the batch.
                created = set(
                    conn.execute(
                        insert_ignore(self.db, users).returning(users.c.user_id), new_rows
                    ).scalars()
                )
            for user_id in ids:
                if user_id not in created:
                    conn.execute(
                        users.update()
                        .where(users.c.user_id == user_id)
                        .values(attributes=sealed[user_id], updated_at=now)
                    )
        return UpsertResult(created=len(created), updated=len(ids) - len(created))

    def _lock_users(
        self, conn: Connection, user_ids: Sequence[str], *, exclusive: bool
    ) -> set[str]:
        """Those of ``user_ids`` that have a ``users`` row, locked until the caller's write
        transaction ends (SQLite: the transaction holds the database's one write lock already;
        PostgreSQL: row locks, shared for writes about a user, exclusive to change the row)."""
        found: set[str] = set()
        for part in chunked(sorted(set(user_ids))):
            query = select(users.c.user_id).where(one_of(self.db, users.c.user_id, part))
            if self.db.dialect == "postgresql":
                query = query.order_by(users.c.user_id).with_for_update(read=not exclusive)
            found.update(conn.execute(query).scalars())
        return found

    def _being_erased(self, conn: Connection, user_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for part in chunked(list(user_ids)):
            found.update(
                conn.execute(
                    select(pending_erasures.c.user_id).where(
                        one_of(self.db, pending_erasures.c.user_id, part)
                    )
                ).scalars()
            )
        return found

    def _live_users(self, conn: Connection, user_ids: Iterable[str]) -> set[str]:
        """Those of ``user_ids`` that exist and are not being erased, as of the caller's write
        transaction and until it commits: what orders every write about a user against their
        erasure (a write that commits after ``begin_erasure`` is refused; one that committed
        before it is deleted with the rest).

        On PostgreSQL the users' rows are share-locked first: an erasure holding one (in
        ``begin_erasure``) makes this wait until it commits, and the pending check that follows
        is a new statement, so under READ COMMITTED it sees that commit.
        """
        present = self._lock_users(conn, list(user_ids), exclusive=False)
        return present - self._being_erased(conn, sorted(present)) if present else present

    def get_user(self, user_id: str) -> UserRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(users).where(users.c.user_id == user_id)).first()
            if row is None or self._being_erased(conn, [user_id]):
                return None
            attributes = self._attributes(conn, self._read_keys(conn, [user_id]), row)
        return UserRecord(
            user_id=row.user_id,
            region=self.region,
            attributes=attributes,
            created_at=row.created_at,
        )

    def _attributes(self, conn: Connection, keys: dict[str, DataKey], row: Any) -> Any:
        ad = _ad_attributes(self.region, row.user_id)
        return json.loads(
            self._open(conn, keys, row.user_id, row.attributes, ad, "the attributes of a user")
        )

    def has_users(self, user_ids: Sequence[str]) -> set[str]:
        """Those of ``user_ids`` that exist; a user being erased no longer does."""
        with self.db.read() as conn:
            present = self._existing(conn, users.c.user_id, list(user_ids))
            return present - self._being_erased(conn, sorted(present)) if present else present

    def user_ids(self) -> list[str]:
        """Every user id of the region (to check that nothing leaving it carries one)."""
        with self.db.read() as conn:
            return list(conn.execute(select(users.c.user_id)).scalars())

    def count_users(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(users)).scalar_one())

    # ---- EventLog -------------------------------------------------------------------------------

    def append(
        self, batch: Sequence[Event], items: Mapping[str, ItemRecord], now: float
    ) -> AppendResult:
        unique: dict[str, Event] = {}
        duplicates: list[str] = []
        conflicts: list[str] = []
        for ev in batch:
            first = unique.setdefault(ev.event_id, ev)
            if first is not ev:
                (duplicates if first == ev else conflicts).append(ev.event_id)
        if not unique:
            return AppendResult(accepted=[], duplicates=duplicates)
        written: list[dict[str, Any]] = []
        refused: list[str] = []
        with self.db.write(durable=True) as conn:
            stored = self._stored_events(conn, list(unique))
            fresh: list[Event] = []
            for ev in unique.values():
                before = stored.get(ev.event_id)
                if before is None:
                    fresh.append(ev)
                elif before == ev:
                    duplicates.append(ev.event_id)
                else:
                    conflicts.append(ev.event_id)
            live = self._live_users(conn, {ev.user_id for ev in fresh}) if fresh else set()
            refused = [ev.event_id for ev in fresh if ev.user_id not in live]
            fresh = [ev for ev in fresh if ev.user_id in live]
            if fresh:
                keys = self._write_keys(conn, [ev.user_id for ev in fresh], now)
                self.db.executemany(
                    conn,
                    _INSERT_EVENTS,
                    [
                        {
                            "event_id": ev.event_id,
                            "user_id": ev.user_id,
                            "ts": epoch(ev.ts),
                            "received_at": now,
                            "payload": self._seal_event(keys[ev.user_id], ev),
                        }
                        for ev in fresh
                    ],
                )
                written = self._apply(conn, fold(fresh, items, self.policy), now)
        self._cache_stats(written)
        return AppendResult(
            accepted=[ev.event_id for ev in fresh],
            duplicates=duplicates,
            conflicts=conflicts,
            unknown_users=refused,
        )

    def _stored_events(self, conn: Connection, event_ids: list[str]) -> dict[str, Event]:
        """Events already stored under these ids, decrypted, to tell a repeat from a conflict."""
        rows: list[Any] = []
        for part in chunked(event_ids):
            rows.extend(
                conn.execute(
                    select(*_EVENT_COLUMNS).where(one_of(self.db, events.c.event_id, part))
                ).all()
            )
        if not rows:
            return {}
        keys = self._read_keys(conn, {row.user_id for row in rows})
        return {
            record.event_id: Event(
                event_id=record.event_id,
                user_id=record.user_id,
                item_id=record.item_id,
                type=record.type,  # type: ignore[arg-type]
                ts=from_epoch(record.ts),
                watch_ms=record.watch_ms,
                request_id=record.request_id,
            )
            for record in self._events(conn, keys, rows)
        }

    def recent_for_user(self, user_id: str, limit: int) -> list[EventRecord]:
        """The user's latest events, newest first; none from before a reset of their interests."""
        with self.db.read() as conn:
            since = _reset_at(conn, user_id)
            rows = conn.execute(
                select(*_EVENT_COLUMNS)
                .where(events.c.user_id == user_id, events.c.ts > since)
                .order_by(events.c.ts.desc(), events.c.seq.desc())
                .limit(limit)
            ).all()
            keys = self._read_keys(conn, [user_id]) if rows else {}
            return self._events(conn, keys, rows)

    def scan(self, max_events: int, batch: int = 50_000) -> Iterator[list[EventRecord]]:
        last = self.last_seq()
        cursor = max(0, last - max_events)
        while cursor < last:
            with self.db.read() as conn:
                rows = conn.execute(
                    select(*_EVENT_COLUMNS)
                    .where(events.c.seq > cursor, events.c.seq <= last)
                    .order_by(events.c.seq)
                    .limit(batch)
                ).all()
                if not rows:
                    return
                # One key lookup per user of the batch; each row then decrypts with its user's key.
                keys = self._read_keys(conn, {row.user_id for row in rows})
                records = self._events(conn, keys, rows)
            cursor = rows[-1].seq
            yield records

    def last_seq(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.coalesce(func.max(events.c.seq), 0))).scalar_one())

    # ---- UserState ------------------------------------------------------------------------------

    def hydrate(self, user_id: str, now: float) -> UserStateSnapshot:
        half_life = self.policy.affinity_half_life_s
        creator_aff: dict[str, float] = {}
        tag_aff: dict[str, float] = {}
        with self.db.read() as conn:
            followed = frozenset(
                conn.execute(
                    select(follows.c.creator_id).where(follows.c.user_id == user_id)
                ).scalars()
            )
            hidden = frozenset(
                conn.execute(
                    select(hidden_items.c.item_id).where(hidden_items.c.user_id == user_id)
                ).scalars()
            )
            muted = frozenset(
                conn.execute(
                    select(muted_creators.c.creator_id).where(
                        muted_creators.c.user_id == user_id, muted_creators.c.until > now
                    )
                ).scalars()
            )
            for key, weight, updated_at in conn.execute(
                select(affinity.c.key, affinity.c.weight, affinity.c.updated_at).where(
                    affinity.c.user_id == user_id
                )
            ):
                value = weight * decay_factor(now - updated_at, half_life)
                if key.startswith("c:"):
                    creator_aff[key[2:]] = value
                else:
                    tag_aff[key[2:]] = value
            controls = self._controls(conn, user_id)
            since = controls.interests_reset_at or float("-inf")
            recent = self._recent_positives(conn, user_id, since)
        return UserStateSnapshot(
            as_of=now,
            follows=followed,
            hidden_items=hidden,
            muted_creators=muted,
            creator_affinity=creator_aff,
            tag_affinity=tag_aff,
            recent_positives=recent,
            controls=controls,
        )

    def _recent_positives(self, conn: Connection, user_id: str, since: float) -> tuple[str, ...]:
        """Items of the user's newest positive events (types are sealed: read newest first)."""
        wanted = self.policy.recent_positives * 3
        found: list[str] = []
        keys: dict[str, DataKey] | None = None
        page, scanned = wanted, 0
        while len(found) < wanted and scanned < _RECENT_SCAN_MAX:
            rows = conn.execute(
                select(*_EVENT_COLUMNS)
                .where(events.c.user_id == user_id, events.c.ts > since)
                .order_by(events.c.ts.desc(), events.c.seq.desc())
                .limit(page)
                .offset(scanned)
            ).all()
            if keys is None and rows:
                keys = self._read_keys(conn, [user_id])
            for record in self._events(conn, keys or {}, rows):
                if record.type in POSITIVE_EVENT_TYPES:
                    found.append(record.item_id)
                    if len(found) == wanted:
                        break
            scanned += len(rows)
            if len(rows) < page:
                break
            page = min(page * 4, 1_000)
        return tuple(dict.fromkeys(found))[: self.policy.recent_positives]

    def seen_among(self, user_id: str, item_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self.db.read() as conn:
            for part in chunked(list(item_ids)):
                found.update(
                    conn.execute(
                        select(seen.c.item_id).where(
                            seen.c.user_id == user_id, one_of(self.db, seen.c.item_id, part)
                        )
                    ).scalars()
                )
        return found

    def record_served(
        self,
        user_id: str,
        request_id: str,
        model_version: str,
        served: Sequence[ServedItem],
        now: float,
    ) -> None:
        if not served:
            return
        with self.db.write() as conn:
            self._require_live(conn, user_id)
            key = self._write_keys(conn, [user_id], now)[user_id]
            conn.execute(
                feed_log.insert(),
                [
                    {
                        "request_id": request_id,
                        "position": s.position,
                        "user_id": user_id,
                        "item_id": s.item_id,
                        "score": s.score,
                        "model_version": model_version,
                        "reasons": key.seal(
                            json.dumps(s.reasons).encode(),
                            _ad_reasons(self.region, user_id, request_id, s.position),
                        ),
                        "ts": now,
                    }
                    for s in served
                ],
            )
            # Mark seen; RETURNING names the rows that were new, i.e. the items' new views.
            fresh = list(
                conn.execute(
                    insert_ignore(self.db, seen).returning(seen.c.item_id),
                    [{"user_id": user_id, "item_id": s.item_id, "ts": now} for s in served],
                ).scalars()
            )
            if fresh:
                views = insert_or_add(self.db, item_stats, ["item_id"], ["views"])
                conn.execute(views, [{"item_id": item_id, "views": 1} for item_id in fresh])
                totals = insert_or_add(self.db, stats_totals, ["id"], ["views"])
                conn.execute(totals, [{"id": 1, "views": len(fresh)}])
        self._count_views(fresh)

    def _count_views(self, item_ids: Sequence[str]) -> None:
        """Add one view to the cached stats of ``item_ids`` (committed already)."""
        with self._stats_lock:
            for item_id in item_ids:
                cached = self._stats_cache.get(item_id)
                if cached is not None:
                    record = cached[1]
                    views = replace(record, views=record.views + 1)
                    self._stats_cache[item_id] = (cached[0], views)

    # ---- UserRights -----------------------------------------------------------------------------

    def export_user(self, user_id: str) -> dict[str, Any] | None:
        """Every row held about the user, table by table, in one read snapshot."""
        tables = metadata.tables
        with self.db.read() as conn:
            profile = conn.execute(select(users).where(users.c.user_id == user_id)).first()
            if profile is None or self._being_erased(conn, [user_id]):
                return None
            keys = self._read_keys(conn, [user_id])
            out: dict[str, Any] = {}
            for name in PERSONAL_TABLES:
                table = tables[name]
                query = select(table).where(table.c.user_id == user_id)
                order = [c for c in ("seq", "ts", "request_id", "position") if c in table.c]
                query = query.order_by(*(table.c[c] for c in order))
                out[name] = [self._plain(conn, keys, name, row) for row in conn.execute(query)]
        return out

    def _plain(
        self, conn: Connection, keys: dict[str, DataKey], table: str, row: Any
    ) -> dict[str, Any]:
        """A row as JSON-ready data, decrypted: the shape it had before encryption at rest."""
        if table == "events":
            columns = (row.seq, row.event_id, row.user_id, row.ts, row.payload)
            record = self._event(conn, keys, columns)
            return {
                "seq": record.seq,
                "event_id": record.event_id,
                "user_id": record.user_id,
                "item_id": record.item_id,
                "type": record.type,
                "ts": record.ts,
                "watch_ms": record.watch_ms,
                "request_id": record.request_id,
                "received_at": row.received_at,
            }
        out = {str(k): v for k, v in row._mapping.items()}
        if table == "users":
            out["attributes"] = self._attributes(conn, keys, row)
        elif table == "feed_log":
            ad = _ad_reasons(self.region, row.user_id, row.request_id, row.position)
            out["reasons"] = json.loads(
                self._open(conn, keys, row.user_id, row.reasons, ad, "served reasons")
            )
        elif table == "user_controls":
            controls = self._controls(conn, row.user_id)
            out["keyword_filters"] = list(controls.keyword_filters)
            out["blocked_tags"] = list(controls.blocked_tags)
            out["personalized"] = bool(out["personalized"])
        return out

    # ---- erasure, in two transactions -----------------------------------------------------------

    def begin_erasure(
        self, user_id: str, now: float, claim: str | None = None
    ) -> PendingErasure | None:
        """Order the user's erasure (see :class:`fyp.storage.roles.UserRights`).

        The user's row is locked exclusively, so on PostgreSQL this waits for every write about
        them in flight (each holds a shared lock on it) and every later one waits for this commit
        and then sees the pending mark (``_live_users``). The counts are therefore final: no row
        about the user can be added before ``finish_erasure`` deletes them. ``claim`` takes the
        writing of the erasure's audit entry at once (see ``claim_erasure_audit``).
        """
        with self.db.write(durable=True) as conn:
            if not self._lock_users(conn, [user_id], exclusive=True):
                return None
            if self._being_erased(conn, [user_id]):
                return None
            tables = metadata.tables
            # One statement, one round trip: a count per table as a scalar subquery each.
            counts = conn.execute(
                select(
                    *(
                        select(func.count())
                        .select_from(tables[name])
                        .where(tables[name].c.user_id == user_id)
                        .scalar_subquery()
                        .label(name)
                        for name in ERASED_TABLES
                    )
                )
            ).one()
            rows = {name: int(value) for name, value in zip(ERASED_TABLES, counts, strict=True)}
            pending = PendingErasure(uuid.uuid4().hex, user_id, now, rows)
            conn.execute(
                pending_erasures.insert(),
                [
                    {
                        "user_id": user_id,
                        "erasure_id": pending.erasure_id,
                        "requested_at": now,
                        "rows": json.dumps(rows),
                        "audit_claim": claim,
                        "claimed_at": now if claim is not None else None,
                    }
                ],
            )
        return pending

    def claim_erasure_audit(self, erasure_id: str, token: str, now: float, stale_s: float) -> bool:
        with self.db.write() as conn:
            claimed = conn.execute(
                pending_erasures.update()
                .where(
                    pending_erasures.c.erasure_id == erasure_id,
                    (pending_erasures.c.audit_claim.is_(None))
                    | (pending_erasures.c.audit_claim == token)
                    | (pending_erasures.c.claimed_at < now - stale_s),
                )
                .values(audit_claim=token, claimed_at=now)
            )
            return bool(claimed.rowcount)

    def pending_erasure(self, erasure_id: str) -> PendingErasure | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(pending_erasures).where(pending_erasures.c.erasure_id == erasure_id)
            ).first()
        return None if row is None else _pending(row)

    def pending_erasures(self) -> list[PendingErasure]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(pending_erasures).order_by(pending_erasures.c.requested_at)
            ).all()
        return [_pending(row) for row in rows]

    def oldest_pending_erasure(self) -> float | None:
        """When the oldest unfinished erasure was ordered (``None``: there is none). A time, no
        id: the gate lets a process ask this without opening the region."""
        with self.db.read() as conn:
            value = conn.execute(select(func.min(pending_erasures.c.requested_at))).scalar()
        return None if value is None else float(value)

    def finish_erasure(self, erasure_id: str) -> dict[str, int] | None:
        """Delete the user's data key first, then every row about them, then the pending mark,
        in one durable transaction."""
        tables = metadata.tables
        counts: dict[str, int] = {}
        with self.db.write(durable=True) as conn:
            user_id = conn.execute(
                select(pending_erasures.c.user_id).where(
                    pending_erasures.c.erasure_id == erasure_id
                )
            ).scalar()
            if user_id is None:
                return None
            for name in ERASED_TABLES:
                table = tables[name]
                result = conn.execute(table.delete().where(table.c.user_id == user_id))
                counts[name] = int(result.rowcount or 0)
            conn.execute(
                pending_erasures.delete().where(pending_erasures.c.erasure_id == erasure_id)
            )
        self._deks.evict([user_id])
        return counts

    def erase_user(self, user_id: str) -> dict[str, int]:
        pending = self.begin_erasure(user_id, time.time())
        if pending is None:
            return dict.fromkeys(ERASED_TABLES, 0)
        return self.finish_erasure(pending.erasure_id) or dict.fromkeys(ERASED_TABLES, 0)

    def _require_live(self, conn: Connection, user_id: str) -> None:
        """Refuse a write about a user who does not exist or is being erased (inside the write
        transaction, so it is ordered against the erasure; see ``_live_users``)."""
        if not self._live_users(conn, [user_id]):
            raise NotFound(f"no user {user_id!r} in region {self.region!r}")

    def controls(self, user_id: str) -> UserControls:
        with self.db.read() as conn:
            return self._controls(conn, user_id)

    def put_controls(self, user_id: str, controls: UserControls, now: float) -> UserControls:
        """Store the user's controls (their interest reset instant is kept as it was)."""
        with self.db.write(durable=True) as conn:
            self._require_live(conn, user_id)
            previous = self._controls(conn, user_id)
            stored = replace(controls, interests_reset_at=previous.interests_reset_at)
            self._write_controls(conn, user_id, stored, now)
        return stored

    def patch_controls(
        self,
        user_id: str,
        now: float,
        personalized: bool | None = None,
        keyword_filters: Sequence[str] | None = None,
        blocked_tags: Sequence[str] | None = None,
    ) -> UserControls:
        """Change only the controls given (``None`` keeps the stored value). The user's row is
        locked exclusively for the read and the write, so concurrent patches (in any process)
        apply one after the other instead of undoing each other."""
        with self.db.write() as conn:
            if not self._lock_users(conn, [user_id], exclusive=True) or self._being_erased(
                conn, [user_id]
            ):
                raise NotFound(f"no user {user_id!r} in region {self.region!r}")
            stored = self._controls(conn, user_id)
            merged = replace(
                stored,
                personalized=stored.personalized if personalized is None else personalized,
                keyword_filters=(
                    stored.keyword_filters if keyword_filters is None else tuple(keyword_filters)
                ),
                blocked_tags=stored.blocked_tags if blocked_tags is None else tuple(blocked_tags),
            )
            self._write_controls(conn, user_id, merged, now)
        return merged

    def interests(self, user_id: str, now: float) -> list[Interest]:
        state = self.hydrate(user_id, now)
        found = [Interest("tag", k, w) for k, w in state.tag_affinity.items()]
        found += [Interest("creator", k, w) for k, w in state.creator_affinity.items()]
        return sorted(found, key=lambda i: (-i.weight, i.kind, i.key))

    def reset_interests(self, user_id: str, now: float, tag: str | None = None) -> int:
        """Forget one inferred interest tag, or all of them (and what recent events implied)."""
        with self.db.write(durable=True) as conn:
            self._require_live(conn, user_id)
            if tag is not None:
                query = affinity.delete().where(
                    affinity.c.user_id == user_id, affinity.c.key == f"t:{tag}"
                )
                return int(conn.execute(query).rowcount or 0)
            removed = int(
                conn.execute(affinity.delete().where(affinity.c.user_id == user_id)).rowcount or 0
            )
            current = self._controls(conn, user_id)
            self._write_controls(conn, user_id, replace(current, interests_reset_at=now), now)
            return removed

    def _write_controls(
        self, conn: Connection, user_id: str, controls: UserControls, now: float
    ) -> None:
        stmt = upsert(
            self.db,
            user_controls,
            ["user_id"],
            ["personalized", "keyword_filters", "blocked_tags", "interests_reset_at", "updated_at"],
        )
        key = self._write_keys(conn, [user_id], now)[user_id]
        conn.execute(
            stmt,
            [
                {
                    "user_id": user_id,
                    "personalized": controls.personalized,
                    "keyword_filters": key.seal(
                        json.dumps(list(controls.keyword_filters)).encode(),
                        _ad_control(self.region, user_id, "keyword_filters"),
                    ),
                    "blocked_tags": key.seal(
                        json.dumps(list(controls.blocked_tags)).encode(),
                        _ad_control(self.region, user_id, "blocked_tags"),
                    ),
                    "interests_reset_at": controls.interests_reset_at,
                    "updated_at": now,
                }
            ],
        )

    # ---- ItemStats ------------------------------------------------------------------------------

    def stats(self, item_ids: Sequence[str]) -> dict[str, ItemStatsRecord]:
        """Stats of the given items that have any; at most ``stats_ttl_s`` old."""
        found: dict[str, ItemStatsRecord] = {}
        missing: list[str] = []
        now = time.monotonic()
        with self._stats_lock:
            for item_id in item_ids:
                cached = self._stats_cache.get(item_id)
                if cached is not None and cached[0] > now:
                    if cached[1] is not _NO_STATS:
                        found[item_id] = cached[1]
                else:
                    missing.append(item_id)
        if not missing:
            return found
        loaded: dict[str, ItemStatsRecord] = {}
        columns = [item_stats.c.item_id, *(item_stats.c[n] for n in _COUNTERS)]
        with self.db.read() as conn:
            for part in chunked(list(dict.fromkeys(missing))):
                query = select(*columns, item_stats.c.watch_ratio_sum).where(
                    one_of(self.db, item_stats.c.item_id, part)
                )
                for row in conn.execute(query):
                    loaded[row[0]] = _stats_record(row[1:])
        found.update(loaded)
        expiry = now + self._stats_ttl
        with self._stats_lock:
            if len(self._stats_cache) > _STATS_CACHE_MAX:
                self._stats_cache.clear()
            for item_id in missing:
                self._stats_cache[item_id] = (expiry, loaded.get(item_id, _NO_STATS))
        return found

    def _cache_stats(self, rows: list[dict[str, Any]]) -> None:
        expiry = time.monotonic() + self._stats_ttl
        with self._stats_lock:
            for row in rows:
                values = [row[n] for n in _STATS_FIELDS]
                self._stats_cache[row["item_id"]] = (expiry, _stats_record(values))

    def trending(self, limit: int) -> list[tuple[str, float]]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(item_stats.c.item_id, item_stats.c.trend_log)
                .where(item_stats.c.trend_log.is_not(None))
                .order_by(item_stats.c.trend_log.desc())
                .limit(limit)
            )
            return [(row.item_id, float(row.trend_log)) for row in rows]

    def totals(self) -> ItemStatsRecord:
        columns = [stats_totals.c[name] for name in _STATS_FIELDS]
        with self.db.read() as conn:
            row = conn.execute(select(*columns).where(stats_totals.c.id == 1)).first()
        return _NO_STATS if row is None else _stats_record(row)

    def close(self) -> None:
        self.db.close()

    # ---- internals ------------------------------------------------------------------------------

    @staticmethod
    def _existing(conn: Connection, column: Any, values: list[str]) -> set[str]:
        found: set[str] = set()
        for part in chunked(values):
            found.update(conn.execute(select(column).where(column.in_(part))).scalars())
        return found

    def _apply(self, conn: Connection, changes: Folded, now: float) -> list[dict[str, Any]]:
        """Write one batch of folded changes (inside the caller's transaction).

        Returns the item stats rows as written, for the caller to cache once committed.
        """
        stats = changes.stats
        if changes.touched:
            pairs = sorted(changes.touched)
            already = {
                (u, i)
                for u, i, _ in _pairs_present(self.db, conn, seen.c.user_id, seen.c.item_id, pairs)
            }
            new_pairs = [p for p in pairs if p not in already]
            if new_pairs:
                self.db.executemany(
                    conn,
                    _INSERT_SEEN,
                    [{"user_id": u, "item_id": i, "ts": now} for u, i in new_pairs],
                )
                for _, item_id in new_pairs:
                    stats.setdefault(item_id, StatsDelta()).views += 1
        if changes.affinity:
            self._apply_affinity(conn, changes.affinity)
        if changes.follows:
            conn.execute(
                insert_ignore(self.db, follows),
                [
                    {"user_id": u, "creator_id": c, "ts": ts}
                    for (u, c), ts in changes.follows.items()
                ],
            )
        if changes.hidden:
            conn.execute(
                insert_ignore(self.db, hidden_items),
                [{"user_id": u, "item_id": i, "ts": ts} for (u, i), ts in changes.hidden.items()],
            )
        if changes.mutes:
            self._apply_mutes(conn, changes.mutes)
        return self._apply_stats(conn, stats) if stats else []

    def _apply_affinity(
        self, conn: Connection, deltas: list[tuple[str, str, float, float]]
    ) -> None:
        half_life = self.policy.affinity_half_life_s
        keys = sorted({(u, k) for u, k, _, _ in deltas})
        current: dict[tuple[str, str], tuple[float, float]] = {
            (u, k): (weight, updated_at)
            for u, k, (weight, updated_at) in _pairs_present(
                self.db,
                conn,
                affinity.c.user_id,
                affinity.c.key,
                keys,
                affinity.c.weight,
                affinity.c.updated_at,
            )
        }
        for user_id, key, delta, ts in sorted(deltas, key=lambda d: d[3]):
            value, value_ts = current.get((user_id, key), (0.0, ts))
            current[(user_id, key)] = combine_decayed(value, value_ts, delta, ts, half_life)
        rows = [
            {"user_id": u, "key": k, "weight": current[(u, k)][0], "updated_at": current[(u, k)][1]}
            for u, k in keys
        ]
        stmt = upsert(self.db, affinity, ["user_id", "key"], ["weight", "updated_at"])
        self.db.executemany(conn, stmt, rows)

    def _apply_mutes(self, conn: Connection, mutes: Mapping[tuple[str, str], float]) -> None:
        keys = sorted(mutes)
        until = dict(mutes)
        for u, c, (stored,) in _pairs_present(
            self.db,
            conn,
            muted_creators.c.user_id,
            muted_creators.c.creator_id,
            keys,
            muted_creators.c.until,
        ):
            until[(u, c)] = max(until[(u, c)], stored)
        conn.execute(
            upsert(self.db, muted_creators, ["user_id", "creator_id"], ["until"]),
            [{"user_id": u, "creator_id": c, "until": t} for (u, c), t in until.items()],
        )

    def _apply_stats(
        self, conn: Connection, deltas: Mapping[str, StatsDelta]
    ) -> list[dict[str, Any]]:
        ids = sorted(deltas)
        current: dict[str, dict[str, Any]] = defaultdict(
            lambda: {**dict.fromkeys(_COUNTERS, 0), "watch_ratio_sum": 0.0, "trend_log": None}
        )
        for part in chunked(ids):
            for stored in conn.execute(select(item_stats).where(item_stats.c.item_id.in_(part))):
                current[stored.item_id] = dict(stored._mapping)
        rows: list[dict[str, Any]] = []
        for item_id in ids:
            delta = deltas[item_id]
            row = current[item_id]
            row["item_id"] = item_id
            for name in _COUNTERS:
                row[name] = int(row[name]) + getattr(delta, name)
            row["watch_ratio_sum"] = float(row["watch_ratio_sum"]) + delta.watch_ratio_sum
            old = row["trend_log"] if row["trend_log"] is not None else -math.inf
            combined = logaddexp(old, delta.trend_log)
            row["trend_log"] = None if combined == -math.inf else combined
            rows.append(row)
        update_cols = [*_COUNTERS, "watch_ratio_sum", "trend_log"]
        self.db.executemany(conn, upsert(self.db, item_stats, ["item_id"], update_cols), rows)
        sums: dict[str, Any] = {"id": 1}
        for name in _STATS_FIELDS:
            sums[name] = sum(getattr(delta, name) for delta in deltas.values())
        stmt = insert_or_add(self.db, stats_totals, ["id"], list(_STATS_FIELDS))
        conn.execute(stmt, [sums])
        return rows

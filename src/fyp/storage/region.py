"""One region's personal data over SQL: users, events, online state and item stats.

A :class:`SqlRegionStore` implements the regional data roles (``Users``, ``EventLog``,
``UserState``, ``ItemStats``) over one database, because an event must change the log, the viewer's
state and the item stats in a single transaction. Nothing outside ``fyp.storage`` and
``fyp.governance`` constructs one: the rest of fyp reaches it through a gate handle.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    func,
    select,
)

from fyp.signals import (
    Folded,
    FoldPolicy,
    StatsDelta,
    combine_decayed,
    decay_factor,
    fold,
    logaddexp,
)
from fyp.storage.roles import (
    AppendResult,
    EventRecord,
    Interest,
    ItemRecord,
    ItemStatsRecord,
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
from fyp.types import POSITIVE_EVENT_TYPES, Event, User, epoch

REGION_SCHEMA_VERSION: Final = 2
"""2: ``user_controls`` (users' own settings: personalization, filters, interest resets)."""
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
    Column("attributes", Text, nullable=False),
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
    Column("item_id", String(128), nullable=False),
    Column("type", String(16), nullable=False),
    Column("ts", Float, nullable=False),
    Column("watch_ms", BigInteger),
    Column("request_id", String(128)),
    Column("received_at", Float, nullable=False),
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
    Column("reasons", Text, nullable=False),
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
    Column("keyword_filters", Text, nullable=False),
    Column("blocked_tags", Text, nullable=False),
    Column("interests_reset_at", Float),
    Column("updated_at", Float, nullable=False),
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
    db.executemany(conn, _pairs.insert(), [{"a": a, "b": b} for a, b in wanted])
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


def _controls(conn: Connection, user_id: str) -> UserControls:
    row = conn.execute(select(user_controls).where(user_controls.c.user_id == user_id)).first()
    if row is None:
        return UserControls()
    return UserControls(
        personalized=bool(row.personalized),
        keyword_filters=tuple(json.loads(row.keyword_filters)),
        blocked_tags=tuple(json.loads(row.blocked_tags)),
        interests_reset_at=row.interests_reset_at,
    )


def _reset_at(conn: Connection, user_id: str) -> float:
    value = conn.execute(
        select(user_controls.c.interests_reset_at).where(user_controls.c.user_id == user_id)
    ).scalar()
    return float("-inf") if value is None else float(value)


def _plain(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row as JSON-ready data: JSON text columns decoded, booleans as booleans."""
    out = {str(k): v for k, v in row.items()}
    for key in ("attributes", "reasons", "keyword_filters", "blocked_tags"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    if "personalized" in out:
        out["personalized"] = bool(out["personalized"])
    return out


def _event_record(row: Any) -> EventRecord:
    return EventRecord(
        seq=row.seq,
        event_id=row.event_id,
        user_id=row.user_id,
        item_id=row.item_id,
        type=row.type,
        ts=row.ts,
        watch_ms=row.watch_ms,
        request_id=row.request_id,
    )


class SqlRegionStore:
    """All regional roles over one SQL database (see the module docstring)."""

    def __init__(
        self, url: str, region: str, policy: FoldPolicy, stats_ttl_s: float = STATS_CACHE_TTL_S
    ) -> None:
        self.region = region
        self.policy = policy
        self.db = Database(url, metadata, kind="region", version=REGION_SCHEMA_VERSION)
        # Item stats are read for hundreds of candidates per feed and tolerate a few seconds of
        # staleness, so they are cached; this process's own writes update the cache on commit.
        self._stats_ttl = stats_ttl_s
        self._stats_cache: dict[str, tuple[float, ItemStatsRecord]] = {}
        self._stats_lock = threading.Lock()

    # ---- Users ----------------------------------------------------------------------------------

    def upsert_users(self, batch: Sequence[User], now: float) -> UpsertResult:
        latest = {u.user_id: u for u in batch}
        ids = list(latest)
        with self.db.write() as conn:
            existing = self._existing(conn, users.c.user_id, ids)
            new_rows = [
                {
                    "user_id": u.user_id,
                    "attributes": json.dumps(u.attributes, sort_keys=True),
                    "created_at": now,
                    "updated_at": now,
                }
                for u in latest.values()
                if u.user_id not in existing
            ]
            if new_rows:
                conn.execute(users.insert(), new_rows)
            for u in latest.values():
                if u.user_id in existing:
                    conn.execute(
                        users.update()
                        .where(users.c.user_id == u.user_id)
                        .values(attributes=json.dumps(u.attributes, sort_keys=True), updated_at=now)
                    )
        return UpsertResult(created=len(new_rows), updated=len(existing))

    def get_user(self, user_id: str) -> UserRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(users).where(users.c.user_id == user_id)).first()
        if row is None:
            return None
        return UserRecord(
            user_id=row.user_id,
            region=self.region,
            attributes=json.loads(row.attributes),
            created_at=row.created_at,
        )

    def has_users(self, user_ids: Sequence[str]) -> set[str]:
        with self.db.read() as conn:
            return self._existing(conn, users.c.user_id, list(user_ids))

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
        for ev in batch:
            if ev.event_id in unique:
                duplicates.append(ev.event_id)
            else:
                unique[ev.event_id] = ev
        if not unique:
            return AppendResult(accepted=[], duplicates=duplicates)
        written: list[dict[str, Any]] = []
        with self.db.write(durable=True) as conn:
            stored = self._existing(conn, events.c.event_id, list(unique))
            fresh = [ev for ev in unique.values() if ev.event_id not in stored]
            duplicates.extend(ev.event_id for ev in unique.values() if ev.event_id in stored)
            if fresh:
                self.db.executemany(
                    conn,
                    events.insert(),
                    [
                        {
                            "event_id": ev.event_id,
                            "user_id": ev.user_id,
                            "item_id": ev.item_id,
                            "type": ev.type,
                            "ts": epoch(ev.ts),
                            "watch_ms": ev.watch_ms,
                            "request_id": ev.request_id,
                            "received_at": now,
                        }
                        for ev in fresh
                    ],
                )
                written = self._apply(conn, fold(fresh, items, self.policy), now)
        self._cache_stats(written)
        return AppendResult(accepted=[ev.event_id for ev in fresh], duplicates=duplicates)

    def recent_for_user(self, user_id: str, limit: int) -> list[EventRecord]:
        """The user's latest events, newest first; none from before a reset of their interests."""
        with self.db.read() as conn:
            since = _reset_at(conn, user_id)
            rows = conn.execute(
                select(events)
                .where(events.c.user_id == user_id, events.c.ts > since)
                .order_by(events.c.ts.desc(), events.c.seq.desc())
                .limit(limit)
            )
            return [_event_record(row) for row in rows]

    def scan(self, max_events: int, batch: int = 50_000) -> Iterator[list[EventRecord]]:
        last = self.last_seq()
        cursor = max(0, last - max_events)
        while cursor < last:
            with self.db.read() as conn:
                rows = conn.execute(
                    select(events)
                    .where(events.c.seq > cursor, events.c.seq <= last)
                    .order_by(events.c.seq)
                    .limit(batch)
                ).all()
            if not rows:
                return
            cursor = rows[-1].seq
            yield [_event_record(row) for row in rows]

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
            controls = _controls(conn, user_id)
            since = controls.interests_reset_at or float("-inf")
            recent_rows = conn.execute(
                select(events.c.item_id)
                .where(
                    events.c.user_id == user_id,
                    events.c.type.in_(sorted(POSITIVE_EVENT_TYPES)),
                    events.c.ts > since,
                )
                .order_by(events.c.ts.desc(), events.c.seq.desc())
                .limit(self.policy.recent_positives * 3)
            ).scalars()
            recent = tuple(dict.fromkeys(recent_rows))[: self.policy.recent_positives]
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
                        "reasons": json.dumps(s.reasons),
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
            if profile is None:
                return None
            out: dict[str, Any] = {}
            for name in PERSONAL_TABLES:
                table = tables[name]
                query = select(table).where(table.c.user_id == user_id)
                order = [c for c in ("seq", "ts", "request_id", "position") if c in table.c]
                query = query.order_by(*(table.c[c] for c in order))
                out[name] = [_plain(row._mapping) for row in conn.execute(query)]
        return out

    def erase_user(self, user_id: str) -> dict[str, int]:
        tables = metadata.tables
        counts: dict[str, int] = {}
        with self.db.write(durable=True) as conn:
            for name in PERSONAL_TABLES:
                table = tables[name]
                result = conn.execute(table.delete().where(table.c.user_id == user_id))
                counts[name] = int(result.rowcount or 0)
        return counts

    def controls(self, user_id: str) -> UserControls:
        with self.db.read() as conn:
            return _controls(conn, user_id)

    def put_controls(self, user_id: str, controls: UserControls, now: float) -> UserControls:
        """Store the user's controls (their interest reset instant is kept as it was)."""
        with self.db.write() as conn:
            previous = _controls(conn, user_id)
            stored = replace(controls, interests_reset_at=previous.interests_reset_at)
            self._write_controls(conn, user_id, stored, now)
        return stored

    def interests(self, user_id: str, now: float) -> list[Interest]:
        state = self.hydrate(user_id, now)
        found = [Interest("tag", k, w) for k, w in state.tag_affinity.items()]
        found += [Interest("creator", k, w) for k, w in state.creator_affinity.items()]
        return sorted(found, key=lambda i: (-i.weight, i.kind, i.key))

    def reset_interests(self, user_id: str, now: float, tag: str | None = None) -> int:
        """Forget one inferred interest tag, or all of them (and what recent events implied)."""
        with self.db.write() as conn:
            if tag is not None:
                query = affinity.delete().where(
                    affinity.c.user_id == user_id, affinity.c.key == f"t:{tag}"
                )
                return int(conn.execute(query).rowcount or 0)
            removed = int(
                conn.execute(affinity.delete().where(affinity.c.user_id == user_id)).rowcount or 0
            )
            current = _controls(conn, user_id)
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
        conn.execute(
            stmt,
            [
                {
                    "user_id": user_id,
                    "personalized": controls.personalized,
                    "keyword_filters": json.dumps(list(controls.keyword_filters)),
                    "blocked_tags": json.dumps(list(controls.blocked_tags)),
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
                    seen.insert(),
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

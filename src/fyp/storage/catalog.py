"""The global item catalog over SQL (SQLite by default, PostgreSQL by URL).

Items are non-personal, so the catalog is the one store outside the governance gate. A bounded
in-process cache keeps hot item records (the feed hydrates a few hundred per request); upserts
invalidate it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    func,
    select,
)

from fyp.storage.roles import CatalogPage, CatalogPosition, ItemRecord, UpsertResult
from fyp.storage.sql import Database, chunked, meta_table, one_of, upsert
from fyp.types import Item, epoch

CATALOG_SCHEMA_VERSION: Final = 1
NEWEST_CACHE_TTL_S: Final = 10.0
NEWEST_CACHE_MAX = 200_000
"""Creators and tags whose newest items are cached at most (all dropped when it is exceeded;
they are refilled by the next requests, and each entry expires after the TTL anyway)."""

metadata = MetaData()
meta_table(metadata)

items = Table(
    "items",
    metadata,
    Column("item_id", String(128), primary_key=True),
    Column("creator_id", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("caption", Text, nullable=False),
    Column("tags", Text, nullable=False),
    Column("language", String(40)),
    Column("regions", Text, nullable=False),
    Column("vector", LargeBinary),
    Column("updated_at", Float, nullable=False),
    Index("ix_items_created_at", "created_at"),
    Index("ix_items_creator_created", "creator_id", "created_at"),
)

# Every upsert appends the item ids it touched, in commit order: how other processes sharing the
# catalog find out what changed, exactly and without trusting anyone's clock.
item_changes = Table(
    "item_changes",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("item_id", String(128), nullable=False),
)
_INSERT_CHANGE: Final = item_changes.insert()
"""Built once, so ``Database.executemany`` compiles it once."""

item_tags = Table(
    "item_tags",
    metadata,
    Column("tag", String(64), nullable=False),
    Column("item_id", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("tag", "item_id"),
    Index("ix_item_tags_tag_created", "tag", "created_at"),
    Index("ix_item_tags_item", "item_id"),
    sqlite_with_rowid=False,
)

_ITEM_COLUMNS = (
    items.c.item_id,
    items.c.creator_id,
    items.c.created_at,
    items.c.duration_s,
    items.c.caption,
    items.c.tags,
    items.c.language,
    items.c.regions,
)


_NO_REGIONS: tuple[str, ...] = ()


def _record(row: Any) -> ItemRecord:
    # Creators, tags, languages and regions repeat across many items: interning them lets a
    # catalog-sized cache share one copy of each string.
    intern = sys.intern
    regions = row.regions
    return ItemRecord(
        item_id=row.item_id,
        creator_id=intern(row.creator_id),
        created_at=row.created_at,
        duration_s=row.duration_s,
        caption=row.caption,
        tags=tuple(intern(t) for t in json.loads(row.tags)),
        language=intern(row.language) if row.language else None,
        regions=_NO_REGIONS if regions == "[]" else tuple(intern(r) for r in json.loads(regions)),
    )


class SqlCatalog:
    """:class:`fyp.storage.roles.Catalog` over SQL."""

    def __init__(self, url: str, cache_size: int = 2_000_000) -> None:
        self.db = Database(url, metadata, kind="catalog", version=CATALOG_SCHEMA_VERSION)
        self._cache: OrderedDict[str, ItemRecord] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._count: int | None = None
        self._newest_cache: dict[tuple[str, str], tuple[float, int, list[str]]] = {}
        with self.db.read() as conn:
            newest = conn.execute(select(func.max(item_changes.c.seq))).scalar_one_or_none()
        self._synced_seq = int(newest or 0)

    def upsert_items(self, batch: Sequence[Item]) -> UpsertResult:
        if not batch:
            return UpsertResult(0, 0)
        latest = {item.item_id: item for item in batch}  # last write in a batch wins
        ids = list(latest)
        now = time.time()
        with self.db.write(durable=True) as conn:
            # What the items were before: their old creator and tags lose them from the cache too,
            # and an update that does not say when the item was published keeps the stored time.
            previous: dict[str, tuple[str, list[str], float]] = {}
            for part in chunked(ids):
                query = select(
                    items.c.item_id, items.c.creator_id, items.c.tags, items.c.created_at
                ).where(items.c.item_id.in_(part))
                for item_id, creator_id, tags, created_at in conn.execute(query):
                    previous[item_id] = (creator_id, json.loads(tags), created_at)
            published = {
                it.item_id: previous[it.item_id][2]
                if "created_at" not in it.model_fields_set and it.item_id in previous
                else epoch(it.created_at)
                for it in latest.values()
            }
            rows = [
                {
                    "item_id": it.item_id,
                    "creator_id": it.creator_id,
                    "created_at": published[it.item_id],
                    "duration_s": it.duration_s,
                    "caption": it.caption,
                    "tags": json.dumps(list(dict.fromkeys(it.tags))),
                    "language": it.language,
                    "regions": json.dumps(sorted(set(it.regions))),
                    "vector": None
                    if it.vector is None
                    else np.asarray(it.vector, dtype=np.float32).tobytes(),
                    "updated_at": now,
                }
                for it in latest.values()
            ]
            tag_rows = [
                {"tag": tag, "item_id": it.item_id, "created_at": published[it.item_id]}
                for it in latest.values()
                for tag in dict.fromkeys(it.tags)
            ]
            stmt = upsert(
                self.db,
                items,
                ["item_id"],
                [c.name for c in items.columns if c.name != "item_id"],
            )
            conn.execute(stmt, rows)
            for part in chunked(ids):
                conn.execute(delete(item_tags).where(item_tags.c.item_id.in_(part)))
            if tag_rows:
                conn.execute(item_tags.insert(), tag_rows)
            self.db.executemany(conn, _INSERT_CHANGE, [{"item_id": item_id} for item_id in ids])
        with self._cache_lock:
            for item_id in ids:
                self._cache.pop(item_id, None)
            stale_keys = {("creator", it.creator_id) for it in latest.values()}
            stale_keys.update(("tag", tag) for it in latest.values() for tag in it.tags)
            for creator_id, tags, _ in previous.values():
                stale_keys.add(("creator", creator_id))
                stale_keys.update(("tag", tag) for tag in tags)
            for key in stale_keys:
                self._newest_cache.pop(key, None)
            self._count = None
        return UpsertResult(created=len(ids) - len(previous), updated=len(previous))

    def get_items(self, item_ids: Sequence[str]) -> dict[str, ItemRecord]:
        found: dict[str, ItemRecord] = {}
        missing: list[str] = []
        with self._cache_lock:
            for item_id in item_ids:
                record = self._cache.get(item_id)
                if record is None:
                    missing.append(item_id)
                else:
                    found[item_id] = record
        if missing:
            loaded: list[ItemRecord] = []
            with self.db.read() as conn:
                for part in chunked(list(dict.fromkeys(missing))):
                    query = select(*_ITEM_COLUMNS).where(one_of(self.db, items.c.item_id, part))
                    rows = conn.execute(query)
                    loaded.extend(_record(row) for row in rows)
            with self._cache_lock:
                for record in loaded:
                    found[record.item_id] = record
                    self._cache[record.item_id] = record
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return found

    def refresh_changed(self) -> int:
        """Pick up items another process (a second server worker, an import) changed.

        Cached records of changed items are replaced and the cached newest-lists of their old and
        new creators and tags dropped. Returns how many changed items were read.
        """
        with self.db.read() as conn:
            changes = conn.execute(
                select(item_changes.c.seq, item_changes.c.item_id)
                .where(item_changes.c.seq > self._synced_seq)
                .order_by(item_changes.c.seq)
            ).all()
            if not changes:
                return 0
            changed = list(dict.fromkeys(row.item_id for row in changes))
            records: list[ItemRecord] = []
            for part in chunked(changed):
                query = select(*_ITEM_COLUMNS).where(items.c.item_id.in_(part))
                records.extend(_record(row) for row in conn.execute(query))
        with self._cache_lock:
            for record in records:
                old = self._cache.get(record.item_id)
                stale = [record] if old is None else [record, old]
                for r in stale:
                    self._newest_cache.pop(("creator", r.creator_id), None)
                    for tag in r.tags:
                        self._newest_cache.pop(("tag", tag), None)
                if old is not None:
                    self._cache[record.item_id] = record
            self._count = None
        self._synced_seq = int(changes[-1].seq)
        return len(records)

    def warm(self) -> int:
        """Load the newest items (up to the cache size) into memory; returns how many.

        A feed hydrates a few hundred random catalog items per request; with the catalog in
        memory that is a dictionary lookup instead of a query and a parse per item.
        """
        loaded = 0
        with self.db.read() as conn:
            query = select(*_ITEM_COLUMNS).order_by(items.c.created_at.desc())
            result = conn.execution_options(yield_per=20_000).execute(query.limit(self._cache_size))
            for partition in result.partitions():
                records = [_record(row) for row in partition]
                with self._cache_lock:
                    for record in records:
                        self._cache.setdefault(record.item_id, record)
                loaded += len(records)
        return loaded

    def get_item(self, item_id: str) -> ItemRecord | None:
        return self.get_items([item_id]).get(item_id)

    def get_vector(self, item_id: str) -> list[float] | None:
        with self.db.read() as conn:
            blob = conn.execute(
                select(items.c.vector).where(items.c.item_id == item_id)
            ).scalar_one_or_none()
        if blob is None:
            return None
        return [float(x) for x in np.frombuffer(blob, dtype=np.float32)]

    def recent_items(self, since: float, limit: int) -> list[ItemRecord]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(*_ITEM_COLUMNS)
                .where(items.c.created_at >= since)
                .order_by(items.c.created_at.desc())
                .limit(limit)
            )
            return [_record(row) for row in rows]

    def scan_newest(self, region: str, after: CatalogPosition | None, limit: int) -> CatalogPage:
        """A keyset step down ``ix_items_created_at``: the ``limit`` rows after ``after`` in
        ``(created_at, item_id)`` descending order. The item id breaks ties, so a walk neither
        skips nor repeats items published at the same instant, and each step reads about
        ``limit`` index entries however deep into the catalog it is (no ``OFFSET``). Only ids,
        times and regions are read; the records come through the item cache (warm in a server),
        so a walk over rows another request walked before parses nothing again."""
        if limit <= 0:
            return CatalogPage([], 0, after)
        query = select(items.c.item_id, items.c.created_at, items.c.regions)
        if after is not None:
            created_at, item_id = after
            # Spelled as a range on created_at (which the index serves on SQLite and PostgreSQL
            # alike) rather than as a row-value comparison, which PostgreSQL would only serve
            # with an index on both columns.
            query = query.where(
                items.c.created_at <= created_at,
                (items.c.created_at < created_at) | (items.c.item_id < item_id),
            )
        query = query.order_by(items.c.created_at.desc(), items.c.item_id.desc()).limit(limit)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        # Most items are available everywhere ("[]"): only the others' regions are parsed.
        available = [
            row.item_id for row in rows if row.regions == "[]" or region in json.loads(row.regions)
        ]
        records = self.get_items(available)
        end = (rows[-1].created_at, rows[-1].item_id) if len(rows) == limit else None
        return CatalogPage([records[i] for i in available if i in records], len(rows), end)

    def items_by_creators(self, creator_ids: Sequence[str], per_creator: int) -> list[ItemRecord]:
        """Each creator's newest items (other processes' upserts show within the cache TTL)."""
        newest = self._newest("creator", creator_ids, per_creator)
        ids = [item_id for creator in creator_ids for item_id in newest.get(creator, [])]
        records = self.get_items(ids)
        return [records[i] for i in ids if i in records]

    def items_by_tags(self, tags: Sequence[str], per_tag: int) -> dict[str, list[str]]:
        """Newest item ids per tag (other processes' upserts show within the cache TTL)."""
        return self._newest("tag", tags, per_tag)

    def _newest(self, kind: str, keys: Sequence[str], limit: int) -> dict[str, list[str]]:
        # The same short lists serve every viewer who follows a creator or likes a tag, so they
        # are cached briefly instead of being queried once per feed request.
        found: dict[str, list[str]] = {}
        now = time.monotonic()
        missing: list[str] = []
        with self._cache_lock:
            for key in keys:
                cached = self._newest_cache.get((kind, key))
                if cached is not None and cached[0] > now and cached[1] >= limit:
                    found[key] = cached[2][:limit]
                else:
                    missing.append(key)
        if not missing:
            return found
        with self.db.read() as conn:
            for key in missing:
                if kind == "tag":
                    query = (
                        select(item_tags.c.item_id)
                        .where(item_tags.c.tag == key)
                        .order_by(item_tags.c.created_at.desc())
                    )
                else:
                    query = (
                        select(items.c.item_id)
                        .where(items.c.creator_id == key)
                        .order_by(items.c.created_at.desc())
                    )
                found[key] = list(conn.execute(query.limit(limit)).scalars())
        with self._cache_lock:
            if len(self._newest_cache) > NEWEST_CACHE_MAX:
                self._newest_cache.clear()
            for key in missing:
                self._newest_cache[(kind, key)] = (now + NEWEST_CACHE_TTL_S, limit, found[key])
        return found

    def count_items(self) -> int:
        if self._count is None:
            with self.db.read() as conn:
                self._count = int(
                    conn.execute(select(func.count()).select_from(items)).scalar_one()
                )
        return self._count

    def close(self) -> None:
        self.db.close()

"""A region's audit log over SQL, in a database of its own.

Every gate decision is appended here. The log lives apart from the region's data so that the
append on every request never waits behind a feed's or an import's write transaction (SQLite has
one writer per database file). Entries are append-only; ``seq`` orders them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
)

from fyp.storage.roles import AuditRecord
from fyp.storage.sql import Database, meta_table

AUDIT_SCHEMA_VERSION: Final = 1

metadata = MetaData()
meta_table(metadata)

audit = Table(
    "audit",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("ts", Float, nullable=False),
    Column("principal", String(200), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("action", String(200), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("detail", Text, nullable=False),
)


class SqlAuditLog:
    """:class:`fyp.storage.roles.AuditLog` over SQL."""

    def __init__(self, url: str) -> None:
        self.db = Database(url, metadata, kind="audit", version=AUDIT_SCHEMA_VERSION)

    def append(
        self,
        principal: str,
        purpose: str,
        action: str,
        decision: str,
        detail: Mapping[str, Any],
        now: float,
    ) -> int:
        with self.db.write() as conn:
            result = conn.execute(
                audit.insert().values(
                    ts=now,
                    principal=principal,
                    purpose=purpose,
                    action=action,
                    decision=decision,
                    detail=json.dumps(dict(detail), sort_keys=True, default=str),
                )
            )
            key = result.inserted_primary_key
            return int(key[0]) if key else 0

    def tail(self, limit: int) -> list[AuditRecord]:
        with self.db.read() as conn:
            rows = conn.execute(select(audit).order_by(audit.c.seq.desc()).limit(limit)).all()
        return [
            AuditRecord(
                seq=row.seq,
                ts=row.ts,
                principal=row.principal,
                purpose=row.purpose,
                action=row.action,
                decision=row.decision,
                detail=json.loads(row.detail),
            )
            for row in reversed(rows)
        ]

    def count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(audit)).scalar_one())

    def close(self) -> None:
        self.db.close()

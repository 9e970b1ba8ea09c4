"""Schema versions: fyp refuses a database written by a newer release or holding another kind."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from fyp.config import FypConfig
from fyp.engine import fold_policy
from fyp.errors import ConfigError, SchemaMismatch
from fyp.storage.audit import SqlAuditLog
from fyp.storage.catalog import CATALOG_SCHEMA_VERSION, SqlCatalog
from fyp.storage.envelope import KeyFile
from fyp.storage.region import REGION_SCHEMA_VERSION, SqlRegionStore

POLICY = fold_policy(FypConfig())


def open_region(path: Path) -> SqlRegionStore:
    keys = KeyFile(path.parent / "keys" / f"kek-{path.stem}.json", "us")
    return SqlRegionStore(f"sqlite:///{path}", "us", POLICY, keys=keys)


def open_catalog(path: Path) -> SqlCatalog:
    return SqlCatalog(f"sqlite:///{path}")


def set_meta(path: Path, key: str, value: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE fyp_meta SET value = ? WHERE key = ?", (value, key))
    conn.close()


def read_meta(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        meta = dict(conn.execute("SELECT key, value FROM fyp_meta").fetchall())
    conn.close()
    return meta


def test_a_new_database_is_stamped_with_its_kind_and_version(tmp_path: Path) -> None:
    open_region(tmp_path / "region.db").close()
    open_catalog(tmp_path / "catalog.db").close()
    assert read_meta(tmp_path / "region.db") == {
        "region.schema_version": str(REGION_SCHEMA_VERSION)
    }
    assert read_meta(tmp_path / "catalog.db") == {
        "catalog.schema_version": str(CATALOG_SCHEMA_VERSION)
    }


def test_reopening_a_database_of_the_same_version_keeps_its_data(
    tmp_path: Path, make_user: Any, now: float
) -> None:
    store = open_region(tmp_path / "region.db")
    store.upsert_users([make_user("u1")], now)
    store.close()
    again = open_region(tmp_path / "region.db")
    try:
        assert again.has_users(["u1"]) == {"u1"}
    finally:
        again.close()


@pytest.mark.parametrize(
    ("opener", "kind", "version"),
    [
        (open_region, "region", REGION_SCHEMA_VERSION),
        (open_catalog, "catalog", CATALOG_SCHEMA_VERSION),
    ],
    ids=["region", "catalog"],
)
def test_a_newer_schema_version_is_refused(
    tmp_path: Path, opener: Any, kind: str, version: int
) -> None:
    path = tmp_path / "x.db"
    key = f"{kind}.schema_version"
    opener(path).close()
    set_meta(path, key, str(version + 1))
    with pytest.raises(SchemaMismatch, match="newer"):
        opener(path)
    assert read_meta(path)[key] == str(version + 1), "the database is left alone"


def test_an_older_schema_version_opens_and_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    open_region(path).close()
    set_meta(path, "region.schema_version", "0")
    open_region(path).close()
    assert read_meta(path)["region.schema_version"] == str(REGION_SCHEMA_VERSION)


def test_a_region_and_its_audit_log_may_share_a_database(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    open_region(path).close()
    log = SqlAuditLog(f"sqlite:///{path}")
    log.append("svc", "serve_feed", "open", "allow", {}, 0.0)
    log.close()
    open_region(path).close()
    assert set(read_meta(path)) == {"region.schema_version", "audit.schema_version"}


def test_a_catalog_database_cannot_be_opened_as_a_region(tmp_path: Path) -> None:
    open_catalog(tmp_path / "catalog.db").close()
    with pytest.raises(SchemaMismatch, match="catalog"):
        open_region(tmp_path / "catalog.db")


def test_a_region_database_cannot_be_opened_as_the_catalog(tmp_path: Path) -> None:
    open_region(tmp_path / "region.db").close()
    with pytest.raises(SchemaMismatch, match="region"):
        open_catalog(tmp_path / "region.db")


def test_an_unknown_url_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        SqlCatalog("mysql://localhost/fyp")
    with pytest.raises(ConfigError):
        SqlCatalog("not a url")

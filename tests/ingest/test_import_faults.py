"""An import that fails part-way writes whole batches or nothing, and running it again completes it.

Three ways to fail: the backend refusing a batch (an exception out of the engine), the process
killed with SIGKILL inside a write transaction (all statements run, no commit yet), and the file
itself breaking (covered in test_importer). After each, what is stored is exactly the batches
written before the failure, and a second run of the same import stores the rest, each record once.
"""

from __future__ import annotations

import gzip
import json
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fyp.cli import main
from fyp.config import load_config
from fyp.engine import Engine
from fyp.errors import BackendUnavailable
from fyp.ingest import import_file
from fyp.types import Item, User

NOW = 1_700_000_000.0
BATCH = 4
REGIONS = ("us", "eu")


def _open(data: Path) -> Engine:
    return Engine(load_config(data), clock=lambda: NOW)


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    """A data directory holding two users (one per region) and two items, for events to name."""
    path = tmp_path / "data"
    engine = _open(path)
    engine.put_users([User(user_id=f"home-{r}", region=r) for r in REGIONS])
    engine.put_items(
        [Item(item_id=f"i{n}", creator_id="c", created_at=NOW - 9e5, duration_s=9) for n in (1, 2)]
    )
    engine.close()
    yield path


def _records(kind: str) -> list[dict[str, Any]]:
    """Fourteen valid records and two refused ones, on lines 4 and 10."""
    if kind == "items":
        rows = [{"item_id": f"v{n}", "creator_id": "c", "duration_s": 5 + n} for n in range(14)]
        bad = {"item_id": "bad", "creator_id": "c", "duration_s": -1}
    elif kind == "users":
        rows = [{"user_id": f"u{n}", "region": REGIONS[n % 3 % 2]} for n in range(14)]
        bad = {"user_id": "bad", "region": "mars"}
    else:
        rows = [
            {
                "event_id": f"e{n}",
                "user_id": f"home-{REGIONS[n % 3 % 2]}",  # both regions in most batches
                "item_id": f"i{n % 2 + 1}",
                "type": "like",
                "ts": NOW - 1000 + n,
            }
            for n in range(14)
        ]
        bad = {**rows[0], "event_id": "bad", "type": "watch"}
    rows.insert(3, bad)
    rows.insert(9, {**bad, "duration_s": 0} if kind == "items" else bad)
    return rows


def _valid(kind: str) -> list[dict[str, Any]]:
    return [row for row in _records(kind) if "bad" not in json.dumps(row)]


def _write(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _records(kind)))
    return path


def _writes(kind: str) -> list[list[str]]:
    """The ids each write transaction carries, in order: valid records ``BATCH`` at a time, and a
    batch of users or events split by home region (the first region met first)."""
    id_field = {"items": "item_id", "users": "user_id", "events": "event_id"}[kind]
    valid = _valid(kind)
    groups: list[list[str]] = []
    for start in range(0, len(valid), BATCH):
        batch = valid[start : start + BATCH]
        if kind == "items":
            groups.append([row[id_field] for row in batch])
            continue
        by_region: dict[str, list[str]] = {}
        for row in batch:
            home = row["region"] if kind == "users" else row["user_id"].removeprefix("home-")
            by_region.setdefault(home, []).append(row[id_field])
        groups.extend(by_region.values())
    return groups


def _stored(data: Path, kind: str) -> list[str]:
    """Every stored id of ``kind`` (but the seeded ones), read straight from the SQLite files."""
    if kind == "items":
        queries = [("catalog.db", "SELECT item_id FROM items WHERE item_id LIKE 'v%'")]
    else:
        table, column = ("users", "user_id") if kind == "users" else ("events", "event_id")
        query = f"SELECT {column} FROM {table} WHERE {column} NOT LIKE 'home-%'"
        queries = [(f"region-{region}.db", query) for region in REGIONS]
    ids = []
    for database, query in queries:
        with sqlite3.connect(f"file:{data / database}?mode=ro", uri=True) as conn:
            ids.extend(row[0] for row in conn.execute(query))
    return sorted(ids)


def _complete_again(data: Path, kind: str, path: Path, stored_before: int) -> None:
    engine = _open(data)
    try:
        report = import_file(engine, kind, path, batch_size=BATCH)
    finally:
        engine.close()
    total = len(_valid(kind))
    assert [re.split("[,:]", error)[0] for error in report.errors] == ["line 4", "line 10"]
    if kind == "events":
        assert (report.accepted, report.duplicates) == (total - stored_before, stored_before)
    else:
        assert (report.created, report.updated) == (total - stored_before, stored_before)
    ids = _stored(data, kind)
    assert ids == sorted(id_ for group in _writes(kind) for id_ in group)  # each exactly once


@pytest.mark.parametrize("kind", ["items", "users", "events"])
def test_backend_failure_leaves_whole_batches_and_a_rerun_completes(
    data: Path, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, kind)
    engine = _open(data)
    method = {"items": "put_items", "users": "put_users", "events": "ingest"}[kind]
    real = getattr(engine, method)
    calls = []

    def failing(batch: Any) -> Any:
        calls.append(len(batch))
        if len(calls) == 3:
            raise BackendUnavailable("the database went away")
        return real(batch)

    monkeypatch.setattr(engine, method, failing)
    try:
        with pytest.raises(BackendUnavailable):
            import_file(engine, kind, path, batch_size=BATCH)
    finally:
        engine.close()
    # Regression: a refused batch of items or users was split and retried half by half, so a
    # failing backend was called again and again before the error came out.
    assert calls == [BATCH] * 3
    written = [id_ for group in _writes(kind) for id_ in group]
    before = sorted(written[: 2 * BATCH])
    assert _stored(data, kind) == before
    _complete_again(data, kind, path, len(before))


_KILLER = textwrap.dedent(
    """
    import contextlib, os, re, signal, sys
    from pathlib import Path
    from fyp.config import load_config
    from fyp.engine import Engine
    from fyp.ingest import import_file
    from fyp.storage import sql

    data, kind, path, target, kill_at, batch = sys.argv[1:]
    engine = Engine(load_config(Path(data)), clock=lambda: {now})
    original = sql.Database.write
    writes = 0

    @contextlib.contextmanager
    def write(self, durable=False):
        global writes
        with original(self, durable) as conn:
            yield conn
            if re.search(target, self.url):
                writes += 1
                if writes == int(kill_at):  # every statement ran; the commit has not
                    os.kill(os.getpid(), signal.SIGKILL)

    sql.Database.write = write
    import_file(engine, kind, Path(path), batch_size=int(batch))
    """
).format(now=NOW)


@pytest.mark.parametrize("kind", ["items", "events"])  # users write as events do, per region
def test_a_process_killed_inside_a_write_leaves_whole_batches(
    data: Path, tmp_path: Path, kind: str
) -> None:
    path = _write(tmp_path, kind)
    target = r"catalog\.db$" if kind == "items" else r"region-(us|eu)\.db$"
    kill_at = 4
    result = subprocess.run(
        [sys.executable, "-c", _KILLER, str(data), kind, str(path), target, str(kill_at), "4"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    groups = _writes(kind)
    before = sorted(id_ for group in groups[: kill_at - 1] for id_ in group)
    assert _stored(data, kind) == before  # the fourth write rolled back whole
    _complete_again(data, kind, path, len(before))


def test_cli_says_what_the_numbers_count(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users.csv"
    path.write_text('user_id,region\nu1,us\n"u\n2",eu\nu3,mars\n')
    assert main(["import", "users", str(path), "--data-dir", str(data), "-q"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "error: line 3, field 'user_id': must match pattern '^[A-Za-z0-9][A-Za-z0-9_.:@+\\-]*$'",
        "error: line 5, field 'region': unknown region 'mars'; configured: eu, us",
        "(numbers are lines of the file counting from 1, header and blank lines included; "
        "a record spanning several lines is named by its first)",
    ]
    assert out.startswith("users: 3 records, 1 created, 0 updated, 2 errors")


def test_cli_reports_what_was_stored_before_a_file_broke(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = gzip.compress(
        ("user_id,region\n" + "".join(f"u{n},eu\n" for n in range(4000))).encode()
    )
    path = tmp_path / "users.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    assert main(["import", "users", str(path), "--data-dir", str(data), "-q"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert err.startswith(f"fyp: {path}: cannot read beyond line ")
    records = int(out.split()[1])
    assert 1000 < records < 4000
    assert out.startswith(f"users: {records} records, {records} created, 0 updated, 0 errors")

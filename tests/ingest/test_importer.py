"""Bulk import into a real Engine on SQLite files: round trips, per-record errors, idempotence."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fyp.config import load_config
from fyp.engine import Engine
from fyp.errors import InvalidInput, NotFound
from fyp.ingest import MAX_ERRORS, import_file
from fyp.ingest.importer import _FIELDS, _MODELS
from fyp.types import Event, Item, User

T0 = dt.datetime(2024, 3, 1, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(load_config(tmp_path / "data"))
    yield engine
    engine.close()


# ---- writing small files ------------------------------------------------------------------------


def write_csv(path: Path, rows: Sequence[dict[str, Any]], gz: bool = False) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: Sequence[Any], gz: bool = False) -> Path:
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def _seed(engine: Engine, items: Sequence[str] = ("i1", "i2"), users: Sequence[str] = ()) -> None:
    engine.put_items(
        [Item(item_id=i, creator_id="c1", created_at=T0, duration_s=10.0) for i in items]
    )
    engine.put_users([User(user_id=u, region="us") for u in users])


# ---- round trips --------------------------------------------------------------------------------

FORMATS = ["csv", "jsonl", "parquet", "csv.gz"]


def _items_file(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / f"items.{fmt}"
    if fmt.startswith("csv"):
        rows: list[dict[str, Any]] = [
            {
                "item_id": "v1",
                "creator_id": "c1",
                "created_at": "2024-03-01T12:00:00+02:00",
                "duration_s": "12.5",
                "caption": 'Fresh "pasta", quickly',
                "tags": "Cooking|#pasta",
                "language": "it",
                "regions": "us|eu",
                "vector": "0.5 -1 2e-1",
            },
            {
                "item_id": "v2",
                "creator_id": "c2",
                "created_at": str(T0.timestamp()),
                "duration_s": "30",
                "tags": '["dance"]',
            },
        ]
        return write_csv(path, rows, gz=fmt.endswith(".gz"))
    if fmt == "jsonl":
        rows = [
            {
                "item_id": "v1",
                "creator_id": "c1",
                "created_at": "2024-03-01T12:00:00+02:00",
                "duration_s": 12.5,
                "caption": 'Fresh "pasta", quickly',
                "tags": ["Cooking", "#pasta"],
                "language": "it",
                "regions": ["us", "eu"],
                "vector": [0.5, -1, 0.2],
            },
            {
                "item_id": "v2",
                "creator_id": "c2",
                "created_at": T0.timestamp(),
                "duration_s": 30,
                "tags": ["dance"],
                "language": None,
            },
        ]
        return write_jsonl(path, rows)
    table = pa.table(
        {
            "item_id": ["v1", "v2"],
            "creator_id": ["c1", "c2"],
            "created_at": pa.array([T0, T0], type=pa.timestamp("ms", tz="UTC")),
            "duration_s": [12.5, 30.0],
            "caption": ['Fresh "pasta", quickly', None],
            "tags": [["Cooking", "#pasta"], ["dance"]],
            "language": ["it", None],
            "regions": [["us", "eu"], []],
            "vector": pa.array([[0.5, -1.0, 0.25], None], type=pa.list_(pa.float32())),
        }
    )
    return write_parquet(path, table)


def _users_file(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / f"users.{fmt}"
    if fmt.startswith("csv"):
        rows: list[dict[str, Any]] = [
            {"user_id": "u1", "region": "us", "attr.country": "us", "attr.age": "31"},
            {"user_id": "u2", "region": "eu", "attr.country": "de", "attr.age": ""},
        ]
        return write_csv(path, rows, gz=fmt.endswith(".gz"))
    if fmt == "jsonl":
        rows = [
            {"user_id": "u1", "region": "us", "attributes": {"country": "us", "age": "31"}},
            {"user_id": "u2", "region": "eu", "attr.country": "de"},
        ]
        return write_jsonl(path, rows)
    table = pa.table(
        {
            "user_id": ["u1", "u2"],
            "region": ["us", "eu"],
            "attributes": pa.array(
                [{"country": "us", "age": "31"}, {"country": "de", "age": None}],
                type=pa.struct([("country", pa.string()), ("age", pa.string())]),
            ),
        }
    )
    return write_parquet(path, table)


def _events_file(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / f"events.{fmt}"
    ts = T0.timestamp()
    if fmt.startswith("csv"):
        rows: list[dict[str, Any]] = [
            {"event_id": "e1", "user_id": "u1", "item_id": "v1", "type": "play", "ts": str(ts),
             "watch_ms": "9000"},
            {"event_id": "e2", "user_id": "u1", "item_id": "v2", "type": "like",
             "ts": "2024-03-01T10:00:05Z", "request_id": "r1"},
            {"event_id": "e3", "user_id": "u2", "item_id": "v1", "type": "skip", "ts": str(ts),
             "watch_ms": "800.0"},
        ]  # fmt: skip
        return write_csv(path, rows, gz=fmt.endswith(".gz"))
    if fmt == "jsonl":
        rows = [
            {"event_id": "e1", "user_id": "u1", "item_id": "v1", "type": "play", "ts": ts,
             "watch_ms": 9000},
            {"event_id": "e2", "user_id": "u1", "item_id": "v2", "type": "like",
             "ts": "2024-03-01T10:00:05Z", "request_id": "r1", "watch_ms": None},
            {"event_id": "e3", "user_id": "u2", "item_id": "v1", "type": "skip", "ts": ts,
             "watch_ms": 800},
        ]  # fmt: skip
        return write_jsonl(path, rows)
    table = pa.table(
        {
            "event_id": ["e1", "e2", "e3"],
            "user_id": ["u1", "u1", "u2"],
            "item_id": ["v1", "v2", "v1"],
            "type": ["play", "like", "skip"],
            "ts": pa.array([T0, T0, T0], type=pa.timestamp("ns", tz="UTC")),
            # Nullable integers often arrive as doubles from dataframe writers.
            "watch_ms": pa.array([9000.0, None, 800.0], type=pa.float64()),
            "request_id": [None, "r1", None],
        }
    )
    return write_parquet(path, table)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(engine: Engine, tmp_path: Path, fmt: str) -> None:
    items = import_file(engine, "items", _items_file(tmp_path, fmt))
    assert items.errors == []
    assert (items.records, items.created, items.updated) == (2, 2, 0)
    v1, v2 = engine.get_item("v1"), engine.get_item("v2")
    assert v1.creator_id == "c1"
    assert v1.duration_s == 12.5
    assert v1.tags == ("cooking", "pasta")
    assert v1.language == "it"
    assert set(v1.regions) == {"us", "eu"}
    assert v2.created_at == T0.timestamp()
    assert v2.tags == ("dance",)
    assert v2.caption == ""
    assert v2.language is None
    if fmt != "parquet":
        assert v1.caption == 'Fresh "pasta", quickly'
        assert v1.created_at == T0.timestamp()  # 12:00 at +02:00

    users = import_file(engine, "users", _users_file(tmp_path, fmt))
    assert users.errors == []
    assert (users.records, users.created, users.updated) == (2, 2, 0)
    u1, u2 = engine.get_user("u1"), engine.get_user("u2")
    assert (u1.region, u1.attributes) == ("us", {"country": "us", "age": "31"})
    assert (u2.region, u2.attributes) == ("eu", {"country": "de"})

    events_path = _events_file(tmp_path, fmt)
    first = import_file(engine, "events", events_path)
    assert first.errors == []
    assert (first.records, first.accepted, first.duplicates) == (3, 3, 0)
    assert (first.created, first.updated) == (0, 0)

    again = import_file(engine, "events", events_path)
    assert (again.records, again.accepted, again.duplicates, again.error_count) == (3, 0, 3, 0)
    # The engine itself sees them stored: the same event again is a duplicate; another event
    # under a stored id is a conflict, refused.
    stored = engine.ingest(
        [
            Event(event_id="e1", user_id="u1", item_id="v1", type="play", ts=T0, watch_ms=9000),
            Event(event_id="e3", user_id="u2", item_id="v2", type="play", ts=T0),
        ]
    )
    assert (stored.accepted, stored.duplicates) == (0, 1)
    assert [index for index, _ in stored.errors] == [1]
    assert stored.errors[0][1].startswith("conflict")

    # Items and users are upserts: a second import updates, it does not duplicate.
    assert import_file(engine, "items", _items_file(tmp_path, fmt)).updated == 2
    assert import_file(engine, "users", _users_file(tmp_path, fmt)).updated == 2


def test_format_can_be_named_explicitly(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "export.txt"
    write_jsonl(path, [{"user_id": "u1", "region": "eu"}])
    report = import_file(engine, "users", path, format="ndjson")
    assert report.created == 1
    assert engine.get_user("u1").region == "eu"


# ---- bad records --------------------------------------------------------------------------------


def test_bad_csv_rows_are_reported_and_valid_rows_land(engine: Engine, tmp_path: Path) -> None:
    good = {"creator_id": "c1", "created_at": "2024-01-01T00:00:00Z", "duration_s": "10"}
    rows = [
        {"item_id": "ok1", **good},
        {"item_id": "neg", **good, "duration_s": "0"},
        {"item_id": "extra", **good, "colour": "red"},
        {"item_id": "ok2", **good, "colour": ""},  # an empty unknown cell is absent, not wrong
        {"item_id": "when", **good, "created_at": "yesterday-ish"},
        {"item_id": "", **good},
        {"item_id": "nan", **good, "duration_s": "ten"},
        {"item_id": "two", **good, "duration_s": "-1", "tags": "ok|bad tag"},
        {"item_id": "ok3", **good, "tags": "a||b|"},
    ]
    report = import_file(engine, "items", write_csv(tmp_path / "items.csv", rows))
    assert report.records == 9
    assert report.created == 3
    assert report.errors == [
        "line 3, field 'duration_s': must be greater than 0",
        "line 4, field 'colour': unknown field; expected item_id, creator_id, created_at, "
        "duration_s, caption, tags, language, regions, vector",
        "line 6, field 'created_at': must be a valid datetime or date, invalid character in year",
        "line 7, field 'item_id': is required",
        "line 8, field 'duration_s': 'ten' is not a number",
        "line 9, field 'duration_s': must be greater than 0",
        "line 9, field 'tags': at index 1: a tag cannot contain spaces or commas",
    ]
    assert report.error_count == 7
    for item_id in ("ok1", "ok2", "ok3"):
        assert engine.get_item(item_id).creator_id == "c1"
    assert engine.get_item("ok3").tags == ("a", "b")
    for item_id in ("neg", "extra", "when", "nan", "two"):
        with pytest.raises(NotFound):
            engine.get_item(item_id)


def test_tags_as_pipe_text_and_as_json_array(engine: Engine, tmp_path: Path) -> None:
    base = {"creator_id": "c", "created_at": "1700000000", "duration_s": "5"}
    rows = [
        {"item_id": "pipe", **base, "tags": "a|b"},
        {"item_id": "json", **base, "tags": '["a", "b"]'},
        {"item_id": "bad", **base, "tags": '["a", '},
    ]
    report = import_file(engine, "items", write_csv(tmp_path / "items.csv", rows))
    assert engine.get_item("pipe").tags == engine.get_item("json").tags == ("a", "b")
    assert report.error_count == 1
    assert report.errors[0].startswith("line 4, field 'tags': '[\"a\",' is not valid JSON")
    # JSON Lines takes both forms too.
    jsonl = write_jsonl(
        tmp_path / "items.jsonl",
        [{"item_id": "j1", **base, "created_at": 1.7e9, "duration_s": 5, "tags": "x|y"}],
    )
    assert import_file(engine, "items", jsonl).error_count == 0
    assert engine.get_item("j1").tags == ("x", "y")


def test_numbers_and_vectors_from_text(engine: Engine, tmp_path: Path) -> None:
    base = {"creator_id": "c", "created_at": "1700000000"}
    rows = [
        {"item_id": "a", **base, "duration_s": "1e1", "vector": "1|2|3"},
        {"item_id": "b", **base, "duration_s": "5", "vector": "[1, 2.5]"},
        {"item_id": "c", **base, "duration_s": "5", "vector": "1 two 3"},
        {"item_id": "d", **base, "duration_s": "inf"},
        {"item_id": "e", **base, "duration_s": "5", "created_at": "nan"},
    ]
    report = import_file(engine, "items", write_csv(tmp_path / "items.csv", rows))
    assert report.created == 2
    assert engine.get_item("a").duration_s == 10.0
    assert report.errors == [
        "line 4, field 'vector': at index 1: 'two' is not a number",
        "line 5, field 'duration_s': must be a finite number",
        "line 6, field 'created_at': a timestamp must be finite",
    ]


def test_watch_ms_must_be_a_whole_number(engine: Engine, tmp_path: Path) -> None:
    _seed(engine, users=["u1"])
    base = {"user_id": "u1", "item_id": "i1", "type": "play", "ts": "1700000000"}
    rows = [
        {"event_id": "e1", **base, "watch_ms": "1500"},
        {"event_id": "e2", **base, "watch_ms": "1500.5"},
        {"event_id": "e3", **base, "watch_ms": "-3"},
        {"event_id": "e4", **base, "type": "watch"},
    ]
    report = import_file(engine, "events", write_csv(tmp_path / "events.csv", rows))
    assert report.accepted == 1
    assert report.errors[0] == "line 3, field 'watch_ms': '1500.5' is not a whole number"
    assert report.errors[1] == "line 4, field 'watch_ms': must be greater than or equal to 0"
    assert report.errors[2].startswith("line 5, field 'type': must be 'impression', 'play'")


def test_events_for_unknown_users_and_items(engine: Engine, tmp_path: Path) -> None:
    _seed(engine, items=["i1"], users=["u1"])
    rows = [
        {"event_id": f"e{n}", "user_id": user, "item_id": item, "type": "like", "ts": 1.7e9 + n}
        for n, (user, item) in enumerate(
            [("u1", "i1"), ("ghost", "i1"), ("u1", "i1"), ("u1", "nothing"), ("u1", "i1")], 1
        )
    ]
    rows.insert(2, {"event_id": "bad", "user_id": "u1", "item_id": "i1", "type": "like"})
    # Small batches: engine errors must map back to line numbers across batches.
    report = import_file(engine, "events", write_jsonl(tmp_path / "e.jsonl", rows), batch_size=2)
    assert report.records == 6
    assert report.accepted == 3
    assert report.errors == [
        "line 2: unknown user 'ghost'; create it first",
        "line 3, field 'ts': is required",
        "line 5: unknown item 'nothing'; add it to the catalog first",
    ]


def test_reimport_reports_duplicates_and_accepts_nothing(engine: Engine, tmp_path: Path) -> None:
    _seed(engine, users=["u1"])
    rows = [
        {"event_id": f"e{n}", "user_id": "u1", "item_id": "i1", "type": "play", "ts": 1.7e9 + n}
        for n in range(25)
    ]
    rows.append(rows[3])  # repeated inside the file: a duplicate already on the first import
    path = write_jsonl(tmp_path / "events.jsonl", rows)
    first = import_file(engine, "events", path, batch_size=10)
    assert (first.accepted, first.duplicates, first.error_count) == (25, 1, 0)
    second = import_file(engine, "events", path, batch_size=10)
    assert (second.records, second.accepted, second.duplicates) == (26, 0, 26)


def test_jsonl_line_that_is_not_an_object(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "users.jsonl"
    path.write_text('{"user_id": "u1", "region": "us"}\n\n[1]\n{"user_id": "u2", "region": "eu"}\n')
    report = import_file(engine, "users", path)
    assert report.records == 3
    assert report.created == 2
    # Named by its line: the blank line 2 counts as a line, though not as a record.
    assert report.errors == ["line 3: holds a JSON array, not an object"]


def test_native_values_are_not_coerced(engine: Engine, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "items.jsonl",
        [{"item_id": "x", "creator_id": "c", "created_at": 1.7e9, "duration_s": "12"}],
    )
    report = import_file(engine, "items", path)
    assert report.errors == ["line 1, field 'duration_s': must be a valid number"]


# ---- users --------------------------------------------------------------------------------------


def test_users_csv_with_attribute_columns(engine: Engine, tmp_path: Path) -> None:
    rows = [
        {"user_id": "u1", "region": "us", "attr.country": "US", "attr.plan": "pro"},
        {"user_id": "u2", "region": "eu", "attr.country": "DE", "attr.plan": ""},
        {"user_id": "u3", "region": "eu", "attr.country": "FR", "attributes": '{"age": 40}'},
        {"user_id": "u4", "region": "eu", "attr.country": "NL", "attributes": '{"country": "x"}'},
        {"user_id": "u5", "region": "eu", "attr.Plan!": "x"},
        {"user_id": "u6", "region": "eu", "attributes": "[1]"},
    ]
    report = import_file(engine, "users", write_csv(tmp_path / "users.csv", rows))
    assert engine.get_user("u1").attributes == {"country": "US", "plan": "pro"}
    assert engine.get_user("u2").attributes == {"country": "DE"}
    assert engine.get_user("u3").attributes == {"country": "FR", "age": 40}
    assert report.created == 3
    assert report.errors == [
        "line 5, field 'attr.country': attribute 'country' is also given in 'attributes'",
        "line 6, field 'attr.Plan!': attribute name 'Plan!' must match pattern "
        "'^[a-z_][a-z0-9_]*$'",
        "line 7, field 'attributes': '[1]' is not a JSON object",
    ]


def test_user_whose_region_conflicts_is_isolated(engine: Engine, tmp_path: Path) -> None:
    engine.put_users([User(user_id="anna", region="us", attributes={"v": 1})])
    rows = [{"user_id": f"u{n}", "region": "eu"} for n in range(12)]
    rows.insert(7, {"user_id": "anna", "region": "eu", "attr.v": "2"})
    report = import_file(engine, "users", write_csv(tmp_path / "users.csv", rows))
    assert report.records == 13
    assert (report.created, report.updated) == (12, 0)
    assert report.error_count == 1
    assert report.errors[0].startswith("line 9: users ['anna'] already live in another region")
    assert all(engine.get_user(f"u{n}").region == "eu" for n in range(12))
    anna = engine.get_user("anna")
    assert (anna.region, anna.attributes) == ("us", {"v": 1})  # untouched


def test_user_listed_twice_with_different_regions(engine: Engine, tmp_path: Path) -> None:
    rows = [
        {"user_id": "bo", "region": "us"},
        {"user_id": "cy", "region": "us"},
        {"user_id": "bo", "region": "eu"},
    ]
    report = import_file(engine, "users", write_csv(tmp_path / "users.csv", rows))
    assert report.created == 2
    assert [e.split(":")[0] for e in report.errors] == ["line 4"]
    assert engine.get_user("bo").region == "us"


def test_unknown_region_names_the_field(engine: Engine, tmp_path: Path) -> None:
    rows = [{"user_id": "u1", "region": "mars"}, {"user_id": "u2", "region": "eu"}]
    report = import_file(engine, "users", write_csv(tmp_path / "users.csv", rows))
    assert report.created == 1
    assert report.errors == ["line 2, field 'region': unknown region 'mars'; configured: eu, us"]


# ---- limits, progress and misuse ----------------------------------------------------------------


def test_error_list_is_capped_but_counted(engine: Engine, tmp_path: Path) -> None:
    rows = [{"user_id": "", "region": "us"}] * (MAX_ERRORS + 250) + [
        {"user_id": "fine", "region": "us"}
    ]
    report = import_file(engine, "users", write_jsonl(tmp_path / "users.jsonl", rows))
    assert report.error_count == MAX_ERRORS + 250
    assert len(report.errors) == MAX_ERRORS
    assert report.errors[0].startswith("line 1, field 'user_id': must have at least 1 character")
    assert report.errors[-1].startswith(f"line {MAX_ERRORS}, ")
    assert report.created == 1


def test_progress_bar_goes_to_stderr(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(tmp_path / "users.csv", [{"user_id": "u1", "region": "us"}])
    import_file(engine, "users", path, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "import users" in err
    assert "100%" in err
    import_file(engine, "users", path, progress=False)
    assert capsys.readouterr() == ("", "")


def test_report_times_the_import(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "users.csv", [{"user_id": "u1", "region": "us"}])
    report = import_file(engine, "users", path)
    assert report.kind == "users"
    assert report.path == path
    assert report.seconds > 0


@pytest.mark.parametrize(
    ("kind", "name", "batch_size", "message"),
    [
        ("videos", "a.csv", 10, "unknown kind"),
        ("items", "a.csv", 0, "batch_size"),
        ("items", "a.xlsx", 10, "cannot tell the format"),
        ("items", "missing.csv", 10, "no such file"),
    ],
)
def test_misuse_raises_invalid_input(
    engine: Engine, tmp_path: Path, kind: Any, name: str, batch_size: int, message: str
) -> None:
    (tmp_path / "a.csv").write_text("item_id\n")
    (tmp_path / "a.xlsx").write_text("")
    with pytest.raises(InvalidInput, match=message):
        import_file(engine, kind, tmp_path / name, batch_size=batch_size)


def test_file_broken_part_way_keeps_what_was_read(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "users.csv.gz"
    text = "user_id,region\n" + "".join(f"u{n},eu\n" for n in range(4000))
    whole = gzip.compress(text.encode())
    path.write_bytes(whole[: len(whole) // 2])  # a download cut off half-way
    with pytest.raises(InvalidInput, match=r"cannot read beyond line \d+") as caught:
        import_file(engine, "users", path, batch_size=500)
    partial = caught.value.extra["report"]
    assert 1000 < partial.records < 4000
    assert partial.created == partial.records  # every record read before the break is stored
    assert engine.get_user(f"u{partial.records - 1}").region == "eu"
    with pytest.raises(NotFound):
        engine.get_user(f"u{partial.records}")
    # Once the whole file is there, the same import completes it, each user stored once.
    path.write_bytes(whole)
    again = import_file(engine, "users", path, batch_size=500)
    assert (again.created, again.updated, again.error_count) == (
        4000 - partial.records,
        partial.records,
        0,
    )


def test_bytes_that_are_not_utf8_spoil_only_their_row(engine: Engine, tmp_path: Path) -> None:
    # Regression: one bad byte used to stop the whole CSV import with a file error.
    path = tmp_path / "users.csv"
    good = "".join(f"u{n},eu\n" for n in range(3000)).encode()  # more than one decoded chunk
    path.write_bytes(b"user_id,region\n" + good + b"caf\xe9,us\n" + b"u-last,us\n")
    report = import_file(engine, "users", path, batch_size=500)
    assert report.errors == ["line 3002: holds bytes that are not UTF-8 text"]
    assert (report.records, report.created) == (3002, 3001)
    assert engine.get_user("u-last").region == "us"


def test_field_table_matches_the_models() -> None:
    for kind, model in _MODELS.items():
        assert set(_FIELDS[kind]) == set(model.model_fields), kind


# ---- regressions found by the fuzz pass (tests/ingest/test_import_fuzz.py) -----------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_times_beyond_what_datetime_holds_are_record_errors(
    engine: Engine, tmp_path: Path, fmt: str
) -> None:
    # Regression: each of these raised OverflowError or OSError out of the import, a traceback
    # that lost the whole file; now the record is refused and the others land.
    _seed(engine, users=["u1"])
    hostile = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00", 1e20, 1e17, -1e20]
    rows = [{"event_id": "ok1", "ts": 1.6e9}]
    rows += [{"event_id": f"far{n}", "ts": ts} for n, ts in enumerate(hostile)]
    rows += [{"event_id": "ok2", "ts": "2021-01-01T00:00:00Z"}]
    rows = [{**row, "user_id": "u1", "item_id": "i1", "type": "like"} for row in rows]
    path = tmp_path / f"events.{fmt}"
    if fmt == "csv":
        write_csv(path, rows)
    elif fmt == "jsonl":
        write_jsonl(path, rows)
    else:  # a column of mixed types does not exist in Parquet: times as text there
        write_parquet(path, pa.Table.from_pylist([{**r, "ts": str(r["ts"])} for r in rows]))
    report = import_file(engine, "events", path)
    first = 2 if fmt == "csv" else 1
    assert [e.split(":")[0] for e in report.errors] == [
        f"{'row' if fmt == 'parquet' else 'line'} {first + n}, field 'ts'" for n in range(1, 6)
    ]
    assert (report.records, report.accepted) == (7, 2)
    items = write_jsonl(
        tmp_path / "items.jsonl",
        [{"item_id": "old", "creator_id": "c", "duration_s": 5, "created_at": hostile[0]}],
    )
    (error,) = import_file(engine, "items", items).errors
    assert error.startswith("line 1, field 'created_at': ")


def _nul_items(tmp_path: Path) -> Path:
    base = {"creator_id": "c", "created_at": 1.7e9, "duration_s": 5}
    rows = [
        {"item_id": "ok1", **base, "caption": "fine"},
        {"item_id": "nul", **base, "caption": "a\x00b"},
        {"item_id": "tag", **base, "tags": ["x\x00"]},
        {"item_id": "ok2", **base},
    ]
    return write_jsonl(tmp_path / "items.jsonl", rows)


_NUL_ERRORS = [
    "line 2, field 'caption': cannot contain the NUL character (U+0000)",
    "line 3, field 'tags': at index 0: cannot contain the NUL character (U+0000)",
]


def test_nul_characters_are_refused_per_record(engine: Engine, tmp_path: Path) -> None:
    # SQLite stores them, PostgreSQL cannot: refused alike on every backend.
    report = import_file(engine, "items", _nul_items(tmp_path))
    assert report.errors == _NUL_ERRORS
    assert report.created == 2


def test_nul_characters_do_not_break_an_import_on_postgres(
    pg_schema_url: Callable[[str], str], tmp_path: Path
) -> None:
    # Regression: psycopg's DataError ("text fields cannot contain NUL") came out of the import.
    config = load_config(
        tmp_path / "data",
        catalog_url=pg_schema_url("catalog"),
        regions=[{"name": "us", "storage_url": pg_schema_url("region-us")}],
    )
    engine = Engine(config)
    try:
        report = import_file(engine, "items", _nul_items(tmp_path))
        assert report.errors == _NUL_ERRORS
        assert report.created == 2
        assert engine.get_item("ok1").caption == "fine"
    finally:
        engine.close()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_attribute_values_must_be_finite(engine: Engine, tmp_path: Path, fmt: str) -> None:
    # Regression: NaN and infinity were stored as attributes (and came back over HTTP as null).
    path = tmp_path / f"users.{fmt}"
    if fmt == "jsonl":
        path.write_text(
            '{"user_id": "u1", "region": "us", "attributes": {"a": NaN}}\n'
            '{"user_id": "u2", "region": "us", "attributes": {"a": 1, "b": -Infinity}}\n'
            '{"user_id": "u3", "region": "us", "attributes": {"a": 1.5}}\n'
        )
    else:
        scores = pa.array([float("nan"), float("-inf"), 1.5], type=pa.float64())
        write_parquet(
            path,
            pa.table(
                {
                    "user_id": ["u1", "u2", "u3"],
                    "region": ["us"] * 3,
                    "attributes": pa.StructArray.from_arrays([scores], names=["a"]),
                }
            ),
        )
    report = import_file(engine, "users", path)
    unit = "row" if fmt == "parquet" else "line"
    key = "b" if fmt == "jsonl" else "a"
    assert report.errors == [
        f"{unit} 1, field 'attributes': key 'a': must be a finite number",
        f"{unit} 2, field 'attributes': key '{key}': must be a finite number",
    ]
    assert engine.get_user("u3").attributes == {"a": 1.5}


def test_json_cells_nested_without_end_are_record_errors(engine: Engine, tmp_path: Path) -> None:
    # Regression: RecursionError out of the import for a CSV cell of 100,000 '['.
    rows = [
        {"item_id": "deep", "creator_id": "c", "duration_s": "5", "tags": "[" * 100_000},
        {"item_id": "fine", "creator_id": "c", "duration_s": "5", "tags": '["a"]'},
    ]
    report = import_file(engine, "items", write_csv(tmp_path / "items.csv", rows))
    assert len(report.errors) == 1
    assert report.errors[0].startswith("line 2, field 'tags': '[[[[")
    assert report.errors[0].endswith("nests arrays or objects too deeply")
    assert engine.get_item("fine").tags == ("a",)


@pytest.mark.parametrize(
    ("name", "content", "records"),
    [
        ("a.csv", b"item_id,creator_id,duration_s\n", 0),
        ("a.csv", b"\xef\xbb\xbf\r\n\r\nitem_id,creator_id,duration_s\r\n\r\n", 0),
        ("a.jsonl", b"", 0),
        ("a.jsonl", b"\xef\xbb\xbf\n  \n\t\n", 0),
    ],
)
def test_header_only_and_empty_files_import_nothing(
    engine: Engine, tmp_path: Path, name: str, content: bytes, records: int
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    report = import_file(engine, "items", path)
    assert (report.records, report.created, report.error_count) == (records, 0, 0)


def test_empty_and_cut_off_files_that_cannot_be_read_say_so(engine: Engine, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInput, match="empty CSV file"):
        import_file(engine, "items", empty)
    no_rows = write_parquet(
        tmp_path / "none.parquet",
        pa.table({"item_id": pa.array([], pa.string()), "duration_s": pa.array([], pa.float64())}),
    )
    assert import_file(engine, "items", no_rows).records == 0
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(no_rows.read_bytes()[:-20])  # the footer is gone
    with pytest.raises(InvalidInput, match="not a readable Parquet file"):
        import_file(engine, "items", cut)

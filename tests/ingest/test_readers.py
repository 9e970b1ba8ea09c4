"""Record readers: format inference, CSV / JSON Lines / Parquet parsing, gzip, progress units."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fyp.errors import InvalidInput
from fyp.ingest import readers
from fyp.ingest.readers import RecordReader, count_hint, plain, read_records, resolve_format


def _collect(path: Path, format: str | None = None) -> tuple[list[Any], list[tuple[int, str]]]:
    errors: list[tuple[int, str]] = []
    records = list(read_records(path, format, on_error=lambda n, m: errors.append((n, m))))
    return records, errors


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.csv", "csv"),
        ("a.CSV", "csv"),
        ("a.csv.gz", "csv"),
        ("a.jsonl", "jsonl"),
        ("a.ndjson.gz", "jsonl"),
        ("dump.2024.jsonl", "jsonl"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
    ],
)
def test_format_is_inferred_from_the_extension(name: str, expected: str) -> None:
    assert resolve_format(Path(name)) == expected


def test_explicit_format_overrides_the_extension() -> None:
    assert resolve_format(Path("export.txt"), "ndjson") == "jsonl"
    assert resolve_format(Path("a.csv"), ".Parquet") == "parquet"


@pytest.mark.parametrize("name", ["a.txt", "a", "a.gz", "a.parquet.gz"])
def test_unknown_or_unsupported_names_are_invalid(name: str) -> None:
    with pytest.raises(InvalidInput):
        resolve_format(Path(name))


def test_unknown_explicit_format_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="unknown format 'xlsx'"):
        resolve_format(Path("a.csv"), "xlsx")


def test_missing_file_fails_when_reading_is_requested(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        read_records(tmp_path / "nope.csv")


def test_csv_rows_become_dicts_of_cell_text(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    # BOM from a spreadsheet, a quoted comma and newline, a blank line, a short row.
    path.write_bytes(
        b"\xef\xbb\xbfid , caption,n\r\n"
        b'1,"hi, there\nyou",3\r\n\r\n2,,\r\n3,x\r\n4,a,b,c\r\n5,y,6\r\n'
    )
    records, errors = _collect(path)
    assert records == [
        (1, {"id": "1", "caption": "hi, there\nyou", "n": "3"}),
        (2, {"id": "2", "caption": "", "n": ""}),
        (3, {"id": "3", "caption": "x"}),
        (5, {"id": "5", "caption": "y", "n": "6"}),
    ]
    assert errors == [(4, "has 4 cells but the header has 3")]


def test_a_record_error_raises_without_a_callback(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("a,b\n1,2,3\n")
    with pytest.raises(InvalidInput, match="record 1: has 3 cells"):
        list(read_records(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty CSV file"),
        ("\n\n", "empty CSV file"),
        ("a,,b\n1,2,3\n", "empty column name"),
        ("a,b,a\n1,2,3\n", "duplicate columns"),
    ],
)
def test_csv_header_problems_are_file_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "a.csv"
    path.write_text(content)
    with pytest.raises(InvalidInput, match=message):
        list(read_records(path))


def test_csv_that_is_not_utf8_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"a\nok\n\xff\xfe\n")
    with pytest.raises(InvalidInput, match="not UTF-8"):
        list(read_records(path))


def test_jsonl_skips_blank_lines_and_reports_non_objects(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n   \n[1, 2]\n{"a": \n"text"\n{"a": [true, null]}\n')
    records, errors = _collect(path)
    assert records == [(1, {"a": 1}), (5, {"a": [True, None]})]
    assert [n for n, _ in errors] == [2, 3, 4]
    assert errors[0][1] == "line 4 holds a JSON list, not an object"
    assert errors[1][1].startswith("line 5 is not valid JSON")
    assert errors[2][1] == "line 6 holds a JSON str, not an object"


@pytest.mark.parametrize("name", ["a.jsonl.gz", "misnamed.jsonl"])
def test_gzip_is_detected_by_content(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(b'{"a": 1}\n{"a": 2}\n'))
    records, errors = _collect(path)
    assert records == [(1, {"a": 1}), (2, {"a": 2})]
    assert errors == []


def test_gzip_csv(tmp_path: Path) -> None:
    path = tmp_path / "a.csv.gz"
    path.write_bytes(gzip.compress("a,b\nx,ü\n".encode()))
    assert list(read_records(path)) == [(1, {"a": "x", "b": "ü"})]


def test_truncated_gzip_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n' * 1000)[:-20])
    with pytest.raises(InvalidInput, match="cannot read"):
        list(read_records(path))


def test_parquet_rows_are_plain_python_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 2)  # numbering must continue across batches
    when = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "ts": pa.array([when, when, None], type=pa.timestamp("ns", tz="UTC")),
            "tags": pa.array([["x", "y"], [], None], type=pa.list_(pa.string())),
            "n": pa.array([1, None, 3], type=pa.int64()),
            "vector": pa.array([[0.5, 1.0], None, None], type=pa.list_(pa.float32())),
            "attrs": pa.array([[("k", "v")], None, None], type=pa.map_(pa.string(), pa.string())),
        }
    )
    path = tmp_path / "a.parquet"
    pq.write_table(table, path)
    records = list(read_records(path))
    assert [n for n, _ in records] == [1, 2, 3]
    first = records[0][1]
    assert first == {
        "id": "a",
        "ts": when,
        "tags": ["x", "y"],
        "n": 1,
        "vector": [0.5, 1.0],
        "attrs": [["k", "v"]],
    }
    assert type(first["n"]) is int
    assert records[2][1]["ts"] is None
    assert count_hint(path) == 3


def test_parquet_leaves_out_a_dataframe_index(tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b"], "__index_level_0__": [10, 11]})
    pandas = {"index_columns": ["__index_level_0__", {"kind": "range"}], "columns": []}
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas).encode()})
    path = tmp_path / "a.parquet"
    pq.write_table(table, path)
    assert list(read_records(path)) == [(1, {"id": "a"}), (2, {"id": "b"})]


def test_corrupt_parquet_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InvalidInput, match="not a readable Parquet file"):
        list(read_records(path))


@pytest.mark.parametrize("name", ["a.csv", "a.csv.gz"])
def test_position_advances_to_the_byte_count_hint(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    text = "id,value\n" + "".join(f"r{i},{i * 7919 % 1000}\n" for i in range(20_000))
    data = text.encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    total = count_hint(path)
    assert total == path.stat().st_size
    with RecordReader(path) as reader:
        assert reader.unit == "B"
        seen = []
        for number, _ in reader:
            if number % 5000 == 0:
                seen.append(reader.position)
        assert reader.position == total
    assert seen == sorted(seen)
    assert 0 < seen[0] < total  # it moves while reading, not only at the end


@pytest.mark.parametrize("name", ["a.csv", "a.csv.gz", "a.jsonl.gz", "a.parquet"])
def test_closing_part_way_releases_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    rows = [{"a": str(n)} for n in range(50)]
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows) if "jsonl" in name else "a\n"
        if "csv" in name:
            text += "".join(f"{r['a']}\n" for r in rows)
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    reader = RecordReader(path)
    records = iter(reader)
    assert next(records) == (1, {"a": "0"})
    reader.close()  # an unclosed file would fail the test through a ResourceWarning
    reader.close()
    assert list(records) == []


def test_parquet_position_counts_rows(tmp_path: Path) -> None:
    path = tmp_path / "a.pq"
    pq.write_table(pa.table({"a": list(range(5))}), path)
    with RecordReader(path) as reader:
        assert reader.unit == "rec"
        assert len(list(reader)) == 5
        assert reader.position == count_hint(path) == 5


def test_plain_turns_library_scalars_into_python_values() -> None:
    value = {
        "i": np.int32(3),
        "f": np.float32(0.5),
        "b": np.bool_(True),
        "arr": np.array([1.5, 2.5]),
        "dec": [Decimal("2"), Decimal("2.5")],
        "day": dt.date(2024, 1, 2),
        "scalar": pa.scalar(7),
    }
    result = plain(value)
    assert result == {
        "i": 3,
        "f": 0.5,
        "b": True,
        "arr": [1.5, 2.5],
        "dec": [2, 2.5],
        "day": dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
        "scalar": 7,
    }
    assert [type(v) for v in (result["i"], result["f"], result["b"], result["scalar"])] == [
        int,
        float,
        bool,
        int,
    ]
    assert json.dumps(result, default=str)  # nothing exotic left

"""Record readers: format inference, CSV / JSON Lines / Parquet parsing, gzip, progress units, and
where each record is: the line it starts on (CSV, JSON Lines) or its row (Parquet)."""

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
    # Numbered by the line each record starts on: the header is line 1, the quoted newline makes
    # the first record lines 2-3, and the blank line 4 counts though it is no record.
    assert records == [
        (2, {"id": "1", "caption": "hi, there\nyou", "n": "3"}),
        (5, {"id": "2", "caption": "", "n": ""}),
        (6, {"id": "3", "caption": "x"}),
        (8, {"id": "5", "caption": "y", "n": "6"}),
    ]
    assert errors == [(7, "has 4 cells but the header has 3")]


def test_a_record_error_raises_without_a_callback(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("a,b\n1,2,3\n")
    with pytest.raises(InvalidInput, match="line 2: has 3 cells"):
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


def test_csv_row_that_is_not_utf8_is_a_record_error(tmp_path: Path) -> None:
    # Regression: the first undecodable byte used to end the whole file.
    path = tmp_path / "a.csv"
    path.write_bytes(b'a,b\nok,1\n\xff\xfe,2\n"caf\xc3\n\xa9",3\nlast,4\n')
    records, errors = _collect(path)
    assert records == [(2, {"a": "ok", "b": "1"}), (6, {"a": "last", "b": "4"})]
    assert errors == [(3, "holds bytes that are not UTF-8 text")] * 1 + [
        (4, "holds bytes that are not UTF-8 text")
    ]


def test_csv_header_that_is_not_utf8_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"\n\nna\xefve,b\n1,2\n")
    with pytest.raises(InvalidInput, match=r"the header \(line 3\) is not UTF-8"):
        list(read_records(path))


def test_csv_lines_are_counted_across_line_endings_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    # CRLF, a lone CR, a quoted CRLF and a quoted lone CR each end a line; a BOM opens the file.
    path.write_bytes(b'\xef\xbb\xbf\r\nid,text\r\n1,"a\r\nb"\r\n2,"c\rd"\r3,x\n\n4,"""q"""\n5,\n')
    records, errors = _collect(path)
    assert errors == []
    assert [(n, r["id"]) for n, r in records] == [(3, "1"), (5, "2"), (7, "3"), (9, "4"), (10, "5")]
    assert records[0][1]["text"] == "a\r\nb"
    assert records[3][1]["text"] == '"q"'


def test_csv_cell_past_the_reader_limit_is_a_file_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text('a,b\n1,2\n3,"' + "x\n" * 70_000 + '"\n5,6\n')
    with RecordReader(path) as reader:
        records = iter(reader)
        assert next(records) == (2, {"a": "1", "b": "2"})
        with pytest.raises(InvalidInput, match=r"record starting on line 3.*field larger than"):
            next(records)


def test_jsonl_skips_blank_lines_and_reports_non_objects(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n   \n[1, 2]\n{"a": \n"text"\n{"a": [true, null]}\n')
    records, errors = _collect(path)
    assert records == [(1, {"a": 1}), (7, {"a": [True, None]})]
    assert [n for n, _ in errors] == [4, 5, 6]
    assert errors[0][1] == "holds a JSON array, not an object"
    assert errors[1][1].startswith("is not valid JSON")
    assert errors[2][1] == "holds a JSON string, not an object"


def test_jsonl_hostile_lines_are_record_errors(tmp_path: Path) -> None:
    # Regressions: nesting past the recursion limit raised RecursionError out of the import, and
    # json.loads guessed UTF-16 for a line starting with its byte-order mark.
    path = tmp_path / "a.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf  \n"  # a BOM, then nothing: a blank first line
        + b"[" * 5000 + b"]" * 5000 + b"\n"
        + b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
        + '{"a": 1}'.encode("utf-16") + b"\n"
        + b'{"a": "caf\xe9"}\n'
        + b'{"a": 2}'
    )  # fmt: skip
    records, errors = _collect(path)
    assert records == [(6, {"a": 2})]
    assert errors[:2] == [
        (2, "nests arrays or objects too deeply"),
        (3, "nests arrays or objects too deeply"),
    ]
    assert [n for n, _ in errors[2:]] == [4, 5]
    assert all("not UTF-8" in message for _, message in errors[2:])


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
    assert list(read_records(path)) == [(2, {"a": "x", "b": "ü"})]


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


def test_parquet_cells_python_cannot_hold_are_row_errors(tmp_path: Path) -> None:
    # Regression: one such cell raised OverflowError or ArrowInvalid out of the whole import.
    far = dt.datetime(9999, 12, 31, 23, 30, tzinfo=dt.UTC)  # year 10000 once shown at +01:00
    table = pa.table(
        {
            "id": ["a", "b", "c", "d"],
            "at": pa.array([far, None, far, None], type=pa.timestamp("ms", tz="+01:00")),
            "day": pa.array([1, 2**31 - 1, 3, 4], type=pa.int32()).cast(pa.date32()),
            "clock": pa.array([1, 2, 3, 2**40], type=pa.int64()).cast(pa.time64("ns")),
        }
    )
    path = tmp_path / "a.parquet"
    pq.write_table(table, path)
    records, errors = _collect(path)
    assert [n for n, _ in records] == []
    assert [n for n, _ in errors] == [1, 2, 3, 4]
    assert "column 'at' holds a value Python cannot represent" in errors[0][1]
    assert "column 'day'" in errors[1][1]
    assert "column 'clock'" in errors[3][1]
    good = pa.table({"id": ["a", "b"], "at": pa.array([far, None], pa.timestamp("ms", tz="UTC"))})
    pq.write_table(good, path)
    assert [n for n, _ in _collect(path)[0]] == [1, 2]


def test_parquet_with_garbled_dataframe_metadata_still_reads(tmp_path: Path) -> None:
    table = pa.table({"id": ["a"]}).replace_schema_metadata({b"pandas": b"{not json"})
    path = tmp_path / "a.parquet"
    pq.write_table(table, path)
    assert list(read_records(path)) == [(1, {"id": "a"})]


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
    assert next(records) == ((2 if "csv" in name else 1), {"a": "0"})
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

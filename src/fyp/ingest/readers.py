"""Record readers for bulk import: CSV, JSON Lines and Parquet, streamed with bounded memory.

A reader turns a file into ``(number, raw record)`` pairs. The number says where the record is, in
the unit a person would look it up with (:attr:`RecordReader.counts`):

* CSV and JSON Lines: the **line** of the file, counting from 1, every line included (a CSV header
  is line 1 unless blank lines precede it; blank lines count but are not records). A CSV record
  whose quoted cells span several lines is named by the line it starts on. Lines end at ``\n``,
  ``\r\n`` or, in CSV only, a lone ``\r`` (the line endings Python's CSV reader accepts).
* Parquet: the **row** of the file, counting from 1.

:data:`NUMBERING` says the same in a sentence for reports. Raw records are not validated here: CSV
values are the cell text (empty cells included), JSON Lines and Parquet values keep their native
types. Turning them into domain objects is the importer's job (:mod:`fyp.ingest.importer`).

Two kinds of problem are told apart:

* a *record* problem (a JSON line that is not an object or nests too deeply, a CSV row with more
  cells than the header, bytes that are not UTF-8 in a row) is passed to the ``on_error`` callback
  with its number, and reading continues;
* a *file* problem (missing file, unknown format, no CSV header, a CSV cell beyond the CSV reader's
  size limit, a truncated gzip stream, a corrupt Parquet footer) raises
  :class:`fyp.errors.InvalidInput` naming where it happened, because no later record can be
  trusted.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import gzip
import io
import json
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal, Self, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fyp.errors import InvalidInput

Format = Literal["csv", "jsonl", "parquet"]
"""The file formats the importer reads."""

Counts = Literal["line", "row"]
"""What a record's number counts: lines of a text file or rows of a Parquet file, from 1."""

NUMBERING: Final[dict[Counts, str]] = {
    "line": "numbers are lines of the file counting from 1, header and blank lines included; "
    "a record spanning several lines is named by its first",
    "row": "numbers are rows of the Parquet file counting from 1",
}
"""How to read the numbers in error messages, per :data:`Counts`."""

ErrorCallback = Callable[[int, str], None]
"""Called with ``(line or row number, what is wrong)`` for a record that cannot be read."""

_FORMAT_NAMES: Final[dict[str, Format]] = {
    "csv": "csv",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "parquet": "parquet",
    "pq": "parquet",
}
_GZIP_MAGIC: Final = b"\x1f\x8b"
PARQUET_BATCH_ROWS: Final = 8192
"""Rows decoded per Parquet batch: memory stays bounded whatever the file size."""


def resolve_format(path: Path, format: str | None = None) -> Format:
    """The format of ``path``: ``format`` when given, else inferred from the file name.

    Recognized names (case-insensitive, a leading dot is ignored): ``csv``, ``jsonl``/``ndjson``,
    ``parquet``/``pq``. ``.csv``, ``.jsonl`` and ``.ndjson`` may be followed by ``.gz``.
    Raises :class:`InvalidInput` for anything else.
    """
    if format is not None:
        resolved = _FORMAT_NAMES.get(format.lower().lstrip("."))
        if resolved is None:
            raise InvalidInput(
                f"unknown format {format!r}; known: {', '.join(sorted(_FORMAT_NAMES))}"
            )
        return resolved
    suffixes = [s.lower() for s in path.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if gzipped:
        suffixes.pop()
    resolved = _FORMAT_NAMES.get(suffixes[-1].lstrip(".")) if suffixes else None
    if resolved is None:
        raise InvalidInput(
            f"cannot tell the format of {path.name!r} from its name; use a .csv, .jsonl, .ndjson, "
            ".parquet or .pq extension (csv and jsonl may add .gz) or name the format explicitly"
        )
    if gzipped and resolved == "parquet":
        raise InvalidInput(f"{path.name!r}: gzip is supported for csv and jsonl files, not parquet")
    return resolved


def count_hint(path: Path, format: str | None = None) -> int:
    """The progress total of ``path``, cheap to compute: rows for Parquet (from the footer), the
    file size in bytes for CSV and JSON Lines. :attr:`RecordReader.position` counts in the same
    unit, so ``position / count_hint`` is the fraction done."""
    resolved = resolve_format(path, format)
    _require_file(path)
    if resolved == "parquet":
        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except (pa.ArrowException, OSError) as exc:
            raise InvalidInput(f"{path}: not a readable Parquet file ({exc})") from exc
    return path.stat().st_size


def read_records(
    path: Path, format: str | None = None, *, on_error: ErrorCallback | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(number, raw record)`` for every record of ``path``; the number is the line (CSV,
    JSON Lines) or row (Parquet) of the file, see the module docstring.

    Records that cannot be read are reported to ``on_error`` and skipped; without ``on_error``
    they raise :class:`InvalidInput`. File problems always raise :class:`InvalidInput`.
    """
    # Built eagerly so that a bad path or format raises here, not at the first ``next()``.
    return _drain(RecordReader(path, format, on_error=on_error))


def _drain(reader: RecordReader) -> Iterator[tuple[int, dict[str, Any]]]:
    with reader:
        yield from reader


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")


class RecordReader:
    """An open record file: iterate it once for its records; :attr:`position` tells progress.

    Use as a context manager (or call :meth:`close`) so the file is closed even when iteration
    stops early.
    """

    def __init__(
        self, path: Path, format: str | None = None, *, on_error: ErrorCallback | None = None
    ) -> None:
        self.path = path
        self.format: Format = resolve_format(path, format)
        self.counts: Counts = "row" if self.format == "parquet" else "line"
        """What the numbers this reader yields count."""
        _require_file(path)
        self._on_error: ErrorCallback = on_error or self._raise_record_error
        self._raw: IO[bytes] | None = None
        self._end = 0  # where the file was when closed, so progress survives the close
        self._rows_read = 0
        self._line = 0  # the last line read whole, for saying where an unreadable file broke
        self._iterated = False
        self._records: Generator[tuple[int, dict[str, Any]], None, None] | None = None

    def _raise_record_error(self, number: int, message: str) -> None:
        raise InvalidInput(f"{self.path}: {self.counts} {number}: {message}")

    @property
    def unit(self) -> str:
        """What :attr:`position` and :func:`count_hint` count: ``"B"`` (bytes) or ``"rec"``."""
        return "rec" if self.format == "parquet" else "B"

    @property
    def position(self) -> int:
        """How far reading got: compressed bytes consumed for CSV/JSON Lines, rows for Parquet."""
        if self.format == "parquet":
            return self._rows_read
        if self._raw is None or self._raw.closed:
            return self._end
        return self._raw.tell()

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if self._iterated:
            raise RuntimeError("a RecordReader can be iterated only once")
        self._iterated = True
        records = self._parquet() if self.format == "parquet" else self._text()
        self._records = records
        return records

    def close(self) -> None:
        """Stop reading and close the file; safe to call more than once."""
        records, self._records = self._records, None
        if records is not None:
            records.close()  # unwinds the layers above the file (text, gzip) in order
        self._close_file()

    def _close_file(self) -> None:
        if self._raw is not None and not self._raw.closed:
            self._end = self._raw.tell()
            self._raw.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- CSV and JSON Lines ---------------------------------------------------------------------

    def _open_bytes(self) -> IO[bytes]:
        """The decompressed byte stream; ``self._raw`` stays the file itself so that its
        ``tell()`` measures progress in on-disk bytes, compressed or not."""
        try:
            raw = self.path.open("rb")
        except OSError as exc:
            raise InvalidInput(f"{self.path}: cannot open ({exc})") from exc
        self._raw = raw
        # Sniff the magic number rather than trust the name: a misnamed file still reads.
        if raw.peek(2)[:2] == _GZIP_MAGIC:
            # GzipFile is a binary file object; typeshed just does not declare it an IO[bytes].
            return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
        return raw

    def _text(self) -> Generator[tuple[int, dict[str, Any]], None, None]:
        stream = self._open_bytes()
        try:
            if self.format == "csv":
                yield from self._csv(stream)
            else:
                yield from self._jsonl(stream)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InvalidInput(
                f"{self.path}: cannot read beyond line {self._line} ({exc})"
            ) from exc
        finally:
            if stream is not self._raw:
                stream.close()  # the gzip layer; it leaves the file itself open
            self._close_file()

    def _csv(self, stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
        # utf-8-sig drops the byte-order mark spreadsheet programs put in front of the header.
        # Bytes that are not UTF-8 decode to lone surrogates (surrogateescape) instead of stopping
        # the whole file: only bytes >= 0x80 can be undecodable, so commas, quotes and line breaks
        # stay intact and the row holding them is reported on its own.
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        rows = csv.reader(text)
        line = 1  # where the next record starts: the reader has consumed line_num lines so far
        try:
            header = None
            for row in rows:
                if row:
                    header = row
                    break
                line = rows.line_num + 1
            if header is None:
                raise InvalidInput(f"{self.path}: empty CSV file; the first row must be a header")
            if _undecodable(header):
                raise InvalidInput(f"{self.path}: the header (line {line}) is not UTF-8 text")
            columns = [name.strip() for name in header]
            _check_header(self.path, columns, f"the header (line {line})")
            width = len(columns)
            line = rows.line_num + 1
            for row in rows:
                start, line = line, rows.line_num + 1
                self._line = rows.line_num
                if not row:  # a blank line is not a record
                    continue
                if len(row) > width:
                    self._on_error(start, f"has {len(row)} cells but the header has {width}")
                elif _undecodable(row):
                    self._on_error(start, "holds bytes that are not UTF-8 text")
                else:
                    # A short row leaves its trailing cells empty, which means absent.
                    yield start, dict(zip(columns, row, strict=False))
        except csv.Error as exc:
            raise InvalidInput(
                f"{self.path}: malformed CSV in the record starting on line {line} ({exc})"
            ) from exc
        finally:
            text.detach()  # the caller owns and closes the byte stream

    def _jsonl(self, stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
        for line, data in enumerate(stream, 1):
            self._line = line
            if line == 1:  # a byte-order mark may open the file, as in CSV
                data = data.removeprefix(codecs.BOM_UTF8)
            if not data.strip():
                continue
            try:
                # JSON Lines is UTF-8 by definition; json.loads would guess UTF-16 from some bytes.
                value = json.loads(data.decode("utf-8"))
            except UnicodeDecodeError as exc:
                self._on_error(line, f"holds bytes that are not UTF-8 text ({exc.reason})")
                continue
            except ValueError as exc:
                self._on_error(line, f"is not valid JSON ({exc})")
                continue
            except RecursionError:
                self._on_error(line, "nests arrays or objects too deeply")
                continue
            if not isinstance(value, dict):
                self._on_error(line, f"holds a JSON {_json_name(value)}, not an object")
                continue
            yield line, value

    # ---- Parquet --------------------------------------------------------------------------------

    def _parquet(self) -> Generator[tuple[int, dict[str, Any]], None, None]:
        try:
            parquet = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise InvalidInput(f"{self.path}: not a readable Parquet file ({exc})") from exc
        with contextlib.closing(parquet):
            schema = parquet.schema_arrow
            _check_header(self.path, schema.names, "the schema")
            index = _dataframe_index(schema)
            columns = [name for name in schema.names if name not in index]
            batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
            while True:
                try:
                    batch = next(batches, None)
                except (pa.ArrowException, OSError) as exc:
                    raise InvalidInput(
                        f"{self.path}: corrupt Parquet data after row {self._rows_read} ({exc})"
                    ) from exc
                if batch is None:
                    return
                for row in _batch_rows(batch):
                    self._rows_read += 1
                    if isinstance(row, str):
                        self._on_error(self._rows_read, row)
                    else:
                        yield self._rows_read, row


def _dataframe_index(schema: pa.Schema) -> set[str]:
    """The columns a dataframe writer stored its index in: they are not part of the records."""
    try:
        declared = (schema.pandas_metadata or {}).get("index_columns", [])
    except (ValueError, AttributeError):  # metadata that is not the JSON object pandas writes
        return set()
    if not isinstance(declared, list):
        return set()
    return {name for name in declared if isinstance(name, str)}  # a range index is a dict


def _check_header(path: Path, columns: list[str], where: str) -> None:
    if any(not name for name in columns):
        raise InvalidInput(f"{path}: {where} has an empty column name")
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise InvalidInput(f"{path}: {where} has duplicate columns {duplicates}")


# What surrogateescape turns undecodable bytes into; valid UTF-8 never decodes to these.
_ESCAPED_BYTE: Final = re.compile("[\udc80-\udcff]")


def _undecodable(cells: list[str]) -> bool:
    return any(_ESCAPED_BYTE.search(cell) for cell in cells)


_JSON_NAMES: Final = {dict: "object", list: "array", str: "string", bool: "boolean"}


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_NAMES.get(type(value), "number")


@dataclass(frozen=True, slots=True)
class _Unconvertible:
    """A Parquet cell whose value has no Python counterpart (a date beyond year 9999, an unknown
    time zone): its row is reported, the other rows of the batch still read."""

    message: str


# What pyarrow raises for a value that does not fit a Python type: OverflowError for dates past
# datetime's range, ValueError (ArrowInvalid among them) for nanosecond times or unknown zones.
_CONVERSION_ERRORS: Final = (ArithmeticError, ValueError, pa.ArrowException)


def _column_values(name: str, column: pa.Array) -> list[Any]:
    try:
        return list(column.to_pylist())
    except _CONVERSION_ERRORS:
        pass
    values: list[Any] = []  # the slow way, cell by cell, only for a column holding a bad cell
    for index in range(len(column)):
        try:
            values.append(column[index].as_py())
        except _CONVERSION_ERRORS as exc:
            values.append(
                _Unconvertible(f"column {name!r} holds a value Python cannot represent ({exc})")
            )
    return values


def _batch_rows(batch: pa.RecordBatch) -> list[dict[str, Any] | str]:
    """The rows of ``batch`` as dicts of plain Python values; a row holding a cell that cannot be
    converted is the message saying so instead."""
    columns = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_timestamp(field.type) and field.type.unit == "ns":
            # Without pandas, nanosecond timestamps cannot become datetimes; microseconds can.
            with contextlib.suppress(*_CONVERSION_ERRORS):  # else each cell reports the problem
                column = column.cast(pa.timestamp("us", tz=field.type.tz), safe=False)
        columns.append(_column_values(field.name, column))
    names = batch.schema.names
    rows: list[dict[str, Any] | str] = []
    for values in zip(*columns, strict=True):
        bad = next((v for v in values if isinstance(v, _Unconvertible)), None)
        if bad is not None:
            rows.append(bad.message)
        else:
            rows.append({name: plain(value) for name, value in zip(names, values, strict=True)})
    return rows


_PLAIN_LEAVES: Final = (str, int, float, bool, type(None), dt.datetime)


def plain(value: Any) -> Any:
    """``value`` with numpy, pyarrow and decimal scalars (also inside lists and dicts) turned
    into the plain Python types the domain models accept; a date becomes midnight UTC."""
    if isinstance(value, _PLAIN_LEAVES):
        return value
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, pa.Scalar):
        return plain(value.as_py())
    if isinstance(value, Decimal):
        if not value.is_finite():
            return float(value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    return value

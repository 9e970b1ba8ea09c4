"""Record readers for bulk import: CSV, JSON Lines and Parquet, streamed with bounded memory.

A reader turns a file into ``(record number, raw record)`` pairs. Record numbers start at 1 and
count data records only (a CSV header and blank lines are not records), so an error message saying
"record 17" points at the 17th row of data whatever the format. Raw records are not validated here:
CSV values are the cell text (empty cells included), JSON Lines and Parquet values keep their native
types. Turning them into domain objects is the importer's job (:mod:`fyp.ingest.importer`).

Two kinds of problem are told apart:

* a *record* problem (a JSON line that is not an object, a CSV row with more cells than the header)
  is passed to the ``on_error`` callback with its record number, and reading continues;
* a *file* problem (missing file, unknown format, no CSV header, bytes that are not UTF-8, a corrupt
  Parquet footer) raises :class:`fyp.errors.InvalidInput`, because no later record can be trusted.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gzip
import io
import json
from collections.abc import Callable, Generator, Iterator
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

ErrorCallback = Callable[[int, str], None]
"""Called with ``(record number, what is wrong)`` for a record that cannot be read."""

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
    """Yield ``(record number, raw record)`` for every record of ``path``, numbered from 1.

    Records that cannot be read are reported to ``on_error`` and skipped (their numbers are used
    up, so numbering stays aligned with the file); without ``on_error`` they raise
    :class:`InvalidInput`. File problems always raise :class:`InvalidInput`.
    """
    # Built eagerly so that a bad path or format raises here, not at the first ``next()``.
    return _drain(RecordReader(path, format, on_error=on_error))


def _drain(reader: RecordReader) -> Iterator[tuple[int, dict[str, Any]]]:
    with reader:
        yield from reader


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")


def _raise_record_error(number: int, message: str) -> None:
    raise InvalidInput(f"record {number}: {message}")


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
        _require_file(path)
        self._on_error: ErrorCallback = on_error or _raise_record_error
        self._raw: IO[bytes] | None = None
        self._end = 0  # where the file was when closed, so progress survives the close
        self._rows_read = 0
        self._iterated = False
        self._records: Generator[tuple[int, dict[str, Any]], None, None] | None = None

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
            raise InvalidInput(f"{self.path}: cannot read ({exc})") from exc
        finally:
            if stream is not self._raw:
                stream.close()  # the gzip layer; it leaves the file itself open
            self._close_file()

    def _csv(self, stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
        # utf-8-sig drops the byte-order mark spreadsheet programs put in front of the header.
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        rows = csv.reader(text)
        number = 0
        try:
            header = next((row for row in rows if row), None)
            if header is None:
                raise InvalidInput(f"{self.path}: empty CSV file; the first row must be a header")
            columns = [name.strip() for name in header]
            _check_header(self.path, columns)
            width = len(columns)
            for row in rows:
                if not row:  # a blank line is not a record
                    continue
                number += 1
                if len(row) > width:
                    self._on_error(number, f"has {len(row)} cells but the header has {width}")
                    continue
                # A short row leaves its trailing cells empty, which means absent.
                yield number, dict(zip(columns, row, strict=False))
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"{self.path}: not UTF-8 text after record {number} ({exc.reason})"
            ) from exc
        except csv.Error as exc:
            raise InvalidInput(f"{self.path}: malformed CSV after record {number} ({exc})") from exc
        finally:
            text.detach()  # the caller owns and closes the byte stream

    def _jsonl(self, stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
        number = 0
        for line_number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            number += 1
            try:
                value = json.loads(line)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
                self._on_error(number, f"line {line_number} is not valid JSON ({exc})")
                continue
            if not isinstance(value, dict):
                self._on_error(
                    number,
                    f"line {line_number} holds a JSON {type(value).__name__}, not an object",
                )
                continue
            yield number, value

    # ---- Parquet --------------------------------------------------------------------------------

    def _parquet(self) -> Generator[tuple[int, dict[str, Any]], None, None]:
        try:
            parquet = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise InvalidInput(f"{self.path}: not a readable Parquet file ({exc})") from exc
        with contextlib.closing(parquet):
            schema = parquet.schema_arrow
            _check_header(self.path, schema.names)
            # A dataframe's index is written as a column but is not part of the records.
            declared = (schema.pandas_metadata or {}).get("index_columns", [])
            index = {name for name in declared if isinstance(name, str)}  # a range index is a dict
            columns = [name for name in schema.names if name not in index]
            batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
            while True:
                try:
                    batch = next(batches, None)
                except (pa.ArrowException, OSError) as exc:
                    raise InvalidInput(
                        f"{self.path}: corrupt Parquet data after record {self._rows_read} ({exc})"
                    ) from exc
                if batch is None:
                    return
                for row in _batch_rows(batch):
                    self._rows_read += 1
                    yield self._rows_read, row


def _check_header(path: Path, columns: list[str]) -> None:
    if any(not name for name in columns):
        raise InvalidInput(f"{path}: the header has an empty column name")
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise InvalidInput(f"{path}: duplicate columns {duplicates}")


def _batch_rows(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """The rows of ``batch`` as dicts of plain Python values."""
    columns = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_timestamp(field.type) and field.type.unit == "ns":
            # Without pandas, nanosecond timestamps cannot become datetimes; microseconds can.
            column = column.cast(pa.timestamp("us", tz=field.type.tz), safe=False)
        columns.append(column.to_pylist())
    names = batch.schema.names
    return [
        {name: plain(value) for name, value in zip(names, values, strict=True)}
        for values in zip(*columns, strict=True)
    ]


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

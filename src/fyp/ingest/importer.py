"""Bulk import of items, users and events from CSV, JSON Lines and Parquet files.

:func:`import_file` streams a file through a reader (:mod:`fyp.ingest.readers`), turns each raw
record into a domain object (:class:`~fyp.types.Item`, :class:`~fyp.types.User` or
:class:`~fyp.types.Event`) and hands them to the :class:`~fyp.engine.Engine` in batches, so the
import obeys exactly the rules of the HTTP API: same models, same limits, same gate.

Contract:

* A record that fails is reported where it is in the file (``line 17, field 'duration_s': must be
  greater than 0``, one message per failing field) and nothing from it is written; every valid
  record lands. CSV and JSON Lines records are named by the line of the file they start on (the CSV
  header is a line, so the first data row is usually line 2), Parquet records by their row counting
  from 1; :attr:`ImportReport.numbering` says so in a sentence.
* The report keeps the first :data:`MAX_ERRORS` messages (in file order) and counts all of them.
* Items and users are upserts, events are idempotent on ``event_id``: importing a file twice
  changes nothing the second time (events come back as duplicates).
* Records are written ``batch_size`` at a time, each batch in one transaction per database it
  touches (the catalog for items, each home region for users and events), so a failure or a killed
  process leaves every batch of a region stored whole or not at all, and running the same import
  again completes it.
* A problem with the file itself (missing, unknown format, no CSV header, a truncated gzip stream,
  a corrupt Parquet footer) raises :class:`~fyp.errors.InvalidInput`; when it happens part-way,
  records read before it are imported and the partial report rides on the exception as
  ``exc.extra["report"]``.

Flat formats carry text, and the models are strict (``"12"`` is not ``12``), so CSV cells are
converted deliberately per field: empty means absent; ``tags``/``regions`` are a JSON array or
``a|b`` text; ``vector`` is a JSON array or numbers separated by spaces or ``|``; ``duration_s`` and
``watch_ms`` are numbers; ``created_at``/``ts`` are ISO 8601 or epoch seconds; user attributes come
from a JSON-object column ``attributes`` and/or columns ``attr.<name>`` (kept as text). JSON Lines
and Parquet values keep their native types (an integral float such as ``1500.0`` is taken as a whole
number, as dataframe writers store nullable integers as doubles); ``null`` means absent there, also
inside ``attributes``, and text fields ``tags``, ``regions``, ``vector``, ``attributes`` still
accept the text forms above.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from tqdm import tqdm

from fyp.errors import FypError, InvalidInput
from fyp.ingest.readers import NUMBERING, Counts, RecordReader, count_hint
from fyp.types import Event, Item, User

if TYPE_CHECKING:
    from fyp.engine import Engine
    from fyp.storage.roles import UpsertResult

Kind = Literal["items", "users", "events"]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)

MAX_ERRORS: Final = 1000
"""Error messages kept in an :class:`ImportReport`; all errors are counted."""
MAX_BATCH_SIZE: Final = 100_000
ATTR_PREFIX: Final = "attr."
"""Users only: a column ``attr.<name>`` is the attribute ``<name>``."""

_PROGRESS_EVERY: Final = 1024  # records between progress-bar refreshes when no batch is written
_MAX_PLANS: Final = 256

# ---- the report ---------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What one :func:`import_file` call did.

    ``records`` counts every record read, valid or not. ``created``/``updated`` are filled for items
    and users, ``accepted``/``duplicates`` for events. ``errors`` holds at most :data:`MAX_ERRORS`
    messages, the first ones in file order; ``error_count`` counts them all. Each message starts
    with the ``counts`` (``line`` or ``row``) and number of its record; ``numbering`` explains it.
    """

    kind: Kind
    path: Path
    counts: Counts = "line"
    records: int = 0
    created: int = 0
    updated: int = 0
    accepted: int = 0
    duplicates: int = 0
    error_count: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def numbering(self) -> str:
        """What the numbers in :attr:`errors` count, in a sentence."""
        return NUMBERING[self.counts]


class _ErrorLog:
    """The first :data:`MAX_ERRORS` errors in file order, in bounded memory, and a total count.

    Engine errors for a batch arrive after validation errors of later records, so messages are kept
    with their line or row number and sorted; the list is trimmed whenever it doubles the cap.
    """

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.count = 0
        self._kept: list[tuple[int, int, str]] = []

    def add(self, number: int, field: str | None, message: str) -> None:
        """Count an error of the record at line or row ``number``; ``field`` is ``None`` (or
        empty) for the whole record."""
        self.count += 1
        where = f"{self.counts} {number}"
        if field:
            where += f", field {field!r}"
        self._kept.append((number, self.count, f"{where}: {message}"))
        if len(self._kept) >= 2 * MAX_ERRORS:
            self._trim()

    def _trim(self) -> None:
        self._kept.sort()
        del self._kept[MAX_ERRORS:]

    def messages(self) -> list[str]:
        self._trim()
        return [message for _, _, message in self._kept]


# ---- field conversion ---------------------------------------------------------------------------

_Shape = Literal["text", "number", "whole", "timestamp", "list", "vector", "object"]

_FIELDS: Final[dict[Kind, dict[str, _Shape]]] = {
    "items": {
        "item_id": "text",
        "creator_id": "text",
        "created_at": "timestamp",
        "duration_s": "number",
        "caption": "text",
        "tags": "list",
        "language": "text",
        "regions": "list",
        "vector": "vector",
    },
    "users": {"user_id": "text", "region": "text", "attributes": "object"},
    "events": {
        "event_id": "text",
        "user_id": "text",
        "item_id": "text",
        "type": "text",
        "ts": "timestamp",
        "watch_ms": "whole",
        "request_id": "text",
    },
}
"""How each model field is read from a file. Must name exactly the fields of the model."""

_MODELS: Final[dict[Kind, type[BaseModel]]] = {"items": Item, "users": User, "events": Event}
_ID_FIELD: Final[dict[Kind, str]] = {"items": "item_id", "users": "user_id", "events": "event_id"}
_TIMESTAMP_FIELD: Final[dict[Kind, str]] = {"items": "created_at", "events": "ts"}


class _BadValueError(Exception):
    """A value that cannot be converted; the message says why."""


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _same(value: Any) -> Any:
    return value


def _text_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _BadValueError(f"{_show(text)} is not a number") from None


def _text_whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    number = _text_number(text)
    if not number.is_integer():  # also rejects inf and nan
        raise _BadValueError(f"{_show(text)} is not a whole number")
    return int(number)


def _text_timestamp(text: str) -> Any:
    # A numeric string is epoch seconds; anything else goes to the model's ISO 8601 parser.
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        return stripped


def _json(text: str, expected: type[Any], what: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _BadValueError(f"{_show(text)} is not valid JSON ({exc})") from None
    except RecursionError:
        raise _BadValueError(f"{_show(text)} nests arrays or objects too deeply") from None
    if not isinstance(value, expected):
        raise _BadValueError(f"{_show(text)} is not a JSON {what}")
    return value


def _text_list(text: str) -> list[Any]:
    stripped = text.strip()
    if stripped.startswith("["):
        return list(_json(stripped, list, "array"))
    return [part.strip() for part in stripped.split("|") if part.strip()]


_VECTOR_SEPARATOR: Final = re.compile(r"[\s|]+")


def _text_vector(text: str) -> list[Any]:
    stripped = text.strip()
    if stripped.startswith("["):
        return list(_json(stripped, list, "array"))
    values = []
    for index, part in enumerate(_VECTOR_SEPARATOR.split(stripped)):
        try:
            values.append(float(part))
        except ValueError:
            raise _BadValueError(f"at index {index}: {_show(part)} is not a number") from None
    return values


def _text_object(text: str) -> dict[str, Any]:
    return dict(_json(text, dict, "object"))


def _native_whole(value: Any) -> Any:
    # Parquet writers often store nullable integers as doubles; 1500.0 is still exactly 1500.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _native_list(value: Any) -> Any:
    return _text_list(value) if isinstance(value, str) else value


def _native_vector(value: Any) -> Any:
    return _text_vector(value) if isinstance(value, str) else value


def _native_object(value: Any) -> Any:
    if isinstance(value, str):
        return _text_object(value)
    # A Parquet map column arrives as a list of (key, value) pairs.
    if isinstance(value, list) and all(
        isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[0], str)
        for pair in value
    ):
        value = dict(value)
    if isinstance(value, dict):
        # A Parquet struct has every member in every row; null there means "not set".
        return {k: v for k, v in value.items() if v is not None}
    return value


_Converter = Callable[[Any], Any]

_FROM_TEXT: Final[dict[_Shape, _Converter]] = {
    "text": _same,
    "number": _text_number,
    "whole": _text_whole,
    "timestamp": _text_timestamp,
    "list": _text_list,
    "vector": _text_vector,
    "object": _text_object,
}
_FROM_NATIVE: Final[dict[_Shape, _Converter]] = {
    "text": _same,
    "number": _same,
    "whole": _native_whole,
    "timestamp": _same,
    "list": _native_list,
    "vector": _native_vector,
    "object": _native_object,
}


@dataclass(frozen=True, slots=True)
class _Column:
    """What to do with one column: set ``field`` through ``convert``, set attribute ``attr``, or
    (neither) report it as unknown."""

    name: str
    field: str | None = None
    convert: _Converter = _same
    attr: str | None = None


# ---- validation messages ------------------------------------------------------------------------

_SHOULD: Final = re.compile(r"^(?:Input|String|List|Dictionary|Value|Object|Data|Tuple) should ")
_UNION_BRANCHES: Final = frozenset({"str", "constrained-str", "bool", "int", "float"})


def _message(error: ErrorDetails) -> str:
    """Pydantic's message, phrased about the field: ``Input should be > 0`` -> ``must be > 0``."""
    if error["type"] == "missing":
        return "is required"
    return _SHOULD.sub("must ", error["msg"].removeprefix("Value error, "))


def _field_errors(
    errors: Sequence[ErrorDetails], attr_columns: Mapping[str, str]
) -> dict[str, str]:
    """One message per failing field (the first), keyed by the field or ``attr.*`` column."""
    found: dict[str, str] = {}
    finite: set[str] = set()  # fields whose message is about a non-finite number
    for error in errors:
        loc = error["loc"]
        name = str(loc[0]) if loc else ""  # a model-level error names no field
        rest = loc[1:]
        prefix = ""
        message = _message(error)
        if name == "attributes" and rest and isinstance(rest[0], str):
            key, rest = rest[0], rest[1:]
            if rest and rest[0] == "[key]":
                message = f"attribute name {key!r} {message}"
            elif rest and rest[0] in _UNION_BRANCHES and error["type"] == "finite_number":
                # NaN fails every branch; only the number branch's complaint makes sense of it.
                column = attr_columns.get(key, name)
                if column not in finite:
                    finite.add(column)
                    found[column] = ("" if key in attr_columns else f"key {key!r}: ") + message
                continue
            elif rest and rest[0] in _UNION_BRANCHES and error["type"].endswith("_type"):
                message = "must be a string, boolean, integer or number"
            if key in attr_columns:
                name = attr_columns[key]
            elif not rest or rest[0] != "[key]":
                prefix = f"key {key!r}: "
        elif rest and isinstance(rest[0], int):
            prefix = f"at index {rest[0]}: "
        found.setdefault(name, prefix + message)
    return found


# ---- the importer -------------------------------------------------------------------------------


def import_file(
    engine: Engine,
    kind: Kind,
    path: Path,
    format: str | None = None,
    batch_size: int = 5000,
    progress: bool = False,
) -> ImportReport:
    """Import the ``kind`` records of ``path`` into ``engine``; see the module docstring.

    ``format`` overrides the format inferred from the file name (``csv``, ``jsonl``, ``parquet``).
    Valid records go to the engine ``batch_size`` at a time. ``progress`` shows a tqdm bar on
    stderr. Raises :class:`InvalidInput` for a bad ``kind``/``batch_size`` or a bad file; errors of
    single records never raise, they are in the report.
    """
    if kind not in KINDS:
        raise InvalidInput(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidInput(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    return _Importer(engine, kind, path, format, batch_size, progress).run()


class _Importer:
    def __init__(
        self,
        engine: Engine,
        kind: Kind,
        path: Path,
        format: str | None,
        batch_size: int,
        progress: bool,
    ) -> None:
        self.engine = engine
        self.kind: Kind = kind
        self.reader = RecordReader(path, format, on_error=self._unreadable)
        self.report = ImportReport(kind=kind, path=path, counts=self.reader.counts)
        self.errors = _ErrorLog(self.reader.counts)
        self.total = count_hint(path, self.reader.format)
        self.flat = self.reader.format == "csv"
        self.batch_size = batch_size
        self.show_progress = progress
        self.model = _MODELS[kind]
        self.id_field = _ID_FIELD[kind]
        self.shapes = _FIELDS[kind]
        self.converters = _FROM_TEXT if self.flat else _FROM_NATIVE
        self.plans: dict[tuple[str, ...], list[_Column]] = {}
        self.regions = frozenset(engine.config.region_names)
        self.pending: list[tuple[int, BaseModel]] = []
        self.pending_ids: set[str] = set()

    def run(self) -> ImportReport:
        started = time.perf_counter()
        bar = tqdm(
            total=self.total,
            unit=self.reader.unit,
            unit_scale=True,
            desc=f"import {self.kind}",
            file=sys.stderr,
            disable=not self.show_progress,
            dynamic_ncols=True,
        )
        shown = 0
        try:
            with self.reader:
                records = iter(self.reader)
                while True:
                    try:
                        entry = next(records, None)
                    except InvalidInput as exc:
                        # The file broke part-way: keep what was read before, then say so.
                        self._flush()
                        self._finish(started)
                        raise InvalidInput(
                            f"{exc.detail}; {self.report.records} records were read before it",
                            report=self.report,
                        ) from exc
                    if entry is None:
                        break
                    number, raw = entry
                    self.report.records += 1
                    model = self._parse(number, raw)
                    if model is not None:
                        self._add(number, model)
                    if self.report.records % _PROGRESS_EVERY == 0:
                        shown = self._tick(bar, shown)
                self._flush()
                self._tick(bar, shown)
        finally:
            bar.close()
        return self._finish(started)

    def _finish(self, started: float) -> ImportReport:
        self.report.error_count = self.errors.count
        self.report.errors = self.errors.messages()
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _tick(self, bar: tqdm, shown: int) -> int:
        position = self.reader.position
        if position > shown:
            bar.update(position - shown)
        bar.set_postfix(records=self.report.records, errors=self.errors.count, refresh=False)
        return max(position, shown)

    def _unreadable(self, number: int, message: str) -> None:
        self.report.records += 1
        self.errors.add(number, None, message)

    # ---- one record -----------------------------------------------------------------------------

    def _plan(self, columns: tuple[str, ...]) -> list[_Column]:
        """How to read records with these columns; computed once per distinct column set."""
        plan = self.plans.get(columns)
        if plan is None:
            plan = []
            for name in columns:
                shape = self.shapes.get(name)
                if shape is not None:
                    plan.append(_Column(name, field=name, convert=self.converters[shape]))
                elif self.kind == "users" and name.startswith(ATTR_PREFIX):
                    plan.append(_Column(name, attr=name[len(ATTR_PREFIX) :]))
                else:
                    plan.append(_Column(name))
            if len(self.plans) >= _MAX_PLANS:  # JSON Lines could vary keys without end
                self.plans.clear()
            self.plans[columns] = plan
        return plan

    def _parse(self, number: int, raw: dict[str, Any]) -> BaseModel | None:
        """The record as a validated model, or ``None`` after reporting what is wrong with it."""
        data: dict[str, Any] = {}
        problems: dict[str, str] = {}
        attrs: dict[str, Any] = {}
        attr_columns: dict[str, str] = {}
        for column in self._plan(tuple(raw)):
            value = raw[column.name]
            if value is None or (self.flat and value == ""):
                continue  # absent: the model's default applies, or "is required"
            if column.field is not None:
                try:
                    data[column.field] = column.convert(value)
                except _BadValueError as exc:
                    problems[column.field] = str(exc)
            elif column.attr is not None:
                attrs[column.attr] = value
                attr_columns[column.attr] = column.name
            else:
                problems[column.name] = self._unknown()
        if attrs:
            self._merge_attributes(data, attrs, attr_columns, problems)
        try:
            model = self.model.model_validate(data)
        except ValidationError as exc:
            for name, message in _field_errors(exc.errors(), attr_columns).items():
                problems.setdefault(name, message)
        except (OverflowError, OSError) as exc:
            # A time that datetime cannot hold (epoch 1e20, year 1 at +01:00) escapes pydantic as
            # OverflowError or OSError rather than a ValidationError; only timestamps can.
            problems.setdefault(_TIMESTAMP_FIELD.get(self.kind, ""), f"out of range ({exc})")
        else:
            if isinstance(model, User) and model.region not in self.regions:
                configured = ", ".join(sorted(self.regions))
                problems["region"] = f"unknown region {model.region!r}; configured: {configured}"
        if problems:
            for name, message in problems.items():
                self.errors.add(number, name, message)
            return None
        return model

    def _unknown(self) -> str:
        expected = ", ".join(self.shapes)
        if self.kind == "users":
            expected += f", {ATTR_PREFIX}<name>"
        return f"unknown field; expected {expected}"

    @staticmethod
    def _merge_attributes(
        data: dict[str, Any],
        attrs: dict[str, Any],
        attr_columns: dict[str, str],
        problems: dict[str, str],
    ) -> None:
        existing = data.setdefault("attributes", {})
        if not isinstance(existing, dict):
            return  # the model reports the malformed 'attributes' value
        for key, value in attrs.items():
            if key in existing:
                problems[attr_columns[key]] = f"attribute {key!r} is also given in 'attributes'"
            else:
                existing[key] = value

    # ---- batches --------------------------------------------------------------------------------

    def _add(self, number: int, model: BaseModel) -> None:
        if self.kind != "events":
            # A repeated id goes in a later batch, so records apply in file order and a user
            # listed twice with different regions hits the engine's home-region check.
            key = getattr(model, self.id_field)
            if key in self.pending_ids:
                self._flush()
            self.pending_ids.add(key)
        self.pending.append((number, model))
        if len(self.pending) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        self.pending_ids.clear()
        if not batch:
            return
        if self.kind == "events":
            self._ingest(batch)
        else:
            self._upsert(batch)

    def _ingest(self, batch: list[tuple[int, BaseModel]]) -> None:
        events = [cast(Event, model) for _, model in batch]
        result = self.engine.ingest(events)
        self.report.accepted += result.accepted
        self.report.duplicates += result.duplicates
        for index, detail in result.errors:  # unknown user or item, by position in the batch
            self.errors.add(batch[index][0], None, detail)

    def _put(self, models: list[BaseModel]) -> UpsertResult:
        if self.kind == "items":
            return self.engine.put_items(cast(list[Item], models))
        return self.engine.put_users(cast(list[User], models))

    def _upsert(self, batch: list[tuple[int, BaseModel]]) -> None:
        """Write ``batch``; when the engine refuses it, find the records at fault by splitting.

        The engine checks a whole batch before writing any of it, so a refused batch wrote nothing
        and its halves can be retried; a single refused record is reported. Halving finds ``k``
        bad records in about ``2k log n`` calls instead of ``n``. Server-side failures (5xx) are
        not a record's fault: they propagate at once, the batch unwritten.
        """
        try:
            result = self._put([model for _, model in batch])
        except FypError as exc:
            if exc.status >= 500:
                raise
            if len(batch) > 1:
                middle = len(batch) // 2
                self._upsert(batch[:middle])
                self._upsert(batch[middle:])
                return
            self.errors.add(batch[0][0], None, exc.detail)
            return
        self.report.created += result.created
        self.report.updated += result.updated

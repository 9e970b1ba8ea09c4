"""Fuzzing the importers: every kind (items, users, events) in every format (CSV, JSON Lines,
Parquet), from generated files that mix valid records with hostile ones.

Each example is built from row plans whose fate is known by construction: a valid row carries the
values it must store, a hostile row a flaw that must get it refused (a wrong type, a missing or
unknown field, NaN or infinity, an out-of-range number or date, oversized text, NUL characters,
bytes that are not UTF-8, JSON that is not an object or nests without end, an unknown user or item,
a user moving region, too many cells). File-level noise comes on top: byte-order marks, blank
lines, CRLF, quoted cells spanning lines, shuffled columns, short rows, a last line without its
newline or cut short, a column missing or of the wrong Parquet type, nulls, small Parquet batches.

The oracle below replays the plans, never the importer, and the test checks that the import did
exactly what it says:

* the import never raises: every flaw is a per-record message;
* the records with messages are exactly the hostile ones, each named by the line it starts on
  (CSV and JSON Lines, every line counted, the CSV header included) or by its row (Parquet,
  counting from 1), and the message says which of the two it counts;
* every valid record is stored exactly once with its values, and nothing from a hostile one;
* importing the same file again changes nothing.

Bounded: ``FUZZ_EXAMPLES`` examples for each of the nine kind x format pairs, at most
``MAX_ROWS`` rows each: 18 s of CPU in all, start-up included (37 s of wall time on a two-core
host at load 8).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fyp.config import load_config
from fyp.engine import Engine
from fyp.ingest import import_file, readers
from fyp.ingest.importer import ImportReport
from fyp.types import EVENT_TYPES, Item, User

FUZZ_EXAMPLES = 25
MAX_ROWS = 10
NOW = 1_700_000_000.0
# Valid times: well in the past of the engine's clock and after any sane floor.
T_LO_MS, T_HI_MS = 1_500_000_000_000, 1_690_000_000_000

KNOWN_USERS = {"known-u1": "us", "known-u2": "eu", "known-u3": "us"}
KNOWN_ITEMS = ("known-i1", "known-i2")

Draw = Callable[[st.SearchStrategy[Any]], Any]

# ---- what a field may hold ----------------------------------------------------------------------


@dataclass(frozen=True)
class Good:
    """A valid value, by its meaning (the importer may receive any of its encodings)."""

    value: Any


@dataclass(frozen=True)
class BadValue:
    """A value that must get its record refused (the encoding is drawn per format)."""


BAD = BadValue()
Slot = Good | BadValue | None  # None: the field is absent


@dataclass(frozen=True, repr=False)
class Variant:
    """One way a Parquet column may hold a field: its type, how a valid meaning is written in it,
    and values of that type that must be refused."""

    type: pa.DataType
    encode: Callable[[Any], Any]
    bad: st.SearchStrategy[Any]
    accepts: Callable[[Any], bool] = lambda _: True  # which meanings this type can carry
    storage: pa.DataType | None = None  # values are built as this type, then cast to ``type``

    def array(self, values: list[Any]) -> pa.Array:
        if self.storage is None:
            return pa.array(values, type=self.type)
        return pa.array(values, type=self.storage).cast(self.type)

    def __repr__(self) -> str:
        return f"Variant({self.type})"


@dataclass(frozen=True)
class Domain:
    """How one field's values are generated and written in each format."""

    good: st.SearchStrategy[Any]
    text: Callable[[Draw, Any], str]  # a CSV cell meaning the value
    native: Callable[[Draw, Any], Any]  # a JSON Lines value meaning it
    bad_text: st.SearchStrategy[str]
    bad_native: st.SearchStrategy[Any]
    parquet: dict[str, Variant]
    wrong: tuple[Variant, ...] = ()  # Parquet column types that fit no value of the field


def _same(_draw: Draw, value: Any) -> Any:
    return value


def _one_of(*options: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(options)


LONG = "x" * 5000  # past every text limit, under the CSV reader's cell limit
NAN, INF = math.nan, math.inf

WRONG_INT = Variant(pa.int64(), lambda v: v, st.integers(-5, 5))
WRONG_BOOL = Variant(pa.bool_(), lambda v: v, st.booleans())
WRONG_INTS = Variant(pa.list_(pa.int64()), lambda v: v, st.lists(st.integers(0, 9), max_size=2))

_BAD_IDS = ("a b", " lead", "a/b", "-x", "é", "a\nb", "a\r\n\rb", 'q"t', "a,b", "a\x00", "x" * 129)


def _id_domain(pool: tuple[str, ...], unknown: tuple[str, ...] = ()) -> Domain:
    bad = _one_of(*_BAD_IDS, *unknown)
    return Domain(
        good=st.sampled_from(pool) if pool else st.nothing(),
        text=_same,
        native=_same,
        bad_text=bad,
        bad_native=st.one_of(bad, _one_of(5, 1.5, True, ["a"], {"a": "b"}, "")),
        parquet={"string": Variant(pa.string(), lambda v: v, st.one_of(bad, st.just("")))},
        wrong=(WRONG_INT, WRONG_INTS),
    )


def _iso(draw: Draw, t: float) -> str:
    offset = draw(st.sampled_from([0, 2, -5, 5.5]))
    when = dt.datetime.fromtimestamp(t, dt.timezone(dt.timedelta(hours=offset)))
    text = when.isoformat()
    if offset == 0 and draw(st.booleans()):
        text = when.replace(tzinfo=None).isoformat()  # naive means UTC
    return text


def _time_text(draw: Draw, t: float) -> str:
    return _iso(draw, t) if draw(st.booleans()) else repr(t)


def _time_native(draw: Draw, t: float) -> Any:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return t
    if choice == 1 and t.is_integer():
        return int(t)
    return _iso(draw, t)


# 9999-12-31T23:30Z is a fine instant, but not a datetime once shown at +01:00.
_PAST_DATETIME_MS = int(dt.datetime(9999, 12, 31, 23, 30, tzinfo=dt.UTC).timestamp()) * 1000


def _timestamp_variant(unit: str, tz: str | None, bad: st.SearchStrategy[int]) -> Variant:
    # Built from integers, so that a column can hold instants no Python datetime can.
    scale = {"ms": 1000, "us": 1_000_000}[unit]
    return Variant(pa.timestamp(unit, tz=tz), lambda t: round(t * scale), bad, storage=pa.int64())


_BAD_TIME_TEXT = ("yesterday", "2024-13-01T00:00:00Z", "nan", "inf", "-inf", "1e20", "1e17")
_BAD_TIME_TEXT_MORE = ("-1e20", "0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00", "[1]")

TIMESTAMP = Domain(
    good=st.integers(T_LO_MS, T_HI_MS).map(lambda ms: ms / 1000),
    text=_time_text,
    native=_time_native,
    bad_text=_one_of(*_BAD_TIME_TEXT, *_BAD_TIME_TEXT_MORE, "true"),
    bad_native=_one_of(
        NAN, INF, -INF, 1e20, 1e17, -1e20, True, [1], {"t": 1}, *_BAD_TIME_TEXT_MORE[1:3]
    ),
    parquet={
        "epoch": Variant(pa.float64(), lambda t: t, _one_of(NAN, INF, 1e20, 1e17)),
        "utc": _timestamp_variant("ms", "UTC", _one_of(2**62, -(2**62))),
        "offset": _timestamp_variant("ms", "+01:00", st.just(_PAST_DATETIME_MS)),
        "naive": _timestamp_variant("us", None, _one_of(2**62, -(2**62))),
        "iso": Variant(
            pa.string(),
            lambda t: dt.datetime.fromtimestamp(t, dt.UTC).isoformat(),
            _one_of("yesterday", "0001-01-01T00:00:00+01:00"),
        ),
    },
    wrong=(WRONG_BOOL, WRONG_INTS, Variant(pa.time64("us"), lambda v: v, st.just(dt.time(1)))),
)

DURATION = Domain(
    good=st.one_of(
        st.floats(0.001, 36_000, allow_nan=False, allow_infinity=False), st.integers(1, 36_000)
    ),
    text=lambda _draw, v: repr(v),
    native=_same,
    bad_text=_one_of(
        "0", "-1", "-0.5", "36000.5", "1e400", "nan", "inf", "-inf", "ten", "12,5", "0x10", "[1]"
    ),
    bad_native=_one_of(0, -1, 36_000.5, NAN, INF, -INF, "12", True, [1], {"s": 1}, 10**400),
    parquet={
        "float": Variant(
            pa.float64(), lambda v: float(v), _one_of(0.0, -1.0, 36_000.5, NAN, INF, -INF)
        )
    },
    wrong=(Variant(pa.string(), lambda v: v, _one_of("12", "ten")), WRONG_BOOL),
)

WATCH_MS = Domain(
    good=st.integers(0, 86_400_000),
    text=lambda draw, v: f"{v}.0" if draw(st.booleans()) else str(v),
    native=lambda draw, v: float(v) if draw(st.booleans()) else v,
    bad_text=_one_of("-1", "86400001", "1.5", "nan", "inf", "abc", "1e400", "9" * 30),
    bad_native=_one_of(-1, 86_400_001, 1.5, NAN, INF, "100", True, [1], 10**30),
    parquet={
        "int": Variant(pa.int64(), lambda v: v, _one_of(-1, 86_400_001)),
        "float": Variant(pa.float64(), lambda v: float(v), _one_of(1.5, NAN, -1.0)),
    },
    wrong=(Variant(pa.string(), lambda v: v, st.just("100")),),
)

# Text that tests quoting and line counting: commas, quotes, every line break, a BOM, emoji.
_TRICKY = st.sampled_from([",", '"', "\n", "\r\n", "\r", "\ufeff", " ", "é", "\U0001f600", "\t"])
_PLAIN = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_TEXT = st.lists(st.one_of(_PLAIN, _TRICKY), max_size=12).map("".join)
CAPTION = Domain(
    good=st.one_of(_TEXT, st.just("y" * 2200), st.just("")),
    text=_same,
    native=_same,
    bad_text=_one_of("x" * 2201, "a\x00b", LONG),
    bad_native=_one_of("x" * 2201, "a\x00b", 5, ["a"], {"a": 1}, True),
    parquet={"string": Variant(pa.string(), lambda v: v, _one_of("x" * 2201, "a\x00b"))},
    wrong=(WRONG_INT,),
)


def _list_text(draw: Draw, values: list[str]) -> str:
    if values and all(v.strip() and "|" not in v for v in values) and draw(st.booleans()):
        return "|".join(values)
    return json.dumps(values)


def _list_native(draw: Draw, values: list[str]) -> Any:
    if values and all(v.strip() and "|" not in v for v in values) and draw(st.booleans()):
        return "|".join(values)  # JSON Lines and Parquet take the text form too
    return values


def _list_domain(pool: tuple[str, ...], bad: tuple[Any, ...], bad_text: tuple[str, ...]) -> Domain:
    return Domain(
        good=st.lists(st.sampled_from(pool), max_size=3),
        text=_list_text,
        native=_list_native,
        bad_text=_one_of(*bad_text, *(json.dumps(v) for v in bad)),
        bad_native=_one_of(*bad, 5, {"a": 1}, [5], [["a"]]),
        parquet={
            "list": Variant(pa.list_(pa.string()), lambda v: v, _one_of(*bad)),
            "text": Variant(
                pa.string(),
                lambda v: "|".join(v),
                _one_of(*bad_text),
                accepts=lambda v: bool(v) and all(x.strip() for x in v),
            ),
        },
        wrong=(WRONG_INT, WRONG_INTS),
    )


TAGS = _list_domain(
    ("cooking", "#Pets", " Travel ", "a-b", "#x.y", "cooking"),
    (["bad tag"], ["#"], ["x" * 65], ["a\x00"], ["t"] * 33, ["a,b"]),
    ("ok|bad tag", '["a",', "[1]", "#", "|".join(["t"] * 33)),
)
ITEM_REGIONS = _list_domain(
    ("us", "eu", "ap-south"), (["US"], ["u s"], ["x" * 40], ["-a"]), ("US|eu", "[1]", "{")
)

LANGUAGE = Domain(
    good=st.sampled_from(["en", "pt-BR", "de"]),
    text=_same,
    native=_same,
    bad_text=_one_of("EN", "english", "e", "en_US"),
    bad_native=_one_of("EN", "english", 5, ["en"]),
    parquet={"string": Variant(pa.string(), lambda v: v, _one_of("EN", "english"))},
    wrong=(WRONG_INT,),
)


def _vector_text(draw: Draw, values: list[float]) -> str:
    how = draw(st.integers(0, 2))
    if how == 0:
        return json.dumps(values)
    return (" " if how == 1 else "|").join(repr(v) for v in values)


VECTOR = Domain(
    good=st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=4),
    text=_vector_text,
    native=_same,
    bad_text=_one_of("1 two", "[]", "nan", "inf 1", '["a"]', "[1,", json.dumps([0.5] * 1025)),
    bad_native=_one_of([], [NAN], [INF], ["a"], 5, [[1.0]], [0.5] * 1025),
    parquet={"list": Variant(pa.list_(pa.float64()), lambda v: v, _one_of([], [NAN], [INF]))},
    wrong=(Variant(pa.list_(pa.string()), lambda v: v, st.just(["a"])),),
)

USER_REGION = Domain(
    good=st.sampled_from(["us", "eu"]),
    text=_same,
    native=_same,
    bad_text=_one_of("mars", "US", "u s"),
    bad_native=_one_of("mars", "US", 5, ["us"]),
    parquet={"string": Variant(pa.string(), lambda v: v, _one_of("mars", "US"))},
    wrong=(WRONG_INT,),
)

_ATTRIBUTE_VALUES = {
    "age": st.integers(-(10**6), 10**6),
    "country": _TEXT,
    "vip": st.booleans(),
    "score": st.floats(allow_nan=False, allow_infinity=False),
}
_STRUCT = pa.struct(
    [("age", pa.int64()), ("country", pa.string()), ("vip", pa.bool_()), ("score", pa.float64())]
)
_BAD_ATTRIBUTES: tuple[Any, ...] = (
    [1],
    {"Bad": 1},
    {"a": [1]},
    {"a": NAN},
    {"a": "x" * 257},
    {f"k{n}": n for n in range(33)},
    5,
)


def _attributes_native(draw: Draw, value: dict[str, Any]) -> Any:
    return json.dumps(value) if draw(st.booleans()) else value


ATTRIBUTES = Domain(
    good=st.fixed_dictionaries({}, optional=_ATTRIBUTE_VALUES),
    text=lambda _draw, v: json.dumps(v),
    native=_attributes_native,
    bad_text=_one_of(*(json.dumps(v) for v in _BAD_ATTRIBUTES), "{bad", '{"a": NaN}'),
    bad_native=_one_of(*_BAD_ATTRIBUTES),
    parquet={
        "struct": Variant(
            _STRUCT,
            lambda v: {name: v.get(name) for name in _ATTRIBUTE_VALUES},
            st.just({"age": None, "country": None, "vip": None, "score": NAN}),
        ),
        "json": Variant(pa.string(), json.dumps, _one_of("[1]", '{"Bad": 1}', "{bad")),
    },
    wrong=(WRONG_INT, WRONG_INTS),
)

ATTR_PLAN = Domain(  # a users' ``attr.plan`` column: one attribute, as text
    good=_TEXT.filter(bool),
    text=_same,
    native=_same,
    bad_text=st.just("x" * 257),
    bad_native=_one_of("x" * 257, [1], {"a": 1}),
    parquet={"string": Variant(pa.string(), lambda v: v, st.just("x" * 257))},
    wrong=(WRONG_INTS,),
)

EVENT_TYPE = Domain(
    good=st.sampled_from(EVENT_TYPES),
    text=_same,
    native=_same,
    bad_text=_one_of("watch", "LIKE", " like"),
    bad_native=_one_of("watch", "LIKE", 5, ["like"]),
    parquet={"string": Variant(pa.string(), lambda v: v, _one_of("watch", "LIKE"))},
    wrong=(WRONG_INT,),
)

REQUEST_ID = Domain(
    good=_TEXT.filter(bool),
    text=_same,
    native=_same,
    bad_text=_one_of("x" * 129, LONG),
    bad_native=_one_of("x" * 129, 5, ["a"]),
    parquet={"string": Variant(pa.string(), lambda v: v, st.just("x" * 129))},
    wrong=(WRONG_INT,),
)

UNKNOWN = Domain(  # a column no model has: empty is fine, anything else is refused
    good=st.nothing(),
    text=_same,
    native=_same,
    bad_text=_one_of("red", "0"),
    bad_native=_one_of("red", 0, False, []),
    parquet={"string": Variant(pa.string(), lambda v: v, st.just("red"))},
)


class Column:
    """A column of a kind: its name, its values' domain, whether a record needs it, whether it is
    the record's id (planned, not drawn). Not a dataclass, so a failing example prints short."""

    def __init__(
        self, name: str, domain: Domain, required: bool = False, identity: bool = False
    ) -> None:
        self.name, self.domain, self.required, self.identity = name, domain, required, identity

    def __repr__(self) -> str:
        return self.name


KIND_COLUMNS: dict[str, tuple[Column, ...]] = {
    "items": (
        Column("item_id", _id_domain(()), required=True, identity=True),
        Column("creator_id", _id_domain(("c1", "c2", "c.3")), required=True),
        Column("created_at", TIMESTAMP),
        Column("duration_s", DURATION, required=True),
        Column("caption", CAPTION),
        Column("tags", TAGS),
        Column("language", LANGUAGE),
        Column("regions", ITEM_REGIONS),
        Column("vector", VECTOR),
    ),
    "users": (
        Column("user_id", _id_domain(()), required=True, identity=True),
        Column("region", USER_REGION, required=True),
        Column("attributes", ATTRIBUTES),
        Column("attr.plan", ATTR_PLAN),
    ),
    "events": (
        Column("event_id", _id_domain(()), required=True, identity=True),
        Column("user_id", _id_domain(tuple(KNOWN_USERS), ("ghost",)), required=True),
        Column("item_id", _id_domain(KNOWN_ITEMS, ("ghost-item",)), required=True),
        Column("type", EVENT_TYPE, required=True),
        Column("ts", TIMESTAMP, required=True),
        Column("watch_ms", WATCH_MS),
        Column("request_id", REQUEST_ID),
    ),
}
EXTRA = Column("colour", UNKNOWN)

# ---- plans and the oracle -----------------------------------------------------------------------


@dataclass
class Plan:
    """One record to write: its slots by column, or ``junk`` (a record no reader can parse)."""

    slots: dict[str, Slot]
    junk: bool = False
    cut: bool = False  # CSV only: the last record, cut short; either outcome is acceptable

    def ok(self, kind: str) -> bool:
        if self.junk:
            return False
        if any(isinstance(slot, BadValue) for slot in self.slots.values()):
            return False
        # A required column left out of the file is missing from every record.
        required = (c.name for c in KIND_COLUMNS[kind] if c.required)
        return all(isinstance(self.slots.get(name), Good) for name in required)

    def value(self, name: str) -> Any:
        slot = self.slots.get(name)
        return slot.value if isinstance(slot, Good) else None


@dataclass
class Schema:
    """The columns of one file: the kind's columns (maybe one left out), maybe an unknown one."""

    columns: tuple[Column, ...]
    variants: dict[str, Variant] = field(default_factory=dict, repr=False)  # Parquet: types
    wrong: set[str] = field(default_factory=set)  # Parquet: columns of a type no value fits


@st.composite
def schemas(draw: Draw, kind: str, fmt: str) -> Schema:
    columns = list(KIND_COLUMNS[kind])
    if draw(st.integers(0, 5)) == 0:  # leave a column out (every record then lacks it)
        columns.pop(draw(st.integers(1, len(columns) - 1)))
    if draw(st.integers(0, 4)) == 0:
        columns.append(EXTRA)
    rest = draw(st.permutations(columns[1:]))
    schema = Schema((columns[0], *rest))  # the id first: a CSV record cut short keeps it
    if fmt == "parquet":
        for column in schema.columns:
            options = sorted(column.domain.parquet)
            schema.variants[column.name] = column.domain.parquet[draw(st.sampled_from(options))]
        if draw(st.integers(0, 4)) == 0:
            candidates = [c for c in schema.columns if c.domain.wrong and not c.identity]
            if candidates:
                column = draw(st.sampled_from(candidates))
                schema.variants[column.name] = draw(st.sampled_from(column.domain.wrong))
                schema.wrong.add(column.name)
    return schema


def _good_slot(draw: Draw, column: Column, schema: Schema) -> Slot:
    if column.name in schema.wrong:
        return BAD if draw(st.booleans()) else None
    value = draw(column.domain.good)
    variant = schema.variants.get(column.name)
    if variant is not None and not variant.accepts(value):
        return None
    return Good(value)


@st.composite
def plans(draw: Draw, kind: str, fmt: str, schema: Schema, prefix: str) -> list[Plan]:
    ids = itertools.count()
    result: list[Plan] = []
    for _ in range(draw(st.integers(0, MAX_ROWS))):
        shape = draw(st.sampled_from(["good"] * 5 + ["bad"] * 3 + ["junk", "again"]))
        if shape == "again" and result:
            earlier = draw(st.sampled_from(result))
            if kind == "events":  # the same event twice: a duplicate, or refused again
                result.append(Plan(dict(earlier.slots), junk=earlier.junk))
                continue
            shape = "good"  # an update of an earlier id, new values
            own_id: Slot = earlier.slots.get(schema.columns[0].name) or Good(f"{prefix}x")
        else:
            own_id = Good(f"{prefix}{next(ids)}")
        slots: dict[str, Slot] = {}
        for column in schema.columns:
            if column.identity:
                slots[column.name] = own_id
            elif column.domain.good.is_empty:
                slots[column.name] = None
            elif column.required or draw(st.booleans()):
                slots[column.name] = _good_slot(draw, column, schema)
            else:
                slots[column.name] = None
        plan = Plan(slots, junk=shape == "junk" and fmt != "parquet")
        if shape == "bad":
            for flawed in draw(st.sets(st.sampled_from(schema.columns), min_size=1, max_size=2)):
                if flawed.required and draw(st.booleans()):
                    plan.slots[flawed.name] = None  # missing
                else:
                    plan.slots[flawed.name] = BAD
        result.append(plan)
    return result


@dataclass
class Expected:
    """What the import must do, computed from the plans alone."""

    flagged: set[int]  # numbers of the records that must be reported
    either: set[int]  # numbers that may be reported or not (a cut-short last CSV record)
    records: int
    stored: dict[str, dict[str, Any]]  # id -> the fields the engine must hold
    maybe: set[str]  # ids that may be stored or not (the cut record's)
    created: int = 0
    updated: int = 0
    accepted: int = 0
    duplicates: int = 0


def oracle(kind: str, schema: Schema, rows: list[tuple[int, Plan]]) -> Expected:
    id_column = schema.columns[0].name
    expected = Expected(set(), set(), len(rows), {}, set())
    homes: dict[str, str] = {}
    for number, plan in rows:
        if plan.cut:  # its id may be stored, with whatever the cut left
            expected.either.add(number)
            expected.maybe.add(plan.value(id_column))
            continue
        if not plan.ok(kind):
            expected.flagged.add(number)
            continue
        unknown = (
            plan.value("user_id") not in KNOWN_USERS or plan.value("item_id") not in KNOWN_ITEMS
        )
        if kind == "events" and unknown:
            expected.flagged.add(number)
            continue
        key = plan.value(id_column)
        values = {name: slot.value for name, slot in plan.slots.items() if isinstance(slot, Good)}
        if kind == "events":
            if key in expected.stored:
                expected.duplicates += 1
            else:
                expected.accepted += 1
                expected.stored[key] = values
            continue
        if kind == "users" and homes.setdefault(key, values["region"]) != values["region"]:
            expected.flagged.add(number)  # a user does not move region by upsert
            continue
        if key in expected.stored:
            expected.updated += 1
            # An update that does not say when the item was published keeps the stored time.
            earlier = expected.stored[key].get("created_at")
            if kind == "items" and "created_at" not in values and earlier is not None:
                values["created_at"] = earlier
        else:
            expected.created += 1
        expected.stored[key] = values
    return expected


# ---- writing the files --------------------------------------------------------------------------

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _csv_cell(draw: Draw, cell: str) -> str:
    # An RFC 4180 writer of its own: csv.writer leaves a lone \r unquoted unless it is part of the
    # line terminator, and the test should not share the importer's library anyway.
    if any(ch in cell for ch in ',"\r\n') or (cell and draw(st.integers(0, 3)) == 0):
        return '"' + cell.replace('"', '""') + '"'
    return cell


def _cell_text(draw: Draw, column: Column, slot: Slot) -> str:
    if slot is None:
        return ""
    if isinstance(slot, BadValue):
        return str(draw(column.domain.bad_text))
    return str(column.domain.text(draw, slot.value))


def write_csv(draw: Draw, path: Path, schema: Schema, rows: list[Plan]) -> list[tuple[int, Plan]]:
    """Write ``rows`` as CSV; return each record with the line it starts on."""
    end = draw(st.sampled_from(["\n", "\r\n"]))
    text = "\ufeff" if draw(st.booleans()) else ""
    text += end * draw(st.integers(0, 1))  # blank lines before the header are skipped
    text += ",".join(_csv_cell(draw, c.name) for c in schema.columns) + end
    numbered = []
    for index, plan in enumerate(rows):
        text += end * draw(st.sampled_from([0, 0, 0, 1, 2]))
        cells = [_cell_text(draw, c, plan.slots.get(c.name)) for c in schema.columns]
        if plan.junk:
            if draw(st.booleans()):
                cells.append("surplus")
            else:  # bytes that are not UTF-8 (written through surrogateescape below)
                spot = draw(st.integers(0, len(cells) - 1))
                cells[spot] += draw(st.sampled_from(["\udcff", "\udcfe\udc80", "\udcc3x"]))
        while len(cells) > 1 and cells[-1] == "" and any(cells[:-1]) and draw(st.booleans()):
            cells.pop()  # a short row: the missing cells are empty
        written = [_csv_cell(draw, cell) for cell in cells]
        line = ",".join(written)
        numbered.append((len(_LINE_BREAK.findall(text)) + 1, plan))
        last = index == len(rows) - 1
        if last and draw(st.integers(0, 3)) == 0:
            first = len(written[0])  # the id cell stays whole
            if len(line) > first + 2 and not plan.junk:
                line = line[: draw(st.integers(first + 1, len(line) - 1))]
                plan.cut = True
        text += line
        if not (last and (plan.cut or draw(st.booleans()))):
            text += end
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return numbered


_JUNK_LINES = (
    b"[1, 2]",
    b'"text"',
    b"5",
    b"null",
    b"true",
    b'{"a":',
    b"{bad json}",
    b"\xff\xfe{}",
    b'{"caption": "\xc3("}',
    b"[" * 3000 + b"]" * 3000,
    b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b"\x00",
    b"{}",
)


def write_jsonl(draw: Draw, path: Path, schema: Schema, rows: list[Plan]) -> list[tuple[int, Plan]]:
    end = draw(st.sampled_from([b"\n", b"\r\n"]))
    lines: list[bytes] = []
    numbered = []
    for plan in rows:
        for _ in range(draw(st.sampled_from([0, 0, 0, 1]))):
            lines.append(draw(st.sampled_from([b"", b"   ", b"\t", b"\r"])))
        if plan.junk:
            lines.append(draw(st.sampled_from(_JUNK_LINES)))
        else:
            record: dict[str, Any] = {}
            for column in draw(st.permutations(schema.columns)):
                slot = plan.slots.get(column.name)
                if isinstance(slot, Good):
                    record[column.name] = column.domain.native(draw, slot.value)
                elif isinstance(slot, BadValue):
                    record[column.name] = draw(column.domain.bad_native)
                elif draw(st.booleans()):
                    record[column.name] = None  # null is absent
            lines.append(json.dumps(record, ensure_ascii=draw(st.booleans())).encode())
        numbered.append((len(lines), plan))
    if rows and not rows[-1].junk and draw(st.integers(0, 3)) == 0:
        lines[-1] = lines[-1][: draw(st.integers(1, len(lines[-1]) - 1))]  # cut short
        rows[-1].junk = True  # no prefix of a JSON object is one: it must be reported
        content = end.join(lines)
    else:
        content = end.join(lines) + (end if draw(st.booleans()) else b"")
    if draw(st.booleans()):
        content = b"\xef\xbb\xbf" + content
    path.write_bytes(content)
    return numbered


def write_parquet(
    draw: Draw, path: Path, schema: Schema, rows: list[Plan]
) -> list[tuple[int, Plan]]:
    table: dict[str, pa.Array] = {}
    for column in schema.columns:
        variant = schema.variants[column.name]
        values = []
        for plan in rows:
            slot = plan.slots.get(column.name)
            if isinstance(slot, Good):
                values.append(variant.encode(slot.value))
            elif isinstance(slot, BadValue):
                values.append(draw(variant.bad))
            else:
                values.append(None)
        table[column.name] = variant.array(values)
    pq.write_table(pa.table(table), path, row_group_size=draw(st.integers(1, 4)))
    return list(enumerate(rows, 1))


# ---- reading back what the engine holds ---------------------------------------------------------


def _sql(engine: Engine, database: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    path = engine.config.data_dir / database
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute(query, args).fetchall()


def stored_ids(engine: Engine, kind: str, prefix: str) -> list[str]:
    """Every id with ``prefix`` in the engine's databases, as many times as it is stored."""
    if kind == "items":
        query, databases = "SELECT item_id FROM items WHERE substr(item_id, 1, ?) = ?", ["catalog"]
    else:
        table, column = ("users", "user_id") if kind == "users" else ("events", "event_id")
        query = f"SELECT {column} FROM {table} WHERE substr({column}, 1, ?) = ?"
        databases = [f"region-{region}" for region in engine.config.region_names]
    return sorted(
        row[0] for db in databases for row in _sql(engine, f"{db}.db", query, len(prefix), prefix)
    )


def _tag(value: str) -> str:
    return value.strip().lstrip("#").strip().lower()


def check_stored(engine: Engine, kind: str, prefix: str, expected: Expected) -> None:
    ids = stored_ids(engine, kind, prefix)
    assert len(ids) == len(set(ids)), f"stored twice: {ids}"
    assert set(expected.stored) <= set(ids) <= set(expected.stored) | expected.maybe, (
        f"stored {ids}, expected {sorted(expected.stored)} (maybe {sorted(expected.maybe)})"
    )
    checked = {key: values for key, values in expected.stored.items() if key not in expected.maybe}
    if kind == "items":
        for key, values in checked.items():
            item = engine.get_item(key)
            assert item.creator_id == values["creator_id"]
            assert item.duration_s == values["duration_s"]
            assert item.caption == values.get("caption", "")
            assert item.tags == tuple(dict.fromkeys(_tag(t) for t in values.get("tags", [])))
            assert item.language == values.get("language")
            assert set(item.regions) == set(values.get("regions", []))
            if "created_at" in values:
                assert item.created_at == pytest.approx(values["created_at"], abs=2e-3)
    elif kind == "users":
        for key, values in checked.items():
            user = engine.get_user(key)
            attributes = {k: v for k, v in values.get("attributes", {}).items() if v is not None}
            if "attr.plan" in values:
                attributes["plan"] = values["attr.plan"]
            assert (user.region, user.attributes) == (values["region"], attributes)
    else:
        by_user: dict[str, dict[str, Any]] = {}
        for user_id, region in KNOWN_USERS.items():
            handle = engine.gate.open(region, engine.service(region), "serve_feed")
            for event in handle.events.recent_for_user(user_id, 100_000):
                if event.event_id.startswith(prefix):
                    by_user[event.event_id] = {"user_id": user_id, "event": event}
        for key, values in checked.items():
            found = by_user[key]
            event = found["event"]
            assert found["user_id"] == values["user_id"]
            assert (event.item_id, event.type) == (values["item_id"], values["type"])
            assert event.ts == pytest.approx(values["ts"], abs=2e-3)
            assert event.watch_ms == values.get("watch_ms")
            assert event.request_id == values.get("request_id")


_MESSAGE = re.compile(r"^(line|row) (\d+)(, field '[^']+')?: .+", re.S)


def check_report(report: ImportReport, fmt: str, expected: Expected) -> None:
    counts = "row" if fmt == "parquet" else "line"
    assert report.counts == counts
    assert counts in report.numbering
    numbers = set()
    for message in report.errors:
        match = _MESSAGE.match(message)
        assert match is not None, message
        assert match.group(1) == counts, message
        numbers.add(int(match.group(2)))
    assert report.error_count == len(report.errors)  # far below the cap here
    assert expected.flagged <= numbers <= expected.flagged | expected.either, (
        f"reported {sorted(numbers)}, expected {sorted(expected.flagged)}: {report.errors}"
    )
    assert report.records == expected.records


# ---- the fuzz test ------------------------------------------------------------------------------

KINDS = ("items", "users", "events")
FORMATS = ("csv", "jsonl", "parquet")
_WRITERS = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}


def _engine(path: Path, kind: str) -> Engine:
    engine = Engine(load_config(path), clock=lambda: NOW)
    if kind == "events":
        engine.put_users([User(user_id=u, region=r) for u, r in KNOWN_USERS.items()])
        engine.put_items(
            [
                Item(item_id=i, creator_id="c1", created_at=dt.datetime(2020, 1, 1), duration_s=9)
                for i in KNOWN_ITEMS
            ]
        )
    return engine


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_import_fuzz(kind: str, fmt: str, tmp_path: Path) -> None:
    engine = _engine(tmp_path / "data", kind)
    examples = itertools.count()

    @settings(max_examples=FUZZ_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        n = next(examples)
        prefix = f"f{n}."  # every example writes its own ids into the shared engine
        schema = data.draw(schemas(kind, fmt))
        rows = data.draw(plans(kind, fmt, schema, prefix))
        path = tmp_path / f"{kind}-{n}.{fmt}"
        numbered = _WRITERS[fmt](data.draw, path, schema, rows)
        expected = oracle(kind, schema, numbered)
        batch_size = data.draw(st.integers(1, 4))
        with mock.patch.object(readers, "PARQUET_BATCH_ROWS", 3):  # numbering across batches
            report = import_file(engine, kind, path, batch_size=batch_size)
            check_report(report, fmt, expected)
            if not expected.maybe:
                if kind == "events":
                    assert (report.accepted, report.duplicates) == (
                        expected.accepted,
                        expected.duplicates,
                    )
                else:
                    assert (report.created, report.updated) == (expected.created, expected.updated)
            check_stored(engine, kind, prefix, expected)

            again = import_file(engine, kind, path, batch_size=data.draw(st.integers(1, 4)))
        assert sorted(again.errors) == sorted(report.errors)
        if kind == "events":
            assert again.accepted == 0
            assert again.duplicates == report.accepted + report.duplicates
        else:
            assert again.created == 0
        check_stored(engine, kind, prefix, expected)

    try:
        run()
    finally:
        engine.close()


def _iter_numbers(messages: list[str]) -> Iterator[int]:
    for message in messages:
        match = _MESSAGE.match(message)
        assert match is not None
        yield int(match.group(2))

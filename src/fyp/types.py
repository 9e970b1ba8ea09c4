"""Domain types: what fyp stores and serves, with the limits every entry point enforces.

These pydantic models are the single definition of valid input. The HTTP API, the importer and the
demo world all build them, so a limit changes in one place. Models are strict (no silent coercion of
``"12"`` into ``12``) except timestamps, which accept ISO 8601 strings or epoch seconds because both
are how real event streams arrive; naive timestamps are taken as UTC.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Final, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
)

# ---- limits -------------------------------------------------------------------------------------

MAX_ID_LEN: Final = 128
MAX_TAGS: Final = 32
MAX_TAG_LEN: Final = 64
MAX_CAPTION_LEN: Final = 2200
MAX_DURATION_S: Final = 36_000.0
MAX_VECTOR_DIM: Final = 1024
MAX_ITEM_REGIONS: Final = 64
MAX_USER_ATTRIBUTES: Final = 32
MAX_ATTRIBUTE_VALUE_LEN: Final = 256
MAX_WATCH_MS: Final = 86_400_000
MAX_BATCH: Final = 1000
MAX_FEED_N: Final = 100

_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:@+\-]*$"
_REGION_PATTERN: Final = r"^[a-z][a-z0-9\-]{0,31}$"
_LANGUAGE_PATTERN: Final = r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$"

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN, pattern=_ID_PATTERN)]
"""An identifier: 1-128 characters, letters, digits and ``_.:@+-``, starting alphanumeric.

Ids appear in URL paths, so ``/``, whitespace and control characters are excluded."""

RegionName = Annotated[str, StringConstraints(pattern=_REGION_PATTERN)]
"""A region name such as ``us`` or ``eu-west``: lowercase, at most 32 characters."""


def _no_nul(text: str) -> str:
    # PostgreSQL text cannot hold U+0000 (SQLite can): refused here, the same on every backend.
    if "\x00" in text:
        raise ValueError("cannot contain the NUL character (U+0000)")
    return text


def _normalize_tag(tag: str) -> str:
    cleaned = tag.strip().lstrip("#").strip()
    if not cleaned:
        raise ValueError("a tag must contain a character other than '#' and spaces")
    if len(cleaned) > MAX_TAG_LEN:
        raise ValueError(f"a tag has at most {MAX_TAG_LEN} characters")
    if any(ch.isspace() or ch == "," for ch in cleaned):
        raise ValueError("a tag cannot contain spaces or commas")
    return _no_nul(cleaned.lower())


# What ``_normalize_tag`` accepts, as a JSON Schema (ECMA 262) pattern for the API document:
# optional spaces and '#'s, then 1-64 characters that are neither spaces nor commas (and the
# first not a '#' unless a space separates it from the leading ones), then optional spaces; never
# a NUL (see ``_no_nul``).
# "Spaces" are exactly the characters ``str.isspace`` (and so ``str.strip``) takes as such.
_SPACES: Final = (
    r"\t\n\u000b\u000c\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f"
    r"\u205f\u3000"
)
TAG_PATTERN: Final = (
    rf"^[{_SPACES}]*#*(?:[{_SPACES}]+[^{_SPACES},\u0000]|[^{_SPACES},#\u0000])"
    rf"[^{_SPACES},\u0000]{{0,{MAX_TAG_LEN - 1}}}[{_SPACES}]*$"
)

Tag = Annotated[
    str,
    AfterValidator(_normalize_tag),
    WithJsonSchema({"type": "string", "pattern": TAG_PATTERN}),
]
"""A tag, normalized: leading ``#`` removed, lowercase, no spaces, at most 64 characters."""


MIN_TIMESTAMP_YEAR: Final = 2
MAX_TIMESTAMP_YEAR: Final = 9998
"""Timestamps outside these years (as written) are refused: nearer the ends of what ``datetime``
holds, converting to UTC can leave its range, and that is a bad input, not a server error."""
_EPOCH_MIN: Final = datetime(MIN_TIMESTAMP_YEAR, 1, 1, tzinfo=UTC).timestamp()
_EPOCH_END: Final = datetime(MAX_TIMESTAMP_YEAR + 1, 1, 1, tzinfo=UTC).timestamp()
_YEAR_PATTERN: Final = (
    r"^(?:000[2-9]|00[1-9]\d|0[1-9]\d\d|[1-8]\d{3}|9[0-8]\d\d|99[0-8]\d|999[0-8])-"
)
"""The years ``MIN_TIMESTAMP_YEAR``..``MAX_TIMESTAMP_YEAR`` at the start of an ISO 8601 string."""
_OUT_OF_RANGE: Final = (
    f"a timestamp must lie in the years {MIN_TIMESTAMP_YEAR}-{MAX_TIMESTAMP_YEAR}"
)


def _as_utc(value: object) -> object:
    """Accept epoch seconds, ISO 8601 strings and datetimes; naive values are UTC."""
    if isinstance(value, bool):
        raise ValueError("a timestamp is an ISO 8601 string or epoch seconds, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("a timestamp must be finite")
        if not _EPOCH_MIN <= value < _EPOCH_END:
            raise ValueError(_OUT_OF_RANGE)
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            # The platform's time_t refused it: the caller's mistake, reported like any other
            # invalid value rather than a crash.
            raise ValueError(_OUT_OF_RANGE) from None
    return value


def _require_utc(value: datetime) -> datetime:
    if not MIN_TIMESTAMP_YEAR <= value.year <= MAX_TIMESTAMP_YEAR:
        raise ValueError(_OUT_OF_RANGE)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # "9999-12-31T23:00:00-05:00" parses, but its UTC instant is in the year 10000.
        raise ValueError(_OUT_OF_RANGE) from None


Timestamp = Annotated[
    datetime,
    BeforeValidator(_as_utc),
    Field(strict=False),
    AfterValidator(_require_utc),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "number",
                    "description": "seconds since the Unix epoch",
                    "minimum": _EPOCH_MIN,
                    "exclusiveMaximum": _EPOCH_END,
                },
                {"type": "string", "format": "date-time", "pattern": _YEAR_PATTERN},
            ]
        }
    ),
]


def _check_vector(values: list[float]) -> list[float]:
    if not all(math.isfinite(v) for v in values):
        raise ValueError("a content vector holds finite numbers only")
    return values


_FLOAT32_MAX: Final = 3.4028234663852886e38
"""Vectors are stored as float32: a larger value would become infinity."""

ContentVector = Annotated[
    list[Annotated[float, Field(ge=-_FLOAT32_MAX, le=_FLOAT32_MAX)]],
    Field(min_length=1, max_length=MAX_VECTOR_DIM),
    AfterValidator(_check_vector),
]

AttributeValue = (
    Annotated[str, StringConstraints(max_length=MAX_ATTRIBUTE_VALUE_LEN)]
    | bool
    | int
    | Annotated[float, Field(allow_inf_nan=False)]  # NaN has no JSON form: it came back as null
)

AttributeKey = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z_][a-z0-9_]*$")
]

EventType = Literal[
    "impression",
    "play",
    "finish",
    "like",
    "share",
    "comment",
    "follow",
    "skip",
    "not_interested",
    "report",
]
EVENT_TYPES: Final[tuple[str, ...]] = get_args(EventType)

POSITIVE_EVENT_TYPES: Final = frozenset({"finish", "like", "share", "comment", "follow"})
"""Engagements that say the viewer wanted more of this: they feed short-term interest."""

NEGATIVE_EVENT_TYPES: Final = frozenset({"skip", "not_interested", "report"})


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Region(_Strict):
    """A data-residency region: users, events and user state live in exactly one."""

    name: RegionName
    description: str = ""


class User(_Strict):
    """A viewer. ``region`` is the home region: every personal datum about them stays there."""

    user_id: Id
    region: RegionName
    attributes: dict[AttributeKey, AttributeValue] = Field(
        default_factory=dict,
        max_length=MAX_USER_ATTRIBUTES,
        # Say in the API document that every key must match (not only that matching keys hold
        # such values, which is all pydantic's ``patternProperties`` says).
        json_schema_extra={"propertyNames": TypeAdapter(AttributeKey).json_schema()},
    )


class Item(_Strict):
    """A piece of content (a short video, a song, a post); the catalog is global, non-personal."""

    item_id: Id
    creator_id: Id
    created_at: Timestamp = Field(default_factory=lambda: datetime.now(UTC))
    """When the item was published. Omitted: when the catalog first received it (an update that
    omits it keeps the stored time)."""
    duration_s: Annotated[float, Field(gt=0, le=MAX_DURATION_S, allow_inf_nan=False)]
    caption: Annotated[
        str, StringConstraints(max_length=MAX_CAPTION_LEN), AfterValidator(_no_nul)
    ] = ""
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] = Field(default_factory=list)
    language: Annotated[str, StringConstraints(pattern=_LANGUAGE_PATTERN)] | None = None
    regions: Annotated[list[RegionName], Field(max_length=MAX_ITEM_REGIONS)] = Field(
        default_factory=list
    )
    """Regions where the item may be shown; empty means everywhere."""
    vector: ContentVector | None = None
    """An optional content embedding supplied by the app (image, audio or text model output)."""

    def available_in(self, region: str) -> bool:
        return not self.regions or region in self.regions


class Event(_Strict):
    """One thing a viewer did with an item. ``event_id`` makes ingestion idempotent."""

    event_id: Id
    user_id: Id
    item_id: Id
    type: EventType
    ts: Timestamp
    watch_ms: Annotated[int, Field(ge=0, le=MAX_WATCH_MS)] | None = None
    request_id: Annotated[str, StringConstraints(max_length=MAX_ID_LEN)] | None = None


def epoch(ts: datetime) -> float:
    """Seconds since the Unix epoch: how timestamps are stored."""
    return ts.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


_ID_RE: Final = re.compile(_ID_PATTERN)


def is_valid_id(value: str) -> bool:
    """True when ``value`` is a well-formed id (for path parameters that bypass the models)."""
    # fullmatch, not match: Python's ``$`` also matches before a trailing newline, so
    # ``match`` took "us1\n" for "us1". (The models' patterns run on pydantic's Rust engine,
    # where ``$`` is the end of the text.)
    return 0 < len(value) <= MAX_ID_LEN and _ID_RE.fullmatch(value) is not None

"""Request and response bodies of API v1 (they are also the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.json_schema import SkipJsonSchema

from fyp.governance.rights import MAX_FILTER_LENGTH
from fyp.storage.roles import MAX_BLOCKED_TAGS, MAX_KEYWORD_FILTERS
from fyp.types import MAX_BATCH, Item, User


class _Body(BaseModel):
    # Strict: ``{"personalized": 0}`` or ``"no"`` is an error, not a silent ``false``.
    model_config = ConfigDict(extra="forbid", strict=True)


class ItemsIn(_Body):
    items: list[Item] = Field(min_length=1, max_length=MAX_BATCH)


class UsersIn(_Body):
    users: list[User] = Field(min_length=1, max_length=MAX_BATCH)


class EventsIn(_Body):
    events: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)
    """Validated one by one, so a bad event does not stop the good ones."""


class UpsertOut(BaseModel):
    created: int
    updated: int


class EventErrorOut(BaseModel):
    index: int
    detail: str


class EventsOut(BaseModel):
    accepted: int
    duplicates: int
    errors: list[EventErrorOut]


class ItemOut(BaseModel):
    item_id: str
    creator_id: str
    created_at: float
    duration_s: float
    caption: str
    tags: list[str]
    language: str | None
    regions: list[str]


class UserOut(BaseModel):
    user_id: str
    region: str
    attributes: dict[str, Any]
    created_at: float


class ReasonOut(BaseModel):
    code: str
    text: str


class FeedItemOut(BaseModel):
    item_id: str
    score: float
    reasons: list[ReasonOut]
    item: ItemOut | None = None
    """Present with ``?details=true``."""


class FeedOut(BaseModel):
    request_id: str
    user_id: str
    region: str
    model_version: str
    algorithm_hash: str
    items: list[FeedItemOut]
    trace: dict[str, Any] | None = None
    """Present with ``?trace=true``: every stage, component, timing and removal."""


class RegionOut(BaseModel):
    name: str
    description: str
    model_version: str


class RegionsOut(BaseModel):
    regions: list[RegionOut]


class TrainReportOut(BaseModel):
    region: str
    version: str | None
    events: int
    users: int
    items: int
    seconds: float
    skipped_reason: str | None


class TrainOut(BaseModel):
    reports: list[TrainReportOut]


class HealthPublicOut(BaseModel):
    """What ``/healthz`` tells a caller without a key that may see more."""

    status: Literal["up", "down"]
    """``down`` (HTTP 503) when no region this server serves can serve."""


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "down"]
    """``ok``; ``degraded`` when a region is quarantined (the others keep serving); ``down``
    (HTTP 503) when every region this server serves is."""
    version: str
    regions: list[str]
    model_versions: dict[str, str]
    quarantined: dict[str, str] = Field(default_factory=dict)
    """Regions that failed an integrity check, with the reason."""
    audit_check: dict[str, str] = Field(default_factory=dict)
    """Each region's full audit log check after start: ``pending``, ``running``, ``verified``,
    ``failed`` (then quarantined), ``skipped`` (already quarantined), ``stopped`` or ``error``.
    Until it says ``verified``, only the O(log n) startup check has passed."""


FilterEntry = Annotated[str, StringConstraints(max_length=MAX_FILTER_LENGTH)]
KeywordFilters = Annotated[list[FilterEntry], Field(max_length=MAX_KEYWORD_FILTERS)]
BlockedTags = Annotated[list[FilterEntry], Field(max_length=MAX_BLOCKED_TAGS)]


class ControlsIn(_Body):
    """The whole controls document (``PUT``): every field is required, because what is stored
    is replaced, and a field left out must not silently clear the user's filters. ``PATCH``
    (:class:`ControlsPatchIn`) changes single fields. Strict: ``"no"`` or ``0`` is not ``false``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    personalized: bool
    keyword_filters: KeywordFilters
    blocked_tags: BlockedTags


class ControlsPatchIn(_Body):
    """Some of the controls (``PATCH``): the fields given replace the stored ones, the others
    keep their values. ``null`` is refused rather than read as "clear": send ``[]`` for that."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # Absent means "keep"; ``SkipJsonSchema`` keeps null out of the published schema, and the
    # validator below out of what is accepted.
    personalized: bool | SkipJsonSchema[None] = None
    keyword_filters: KeywordFilters | SkipJsonSchema[None] = None
    blocked_tags: BlockedTags | SkipJsonSchema[None] = None

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null; leave the field out to keep its stored value")
        return value


class ControlsOut(BaseModel):
    user_id: str
    personalized: bool
    keyword_filters: list[str]
    blocked_tags: list[str]
    interests_reset_at: float | None


class InterestOut(BaseModel):
    kind: str
    key: str
    weight: float


class InterestsOut(BaseModel):
    user_id: str
    interests: list[InterestOut]


class InterestsDeletedOut(BaseModel):
    user_id: str
    removed: int
    tag: str | None


class TreeHeadOut(BaseModel):
    """A signed tree head of a region's audit log (RFC 9162 shape, hex-encoded)."""

    region: str
    tree_size: int
    timestamp_ms: int
    root_hash: str
    key_id: str
    signature: str


class ErasureAuditOut(BaseModel):
    seq: int
    """The erasure's entry in the region's audit log (written before any row was deleted)."""
    subject: str
    """How the log names the erased user: a salted hash, never the id."""
    leaf_hash: str
    tree_head: TreeHeadOut
    audit_path: list[str]
    """Inclusion proof of the entry in ``tree_head`` (hex hashes, leaf to root)."""


class ErasureReceiptOut(BaseModel):
    user_id: str
    region: str
    erased_at: float
    seconds: float
    rows_deleted: dict[str, int]
    """Rows about the user per table when the erasure was ordered: exactly what it deleted."""
    audit: ErasureAuditOut

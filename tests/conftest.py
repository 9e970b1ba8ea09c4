"""Shared fixtures: a seeded ``rng``, a fake clock, an engine on a temporary data directory, and
small factories for items, users, events, candidates and feed queries.

Factories are session-scoped fixtures returning plain functions, so Hypothesis tests (which refuse
function-scoped fixtures) can use them too. Every timestamp is relative to ``NOW``, a fixed instant:
no test depends on the wall clock.
"""

from __future__ import annotations

import itertools
import os
import random
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from fyp.config import FypConfig, load_config
from fyp.engine import Engine
from fyp.pipeline.contracts import Candidate, FeedContext, FeedQuery
from fyp.pipeline.trace import Trace
from fyp.storage.roles import ItemRecord, ItemStatsRecord, UserStateSnapshot
from fyp.types import Event, Item, User, from_epoch

settings.register_profile(
    "fyp",
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("fyp")

NOW = 1_700_000_000.0
"""2023-11-14T22:13:20Z: the fake clock's starting instant."""
HOUR = 3600.0


class Clock:
    """A settable clock for the engine and the gate."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20240601)


@pytest.fixture(scope="session")
def now() -> float:
    return NOW


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tmp_config(tmp_path: Path) -> FypConfig:
    return load_config(tmp_path)


@pytest.fixture
def engine(tmp_config: FypConfig, clock: Clock) -> Iterator[Engine]:
    eng = Engine(tmp_config, clock=clock)
    yield eng
    eng.close()


# ---- factories ----------------------------------------------------------------------------------


def _make_item(
    item_id: str,
    creator_id: str = "c0",
    *,
    age_hours: float = 1.0,
    duration_s: float = 30.0,
    tags: Sequence[str] = (),
    regions: Sequence[str] = (),
    caption: str = "",
    vector: Sequence[float] | None = None,
) -> Item:
    return Item(
        item_id=item_id,
        creator_id=creator_id,
        created_at=from_epoch(NOW - age_hours * HOUR),
        duration_s=duration_s,
        tags=list(tags),
        regions=list(regions),
        caption=caption or f"caption of {item_id}",
        vector=list(vector) if vector is not None else None,
    )


def _make_user(user_id: str, region: str = "us", **attributes: Any) -> User:
    return User(user_id=user_id, region=region, attributes=attributes)


_event_ids = itertools.count()


def _make_event(
    user_id: str,
    item_id: str,
    kind: str = "like",
    *,
    event_id: str | None = None,
    ts: float | None = None,
    watch_ms: int | None = None,
) -> Event:
    return Event(
        event_id=event_id or f"ev{next(_event_ids)}",
        user_id=user_id,
        item_id=item_id,
        type=kind,  # type: ignore[arg-type]
        ts=from_epoch(NOW if ts is None else ts),
        watch_ms=watch_ms,
    )


def _make_record(
    item_id: str,
    creator_id: str = "c0",
    *,
    age_hours: float = 1.0,
    duration_s: float = 30.0,
    tags: Sequence[str] = (),
    regions: Sequence[str] = (),
    caption: str = "",
) -> ItemRecord:
    return ItemRecord(
        item_id=item_id,
        creator_id=creator_id,
        created_at=NOW - age_hours * HOUR,
        duration_s=duration_s,
        caption=caption,
        tags=tuple(tags),
        language=None,
        regions=tuple(regions),
    )


def _make_candidate(
    item_id: str,
    creator_id: str = "c0",
    *,
    tags: Sequence[str] = (),
    score: float = 0.0,
    age_hours: float = 1.0,
    views: int | None = 0,
    regions: Sequence[str] = (),
    sources: Mapping[str, float] | None = None,
    anchors: Mapping[str, str] | None = None,
    features: Mapping[str, float] | None = None,
    stats: ItemStatsRecord | None = None,
    with_item: bool = True,
) -> Candidate:
    record = (
        _make_record(item_id, creator_id, age_hours=age_hours, tags=tags, regions=regions)
        if with_item
        else None
    )
    if stats is None and views is not None:
        stats = ItemStatsRecord(views=views)
    return Candidate(
        item_id=item_id,
        sources=dict(sources or {}),
        anchors=dict(anchors or {}),
        item=record,
        stats=stats,
        features=dict(features or {}),
        score=score,
    )


def _make_query(
    n: int = 10,
    *,
    config: FypConfig | None = None,
    region: str = "us",
    state: UserStateSnapshot | None = None,
    data: Any = None,
    catalog: Any = None,
    model: Any = None,
    now: float = NOW,
    user_id: str = "viewer",
) -> FeedQuery:
    """A query with a minimal context: stages that never touch storage need nothing else."""
    return FeedQuery(
        request_id="req-test",
        user_id=user_id,
        region=region,
        n=n,
        now=now,
        context=FeedContext(config=config or FypConfig(), catalog=catalog, data=data, model=model),
        trace=Trace(),
        state=state if state is not None else UserStateSnapshot(as_of=now),
    )


@pytest.fixture(scope="session")
def make_item() -> Callable[..., Item]:
    return _make_item


@pytest.fixture(scope="session")
def make_user() -> Callable[..., User]:
    return _make_user


@pytest.fixture(scope="session")
def make_event() -> Callable[..., Event]:
    return _make_event


@pytest.fixture(scope="session")
def make_record() -> Callable[..., ItemRecord]:
    return _make_record


@pytest.fixture(scope="session")
def make_candidate() -> Callable[..., Candidate]:
    return _make_candidate


@pytest.fixture(scope="session")
def make_query() -> Callable[..., FeedQuery]:
    return _make_query


# ---- PostgreSQL: throwaway schemas in the database named by FYP_TEST_POSTGRES_URL ---------------

POSTGRES_ENV = "FYP_TEST_POSTGRES_URL"


@pytest.fixture
def pg_schema_url() -> Iterator[Callable[[str], str]]:
    """``name -> URL`` of a fresh PostgreSQL schema per name, all dropped after the test.

    Each "database" a test asks for is a new schema reached through the same URL with the schema
    as its ``search_path``. Without ``FYP_TEST_POSTGRES_URL`` the test is skipped with the reason.
    """
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(
            f"PostgreSQL tests need {POSTGRES_ENV} (e.g. postgresql://postgres@127.0.0.1/test)"
        )
    url = make_url(base)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    admin = create_engine(url)
    created: list[str] = []
    prefix = f"fyp_test_{uuid.uuid4().hex[:10]}"

    def schema_url(name: str) -> str:
        schema = f"{prefix}_{name.replace('-', '_')}"
        if schema not in created:
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            created.append(schema)
        with_path = url.update_query_dict({"options": f"-csearch_path={schema}"})
        return with_path.render_as_string(hide_password=False)

    try:
        yield schema_url
    finally:
        with admin.begin() as conn:
            for schema in created:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

"""End to end on the demo world: import, train, serve feeds, post events, watch the feed adapt.

The world is small (a few seconds to build, import and train) but every step is the real one: the
JSONL files go through ``fyp.ingest``, training runs ALS and the co-engagement kNN, feeds run the
whole pipeline through the gate, and events go through the same ingestion as the API's.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fyp.api.app import create_app
from fyp.config import load_config
from fyp.engine import Engine
from fyp.ingest.importer import import_file
from fyp.sim.world import World, WorldConfig, build_world, write_world
from fyp.types import Event, from_epoch

pytestmark = pytest.mark.slow

NOW = 1_760_000_000.0


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(WorldConfig(seed=11, n_creators=60, n_items=1500, n_viewers=200, now=NOW))


@pytest.fixture(scope="module")
def trained(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    data_dir = tmp_path_factory.mktemp("e2e")
    files = write_world(world, data_dir / "input")
    clock = iter(itertools.count(NOW + 60.0, 1.0))
    engine = Engine(load_config(data_dir), clock=lambda: next(clock))
    for kind in ("items", "users", "events"):
        report = import_file(engine, kind, files[kind])
        assert report.error_count == 0, report.errors[:3]
    reports = engine.train()
    assert all(r.version is not None for r in reports), reports
    yield engine
    engine.close()


class _Ids:
    counter = itertools.count()

    @classmethod
    def next(cls, prefix: str) -> str:
        return f"{prefix}-{next(cls.counter)}"


def _engage(engine: Engine, user_id: str, item_ids: list[str], kinds: tuple[str, ...]) -> None:
    ts = from_epoch(engine.clock())
    events = []
    for item_id in item_ids:
        duration = engine.get_item(item_id).duration_s
        for kind in kinds:
            watch = int(duration * 1000) if kind == "play" else None
            events.append(
                Event(
                    event_id=_Ids.next("e2e"),
                    user_id=user_id,
                    item_id=item_id,
                    type=kind,  # type: ignore[arg-type]
                    ts=ts,
                    watch_ms=watch,
                )
            )
    result = engine.ingest(events)
    assert result.accepted == len(events) and not result.errors


def test_models_are_served_after_training(trained: Engine) -> None:
    versions = trained.model_versions()
    assert all(v != "untrained" for v in versions.values())
    viewer = "viewer0003"
    feed = trained.feed(viewer, 10)
    assert feed.model_version == versions[feed.region]
    assert len(feed.items) == 10
    assert all(item.reasons for item in feed.items)


def test_no_item_is_served_twice_over_twenty_pages(trained: Engine, world: World) -> None:
    user = world.users[5].user_id
    served: list[str] = []
    for _ in range(20):
        served.extend(item.item_id for item in trained.feed(user, 10).items)
    assert len(served) >= 150
    assert len(served) == len(set(served))
    past = {e.item_id for e in world.history if e.user_id == user}
    assert not past & set(served), "items the viewer interacted with before came back"


def test_engaging_with_a_topic_raises_its_share_of_the_next_page(
    trained: Engine, world: World
) -> None:
    viewer = world.viewers[world.users[10].user_id]
    topic_share = Counter(world.item_topic.values())
    # A topic the viewer does not care for, so any rise comes from what they just did.
    disliked = min(topic_share, key=lambda t: (viewer.taste_for(t), t))
    catalog_share = topic_share[disliked] / len(world.items)
    region_items = {it.item_id for it in world.items_in(viewer.region)}
    page_before = trained.feed(viewer.user_id, 10)
    before = sum(world.item_topic[i.item_id] == disliked for i in page_before.items)
    candidates = [
        it.item_id
        for it in world.items
        if world.item_topic[it.item_id] == disliked and it.item_id in region_items
    ]
    seen = {i.item_id for i in page_before.items}
    chosen = [i for i in candidates if i not in seen][:6]
    _engage(trained, viewer.user_id, chosen, ("play", "finish", "like"))
    page = trained.feed(viewer.user_id, 10)
    share = sum(world.item_topic[i.item_id] == disliked for i in page.items) / len(page.items)
    assert share >= max(3 * catalog_share, 0.3), (share, catalog_share, before)
    assert share > before / 10
    assert not set(chosen) & {i.item_id for i in page.items}
    codes = {r.code.split(":")[0] for i in page.items for r in i.reasons}
    assert codes & {"interest_tag", "similar_to", "liked_creator", "learned_taste"}


def test_not_interested_removes_the_creator_from_the_next_page(
    trained: Engine, world: World
) -> None:
    user = world.users[20].user_id
    page = trained.feed(user, 10)
    target = page.items[0].item_id
    creator = trained.get_item(target).creator_id
    _engage(trained, user, [target], ("not_interested",))
    for _ in range(3):
        next_page = trained.feed(user, 10)
        creators = {trained.get_item(i.item_id).creator_id for i in next_page.items}
        assert creator not in creators


def test_a_new_user_gets_a_feed_that_follows_their_first_swipes(
    trained: Engine, world: World
) -> None:
    app = create_app(trained, close_engine=False)
    with TestClient(app, client=("127.0.0.1", 9)) as client:
        created = client.put("/v1/users", json={"users": [{"user_id": "newbie", "region": "us"}]})
        assert created.json() == {"created": 1, "updated": 0}
        first = client.get("/v1/users/newbie/feed?n=10&details=true").json()
        assert len(first["items"]) == 10
        reasons = {r["code"] for e in first["items"] for r in e["reasons"]}
        assert reasons & {"trending_in_region", "fresh", "exploration"}
        rng = np.random.default_rng(3)
        topic = world.item_topic[first["items"][0]["item_id"]]
        liked = [e["item_id"] for e in first["items"] if world.item_topic[e["item_id"]] == topic]
        events = []
        for entry in first["items"]:
            item_id = entry["item_id"]
            duration_ms = int(entry["item"]["duration_s"] * 1000)
            good = item_id in liked
            watch = duration_ms if good else int(rng.integers(300, 1500))
            base = {"user_id": "newbie", "item_id": item_id, "ts": NOW + 120}
            events.append({**base, "event_id": _Ids.next("nb"), "type": "play", "watch_ms": watch})
            kinds = ("finish", "like") if good else ("skip",)
            events.extend({**base, "event_id": _Ids.next("nb"), "type": k} for k in kinds)
        posted = client.post("/v1/events", json={"events": events}).json()
        assert posted["accepted"] == len(events) and posted["errors"] == []
        second = client.get("/v1/users/newbie/feed?n=10").json()
        share = sum(world.item_topic[e["item_id"]] == topic for e in second["items"]) / 10
        first_share = sum(world.item_topic[e["item_id"]] == topic for e in first["items"]) / 10
        assert share > first_share
        assert share >= 0.4

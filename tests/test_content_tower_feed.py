"""The content towers in the feed, end to end on a small sim world: trained with the region's
models from captions and tags (real MiniLM embeddings), item-side only in the snapshot, serving
on-topic candidates, and finding a video uploaded after training before anyone has watched it."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from fyp.config import load_config
from fyp.engine import Engine
from fyp.governance.policy import Principal
from fyp.sim.world import World, WorldConfig, build_world
from fyp.types import Event, Item, from_epoch

pytestmark = pytest.mark.slow

NOW = float(int(time.time()))


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(WorldConfig(seed=11, n_creators=40, n_items=700, n_viewers=200, now=NOW))


@pytest.fixture(scope="module")
def engine(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    clock = iter(itertools.count(NOW + 60.0, 1.0))
    config = load_config(
        tmp_path_factory.mktemp("tower-feed"),
        sources={"content_tower": {"min_positives": 200}},
    )
    eng = Engine(config, clock=lambda: next(clock))
    eng.put_items(world.items)
    eng.put_users(world.users)
    assert eng.ingest(world.history).accepted == len(world.history)
    for report in eng.train():
        assert report.version is not None
        assert report.content_tower is not None, report
        assert report.content_tower.get("examples", 0) >= 200, report.content_tower
    yield eng
    eng.close()


def _topic_fan(world: World, engine: Engine) -> tuple[str, str, list[str]]:
    """A viewer with a clear favourite topic in their positive history: (user, topic, items)."""
    region_of = {u.user_id: u.region for u in world.users}
    best: tuple[float, str, str, list[str]] | None = None
    positives: dict[str, list[str]] = {}
    for event in world.history:
        if event.type in ("finish", "like", "share"):
            positives.setdefault(event.user_id, []).append(event.item_id)
    for user_id, items in positives.items():
        if len(items) < 8 or region_of[user_id] != "us":
            continue
        topic, count = Counter(world.item_topic[i] for i in items).most_common(1)[0]
        share = count / len(items)
        if best is None or share > best[0]:
            best = (share, user_id, topic, items)
    assert best is not None and best[0] >= 0.5
    return best[1], best[2], best[3]


def test_the_snapshot_holds_item_side_tower_arrays_only(engine: Engine) -> None:
    handle = engine.gate.open("us", Principal.service("us"), "serve_feed")
    snapshot = handle.models.load_current()
    assert snapshot is not None
    tower_arrays = {k: v for k, v in snapshot.arrays.items() if k.startswith("tower.")}
    assert "tower.item_vectors" in tower_arrays and "tower.mlp_in_weight" in tower_arrays
    assert not [k for k in tower_arrays if "user" in k]
    vectors = tower_arrays["tower.item_vectors"]
    assert vectors.shape == (
        len(tower_arrays["tower.item_ids"]),
        engine.config.sources.content_tower.dim,
    )
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    meta = snapshot.meta["content_tower"]
    assert meta["items_with_text"] > 0 and meta["epochs_run"] >= 1


def test_the_towers_serve_the_viewers_favourite_topic(world: World, engine: Engine) -> None:
    user_id, topic, items = _topic_fan(world, engine)
    model = engine.slots["us"].current
    assert model is not None and model.tower is not None
    vector = model.tower.user_vector(items[-10:])
    assert vector is not None
    found = [i for i, _ in model.tower.nearest(vector, 50)]
    on_topic = sum(world.item_topic.get(i) == topic for i in found) / len(found)
    catalog_share = sum(t == topic for t in world.item_topic.values()) / len(world.item_topic)
    assert on_topic >= 2 * catalog_share, (on_topic, catalog_share)

    result = engine.feed(user_id, n=10)
    [step] = [s for s in result.trace.steps if s.component == "content_tower"]
    assert step.error is None and (step.candidates_out or 0) > 0


def test_a_video_uploaded_after_training_is_found_before_anyone_watched_it(
    world: World, engine: Engine
) -> None:
    user_id, topic, items = _topic_fan(world, engine)
    model = engine.slots["us"].current
    assert model is not None and model.tower is not None
    # New uploads: one in the viewer's topic (its caption borrowed from an item of that topic)
    # and one in another topic; nobody has any event on either.
    source_item = next(i for i in world.items if world.item_topic[i.item_id] == topic)
    other = next(i for i in world.items if world.item_topic[i.item_id] != topic)
    uploads = [
        Item(
            item_id=f"upload-{n}",
            creator_id="newcomer",
            created_at=from_epoch(time.time()),
            duration_s=20.0,
            caption=base.caption,
            tags=list(base.tags),
        )
        for n, base in enumerate((source_item, other))
    ]
    engine.put_items(uploads)
    assert "upload-0" not in model.tower
    engine.sync()  # the serving loop's step: new catalog items get their content vectors
    assert "upload-0" in model.tower and "upload-1" in model.tower
    vector = model.tower.user_vector(items[-10:])
    assert vector is not None
    scores = dict(model.tower.nearest(vector, model.tower.size))
    assert scores["upload-0"] > scores["upload-1"]
    ranked = sorted(scores, key=lambda i: -scores[i])
    assert ranked.index("upload-0") < len(ranked) // 4

    # The source hands it to the feed as a new item, with its own reason when it is served.
    from fyp.pipeline.contracts import FeedContext, FeedQuery
    from fyp.pipeline.trace import Trace
    from fyp.sources.content_tower import ContentTowerSource

    config = engine.config
    source = ContentTowerSource(
        config.sources.content_tower.model_copy(update={"k": model.tower.size}),
        config.sources.embedding,
        config.training,
    )
    handle = engine.gate.open("us", Principal.service("us"), "serve_feed")
    query = FeedQuery(
        request_id="t",
        user_id=user_id,
        region="us",
        n=10,
        now=time.time(),
        context=FeedContext(config=config, catalog=engine.catalog, data=handle, model=model),
        trace=Trace(),
    )
    candidates = {c.item_id: c for c in source.fetch(query)}
    assert candidates["upload-0"].anchors == {"content_tower": "new"}
    assert candidates["upload-0"].sources["content_tower"] > 0


def test_an_event_moves_the_towers_vector_at_once(world: World, engine: Engine) -> None:
    """The viewer's vector is pooled from their latest positives at request time."""
    user_id, topic, items = _topic_fan(world, engine)
    model = engine.slots["us"].current
    assert model is not None and model.tower is not None
    other = [i.item_id for i in world.items if world.item_topic[i.item_id] != topic][:10]
    before = model.tower.user_vector(items[-10:])
    after = model.tower.user_vector([*items[-10:], *other])
    assert before is not None and after is not None
    assert float(before @ after) < 0.99
    engine.ingest(
        [
            Event(
                event_id=f"tower-like-{n}",
                user_id=user_id,
                item_id=item_id,
                type="like",
                ts=from_epoch(NOW + 100 + n),
            )
            for n, item_id in enumerate(other)
        ]
    )
    assert engine.feed(user_id, n=5).items


def test_a_backlog_of_uploads_is_placed_a_bounded_batch_per_round(
    world: World, engine: Engine
) -> None:
    """Text embedding takes CPU from serving: each sync round places at most a few items."""
    from fyp.models.content_tower import add_new_items

    model = engine.slots["eu"].current
    assert model is not None and model.tower is not None
    base = world.items[0]
    engine.put_items(
        [
            Item(
                item_id=f"backlog-{n}",
                creator_id="bulk",
                created_at=from_epoch(time.time() + n),
                duration_s=15.0,
                caption=f"{base.caption} part {n}",
                tags=list(base.tags),
            )
            for n in range(3)
        ]
    )
    config = engine.config.sources.content_tower.model_copy(update={"new_items_per_sync": 2})
    assert add_new_items(model.tower, engine.catalog, config) == 2
    assert "backlog-2" in model.tower and "backlog-1" in model.tower  # newest first
    assert add_new_items(model.tower, engine.catalog, config) == 1
    assert add_new_items(model.tower, engine.catalog, config) == 0

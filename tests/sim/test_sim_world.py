"""The demo world: deterministic, well-formed, region-correct, and behaviourally learnable."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from fyp.signals import QUICK_SKIP_MS
from fyp.sim import TOPICS, Viewer, World, WorldConfig, build_world, write_world
from fyp.types import EVENT_TYPES, Event, Item, User, is_valid_id

NOW = 1_750_000_000.0
SMALL = WorldConfig(seed=7, n_creators=20, n_items=300, n_viewers=50, now=NOW)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(SMALL)


def _fresh(viewer: Viewer) -> Viewer:
    """A copy whose follow state is independent of the original's."""
    return dataclasses.replace(viewer, followed=set(viewer.followed))


# ---- vocabulary ---------------------------------------------------------------------------------


def test_topics_have_distinct_valid_vocabularies() -> None:
    assert 18 <= len(TOPICS) <= 24
    names = [t.name for t in TOPICS]
    subtags = [s for t in TOPICS for s in t.subtags]
    assert len(set(names)) == len(names)
    # A sub-tag belongs to one topic only, and never shadows a topic name.
    assert len(set(subtags)) == len(subtags)
    assert not set(subtags) & set(names)
    for topic in TOPICS:
        assert 5 <= len(topic.subtags) <= 8
        assert len(topic.templates) >= 5
        for tag in (topic.name, *topic.subtags):
            assert re.fullmatch(r"[a-z0-9]+", tag), tag
        for template in topic.templates:
            caption = template.format(x=topic.subjects[0], y=topic.subjects[1], n=3)
            assert "{" not in caption and caption.strip() == caption


# ---- determinism and identity -------------------------------------------------------------------


def test_same_seed_builds_the_same_world(world: World) -> None:
    again = build_world(SMALL)
    assert again.items == world.items
    assert again.users == world.users
    assert again.history == world.history
    assert again.creators == world.creators
    assert again.item_quality == world.item_quality

    other = build_world(dataclasses.replace(SMALL, seed=8))
    assert [i.creator_id for i in other.items] != [i.creator_id for i in world.items]
    assert {e.event_id for e in other.history}.isdisjoint(e.event_id for e in world.history)


def test_ids_are_unique_and_valid(world: World) -> None:
    item_ids = [i.item_id for i in world.items]
    user_ids = [u.user_id for u in world.users]
    event_ids = [e.event_id for e in world.history]
    creator_ids = [c.creator_id for c in world.creators]
    for ids in (item_ids, user_ids, event_ids, creator_ids):
        assert len(set(ids)) == len(ids)
        assert all(is_valid_id(i) for i in ids)
    assert all(re.fullmatch(r"v\d{6}", i) for i in item_ids)
    assert all(re.fullmatch(r"viewer\d{4}", u) for u in user_ids)
    assert all(re.fullmatch(r"[a-z]+[._]?[a-z]+\d*", c) for c in creator_ids)
    assert set(world.viewers) == set(user_ids)


def test_counts_match_the_config(world: World) -> None:
    assert len(world.creators) == SMALL.n_creators
    assert len(world.items) == SMALL.n_items
    assert len(world.users) == SMALL.n_viewers
    assert set(world.item_topic) == set(world.item_quality) == {i.item_id for i in world.items}


# ---- catalog ------------------------------------------------------------------------------------


def test_items_are_well_formed(world: World) -> None:
    creators = {c.creator_id: c for c in world.creators}
    start = NOW - SMALL.history_days * 86_400
    previous = -1.0
    for item in world.items:
        creator = creators[item.creator_id]
        topic = world.item_topic[item.item_id]
        assert topic in creator.topics
        assert item.tags[0] == topic
        assert 2 <= len(item.tags) <= 5
        assert all(tag == tag.lower() and " " not in tag for tag in item.tags)
        assert set(item.regions) <= set(SMALL.regions) and len(item.regions) <= 1
        assert item.language == creator.language
        assert 5.0 <= item.duration_s <= 180.0
        assert item.caption
        created = item.created_at.timestamp()
        assert item.created_at.tzinfo == UTC
        assert start <= created <= NOW
        assert created >= previous  # ids follow upload order
        previous = created
        assert 0.0 < world.item_quality[item.item_id] < 1.0


def test_catalog_shape_at_scale() -> None:
    """Region restrictions and upload recency hold as proportions on a bigger catalog."""
    big = build_world(
        WorldConfig(seed=3, n_creators=200, n_items=4000, n_viewers=400, exposures_per_viewer=0)
    )
    regions = Counter(tuple(i.regions) for i in big.items)
    assert regions[()] / 4000 == pytest.approx(0.90, abs=0.03)
    assert regions[("us",)] / 4000 == pytest.approx(0.05, abs=0.02)
    assert regions[("eu",)] / 4000 == pytest.approx(0.05, abs=0.02)
    homes = Counter(u.region for u in big.users)
    assert homes["us"] / 400 == pytest.approx(0.55, abs=0.07)
    # More recent days hold more uploads.
    ages = [(big.now - i.created_at.timestamp()) / 86_400 for i in big.items]
    assert sum(a < 7 for a in ages) > 1.5 * sum(a >= 7 for a in ages)
    # European creators write in several languages; American ones in English.
    eu_languages = {c.language for c in big.creators if c.region == "eu"}
    assert {"de", "fr", "es", "it"} <= eu_languages
    assert {c.language for c in big.creators if c.region == "us"} == {"en"}
    assert big.history == []


def test_region_configuration_is_respected() -> None:
    single = build_world(WorldConfig(seed=1, n_creators=10, n_items=200, n_viewers=10, now=NOW))
    assert single.config.regions == ("us", "eu")
    only_us = build_world(
        WorldConfig(seed=1, n_creators=10, n_items=200, n_viewers=10, regions=("us",), now=NOW)
    )
    assert all(i.regions == [] for i in only_us.items)
    assert {u.region for u in only_us.users} == {"us"}
    three = build_world(
        WorldConfig(
            seed=1, n_creators=30, n_items=600, n_viewers=60, regions=("us", "eu", "apac"), now=NOW
        )
    )
    assert {u.region for u in three.users} == {"us", "eu", "apac"}
    assert {r for i in three.items for r in i.regions} <= {"us", "eu", "apac"}


def test_config_is_validated_and_now_defaults_to_the_clock() -> None:
    with pytest.raises(ValueError):
        WorldConfig(seed=1, regions=())
    with pytest.raises(ValueError):
        WorldConfig(seed=1, regions=("us", "us"))
    with pytest.raises(ValueError):
        WorldConfig(seed=1, history_days=0)
    before = time.time()
    tiny = build_world(WorldConfig(seed=1, n_creators=3, n_items=40, n_viewers=3))
    assert tiny.config.now is not None and before <= tiny.now <= time.time()
    assert all(e.ts.timestamp() <= tiny.now for e in tiny.history)


# ---- viewers ------------------------------------------------------------------------------------


def test_users_expose_no_latent_taste(world: World) -> None:
    for user in world.users:
        assert user.region in SMALL.regions
        assert set(user.attributes) <= {"cohort", "language"}
        assert world.viewers[user.user_id].region == user.region


def test_fit_and_top_topics(world: World) -> None:
    for viewer in world.viewers.values():
        top = viewer.top_topics(3)
        assert len(top) == 3
        tastes = [viewer.taste_for(t) for t in viewer.top_topics(len(TOPICS))]
        assert tastes == sorted(tastes, reverse=True)
        assert sum(tastes[:3]) > 0.6  # concentrated on a few favourites
        fits = [viewer.fit(item) for item in world.items]
        assert all(0.0 <= f <= 1.0 for f in fits)


def test_react_produces_valid_consistent_events(world: World) -> None:
    rng = np.random.default_rng(11)
    seen_types: Counter[str] = Counter()
    for viewer in list(world.viewers.values())[:20]:
        for item in world.items[::15]:
            ts = NOW + 100.0
            events = _fresh(viewer).react(item, ts, rng, request_id="req-1")
            types = [e.type for e in events]
            seen_types.update(types)
            play = events[0]
            assert play.type == "play" and play.watch_ms is not None
            assert play.ts.timestamp() == pytest.approx(ts, abs=1e-3)
            assert all(e.watch_ms is None for e in events[1:])
            assert all(e.type in EVENT_TYPES for e in events)
            assert all(e.user_id == viewer.user_id and e.item_id == item.item_id for e in events)
            assert all(e.request_id == "req-1" for e in events)
            stamps = [e.ts.timestamp() for e in events]
            assert stamps == sorted(stamps) and stamps[-1] - stamps[0] < 3.0 * len(events)
            assert len(types) == len(set(types))
            quick = play.watch_ms < QUICK_SKIP_MS
            assert ("skip" in types) == quick
            assert ("finish" in types) == (play.watch_ms >= item.duration_s * 1000)
            if quick:
                assert not {"finish", "like", "share", "follow", "comment"} & set(types)
            assert play.watch_ms <= 2 * item.duration_s * 1000 + 1
    assert {"play", "skip", "finish", "like"} <= set(seen_types)


def test_react_is_deterministic_for_an_rng_state(world: World) -> None:
    viewer = next(iter(world.viewers.values()))
    item = world.items[0]
    first = _fresh(viewer).react(item, NOW, np.random.default_rng(5))
    second = _fresh(viewer).react(item, NOW, np.random.default_rng(5))
    assert first == second


def test_expected_watch_is_the_mean_of_the_sampled_plays(world: World) -> None:
    """``expected_watch_ms`` is the closed form of ``react``'s watch time: for items of every
    kind of fit, the mean of many sampled plays lies within a few standard errors of it."""
    viewer = next(iter(world.viewers.values()))
    by_fit = sorted(world.items, key=viewer.fit)
    picks = [by_fit[0], by_fit[len(by_fit) // 2], by_fit[-1]]
    assert viewer.fit(picks[-1]) > viewer.fit(picks[0]) + 0.3
    expected = [viewer.expected_watch_ms(item) for item in picks]
    assert expected[-1] / picks[-1].duration_s > expected[0] / picks[0].duration_s
    rng = np.random.default_rng(3)
    for item, mean in zip(picks, expected, strict=True):
        plays = np.array(
            [_fresh(viewer).react(item, NOW, rng)[0].watch_ms for _ in range(8000)], dtype=float
        )
        stderr = plays.std() / math.sqrt(len(plays))
        assert abs(plays.mean() - mean) < 4.0 * stderr + 1.0


def test_poorly_fitting_videos_end_sessions_sooner(world: World) -> None:
    viewer = next(iter(world.viewers.values()))
    by_fit = sorted(world.items, key=viewer.fit)
    worst, best = by_fit[0], by_fit[-1]
    assert viewer.leave_hazard(worst) > viewer.leave_hazard(best) > 0.0
    # Bounded: even the worst video leaves a patient viewer most of a session to go.
    assert all(0.0 < viewer.leave_hazard(item) < 0.25 for item in world.items)


def test_viewers_engage_far_more_with_their_favourite_topic(world: World) -> None:
    """Finish + like per exposure: favourite topic vs the viewer's least-liked topics."""
    rng = np.random.default_rng(21)
    by_topic: dict[str, list[Item]] = defaultdict(list)
    for item in world.items:
        by_topic[world.item_topic[item.item_id]].append(item)
    rates: list[tuple[float, float]] = []
    for viewer in world.viewers.values():
        ranked = [t for t in viewer.top_topics(len(TOPICS)) if by_topic[t]]
        favourite, disliked = ranked[0], ranked[-5:]
        if favourite not in viewer.top_topics(2):
            continue
        fav_items = [i for i in by_topic[favourite] if i.available_in(viewer.region)][:20]
        low_items = [i for t in disliked for i in by_topic[t] if i.available_in(viewer.region)][:40]
        counts = []
        for items in (fav_items, low_items):
            hits = shown = 0
            for item in items:
                for _ in range(3):
                    types = {e.type for e in _fresh(viewer).react(item, NOW, rng)}
                    hits += ("finish" in types) + ("like" in types)
                    shown += 1
            counts.append((hits, shown))
        if counts[0][1] and counts[1][1]:
            rates.append((counts[0][0] / counts[0][1], counts[1][0] / counts[1][1]))
    assert len(rates) >= 25
    fav_rate = sum(r[0] for r in rates) / len(rates)
    low_rate = sum(r[1] for r in rates) / len(rates)
    assert fav_rate > 0.2
    assert fav_rate > 8 * low_rate
    # Not just on average: nearly every viewer prefers their favourite topic.
    assert sum(f > low for f, low in rates) >= 0.85 * len(rates)


# ---- history ------------------------------------------------------------------------------------


def test_history_is_ordered_and_timed_inside_the_window(world: World) -> None:
    stamps = [e.ts for e in world.history]
    assert stamps == sorted(stamps)
    for event in world.history:
        item = world.item_by_id[event.item_id]
        assert event.ts.tzinfo == UTC
        assert item.created_at <= event.ts
        assert event.ts.timestamp() <= NOW


def test_history_respects_regions_and_never_repeats(world: World) -> None:
    plays: dict[str, list[str]] = defaultdict(list)
    for event in world.history:
        viewer = world.viewers[event.user_id]
        assert world.item_by_id[event.item_id].available_in(viewer.region)
        if event.type == "play":
            plays[event.user_id].append(event.item_id)
    counts = [len(plays[u.user_id]) for u in world.users]
    assert max(counts) <= SMALL.exposures_per_viewer
    assert sum(counts) >= 0.95 * SMALL.exposures_per_viewer * SMALL.n_viewers
    assert all(len(set(items)) == len(items) for items in plays.values())


def test_history_carries_taste_signal(world: World) -> None:
    """The old app's logs: favourites are shown more than chance and engaged with far more."""
    shown: Counter[bool] = Counter()
    engaged: Counter[bool] = Counter()
    chance = 0.0
    catalog = {region: world.items_in(region) for region in SMALL.regions}
    for event in world.history:
        viewer = world.viewers[event.user_id]
        top = viewer.top_topics(2)
        favourite = world.item_topic[event.item_id] in top
        if event.type == "play":
            shown[favourite] += 1
            available = catalog[viewer.region]
            chance += sum(world.item_topic[i.item_id] in top for i in available) / len(available)
        elif event.type in ("finish", "like"):
            engaged[favourite] += 1
    plays = shown[True] + shown[False]
    # Favourites are shown more often than a random feed would show them ...
    assert shown[True] / plays > 1.3 * chance / plays
    # ... but the old feed was no oracle: most of what it showed was something else.
    assert shown[False] > shown[True]
    assert engaged[True] / shown[True] > 5 * engaged[False] / shown[False]
    kinds = Counter(e.type for e in world.history)
    assert kinds["play"] > kinds["skip"] > kinds["finish"] > kinds["like"] > 0


# ---- files --------------------------------------------------------------------------------------


def test_write_world_round_trips(world: World, tmp_path: Path) -> None:
    paths = write_world(world, tmp_path / "demo")
    assert set(paths) == {"items", "users", "events"}
    assert {p.name for p in paths.values()} == {"items.jsonl", "users.jsonl", "events.jsonl"}

    def lines(path: Path) -> list[str]:
        return path.read_text(encoding="utf-8").splitlines()

    assert [Item.model_validate_json(line) for line in lines(paths["items"])] == world.items
    assert [User.model_validate_json(line) for line in lines(paths["users"])] == world.users
    assert [Event.model_validate_json(line) for line in lines(paths["events"])] == world.history

    raw = json.loads(lines(paths["events"])[0])
    assert set(raw) <= set(Event.model_fields)
    assert isinstance(raw["ts"], str)
    assert datetime.fromisoformat(raw["ts"]).tzinfo is not None
    raw_item = json.loads(lines(paths["items"])[0])
    assert set(raw_item) <= set(Item.model_fields)
    assert isinstance(raw_item["created_at"], str)

"""A synthetic short-video world at benchmark scale, generated with vectorized numpy and pyarrow.

The world is plausible enough for the learned models to mean something:

* ~50 topics with an uneven appeal; each topic has its own tag plus sub-tags, and a few generic
  tags (``fyp``, ``viral``...) cut across topics;
* creators belong to one topic and differ in productivity and popularity; an item mostly carries
  its creator's topic, has a lognormal duration and a creation time spread over ``days`` days;
  a few items are restricted to one region;
* users live in ``us`` or ``eu``, have 1-3 favourite topics and an activity level; each of their
  views usually comes from a favourite topic, and what follows a view (watch time, finish, like,
  share, comment, follow, quick skip, not-interested) depends on whether the topic is a favourite.

Nothing here builds a pydantic object: three Parquet files are written straight from arrays and are
then loaded through the real importer, so the importer does the validation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

GENERATOR_VERSION: Final = 1
"""Bump when the generated data changes, so cached data directories are rebuilt."""

DAY_S: Final = 86_400.0
REGIONS: Final = ("us", "eu")
REGION_SHARES: Final = (0.55, 0.45)

TOPIC_NAMES: Final = (
    "comedy", "dance", "cooking", "fitness", "gaming", "music", "pets", "travel", "fashion",
    "beauty", "diy", "science", "tech", "cars", "football", "basketball", "skateboarding",
    "gardening", "books", "movies", "anime", "art", "photography", "history", "finance",
    "languages", "parenting", "wellness", "yoga", "running", "hiking", "fishing", "camping",
    "coffee", "baking", "vegan", "streetfood", "magic", "asmr", "pranks", "cleaning",
    "interiors", "architecture", "space", "weather", "chess", "guitar", "singing", "poetry",
    "motivation",
)  # fmt: skip
SUBTAG_SUFFIXES: Final = ("tips", "daily", "hacks", "fails", "pro", "101", "challenge", "trend")
GENERIC_TAGS: Final = (
    "fyp", "foryou", "viral", "trending", "pov", "storytime", "tutorial", "satisfying",
    "wholesome", "relatable", "behindthescenes", "duet",
)  # fmt: skip
CAPTION_OPENERS: Final = (
    "you have to see this", "day 12 of learning", "the best", "rating every", "a quick guide to",
    "nobody talks about", "my honest take on", "trying viral", "beginner mistakes in",
    "3 things about", "unpopular opinion:", "a day in my life:",
)  # fmt: skip
LANGUAGES: Final = ("en", "de", "fr", "es", "it", "pt")
LANGUAGE_SHARES: Final = (0.62, 0.1, 0.09, 0.1, 0.04, 0.05)
PLATFORMS: Final = ("ios", "android", "web")

# What follows a view. "fav" = the item's topic is one of the viewer's favourites.
P_FROM_FAVOURITE: Final = 0.75
P_SKIP: Final = {"fav": 0.06, "other": 0.38}
P_LIKE: Final = {"fav": 0.22, "other": 0.025}
P_SHARE: Final = {"fav": 0.03, "other": 0.003}
P_COMMENT: Final = {"fav": 0.02, "other": 0.002}
P_FOLLOW: Final = {"fav": 0.012, "other": 0.001}
P_NOT_INTERESTED: Final = {"fav": 0.001, "other": 0.03}  # among skipped views

EVENT_TYPES: Final = (
    "play",
    "finish",
    "like",
    "share",
    "comment",
    "follow",
    "skip",
    "not_interested",
)
_T = {name: i for i, name in enumerate(EVENT_TYPES)}

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class Scale:
    items: int
    users: int
    events_per_user: float
    creators: int
    topics: int = 50
    days: float = 30.0
    seed: int = 7

    def key(self) -> str:
        """A directory name that changes whenever the generated data would change."""
        return (
            f"i{self.items}-u{self.users}-e{self.events_per_user:g}-c{self.creators}"
            f"-t{self.topics}-d{self.days:g}-s{self.seed}-g{GENERATOR_VERSION}"
        )


@dataclass
class Generated:
    paths: dict[str, Path]
    counts: dict[str, int]
    event_types: dict[str, int]
    anchor: float
    """Epoch seconds the world's "now" was when generated: creation times go back from here."""
    seconds: float
    sample_users: list[str]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["paths"] = {k: str(v) for k, v in self.paths.items()}
        return data


# ---- vocabulary ---------------------------------------------------------------------------------


def topic_names(n: int) -> list[str]:
    return [TOPIC_NAMES[i] if i < len(TOPIC_NAMES) else f"topic{i}" for i in range(n)]


def _ids(prefix: str, n: int, width: int) -> pa.Array:
    """``prefix`` followed by 0..n-1 zero-padded to ``width`` digits, as an Arrow string array."""
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), width, "0")
    return pc.binary_join_element_wise(pa.scalar(prefix), digits, "")


def _width(n: int) -> int:
    return max(6, len(str(max(n - 1, 0))))


# ---- the world ----------------------------------------------------------------------------------


@dataclass
class _World:
    """Arrays describing items and users, kept to generate events."""

    item_topic: Array
    item_created: Array
    item_duration: Array
    item_weight: Array
    item_region: Array  # -1 everywhere, else the only region index where it may be shown
    item_creator: Array
    user_region: Array
    user_favs: Array  # (users, 3) topic indices; only the first user_nfav are favourites
    user_nfav: Array
    user_activity: Array
    topic_appeal: Array


def _appeal(n: int) -> Array:
    ranks = np.arange(n, dtype=np.float64)
    weights: Array = 1.0 / (ranks + 4.0) ** 0.9
    return weights / float(weights.sum())


def _build_world(scale: Scale, rng: np.random.Generator, anchor: float) -> _World:
    t = scale.topics
    appeal = _appeal(t)
    # Creators: one topic each, heavy-tailed productivity and popularity.
    creator_topic = rng.choice(t, size=scale.creators, p=appeal)
    productivity = rng.lognormal(0.0, 1.0, scale.creators)
    creator_pop = rng.lognormal(0.0, 1.0, scale.creators)
    # Items: by creator productivity; mostly the creator's topic.
    item_creator = rng.choice(
        scale.creators, size=scale.items, p=productivity / productivity.sum()
    ).astype(np.int32)
    item_topic = creator_topic[item_creator].astype(np.int32)
    off_topic = rng.random(scale.items) < 0.15
    item_topic[off_topic] = rng.choice(t, size=int(off_topic.sum()), p=appeal)
    item_created = anchor - rng.random(scale.items) * scale.days * DAY_S
    duration = np.clip(rng.lognormal(np.log(24.0), 0.75, scale.items), 5.0, 180.0)
    item_duration = np.round(duration, 1)
    quality = rng.lognormal(0.0, 0.9, scale.items)
    item_weight = quality * np.sqrt(creator_pop[item_creator])
    item_region = np.full(scale.items, -1, dtype=np.int8)
    restricted = rng.random(scale.items) < 0.05
    item_region[restricted] = rng.choice(len(REGIONS), size=int(restricted.sum()), p=REGION_SHARES)
    # Users: home region, 1-3 favourite topics (drawn by appeal without replacement), activity.
    user_region = rng.choice(len(REGIONS), size=scale.users, p=REGION_SHARES).astype(np.int8)
    gumbel = np.log(appeal)[None, :] - np.log(-np.log(rng.random((scale.users, t))))
    user_favs = np.argsort(-gumbel, axis=1)[:, :3].astype(np.int32)
    user_nfav = rng.choice(3, size=scale.users, p=(0.3, 0.45, 0.25)) + 1
    user_activity = rng.lognormal(0.0, 0.8, scale.users)
    return _World(
        item_topic=item_topic,
        item_created=item_created,
        item_duration=item_duration,
        item_weight=item_weight,
        item_region=item_region,
        item_creator=item_creator,
        user_region=user_region,
        user_favs=user_favs,
        user_nfav=user_nfav,
        user_activity=user_activity / user_activity.mean(),
        topic_appeal=appeal,
    )


# ---- views and events ---------------------------------------------------------------------------


def _pick_items(world: _World, topics: Array, rng: np.random.Generator) -> Array:
    """One item per entry of ``topics``, by item weight within the topic."""
    order = np.argsort(world.item_topic, kind="stable")
    bounds = np.searchsorted(world.item_topic[order], np.arange(len(world.topic_appeal) + 1))
    picked = np.empty(len(topics), dtype=np.int64)
    for topic in range(len(world.topic_appeal)):
        where = np.flatnonzero(topics == topic)
        if not len(where):
            continue
        members = order[bounds[topic] : bounds[topic + 1]]
        if not len(members):  # a topic without items (tiny catalogs): take any item
            picked[where] = rng.integers(0, len(world.item_topic), len(where))
            continue
        cumulative = np.cumsum(world.item_weight[members])
        draws = rng.random(len(where)) * cumulative[-1]
        picked[where] = members[np.minimum(np.searchsorted(cumulative, draws), len(members) - 1)]
    return picked


def _views(world: _World, per_user: Array, rng: np.random.Generator) -> tuple[Array, Array]:
    """(viewer, item) of every view; a view usually comes from one of the viewer's favourites."""
    viewer = np.repeat(np.arange(len(per_user), dtype=np.int64), per_user)
    n = len(viewer)
    from_fav = rng.random(n) < P_FROM_FAVOURITE
    slot = (rng.random(n) * world.user_nfav[viewer]).astype(np.int64)
    topics = np.where(
        from_fav,
        world.user_favs[viewer, slot],
        rng.choice(len(world.topic_appeal), size=n, p=world.topic_appeal),
    )
    item = _pick_items(world, topics, rng)
    # A viewer cannot have watched an item that is not available in their region.
    region = world.item_region[item]
    ok = (region < 0) | (region == world.user_region[viewer])
    return viewer[ok], item[ok]


@dataclass
class _Events:
    viewer: Array
    item: Array
    type: Array
    ts: Array
    watch_ms: Array  # -1 when absent


def _events(
    world: _World, viewer: Array, item: Array, anchor: float, days: float, rng: np.random.Generator
) -> _Events:
    n = len(viewer)
    fav = (world.user_favs[viewer] == world.item_topic[item][:, None]) & (
        np.arange(3)[None, :] < world.user_nfav[viewer][:, None]
    )
    is_fav = fav.any(axis=1)

    def chance(p: dict[str, float]) -> Array:
        return rng.random(n) < np.where(is_fav, p["fav"], p["other"])

    duration_ms = world.item_duration[item] * 1000.0
    skipped = chance(P_SKIP)
    ratio = np.where(is_fav, rng.beta(2.5, 1.6, n) * 1.45, rng.beta(1.1, 2.8, n) * 1.2)
    watch = np.where(skipped, rng.uniform(300.0, 1900.0, n), ratio * duration_ms)
    watch = np.maximum(watch, 200.0).astype(np.int64)
    finished = ~skipped & (watch >= duration_ms)
    engaged = ~skipped & (watch >= 0.3 * duration_ms)
    liked = engaged & chance(P_LIKE)
    shared = engaged & chance(P_SHARE)
    commented = engaged & chance(P_COMMENT)
    followed = engaged & chance(P_FOLLOW)
    not_interested = skipped & chance(P_NOT_INTERESTED)
    # View start: after the item's creation, inside the window, a minute before "now".
    start = np.maximum(world.item_created[item], anchor - days * DAY_S)
    end = anchor - 60.0
    view_ts = start + rng.random(n) * np.maximum(end - start, 1.0)
    watched_s = watch / 1000.0
    parts: list[tuple[Array, int, Array, bool]] = [
        (np.ones(n, dtype=bool), _T["play"], view_ts + watched_s, True),
        (finished, _T["finish"], view_ts + watched_s + 0.001, False),
        (liked, _T["like"], view_ts + watched_s * 0.6, False),
        (shared, _T["share"], view_ts + watched_s + 0.5, False),
        (commented, _T["comment"], view_ts + watched_s + 2.0, False),
        (followed, _T["follow"], view_ts + watched_s + 1.0, False),
        (skipped, _T["skip"], view_ts + watched_s + 0.002, True),
        (not_interested, _T["not_interested"], view_ts + watched_s + 0.5, False),
    ]
    viewers, items, types, stamps, watches = [], [], [], [], []
    for mask, type_index, ts, with_watch in parts:
        viewers.append(viewer[mask])
        items.append(item[mask])
        types.append(np.full(int(mask.sum()), type_index, dtype=np.int8))
        stamps.append(np.minimum(ts[mask], end))
        watches.append(watch[mask] if with_watch else np.full(int(mask.sum()), -1, np.int64))
    all_ts = np.concatenate(stamps)
    order = np.argsort(all_ts, kind="stable")  # an event stream arrives in time order
    return _Events(
        viewer=np.concatenate(viewers)[order],
        item=np.concatenate(items)[order],
        type=np.concatenate(types)[order],
        ts=all_ts[order],
        watch_ms=np.concatenate(watches)[order],
    )


def _events_per_view(world: _World, anchor: float, days: float, seed: int) -> float:
    """Measured on a pilot sample, to size views per user to the wanted events per user."""
    rng = np.random.default_rng(seed + 1)
    per_user = np.ones(min(len(world.user_region), 20_000), dtype=np.int64) * 3
    viewer, item = _views(world, per_user, rng)
    events = _events(world, viewer, item, anchor, days, rng)
    return len(events.type) / max(int(per_user.sum()), 1)  # views dropped as unavailable count


# ---- writing ------------------------------------------------------------------------------------


def _list_array(values: pa.Array, counts: Array) -> pa.Array:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _item_table(scale: Scale, world: _World, rng: np.random.Generator) -> pa.Table:
    n = scale.items
    names = topic_names(scale.topics)
    subtags = [f"{name}{suffix}" for name in names for suffix in SUBTAG_SUFFIXES]
    n_sub = len(SUBTAG_SUFFIXES)
    vocabulary = pa.array([*names, *subtags, *GENERIC_TAGS])
    sub_base = len(names)
    generic_base = sub_base + len(subtags)
    # Tags: the topic, one or two distinct sub-tags of it, sometimes a generic tag.
    first = rng.integers(0, n_sub, n)
    second = (first + 1 + rng.integers(0, n_sub - 1, n)) % n_sub
    columns = np.stack(
        [
            world.item_topic,
            sub_base + world.item_topic * n_sub + first,
            sub_base + world.item_topic * n_sub + second,
            generic_base + rng.integers(0, len(GENERIC_TAGS), n),
        ],
        axis=1,
    )
    present = np.stack(
        [np.ones(n, bool), np.ones(n, bool), rng.random(n) < 0.5, rng.random(n) < 0.3], axis=1
    )
    tag_values = vocabulary.take(pa.array(columns[present]))
    tags = _list_array(tag_values, present.sum(axis=1))
    # Captions: "<opener> <topic> <sub-tag>", e.g. "rating every cooking hacks #412".
    caption = pc.binary_join_element_wise(
        pa.array(CAPTION_OPENERS).take(pa.array(rng.integers(0, len(CAPTION_OPENERS), n))),
        pa.array(names).take(pa.array(world.item_topic)),
        pa.array(SUBTAG_SUFFIXES).take(pa.array(first)),
        pc.binary_join_element_wise(
            pa.scalar("#"), pc.cast(pa.array(rng.integers(1, 1000, n)), pa.string()), ""
        ),
        " ",
    )
    creator_ids = _ids("cr", scale.creators, _width(scale.creators))
    creator_language = rng.choice(len(LANGUAGES), size=scale.creators, p=LANGUAGE_SHARES)
    restricted = world.item_region >= 0
    region_values = pa.array(REGIONS).take(pa.array(world.item_region[restricted]))
    regions = _list_array(region_values, restricted.astype(np.int64))
    return pa.table(
        {
            "item_id": _ids("it", n, _width(n)),
            "creator_id": creator_ids.take(pa.array(world.item_creator)),
            "created_at": pa.array(np.round(world.item_created, 3)),
            "duration_s": pa.array(world.item_duration),
            "caption": caption,
            "tags": tags,
            "language": pa.DictionaryArray.from_arrays(
                pa.array(creator_language[world.item_creator].astype(np.int8)),
                pa.array(LANGUAGES),
            ),
            "regions": regions,
        }
    )


def _user_table(scale: Scale, world: _World, rng: np.random.Generator) -> pa.Table:
    n = scale.users
    attributes = pa.StructArray.from_arrays(
        [
            pa.array(PLATFORMS).take(pa.array(rng.choice(3, size=n, p=(0.5, 0.42, 0.08)))),
            pa.array(rng.integers(0, 720, n)),
        ],
        names=["platform", "signup_days_ago"],
    )
    return pa.table(
        {
            "user_id": _ids("u", n, _width(n)),
            "region": pa.DictionaryArray.from_arrays(
                pa.array(world.user_region), pa.array(REGIONS)
            ),
            "attributes": attributes,
        }
    )


def _event_table(scale: Scale, events: _Events) -> pa.Table:
    n = len(events.type)
    watch = events.watch_ms
    return pa.table(
        {
            "event_id": _ids("ev", n, _width(n)),
            "user_id": _ids("u", scale.users, _width(scale.users)).take(pa.array(events.viewer)),
            "item_id": _ids("it", scale.items, _width(scale.items)).take(pa.array(events.item)),
            "type": pa.DictionaryArray.from_arrays(pa.array(events.type), pa.array(EVENT_TYPES)),
            "ts": pa.array(np.round(events.ts, 3)),
            "watch_ms": pa.array(watch, mask=watch < 0),
        }
    )


def generate(scale: Scale, directory: Path, anchor: float | None = None) -> Generated:
    """Write ``items.parquet``, ``users.parquet`` and ``events.parquet`` under ``directory``."""
    started = time.perf_counter()
    anchor = float(int(time.time())) if anchor is None else anchor
    rng = np.random.default_rng(scale.seed)
    world = _build_world(scale, rng, anchor)
    per_view = _events_per_view(world, anchor, scale.days, scale.seed)
    views_per_user = scale.events_per_user / per_view
    per_user = rng.poisson(views_per_user * world.user_activity)
    per_user = np.maximum(per_user, 1)
    viewer, item = _views(world, per_user, rng)
    events = _events(world, viewer, item, anchor, scale.days, rng)
    directory.mkdir(parents=True, exist_ok=True)
    tables = {
        "items": _item_table(scale, world, rng),
        "users": _user_table(scale, world, rng),
        "events": _event_table(scale, events),
    }
    paths: dict[str, Path] = {}
    for kind, table in tables.items():
        path = directory / f"{kind}.parquet"
        pq.write_table(table, path, row_group_size=65_536)
        paths[kind] = path
    types = np.bincount(events.type, minlength=len(EVENT_TYPES))
    sample = rng.choice(scale.users, size=min(5, scale.users), replace=False)
    user_ids = _ids("u", scale.users, _width(scale.users))
    return Generated(
        paths=paths,
        counts={kind: table.num_rows for kind, table in tables.items()},
        event_types={name: int(count) for name, count in zip(EVENT_TYPES, types, strict=True)},
        anchor=anchor,
        seconds=time.perf_counter() - started,
        sample_users=[str(user_ids[int(i)]) for i in sample],
    )


def user_ids_by_region(users_path: Path) -> dict[str, list[str]]:
    """The generated users' ids per home region, read back from ``users.parquet``."""
    table = pq.read_table(users_path, columns=["user_id", "region"])
    ids = table.column("user_id").to_pylist()
    regions = table.column("region").to_pylist()
    found: dict[str, list[str]] = {}
    for user_id, region in zip(ids, regions, strict=True):
        found.setdefault(region, []).append(user_id)
    return found

"""The seeded demo world: creators, a short-video catalog, viewers, and their past.

``build_world(WorldConfig(seed=...))`` returns the same world for the same config, down to event ids
and timestamps: every random draw comes from a ``numpy`` generator seeded from ``config.seed``, and
the wall clock is read only when ``config.now`` is left unset (the resolved value is kept in
``World.config`` so the world can be rebuilt exactly).

The world is the engine's test bench and demo. Its items and users are the public domain types
(``fyp.types``) an app would send; its viewers carry the hidden truth (tastes, item quality) that
the engine has to learn from events, which lets an evaluator measure how well a feed serves them.

The history imitates the logs of an app that already ran a simple feed before adopting fyp: a mix
of popular items, random items, and items from each viewer's favourite topics. The logs therefore
carry real signal without being an oracle.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from fyp.sim.topics import (
    CAPTION_CLOSERS,
    FIRST_NAMES,
    REGION_SHARES,
    TOPICS,
    Topic,
)
from fyp.sim.viewers import ItemFacts, Viewer, make_viewer, pick_language
from fyp.types import Event, Item, User, from_epoch, is_valid_id

DAY_S: Final = 86_400.0
MIN_DURATION_S: Final = 5.0
MAX_DURATION_S: Final = 180.0
RESTRICTED_SHARE: Final = 0.10
"""Share of items licensed for a single region (split evenly between the configured regions)."""
CROSS_TOPIC_TAG_SHARE: Final = 0.08
SESSION_LENGTH: Final = 12
"""Average number of videos a viewer watches in one sitting of the simulated history."""
POLICY_MIX: Final = (0.35, 0.30, 0.35)
"""The pre-existing app's feed: chances of a popular, a random and a favourite-topic pick."""
_SMALL_NUMBERS: Final = (2, 3, 4, 5, 7, 10, 12, 15, 20, 30)


@dataclass(frozen=True)
class WorldConfig:
    """What to simulate. Equal configs build identical worlds.

    ``now`` is the end of the simulated history in epoch seconds; ``None`` means the wall clock at
    build time (the built world's ``config`` then holds the value used).
    """

    seed: int
    n_creators: int = 300
    n_items: int = 6000
    n_viewers: int = 1000
    regions: tuple[str, ...] = ("us", "eu")
    history_days: float = 14.0
    exposures_per_viewer: int = 60
    now: float | None = None

    def __post_init__(self) -> None:
        if self.n_creators < 1:
            raise ValueError("a world needs at least one creator")
        if self.n_items < 0 or self.n_viewers < 0 or self.exposures_per_viewer < 0:
            raise ValueError("counts cannot be negative")
        if not self.regions or len(set(self.regions)) != len(self.regions):
            raise ValueError(f"regions must be non-empty and unique, got {self.regions}")
        if not self.history_days > 0 or not math.isfinite(self.history_days):
            raise ValueError("history_days must be a positive number")
        if self.now is not None and not math.isfinite(self.now):
            raise ValueError("now must be finite")


@dataclass(frozen=True, slots=True)
class Creator:
    """A simulated creator. ``quality`` and ``activity`` are hidden: the engine must infer them."""

    creator_id: str
    display_name: str
    topics: tuple[str, ...]
    region: str
    language: str
    quality: float
    activity: float
    """Relative upload rate; heavy-tailed, so a few creators post much of the catalog."""
    fame: float
    """How much the pre-existing app promoted this creator (correlated with quality)."""
    length_style: float
    """Multiplier on the topic's typical video length."""


@dataclass
class World:
    """A built demo world. ``items`` are sorted by ``created_at`` (and ids follow that order);
    ``history`` is sorted by ``ts``. ``item_topic`` and ``item_quality`` are hidden truth for
    evaluators, never to be fed to the engine. ``viewers`` carry on from the history (e.g. they
    remember whom they followed), so a closed-loop evaluation continues the same story."""

    config: WorldConfig
    topics: tuple[Topic, ...]
    creators: list[Creator]
    items: list[Item]
    users: list[User]
    viewers: dict[str, Viewer]
    item_topic: dict[str, str]
    item_quality: dict[str, float]
    history: list[Event]
    item_by_id: dict[str, Item] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.item_by_id = {item.item_id: item for item in self.items}

    @property
    def now(self) -> float:
        """The end of the simulated history, in epoch seconds."""
        assert self.config.now is not None  # build_world always resolves it
        return self.config.now

    def items_in(self, region: str) -> list[Item]:
        """Items a viewer based in ``region`` may be shown."""
        return [item for item in self.items if item.available_in(region)]


def build_world(config: WorldConfig) -> World:
    """Build the demo world for ``config``; deterministic for a given config.

    The default size (300 creators, 6000 items, 1000 viewers x 60 exposures) builds in a few
    seconds. Each stage draws from its own generator, so changing e.g. the number of viewers does
    not reshuffle the catalog.
    """
    if config.now is None:
        config = replace(config, now=time.time())
    assert config.now is not None
    now = config.now
    creators_seq, items_seq, viewers_seq, history_seq = np.random.SeedSequence(config.seed).spawn(4)
    topics = TOPICS
    creators = _make_creators(config, topics, np.random.default_rng(creators_seq))
    items, facts = _make_items(config, topics, creators, now, np.random.default_rng(items_seq))
    viewers = _make_viewers(config, topics, facts, np.random.default_rng(viewers_seq))
    history = _simulate_history(config, items, facts, creators, viewers, now, history_seq)
    return World(
        config=config,
        topics=topics,
        creators=creators,
        items=items,
        users=[v.to_user() for v in viewers],
        viewers={v.user_id: v for v in viewers},
        item_topic={item_id: f.topic for item_id, f in facts.items()},
        item_quality={item_id: f.quality for item_id, f in facts.items()},
        history=history,
    )


def write_world(world: World, directory: Path) -> dict[str, Path]:
    """Write ``items.jsonl``, ``users.jsonl`` and ``events.jsonl`` under ``directory``.

    One JSON object per line with the models' own field names (unset optional fields omitted),
    timestamps as ISO 8601 UTC strings: each line re-parses with ``Model.model_validate_json``.
    Returns the written paths by kind (``items``, ``users``, ``events``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    records: dict[str, Sequence[Item | User | Event]] = {
        "items": world.items,
        "users": world.users,
        "events": world.history,
    }
    paths: dict[str, Path] = {}
    for kind, rows in records.items():
        path = directory / f"{kind}.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(row.model_dump_json(exclude_none=True))
                out.write("\n")
        paths[kind] = path
    return paths


# ---- creators -----------------------------------------------------------------------------------


def _region_weights(regions: Sequence[str]) -> npt.NDArray[np.float64]:
    weights = np.array([REGION_SHARES.get(r, 0.5) for r in regions], dtype=np.float64)
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def _appeal(topics: Sequence[Topic]) -> npt.NDArray[np.float64]:
    weights = np.array([t.appeal for t in topics], dtype=np.float64)
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def _handle(name: str, topic: Topic, rng: np.random.Generator, taken: set[str]) -> str:
    """A readable, unique handle such as ``chef_maya`` or ``maya.bakes``."""
    style = int(rng.integers(4))
    prefix = topic.handle_prefixes[int(rng.integers(len(topic.handle_prefixes)))]
    suffix = topic.handle_suffixes[int(rng.integers(len(topic.handle_suffixes)))]
    base = (
        f"{prefix}_{name}",
        f"{name}.{suffix}",
        f"{name}_{suffix}",
        f"{name}{suffix}",
    )[style]
    handle = base
    while handle in taken:
        handle = f"{base}{int(rng.integers(2, 100))}"
    taken.add(handle)
    assert is_valid_id(handle)
    return handle


def _make_creators(
    config: WorldConfig, topics: Sequence[Topic], rng: np.random.Generator
) -> list[Creator]:
    region_p = _region_weights(config.regions)
    appeal = _appeal(topics)
    taken: set[str] = set()
    creators: list[Creator] = []
    for _ in range(config.n_creators):
        region = config.regions[int(rng.choice(len(config.regions), p=region_p))]
        language = pick_language(region, rng)
        names = FIRST_NAMES.get(language, FIRST_NAMES["en"])
        name = names[int(rng.integers(len(names)))]
        n_topics = 1 if rng.random() < 0.6 else 2
        chosen = rng.choice(len(topics), size=n_topics, replace=False, p=appeal)
        creator_topics = tuple(topics[int(i)].name for i in chosen)
        quality = float(rng.beta(5.0, 3.0))
        creators.append(
            Creator(
                creator_id=_handle(name, topics[int(chosen[0])], rng, taken),
                display_name=name.capitalize(),
                topics=creator_topics,
                region=region,
                language=language,
                quality=quality,
                activity=float(rng.lognormal(0.0, 0.9)),
                fame=float(rng.lognormal(2.0 * (quality - 0.62), 0.8)),
                length_style=float(rng.lognormal(0.0, 0.2)),
            )
        )
    return creators


# ---- items --------------------------------------------------------------------------------------


def _caption(topic: Topic, tags: Sequence[str], language: str, rng: np.random.Generator) -> str:
    template = topic.templates[int(rng.integers(len(topic.templates)))]
    x, y = rng.choice(len(topic.subjects), size=2, replace=False)
    n = _SMALL_NUMBERS[int(rng.integers(len(_SMALL_NUMBERS)))]
    text = template.format(x=topic.subjects[int(x)], y=topic.subjects[int(y)], n=n)
    closers = CAPTION_CLOSERS.get(language, CAPTION_CLOSERS["en"])
    # Creators writing in another language still use the English templates; a native sign-off is
    # likelier for them, so captions carry a language cue.
    if rng.random() < (0.25 if language == "en" else 0.6):
        text += " " + closers[int(rng.integers(len(closers)))]
    if rng.random() < 0.4:
        text += " " + " ".join(f"#{tag}" for tag in tags[:3])
    return text


def _make_items(
    config: WorldConfig,
    topics: Sequence[Topic],
    creators: Sequence[Creator],
    now: float,
    rng: np.random.Generator,
) -> tuple[list[Item], dict[str, ItemFacts]]:
    by_name = {t.name: t for t in topics}
    activity = np.array([c.activity for c in creators], dtype=np.float64)
    per_creator = rng.multinomial(config.n_items, activity / activity.sum())
    owner = np.repeat(np.arange(len(creators)), per_creator)
    # Upload ages follow an exponential truncated to the history window: recent days hold more
    # uploads, as in a growing app. Inverse-CDF sampling keeps it one vectorized draw.
    window = config.history_days * DAY_S
    scale = window / 2.0
    u = rng.random(config.n_items)
    ages = -scale * np.log1p(-u * (1.0 - math.exp(-window / scale)))
    created = np.floor(now - ages)
    order = np.argsort(created, kind="stable")
    width = max(6, len(str(config.n_items)))

    items: list[Item] = []
    facts: dict[str, ItemFacts] = {}
    for position, index in enumerate(order):
        creator = creators[int(owner[index])]
        topic_name = creator.topics[0]
        if len(creator.topics) > 1 and rng.random() < 0.3:
            topic_name = creator.topics[1]
        topic = by_name[topic_name]
        n_sub = int(rng.choice((1, 2, 3), p=(0.4, 0.4, 0.2)))
        subs = rng.choice(len(topic.subtags), size=min(n_sub, len(topic.subtags)), replace=False)
        tags = [topic.name, *(topic.subtags[int(s)] for s in subs)]
        if len(topics) > 1 and rng.random() < CROSS_TOPIC_TAG_SHARE:
            other = int(rng.integers(len(topics) - 1))
            other_topic = [t for t in topics if t.name != topic.name][other]
            tags.append(other_topic.name)
        median = topic.median_duration_s * creator.length_style
        duration = float(rng.lognormal(math.log(median), topic.duration_sigma))
        duration = round(min(max(duration, MIN_DURATION_S), MAX_DURATION_S), 1)
        regions: list[str] = []
        if len(config.regions) > 1 and rng.random() < RESTRICTED_SHARE:
            regions = [config.regions[int(rng.integers(len(config.regions)))]]
        quality = float(np.clip(creator.quality + rng.normal(0.0, 0.12), 0.02, 0.99))
        item_id = f"v{position + 1:0{width}d}"
        items.append(
            Item(
                item_id=item_id,
                creator_id=creator.creator_id,
                created_at=from_epoch(float(created[index])),
                duration_s=duration,
                caption=_caption(topic, tags, creator.language, rng),
                tags=tags,
                language=creator.language,
                regions=regions,
            )
        )
        facts[item_id] = ItemFacts(topic=topic.name, quality=quality)
    return items, facts


# ---- viewers ------------------------------------------------------------------------------------


def _make_viewers(
    config: WorldConfig,
    topics: Sequence[Topic],
    facts: dict[str, ItemFacts],
    rng: np.random.Generator,
) -> list[Viewer]:
    region_p = _region_weights(config.regions)
    appeal = _appeal(topics)
    names = tuple(t.name for t in topics)
    width = max(4, len(str(config.n_viewers)))
    viewers: list[Viewer] = []
    for i in range(config.n_viewers):
        region = config.regions[int(rng.choice(len(config.regions), p=region_p))]
        viewers.append(
            make_viewer(
                user_id=f"viewer{i + 1:0{width}d}",
                region=region,
                topics=names,
                appeal=appeal,
                catalog=facts,
                rng=rng,
            )
        )
    return viewers


# ---- history ------------------------------------------------------------------------------------


@dataclass
class _Shelf:
    """Items available in one region (optionally one topic), in upload order, for fast sampling
    of "anything uploaded before t". Plain lists: ``bisect`` on them beats numpy for scalars."""

    index: list[int]
    created: list[float]
    cum_popularity: list[float]

    def count_before(self, t: float) -> int:
        return bisect.bisect_left(self.created, t)


def _shelf(
    mask: npt.NDArray[np.bool_],
    created: npt.NDArray[np.float64],
    popularity: npt.NDArray[np.float64],
) -> _Shelf:
    index = np.flatnonzero(mask)
    return _Shelf(
        [int(i) for i in index],
        [float(c) for c in created[index]],
        [float(c) for c in np.cumsum(popularity[index])],
    )


class _LegacyFeed:
    """The app's feed before fyp: popular, random, or from a favourite topic, never a repeat."""

    def __init__(
        self,
        items: Sequence[Item],
        facts: dict[str, ItemFacts],
        creators: Sequence[Creator],
        regions: Sequence[str],
        topics: Sequence[str],
    ) -> None:
        fame = {c.creator_id: c.fame for c in creators}
        created = np.array([item.created_at.timestamp() for item in items], dtype=np.float64)
        quality = np.array([facts[item.item_id].quality for item in items], dtype=np.float64)
        # Popularity as the old app saw it: engagement grows fast with quality, and creators it
        # already promoted got more reach.
        popularity = np.exp(3.0 * quality) * np.sqrt(
            np.array([fame[item.creator_id] for item in items], dtype=np.float64)
        )
        item_topic = np.array([facts[item.item_id].topic for item in items])
        self.region_shelf: dict[str, _Shelf] = {}
        self.topic_shelf: dict[tuple[str, str], _Shelf] = {}
        for region in regions:
            available = np.array([item.available_in(region) for item in items], dtype=np.bool_)
            self.region_shelf[region] = _shelf(available, created, popularity)
            for topic in topics:
                self.topic_shelf[(region, topic)] = _shelf(
                    available & (item_topic == topic), created, popularity
                )

    def pick(
        self,
        region: str,
        favourites: Sequence[str],
        favourite_cum: Sequence[float],
        t: float,
        seen: set[int],
        rng: np.random.Generator,
    ) -> int | None:
        """Index of an item uploaded before ``t`` and unseen by the viewer, or ``None``.

        ``favourite_cum`` is the cumulative weight of ``favourites`` (the app's guess of what
        the viewer likes), ending at 1.
        """
        shelf = self.region_shelf[region]
        end = shelf.count_before(t)
        if end == 0:
            return None
        for _ in range(8):
            u = rng.random()
            if u < POLICY_MIX[0]:
                target = rng.random() * shelf.cum_popularity[end - 1]
                j = min(bisect.bisect_right(shelf.cum_popularity, target), end - 1)
                choice = shelf.index[j]
            elif u < POLICY_MIX[0] + POLICY_MIX[1]:
                choice = shelf.index[int(rng.random() * end)]
            else:
                k = min(bisect.bisect_right(favourite_cum, rng.random()), len(favourites) - 1)
                topical = self.topic_shelf[(region, favourites[k])]
                topical_end = topical.count_before(t)
                if topical_end == 0:
                    continue
                choice = topical.index[int(rng.random() * topical_end)]
            if choice not in seen:
                return choice
        # Rare (small catalogs, heavy viewers): fall back to any unseen item.
        unseen = [i for i in shelf.index[:end] if i not in seen]
        return unseen[int(rng.random() * len(unseen))] if unseen else None


def _simulate_history(
    config: WorldConfig,
    items: Sequence[Item],
    facts: dict[str, ItemFacts],
    creators: Sequence[Creator],
    viewers: Sequence[Viewer],
    now: float,
    seed: np.random.SeedSequence,
) -> list[Event]:
    """Each viewer watches up to ``exposures_per_viewer`` items in sessions spread over the window.

    A session shows videos back to back: the next starts when the viewer leaves the previous one.
    Exposures happen only at times when the item already exists; a session that would run past
    ``now`` stops early, and a viewer whose region has run out of unseen items stops too, so a
    viewer can have fewer exposures (rare at default sizes).
    """
    if not items or config.exposures_per_viewer == 0:
        return []
    feed = _LegacyFeed(items, facts, creators, config.regions, [t.name for t in TOPICS])
    window_start = now - config.history_days * DAY_S
    latest_start = now - 60.0
    events: list[Event] = []
    for viewer, child in zip(viewers, seed.spawn(len(viewers)), strict=True):
        rng = np.random.default_rng(child)
        shelf = feed.region_shelf[viewer.region]
        if len(shelf.index) == 0:
            continue
        # Sessions begin once the region has a few items to show.
        earliest = max(window_start, float(shelf.created[min(19, len(shelf.index) - 1)]) + 1.0)
        if earliest >= latest_start:
            continue
        favourites = viewer.top_topics(3)
        weights = [viewer.taste_for(t) for t in favourites]
        favourite_cum = [sum(weights[: i + 1]) / sum(weights) for i in range(len(weights))]
        n = config.exposures_per_viewer
        n_sessions = max(1, round(n / SESSION_LENGTH))
        lengths = rng.multinomial(n, np.full(n_sessions, 1.0 / n_sessions))
        starts = np.sort(rng.uniform(earliest, latest_start, size=n_sessions))
        seen: set[int] = set()
        t = -math.inf
        for start, length in zip(starts, lengths, strict=True):
            t = max(float(start), t + 300.0)
            for _ in range(int(length)):
                # Leave room for the follow-up events of this exposure before ``now``.
                if t > now - 30.0:
                    break
                choice = feed.pick(viewer.region, favourites, favourite_cum, t, seen, rng)
                if choice is None:
                    break
                seen.add(choice)
                item = items[choice]
                reaction = viewer.react(item, t, rng)
                events.extend(reaction)
                watched_s = (reaction[0].watch_ms or 0) / 1000.0
                last = reaction[-1].ts.timestamp()
                t = max(t + watched_s, last) + 0.5 + 2.0 * rng.random()
    events.sort(key=lambda e: e.ts)
    return events

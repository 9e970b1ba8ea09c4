"""Simulated viewers: people with hidden tastes who react to the videos they are shown.

A viewer's behaviour is driven by one number per item, the *fit* (``Viewer.fit``): how much the
item's topic appeals to them, scaled by the item's hidden quality and by whether they understand its
language. Everything the viewer does is a noisy, steep function of fit, so a recommender that learns
the viewer's tastes from their events earns visibly more finishes and likes than one that does not,
and an evaluator can score a feed against the truth by asking ``fit`` directly.

The taste vector never leaves this module: ``Viewer.to_user`` builds the public ``User`` with
harmless demo attributes only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.special import betainc

from fyp.signals import QUICK_SKIP_MS
from fyp.sim.topics import REGION_LANGUAGES
from fyp.types import Event, EventType, Item, User, from_epoch

FOREIGN_LANGUAGE_FACTOR: Final = 0.8
"""Fit multiplier for an item in a language the viewer does not speak."""

UNKNOWN_QUALITY: Final = 0.5
"""Quality assumed for an item the world did not create (e.g. one an app added later)."""

FINISH_THRESHOLD: Final = 0.9
"""A viewer who gets this far through a video watches it to the end."""

WATCH_CONCENTRATION: Final = 3.5
"""Concentration of the Beta share of a video that a viewer who stays watches."""

LEAVE_BASE: Final = 0.02
"""Hazard of closing the app after a perfectly fitting video (for a viewer of patience 1)."""

LEAVE_BOREDOM: Final = 0.10
"""Extra hazard of closing the app after a video that does not fit at all."""


@dataclass(frozen=True, slots=True)
class ItemFacts:
    """What the simulation knows about an item and the engine must learn: topic and quality."""

    topic: str
    quality: float


@dataclass(eq=False)
class Viewer:
    """A simulated viewer.

    ``taste`` is a probability vector over ``topics`` (same order); ``catalog`` gives the hidden
    facts of the world's items. Propensities are per-viewer base rates, roughly the chance of the
    action on a perfectly fitting video watched to the end. ``followed`` holds the creators this
    viewer follows; ``react`` adds to it, so nobody follows the same creator twice.
    """

    user_id: str
    region: str
    language: str
    languages: frozenset[str]
    topics: tuple[str, ...]
    taste: npt.NDArray[np.float64]
    patience: float
    like_propensity: float
    comment_propensity: float
    share_propensity: float
    follow_propensity: float
    catalog: Mapping[str, ItemFacts] = field(repr=False)
    followed: set[str] = field(default_factory=set)
    _topic_index: dict[str, int] = field(init=False, repr=False)
    _ranked: tuple[str, ...] = field(init=False, repr=False)
    _max_taste: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        taste = np.array(self.taste, dtype=np.float64)
        if taste.shape != (len(self.topics),) or not (taste > 0).all():
            raise ValueError("taste needs one positive weight per topic")
        taste.setflags(write=False)  # the derived fields below must stay in step
        self.taste = taste
        self._topic_index = {name: i for i, name in enumerate(self.topics)}
        order = sorted(range(len(self.topics)), key=lambda i: (-taste[i], i))
        self._ranked = tuple(self.topics[i] for i in order)
        self._max_taste = float(taste.max())

    # ---- what the viewer likes ------------------------------------------------------------------

    def taste_for(self, topic: str) -> float:
        """The viewer's share of interest in ``topic`` (0 for a topic the world does not know)."""
        index = self._topic_index.get(topic)
        return 0.0 if index is None else float(self.taste[index])

    def top_topics(self, k: int = 3) -> list[str]:
        """The ``k`` topics this viewer cares most about, most loved first (ties by topic order)."""
        return list(self._ranked[: max(k, 0)])

    def topic_of(self, item: Item) -> str | None:
        """The item's topic: from the world's facts, else its first tag that names a topic."""
        facts = self.catalog.get(item.item_id)
        if facts is not None:
            return facts.topic
        return next((tag for tag in item.tags if tag in self._topic_index), None)

    def fit(self, item: Item) -> float:
        """How well ``item`` suits this viewer, in [0, 1].

        ``sqrt(taste[topic] / max(taste)) * (0.5 + 0.5 * quality)``, times 0.8 when the viewer
        does not speak the item's language. The square root keeps secondary interests visible
        (a topic with a quarter of the top topic's weight still fits half as well) while topics
        the viewer ignores stay near zero. Items of unknown topic fit as the least-liked topic.
        """
        topic = self.topic_of(item)
        share = self.taste_for(topic) if topic is not None else float(self.taste.min())
        facts = self.catalog.get(item.item_id)
        quality = facts.quality if facts is not None else UNKNOWN_QUALITY
        value = math.sqrt(share / self._max_taste) * (0.5 + 0.5 * quality)
        if item.language is not None and item.language not in self.languages:
            value *= FOREIGN_LANGUAGE_FACTOR
        return min(max(value, 0.0), 1.0)

    # ---- what the viewer does -------------------------------------------------------------------

    def _stay_chance(self, f: float) -> float:
        """Chance that the first second keeps a viewer on a video of fit ``f``."""
        return float(1.0 - (1.0 - (0.1 + 0.85 * f**0.6)) ** self.patience)

    def _watch_share_mean(self, f: float, duration_ms: float) -> float:
        """Mean share of a video of fit ``f`` that a viewer who stayed watches (Beta mean)."""
        length_factor = min(max((duration_ms / 30_000.0) ** -0.2, 0.6), 1.3)
        mean = float(1.0 - (1.0 - (0.35 + 0.6 * f)) ** self.patience)
        return float(min(max(mean * length_factor, 0.05), 0.95))

    def expected_watch_ms(self, item: Item) -> float:
        """The mean ``watch_ms`` of the play ``react`` reports for ``item``, in closed form.

        The same model as ``react`` without its draws (up to the rounding of milliseconds), so an
        evaluator can score what a feed served by the watch time it earns on average rather than
        by one noisy sample of it.
        """
        f = self.fit(item)
        duration_ms = item.duration_s * 1000.0
        stay = self._stay_chance(f)
        mean = self._watch_share_mean(f, duration_ms)
        a, b = mean * WATCH_CONCENTRATION, (1.0 - mean) * WATCH_CONCENTRATION
        below = float(betainc(a, b, FINISH_THRESHOLD))  # P(part < threshold)
        # E[part; part < threshold] = mean * I_threshold(a + 1, b) for a Beta(a, b) part.
        part_below = mean * float(betainc(a + 1.0, b, FINISH_THRESHOLD))
        # A replay adds 0.15 + 0.85 * U of the video, 0.575 on average.
        finished = (1.0 - below) * (1.0 + _replay_chance(f) * 0.575) * duration_ms
        partial = below * QUICK_SKIP_MS + part_below * max(duration_ms - QUICK_SKIP_MS, 0.0)
        skipped = 250 + (QUICK_SKIP_MS - 250) / 2.0
        return (1.0 - stay) * skipped + stay * (finished + partial)

    def leave_hazard(self, item: Item) -> float:
        """How much watching ``item`` uses up of this viewer's will to keep swiping.

        ``(LEAVE_BASE + LEAVE_BOREDOM * (1 - fit)**2) / patience``: about one video in fifty ends
        a session however good the feed, and a video that does not fit adds up to one in ten
        more. A session ends at the first video after which the hazards of the videos watched so
        far add up to the session's budget, an ``Exp(1)`` draw made when it starts (the
        inverse-transform way to sample a hazard that changes from video to video). Two feeds
        compared on the same viewer with the same budget therefore keep them for as long as their
        videos' fits allow: a better-fitting feed earns longer sessions, and the comparison is
        not drowned in the noise of independent draws.
        """
        f = self.fit(item)
        return (LEAVE_BASE + LEAVE_BOREDOM * (1.0 - f) ** 2) / self.patience

    def react(
        self, item: Item, ts: float, rng: np.random.Generator, request_id: str | None = None
    ) -> list[Event]:
        """The events this viewer produces when shown ``item`` at epoch second ``ts``.

        Always one ``play`` first, with ``watch_ms``. Then, in this order and each 0.5-3 s after
        the previous event: ``skip`` if less than 2 s was watched, else ``finish`` if the watch
        ratio reached 1 (a replay can push it past 1); ``like``, ``comment``, ``share``,
        ``follow`` (once per creator) with probabilities rising steeply with fit and the viewer's
        propensities; rarely ``not_interested`` after a quick skip of a very poorly fitting item.

        Two steps model a real swipe feed: the first second decides whether the viewer stays
        (likelier with fit and patience); a viewer who stays watches a Beta-distributed share of
        the rest, with a mean that rises with fit and falls for long videos.

        Deterministic given the state of ``rng``; event ids come from ``rng`` (96 random bits).
        Scalar draws use ``rng.random()`` where possible: it is several times cheaper than the
        other samplers, and the history calls this method tens of thousands of times.
        """
        f = self.fit(item)
        duration_ms = item.duration_s * 1000.0
        stayed = rng.random() < self._stay_chance(f)
        finished = False
        if not stayed:
            watch_ms = 250 + int(rng.random() * (QUICK_SKIP_MS - 250))
        else:
            mean = self._watch_share_mean(f, duration_ms)
            part = float(rng.beta(mean * WATCH_CONCENTRATION, (1.0 - mean) * WATCH_CONCENTRATION))
            if part >= FINISH_THRESHOLD:
                finished = True
                ratio = 1.0
                if rng.random() < _replay_chance(f):
                    ratio += 0.15 + 0.85 * rng.random()
                # Round up so watch_ms / duration >= 1 holds exactly for a finish.
                watch_ms = math.ceil(ratio * duration_ms)
            else:
                watch_ms = int(QUICK_SKIP_MS + part * max(duration_ms - QUICK_SKIP_MS, 0.0))
        watch_ms = min(watch_ms, math.ceil(2.0 * duration_ms))

        types: list[EventType] = ["play"]
        if watch_ms < QUICK_SKIP_MS:
            types.append("skip")
            if f < 0.1 and rng.random() < 0.03 * (1.0 - f / 0.1):
                types.append("not_interested")
        else:
            engaged = 1.0 if finished else 0.3
            if finished:
                types.append("finish")
            liked = rng.random() < self.like_propensity * f**1.3 * engaged
            if liked:
                types.append("like")
            if rng.random() < self.comment_propensity * f**1.5 * engaged:
                types.append("comment")
            if finished and rng.random() < self.share_propensity * f**2:
                types.append("share")
            if item.creator_id not in self.followed:
                boost = 2.0 if liked else 0.4
                if rng.random() < self.follow_propensity * f**2 * boost * engaged:
                    types.append("follow")
                    self.followed.add(item.creator_id)

        events: list[Event] = []
        t = ts
        for kind in types:
            events.append(
                Event(
                    event_id=_event_id(rng),
                    user_id=self.user_id,
                    item_id=item.item_id,
                    type=kind,
                    ts=from_epoch(round(t, 3)),
                    watch_ms=watch_ms if kind == "play" else None,
                    request_id=request_id,
                )
            )
            t += 0.5 + 2.5 * rng.random()
        return events

    def to_user(self) -> User:
        """The public record of this viewer: id, home region and non-secret demo attributes."""
        return User(
            user_id=self.user_id,
            region=self.region,
            attributes={"cohort": "demo", "language": self.language},
        )


def _replay_chance(f: float) -> float:
    """Chance that a viewer who finished a video of fit ``f`` watches part of it again."""
    return 0.08 + 0.3 * f


def _event_id(rng: np.random.Generator) -> str:
    """``ev`` + 24 hex digits (96 bits) from ``rng``'s own bit stream: unique in practice and
    reproducible, and much cheaper than ``rng.bytes``."""
    raw = rng.bit_generator.random_raw
    return f"ev{raw():016x}{raw() >> 32:08x}"


def pick_language(region: str, rng: np.random.Generator) -> str:
    """A language spoken by someone based in ``region``, drawn from ``REGION_LANGUAGES``."""
    options = REGION_LANGUAGES.get(region, (("en", 1.0),))
    weights = np.array([w for _, w in options], dtype=np.float64)
    return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]


def make_viewer(
    user_id: str,
    region: str,
    topics: Sequence[str],
    appeal: npt.NDArray[np.float64],
    catalog: Mapping[str, ItemFacts],
    rng: np.random.Generator,
) -> Viewer:
    """Draw a viewer: 2-3 favourite topics (likelier for broadly appealing topics) hold most of a
    Dirichlet taste; patience and propensities vary between people."""
    n = len(topics)
    k = min(int(rng.choice((2, 3), p=(0.45, 0.55))), n)
    favourites = rng.choice(n, size=k, replace=False, p=appeal / appeal.sum())
    alpha = np.full(n, 0.1)
    alpha[favourites] = 4.0
    taste = rng.dirichlet(alpha)
    # Dirichlet draws can underflow to 0 for tiny alphas; a floor keeps every ratio finite.
    taste = np.maximum(taste, 1e-6)
    taste = taste / taste.sum()
    language = pick_language(region, rng)
    languages = {language}
    if language != "en" and rng.random() < 0.7:
        languages.add("en")
    elif language == "en" and rng.random() < 0.12:
        languages.add("es")
    return Viewer(
        user_id=user_id,
        region=region,
        language=language,
        languages=frozenset(languages),
        topics=tuple(topics),
        taste=taste,
        patience=float(np.clip(rng.lognormal(0.0, 0.25), 0.5, 1.8)),
        like_propensity=float(rng.beta(2.5, 4.5)),
        comment_propensity=float(rng.beta(1.2, 20.0)),
        share_propensity=float(rng.beta(1.5, 12.0)),
        follow_propensity=float(rng.beta(1.5, 14.0)),
        catalog=catalog,
    )

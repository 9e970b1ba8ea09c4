"""How behaviour becomes signal: the one place that gives each event type its meaning.

Three consumers read events, and all three take their semantics from here:

* online state: each event moves the viewer's creator and tag affinities, marks the item seen,
  records follows, hides items and mutes creators (``fold``);
* item stats: per-region counters and a time-decayed trending score (``fold``);
* training: each (viewer, item) pair gets a preference weight (``preference_weight``).

Decayed quantities are stored as a value at a timestamp and decayed on read, so a late event (an
import of history, a retried client) adds exactly what it would have added on time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from fyp.storage.roles import ItemRecord
from fyp.types import Event, epoch

TREND_EPOCH: Final = 1_577_836_800.0
"""2020-01-01T00:00:00Z: trending scores are stored as log-weights relative to this instant."""

QUICK_SKIP_MS: Final = 2000


def watch_ratio(watch_ms: int | None, duration_s: float) -> float | None:
    """Watched fraction of the item (may exceed 1 for replays); ``None`` when unknown."""
    if watch_ms is None or duration_s <= 0:
        return None
    return watch_ms / (duration_s * 1000.0)


def is_quick_skip(watch_ms: int | None) -> bool:
    """A play shorter than ``QUICK_SKIP_MS`` is a swipe-away, whatever the item's length."""
    return watch_ms is not None and watch_ms < QUICK_SKIP_MS


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    return math.pow(0.5, max(elapsed_s, 0.0) / half_life_s)


def combine_decayed(
    value: float, value_ts: float, delta: float, delta_ts: float, half_life_s: float
) -> tuple[float, float]:
    """Add ``delta`` observed at ``delta_ts`` to ``value`` valid at ``value_ts``; order-free."""
    if delta_ts >= value_ts:
        return value * decay_factor(delta_ts - value_ts, half_life_s) + delta, delta_ts
    return value + delta * decay_factor(value_ts - delta_ts, half_life_s), value_ts


def logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


@dataclass(frozen=True, slots=True)
class FoldPolicy:
    """Event semantics for online state and item stats (built from ``AffinityConfig``)."""

    affinity_weights: Mapping[str, float]
    play_weight: float
    neutral_watch_ratio: float
    affinity_half_life_s: float
    creator_mute_s: float
    trend_weights: Mapping[str, float]
    trend_half_life_s: float
    recent_positives: int = 20

    def affinity_delta(self, event: Event, item: ItemRecord) -> float:
        if event.type == "play":
            if is_quick_skip(event.watch_ms):
                return min(self.affinity_weights.get("skip", 0.0), 0.0)
            ratio = watch_ratio(event.watch_ms, item.duration_s)
            if ratio is None:
                return 0.0
            return self.play_weight * (min(ratio, 2.0) - self.neutral_watch_ratio)
        return self.affinity_weights.get(event.type, 0.0)

    def trend_weight(self, event: Event, item: ItemRecord) -> float:
        base = self.trend_weights.get(event.type, 0.0)
        if event.type == "play":
            if is_quick_skip(event.watch_ms):
                return 0.0
            ratio = watch_ratio(event.watch_ms, item.duration_s)
            return base * min(ratio, 1.0) if ratio is not None else 0.0
        return base


@dataclass
class StatsDelta:
    views: int = 0
    plays: int = 0
    finishes: int = 0
    likes: int = 0
    shares: int = 0
    skips: int = 0
    not_interested: int = 0
    watch_ratio_sum: float = 0.0
    trend_log: float = -math.inf


_COUNTER_BY_TYPE: Final = {
    "play": "plays",
    "finish": "finishes",
    "like": "likes",
    "share": "shares",
    "skip": "skips",
    "not_interested": "not_interested",
}


@dataclass
class Folded:
    """Everything a batch of new events changes, ready to be written in one transaction."""

    touched: set[tuple[str, str]] = field(default_factory=set)
    """(user, item) pairs the events touched; each marks the item seen."""
    affinity: list[tuple[str, str, float, float]] = field(default_factory=list)
    """(user, key, delta, ts) with key ``c:<creator>`` or ``t:<tag>``."""
    follows: dict[tuple[str, str], float] = field(default_factory=dict)
    hidden: dict[tuple[str, str], float] = field(default_factory=dict)
    mutes: dict[tuple[str, str], float] = field(default_factory=dict)
    """(user, creator) -> muted until."""
    stats: dict[str, StatsDelta] = field(default_factory=dict)


def fold(events: Iterable[Event], items: Mapping[str, ItemRecord], policy: FoldPolicy) -> Folded:
    """Turn new events into state changes. Pure: the caller writes the result."""
    out = Folded()
    lam = math.log(2.0) / policy.trend_half_life_s
    for ev in events:
        item = items[ev.item_id]
        ts = epoch(ev.ts)
        out.touched.add((ev.user_id, ev.item_id))
        delta = policy.affinity_delta(ev, item)
        if delta:
            out.affinity.append((ev.user_id, f"c:{item.creator_id}", delta, ts))
            if item.tags:
                share = delta / math.sqrt(len(item.tags))
                out.affinity.extend((ev.user_id, f"t:{tag}", share, ts) for tag in item.tags)
        if ev.type == "follow":
            out.follows[(ev.user_id, item.creator_id)] = ts
        if ev.type in ("not_interested", "report"):
            out.hidden[(ev.user_id, ev.item_id)] = ts
            until = ts + policy.creator_mute_s
            key = (ev.user_id, item.creator_id)
            out.mutes[key] = max(until, out.mutes.get(key, until))
        stats = out.stats.setdefault(ev.item_id, StatsDelta())
        counter = _COUNTER_BY_TYPE.get(ev.type)
        if counter:
            setattr(stats, counter, getattr(stats, counter) + 1)
        if ev.type == "play":
            ratio = watch_ratio(ev.watch_ms, item.duration_s)
            if ratio is not None:
                stats.watch_ratio_sum += min(ratio, 2.0)
        weight = policy.trend_weight(ev, item)
        if weight > 0:
            stats.trend_log = logaddexp(
                stats.trend_log, math.log(weight) + lam * (ts - TREND_EPOCH)
            )
    return out


def trend_now(trend_log: float, now: float, half_life_s: float) -> float:
    """The decayed engagement a stored trending log-weight amounts to at ``now``."""
    if trend_log == -math.inf:
        return 0.0
    lam = math.log(2.0) / half_life_s
    exponent = trend_log - lam * (now - TREND_EPOCH)
    return math.exp(min(exponent, 700.0))


def preference_weight(
    event_type: str,
    watch_ms: int | None,
    duration_s: float,
    weights: Mapping[str, float],
    play_weight: float,
) -> float:
    """Training preference contributed by one event; summed per (viewer, item)."""
    if event_type == "play":
        if is_quick_skip(watch_ms):
            return weights.get("skip", 0.0)
        ratio = watch_ratio(watch_ms, duration_s)
        if ratio is None:
            return 0.0
        return play_weight * min(ratio, 2.0)
    return weights.get(event_type, 0.0)

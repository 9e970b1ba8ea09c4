"""Where serving hands learning its signal: feed responses become impressions, stored events become
engagements, and the joined examples go on the bus.

:class:`OnlineLog` is the one object the engine needs to hold: ``record_feed`` after a feed
response is built, ``record_events`` after events are stored, ``tick`` from a timer (or any
request) to let the event-time watermark follow the clock. It touches no personal store: what it
holds is in memory (the joiner's open impressions) and on the bus, and both are bounded.

The features logged with an impression are what a :class:`~fyp.pipeline.contracts.FeedResult`
carries: the item's final score, its position and one flag per reason family
(``reason:similar_to``, ``reason:trending_in_region``, ...). Callers holding the ranker's own
feature values pass them through ``features``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fyp.errors import InvalidInput
from fyp.online.bus import Bus, publish_examples
from fyp.online.joiner import Example, Impression, Joiner
from fyp.pipeline.contracts import FeedResult
from fyp.types import Event


def feed_impressions(
    result: FeedResult,
    ts: float,
    durations: Mapping[str, float],
    features: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Impression]:
    """One :class:`Impression` per item of a feed response, in response order."""
    out = []
    for position, item in enumerate(result.items):
        values: dict[str, float] = {"score": float(item.score), "position": float(position)}
        for reason in item.reasons:
            values["reason:" + reason.code.split(":", 1)[0]] = 1.0
        if features is not None:
            values.update({k: float(v) for k, v in features.get(item.item_id, {}).items()})
        out.append(
            Impression(
                request_id=result.request_id,
                user_id=result.user_id,
                item_id=item.item_id,
                position=position,
                model_version=result.model_version,
                ts=ts,
                features=values,
                duration_s=durations.get(item.item_id),
            )
        )
    return out


class OnlineLog:
    """Feeds and events in, labelled examples out on ``bus``; counters for an operator.

    ``lateness_s`` is how far behind the clock :meth:`tick` puts the watermark: engagements that
    reach the server later than that after their window ended are counted late.
    """

    def __init__(
        self,
        joiner: Joiner,
        bus: Bus,
        *,
        lateness_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lateness_s < 0:
            raise InvalidInput("lateness_s must not be negative")
        self.joiner = joiner
        self.bus = bus
        self.lateness_s = lateness_s
        self._clock = clock
        self._lock = threading.Lock()
        self.published = 0

    def _publish(self, examples: list[Example]) -> int:
        if examples:
            publish_examples(self.bus, examples)
            with self._lock:
                self.published += len(examples)
        return len(examples)

    def record_feed(
        self,
        result: FeedResult,
        durations: Mapping[str, float],
        *,
        now: float | None = None,
        features: Mapping[str, Mapping[str, float]] | None = None,
    ) -> int:
        """Log a feed response's items as impressions; returns examples published meanwhile."""
        ts = self._clock() if now is None else now
        impressions = feed_impressions(result, ts, durations, features)
        return self._publish(self.joiner.add_impressions(impressions))

    def record_events(self, events: Iterable[Event]) -> int:
        """Join stored events (only those the event log accepted); returns examples published."""
        return self._publish(self.joiner.add_events(events))

    def tick(self, now: float | None = None) -> int:
        """Move the watermark to ``now - lateness_s``, publishing the examples whose window
        closed; returns how many."""
        now = self._clock() if now is None else now
        return self._publish(self.joiner.advance(now - self.lateness_s))

    def stats(self) -> dict[str, Any]:
        """Joiner counters, the bus backlog and what was published, for a stats endpoint."""
        out: dict[str, Any] = dict(self.joiner.stats().as_dict())
        if not math.isfinite(out["watermark"]):
            out["watermark"] = None  # nothing closed yet (and JSON has no infinity)
        out["published"] = self.published
        out["bus_entries"] = len(self.bus)
        return out

"""Where serving hands learning its signal: feed responses become impressions, stored events become
engagements, and the joined examples go on the bus.

Two shapes, one interface (``record_feed`` after a feed response is built, ``record_events``
after events are stored, ``tick`` from a timer to let the event-time watermark follow the clock):

* :class:`OnlineLog` joins in this process and publishes examples: the embedded default, where
  the one process serves, ingests and trains;
* :class:`RelayLog` publishes the raw impressions and engagements on a stream instead; a
  :class:`JoinPump` in the training process consumes that stream into its own ``OnlineLog``. With
  several server workers this is what makes a feed served by one worker meet the events posted to
  another.

Neither touches a personal store: what they hold is in memory (the joiner's open impressions) and
on the bus, and both are bounded.

The features logged with an impression are what a :class:`~fyp.pipeline.contracts.FeedResult`
carries: the item's final score, its position and one flag per reason family
(``reason:similar_to``, ``reason:trending_in_region``, ...), and separately the ranker's numeric
inputs as one vector (what online training learns from).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fyp.errors import InvalidInput
from fyp.online.bus import Bus, Message, publish_examples
from fyp.online.joiner import (
    Engagement,
    Example,
    Impression,
    Joiner,
    pack_floats,
    unpack_floats,
)
from fyp.pipeline.contracts import FeedResult
from fyp.types import Event


def feed_impressions(
    result: FeedResult,
    ts: float,
    durations: Mapping[str, float],
    features: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Impression]:
    """One :class:`Impression` per item of a feed response, in response order; each carries the
    ranker's inputs the item was scored with (``FeedItem.ranker_inputs``)."""
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
                inputs=item.ranker_inputs,
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

    def add_impressions(self, impressions: Iterable[Impression]) -> int:
        """Join impressions logged elsewhere (relayed); returns examples published."""
        return self._publish(self.joiner.add_impressions(impressions))

    def add_engagements(self, engagements: Iterable[Engagement]) -> int:
        """Join engagements stored elsewhere (relayed); returns examples published."""
        return self._publish(self.joiner.add_events(engagements))

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


# ---- relaying to the training process ------------------------------------------------------------

_KIND: str = "kind"


class RelayLog:
    """The serving side when another process joins: raw impressions and engagements on ``bus``."""

    def __init__(self, bus: Bus, *, clock: Callable[[], float] = time.time) -> None:
        self.bus = bus
        self._clock = clock
        self._lock = threading.Lock()
        self.relayed_impressions = 0
        self.relayed_events = 0

    def record_feed(
        self,
        result: FeedResult,
        durations: Mapping[str, float],
        *,
        now: float | None = None,
        features: Mapping[str, Mapping[str, float]] | None = None,
    ) -> int:
        ts = self._clock() if now is None else now
        impressions = feed_impressions(result, ts, durations, features)
        self.bus.publish([{_KIND: "impression", **_impression_dict(i)} for i in impressions])
        with self._lock:
            self.relayed_impressions += len(impressions)
        return 0

    def record_events(self, events: Iterable[Event]) -> int:
        payload = [{_KIND: "event", **_engagement_dict(Engagement.from_event(e))} for e in events]
        if payload:
            self.bus.publish(payload)
            with self._lock:
                self.relayed_events += len(payload)
        return 0

    def tick(self, now: float | None = None) -> int:
        return 0  # the joining process keeps the watermark

    def stats(self) -> dict[str, Any]:
        return {
            "relayed_impressions": self.relayed_impressions,
            "relayed_events": self.relayed_events,
            "bus_entries": len(self.bus),
        }


def _impression_dict(imp: Impression) -> dict[str, Any]:
    return {
        "request_id": imp.request_id,
        "user_id": imp.user_id,
        "item_id": imp.item_id,
        "position": imp.position,
        "model_version": imp.model_version,
        "ts": imp.ts,
        "features": dict(imp.features),
        "duration_s": imp.duration_s,
        "inputs": pack_floats(imp.inputs) if imp.inputs is not None else None,
    }


def _engagement_dict(ev: Engagement) -> dict[str, Any]:
    return {
        "event_id": ev.event_id,
        "user_id": ev.user_id,
        "item_id": ev.item_id,
        "type": ev.type,
        "ts": ev.ts,
        "watch_ms": ev.watch_ms,
        "request_id": ev.request_id,
    }


class JoinPump:
    """In the training process: raw records from the relay stream into a local :class:`OnlineLog`.

    At least once, like every consumer of the bus: a record is acked after the joiner took it, and
    the joiner's own duplicate checks (impression key, event id) make a redelivery harmless.
    """

    GROUP = "joiner"

    def __init__(self, raw: Bus, log: OnlineLog, *, consumer: str = "joiner") -> None:
        self.raw = raw
        self.log = log
        self._consumer = consumer
        self.pumped = 0

    def step(self, max_count: int = 2048, block_ms: int = 0) -> int:
        """Join one batch of relayed records; returns how many were taken."""
        messages = self.raw.reclaim(self.GROUP, self._consumer, 30_000, max_count)
        if len(messages) < max_count:
            messages += self.raw.consume(
                self.GROUP, self._consumer, max_count - len(messages), block_ms
            )
        if not messages:
            return 0
        self._join(messages)
        self.raw.ack(self.GROUP, [m.id for m in messages])
        self.pumped += len(messages)
        return len(messages)

    def _join(self, messages: list[Message]) -> None:
        # In stream order (runs of one kind at a time), so a viewing's engagements reach the
        # joiner before the next play, as they reached the relaying process.
        impressions: list[Impression] = []
        engagements: list[Engagement] = []
        for m in messages:
            data = dict(m.payload)
            kind = data.pop(_KIND, None)
            if kind == "impression":
                if engagements:
                    self.log.add_engagements(engagements)
                    engagements = []
                data["features"] = {str(k): float(v) for k, v in data["features"].items()}
                inputs = data.get("inputs")
                data["inputs"] = (
                    unpack_floats(inputs)
                    if isinstance(inputs, str)
                    else (tuple(inputs) if inputs is not None else None)
                )
                impressions.append(Impression(**data))
            elif kind == "event":
                if impressions:
                    self.log.add_impressions(impressions)
                    impressions = []
                engagements.append(Engagement(**data))
        if impressions:
            self.log.add_impressions(impressions)
        if engagements:
            self.log.add_engagements(engagements)

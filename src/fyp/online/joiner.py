"""The joiner: served impressions joined with the engagements that follow into labelled examples.

An :class:`Impression` is one item of one feed response (request id, viewer, item, position, model
version, time, and the features the ranker used). An :class:`Engagement` is what the viewer did with
it (play with ``watch_ms``, finish, like, share, comment, follow, skip, not_interested, report). The
:class:`Joiner` holds each impression open for ``window_s`` of event time, attaches the engagements
that arrive for it, and emits one :class:`Example` with its labels

* when the watermark passes the end of its window (:meth:`Joiner.advance`, or automatically with
  ``lateness_s``), or
* at once when a terminal engagement (skip, not_interested) arrives: the viewer has moved on, and
  the example takes the engagements up to and including that event's time, or
* when the open-impression cap is reached: the oldest impression is closed early (counted).

Exactly once: a duplicate impression (same request id and item) or a duplicate event (same
``event_id``) never counts twice; an event for an impression that has closed, or a late impression
(its window already behind the watermark), is counted and dropped, never re-emitting an example;
an event whose impression never comes is held until no impression could still claim it, then counted
as an orphan. The emitted set depends only on the inputs, not on their arrival order, given one
condition that early emission makes unavoidable: an impression's events that precede its terminal
event in event time arrive before it (a client reports in order). Open state is bounded by
``max_open`` impressions and ``max_orphans`` held events; the keys of emitted impressions are kept
until no event for them could still be matched (a window and the skew past the window's end), so a
re-delivered impression cannot reopen one; after that it is a late impression. Those keys and held
orphans are released as the watermark moves: feed it (``lateness_s``, or :meth:`Joiner.advance`
from a clock) or they accumulate.

Events are matched by ``(request_id, item_id)``; an event without a request id is matched to the
latest open impression of the same viewer and item whose window covers it.
"""

from __future__ import annotations

import base64
import heapq
import math
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Final, Literal

from fyp.errors import InvalidInput
from fyp.signals import QUICK_SKIP_MS
from fyp.types import Event, epoch

TERMINAL: Final = frozenset({"skip", "not_interested"})
NEGATIVE: Final = frozenset({"not_interested", "report"})
"""The terminal engagements when the next play closes a viewing: a skip then no longer closes
it, so a not-interested sent right after the skip still labels the example."""
"""Engagements after which the viewer is gone: the example is emitted at once."""
ENGAGEMENTS: Final = frozenset(
    {"play", "finish", "like", "share", "comment", "follow", "skip", "not_interested", "report"}
)

CloseReason = Literal["window", "terminal", "capacity", "next_play"]


@dataclass(frozen=True, slots=True)
class Impression:
    """One served feed item, as logged when the response left."""

    request_id: str
    user_id: str
    item_id: str
    position: int
    model_version: str
    ts: float
    """Serving time, seconds since the epoch."""
    features: Mapping[str, float] = field(default_factory=dict)
    """The features the ranker scored the item with."""
    duration_s: float | None = None
    """The item's length, for the watch ratio; ``None`` when unknown."""
    inputs: tuple[float, ...] | None = None
    """The ranker's numeric inputs as scored (``NUMERIC_FEATURES`` order), if it scored it."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.request_id, self.item_id)


@dataclass(frozen=True, slots=True)
class Engagement:
    """One thing the viewer did with a served item (the joiner's view of an :class:`Event`)."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float
    watch_ms: int | None = None
    request_id: str | None = None

    @classmethod
    def from_event(cls, event: Event) -> Engagement:
        return cls(
            event_id=event.event_id,
            user_id=event.user_id,
            item_id=event.item_id,
            type=event.type,
            ts=epoch(event.ts),
            watch_ms=event.watch_ms,
            request_id=event.request_id,
        )


@dataclass(frozen=True, slots=True)
class Example:
    """A labelled training example: an impression, its features, and what followed it.

    ``example_id`` (``request_id/item_id``) is unique per impression: consumers downstream are
    idempotent on it.
    """

    example_id: str
    request_id: str
    user_id: str
    item_id: str
    position: int
    model_version: str
    ts: float
    features: dict[str, float]
    watch_ms: int | None
    """Longest watch reported by a play (or skip) event; ``None`` when none reported one."""
    watch_ratio: float | None
    """``watch_ms`` over the item's length; ``None`` when either is unknown."""
    finish: bool
    quick_skip: bool
    """Left within ``QUICK_SKIP_MS``: a play or skip reporting less, or a skip reporting nothing."""
    like: bool
    share: bool
    comment: bool
    follow: bool
    skip: bool
    negative: bool
    """Not interested, or reported."""
    n_events: int
    closed_by: CloseReason
    inputs: tuple[float, ...] | None = None
    """The ranker's numeric inputs logged with the impression (``None``: not scored by it)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict. ``inputs`` travel as base64 of little-endian float32: the precision
        the ranker scored them with, and several times cheaper to decode than a JSON list of
        numbers (the trainer decodes every example it learns from)."""
        out = {name: getattr(self, name) for name in _EXAMPLE_FIELDS}
        out["features"] = dict(self.features)
        if self.inputs is not None:
            out["inputs"] = pack_floats(self.inputs)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Example:
        """The inverse of :meth:`to_dict` (after a JSON round trip: the trainer decodes every
        example it learns from through here, so it converts only what JSON changed). A list of
        numbers for ``inputs`` is accepted too (what earlier versions put on the bus)."""
        values = dict(data)
        inputs = values.get("inputs")
        if isinstance(inputs, str):
            values["inputs"] = unpack_floats(inputs)
        elif inputs is not None:
            values["inputs"] = tuple(inputs)
        return cls(**values)


def pack_floats(values: tuple[float, ...]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def packed_float_bytes(text: str) -> bytes:
    """The little-endian float32 bytes :func:`pack_floats` encoded (for decoding many at once)."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError("packed inputs must be a whole number of float32 values")
    return raw


def unpack_floats(text: str) -> tuple[float, ...]:
    raw = packed_float_bytes(text)
    return struct.unpack(f"<{len(raw) // 4}f", raw)


_EXAMPLE_FIELDS: Final = tuple(f.name for f in fields(Example))


@dataclass(frozen=True, slots=True)
class JoinerConfig:
    window_s: float = 600.0
    """How long after an impression its engagements still count."""
    max_skew_s: float = 5.0
    """An engagement may carry a time this much before its impression's (client clocks)."""
    lateness_s: float | None = None
    """When set, every input moves the watermark to (latest event time seen minus ``lateness_s``);
    when ``None`` the watermark moves only by :meth:`Joiner.advance`."""
    max_open: int = 100_000
    """Open impressions held at most; the oldest is closed early when a new one needs room."""
    max_orphans: int = 100_000
    """Events held while waiting for their impression; the oldest are dropped beyond it."""
    max_closed: int = 100_000
    """Keys of emitted impressions remembered (for a window and a wait after their window ended,
    so a redelivered impression is a duplicate and a straggling event is late) at most; beyond
    it the oldest are forgotten early (such a straggler then counts as an orphan)."""
    terminal: frozenset[str] = TERMINAL
    """Engagements that close their impression at once (the viewer is gone)."""
    close_on_next_play: bool = False
    """A ``play`` by a viewer closes that viewer's other open impressions that already have an
    engagement earlier than it (the viewer moved on to another item): their examples are emitted
    at once with the engagements up to that play. Emission then depends on a client reporting a
    viewing's engagements before it reports the next play (an engagement that comes later is
    counted late)."""

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.max_skew_s < 0:
            raise InvalidInput("window_s must be positive and max_skew_s not negative")
        if self.max_open < 1 or self.max_orphans < 0 or self.max_closed < 0:
            raise InvalidInput(
                "max_open must be at least 1, max_orphans and max_closed not negative"
            )


@dataclass(slots=True)
class JoinerStats:
    """Counters since the joiner started (``open`` and ``held_orphans`` are current sizes)."""

    impressions: int = 0
    duplicate_impressions: int = 0
    late_impressions: int = 0
    events: int = 0
    duplicate_events: int = 0
    late_events: int = 0
    """Arrived after their impression's example was emitted."""
    out_of_window_events: int = 0
    """Timed outside their impression's window (or after its terminal event)."""
    orphan_events: int = 0
    """Never matched an impression (including those pushed out of the orphan buffer)."""
    ignored_events: int = 0
    """Types that carry no label (``impression``)."""
    emitted: int = 0
    emitted_window: int = 0
    emitted_terminal: int = 0
    emitted_capacity: int = 0
    emitted_next_play: int = 0
    forgotten: int = 0
    """Open impressions and held events dropped by :meth:`Joiner.forget_user` (erasure)."""
    open: int = 0
    held_orphans: int = 0
    watermark: float = -math.inf

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(slots=True)
class _Open:
    impression: Impression
    events: dict[str, Engagement] = field(default_factory=dict)


def _window_end(imp: Impression, window_s: float) -> float:
    return imp.ts + window_s


class Joiner:
    """Impressions + engagements → labelled examples, exactly once, in bounded memory.

    Every input method returns the examples it caused to be emitted (possibly none). Thread-safe:
    feed requests and event ingestion may call it concurrently.
    """

    def __init__(self, config: JoinerConfig | None = None) -> None:
        self.config = config or JoinerConfig()
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], _Open] = {}
        self._by_viewer: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._by_user: dict[str, set[tuple[str, str]]] = {}
        self._open_heap: list[tuple[float, str, str]] = []  # (window end, request, item)
        self._closed: dict[tuple[str, str], float] = {}  # emitted key -> when to forget it
        self._closed_heap: list[tuple[float, str, str]] = []
        # Orphans: events waiting for an impression, by request key or (user, item).
        self._orphans: dict[str, Engagement] = {}
        self._orphans_by_key: dict[tuple[str, str, str], set[str]] = {}
        self._orphan_heap: list[tuple[float, str]] = []  # (ts, event id)
        self._stats = JoinerStats()
        self._max_ts = -math.inf

    # ---- public ------------------------------------------------------------------------------

    @property
    def watermark(self) -> float:
        return self._stats.watermark

    def stats(self) -> JoinerStats:
        with self._lock:
            s = replace(self._stats)
            s.open = len(self._open)
            s.held_orphans = len(self._orphans)
            return s

    def add_impressions(self, impressions: Iterable[Impression]) -> list[Example]:
        out: list[Example] = []
        with self._lock:
            for imp in impressions:
                self._add_impression(imp, out)
                self._auto_advance(imp.ts, out)
        return out

    def add_events(self, events: Iterable[Engagement | Event]) -> list[Example]:
        out: list[Example] = []
        with self._lock:
            for ev in events:
                eng = ev if isinstance(ev, Engagement) else Engagement.from_event(ev)
                self._add_event(eng, out)
                self._auto_advance(eng.ts, out)
        return out

    def advance(self, watermark: float) -> list[Example]:
        """Declare that no input older than ``watermark`` is still to come; close what ended.

        The watermark never moves back; a lower value is ignored.
        """
        out: list[Example] = []
        with self._lock:
            self._advance(watermark, out)
        return out

    def flush(self) -> list[Example]:
        """Close every open impression now (shutdown); held orphans are counted and dropped."""
        return self.advance(math.inf)

    # ---- impressions -------------------------------------------------------------------------

    def _add_impression(self, imp: Impression, out: list[Example]) -> None:
        cfg = self.config
        key = imp.key
        if key in self._open or key in self._closed:
            self._stats.duplicate_impressions += 1
            return
        end = _window_end(imp, cfg.window_s)
        if end <= self._stats.watermark:
            self._stats.late_impressions += 1
            return
        self._stats.impressions += 1
        self._compact()
        while len(self._open) >= cfg.max_open:
            self._close_oldest(out)
        entry = _Open(imp)
        self._open[key] = entry
        self._by_viewer.setdefault((imp.user_id, imp.item_id), set()).add(key)
        self._by_user.setdefault(imp.user_id, set()).add(key)
        heapq.heappush(self._open_heap, (end, imp.request_id, imp.item_id))
        # Claim held events: by request key, then request-less ones of this viewer and item.
        claimed: list[Engagement] = []
        okeys: tuple[tuple[str, str, str], ...] = (
            ("r", imp.request_id, imp.item_id),
            ("u", imp.user_id, imp.item_id),
        )
        for okey in okeys:
            for event_id in sorted(self._orphans_by_key.get(okey, ())):
                ev = self._orphans[event_id]
                if ev.user_id != imp.user_id or (okey[0] == "u" and not self._covers(imp, ev.ts)):
                    continue
                claimed.append(self._take_orphan(event_id))
        for ev in sorted(claimed, key=lambda e: (e.ts, e.event_id)):
            if key not in self._open:
                self._stats.late_events += 1  # closed by an earlier claimed terminal event
                continue
            self._attach(entry, ev, out)

    def _covers(self, imp: Impression, ts: float) -> bool:
        return imp.ts - self.config.max_skew_s <= ts < _window_end(imp, self.config.window_s)

    def _close_oldest(self, out: list[Example]) -> None:
        while self._open_heap:
            _, request_id, item_id = heapq.heappop(self._open_heap)
            if (request_id, item_id) in self._open:
                self._close((request_id, item_id), "capacity", math.inf, out)
                return

    # ---- events ------------------------------------------------------------------------------

    def _add_event(self, ev: Engagement, out: list[Example]) -> None:
        if ev.type not in ENGAGEMENTS:
            self._stats.ignored_events += 1
            return
        key = self._match(ev)
        if ev.type == "play" and self.config.close_on_next_play:
            self._close_moved_on(ev, key, out)
        if key is None:
            self._hold_orphan(ev, out)
            return
        entry = self._open.get(key)
        if entry is None:  # its impression was emitted already
            self._stats.late_events += 1
            return
        self._attach(entry, ev, out)

    def _close_moved_on(
        self, ev: Engagement, playing: tuple[str, str] | None, out: list[Example]
    ) -> None:
        """The viewer started another item: close their engaged impressions from before it."""
        for key in sorted(self._by_user.get(ev.user_id, ())):
            entry = self._open.get(key)
            if key == playing or entry is None or not entry.events:
                continue
            if max(e.ts for e in entry.events.values()) < ev.ts:
                self._close(key, "next_play", ev.ts, out)

    def holds(self, user_id: str) -> bool:
        """Whether anything about the viewer is held: an open impression or a waiting event."""
        return user_id in self.users()

    def users(self) -> set[str]:
        """The viewers anything is held about (open impressions, waiting events)."""
        with self._lock:
            return set(self._by_user) | {ev.user_id for ev in self._orphans.values()}

    def forget_user(self, user_id: str) -> int:
        """Erasure: drop the viewer's open impressions and held events without emitting them."""
        with self._lock:
            dropped = 0
            for key in list(self._by_user.get(user_id, ())):
                entry = self._open.pop(key, None)
                if entry is not None:
                    self._unindex(entry.impression)
                    dropped += 1
            for event_id in [i for i, ev in self._orphans.items() if ev.user_id == user_id]:
                self._take_orphan(event_id)
                dropped += 1
            self._stats.forgotten += dropped
            return dropped

    def _unindex(self, imp: Impression) -> None:
        key = imp.key
        vkey = (imp.user_id, imp.item_id)
        keys = self._by_viewer.get(vkey)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_viewer[vkey]
        user_keys = self._by_user.get(imp.user_id)
        if user_keys is not None:
            user_keys.discard(key)
            if not user_keys:
                del self._by_user[imp.user_id]

    def _match(self, ev: Engagement) -> tuple[str, str] | None:
        """The key of the impression this event belongs to, open or closed, if known."""
        if ev.request_id is not None:
            key = (ev.request_id, ev.item_id)
            if key in self._open:
                return key if self._open[key].impression.user_id == ev.user_id else None
            return key if key in self._closed else None
        best: tuple[float, tuple[str, str]] | None = None
        for key in self._by_viewer.get((ev.user_id, ev.item_id), ()):
            imp = self._open[key].impression
            if self._covers(imp, ev.ts) and (best is None or (imp.ts, key) > best):
                best = (imp.ts, key)
        return None if best is None else best[1]

    def _attach(self, entry: _Open, ev: Engagement, out: list[Example]) -> None:
        if ev.event_id in entry.events:
            self._stats.duplicate_events += 1
            return
        if not self._covers(entry.impression, ev.ts):
            self._stats.out_of_window_events += 1
            return
        self._stats.events += 1
        entry.events[ev.event_id] = ev
        if ev.type in self.config.terminal:
            self._close(entry.impression.key, "terminal", ev.ts, out)

    def _hold_orphan(self, ev: Engagement, out: list[Example]) -> None:
        if ev.event_id in self._orphans:
            self._stats.duplicate_events += 1
            return
        if self._orphan_expiry(ev) <= self._stats.watermark or self.config.max_orphans == 0:
            self._stats.orphan_events += 1
            return
        while len(self._orphans) >= self.config.max_orphans:
            _, event_id = heapq.heappop(self._orphan_heap)
            if event_id in self._orphans:
                self._take_orphan(event_id)
                self._stats.orphan_events += 1
        self._orphans[ev.event_id] = ev
        self._orphans_by_key.setdefault(self._orphan_key(ev), set()).add(ev.event_id)
        heapq.heappush(self._orphan_heap, (ev.ts, ev.event_id))

    @staticmethod
    def _orphan_key(ev: Engagement) -> tuple[str, str, str]:
        if ev.request_id is not None:
            return ("r", ev.request_id, ev.item_id)
        return ("u", ev.user_id, ev.item_id)

    def _orphan_wait(self) -> float:
        return self.config.max_skew_s + self.config.window_s

    def _orphan_expiry(self, ev: Engagement) -> float:
        """After this watermark no impression that could claim ``ev`` can arrive in time."""
        return ev.ts + self._orphan_wait()

    def _take_orphan(self, event_id: str) -> Engagement:
        ev = self._orphans.pop(event_id)
        okey = self._orphan_key(ev)
        ids = self._orphans_by_key[okey]
        ids.discard(event_id)
        if not ids:
            del self._orphans_by_key[okey]
        return ev

    # ---- time --------------------------------------------------------------------------------

    def _auto_advance(self, ts: float, out: list[Example]) -> None:
        if ts > self._max_ts:
            self._max_ts = ts
        if self.config.lateness_s is not None:
            self._advance(self._max_ts - self.config.lateness_s, out)

    def _advance(self, watermark: float, out: list[Example]) -> None:
        if watermark <= self._stats.watermark:
            return
        self._stats.watermark = watermark
        while self._open_heap and self._open_heap[0][0] <= watermark:
            _, request_id, item_id = heapq.heappop(self._open_heap)
            if (request_id, item_id) in self._open:
                self._close((request_id, item_id), "window", math.inf, out)
        while self._closed_heap and self._closed_heap[0][0] <= watermark:
            _, request_id, item_id = heapq.heappop(self._closed_heap)
            self._closed.pop((request_id, item_id), None)
        expiry_ts = watermark - self._orphan_wait()
        while self._orphan_heap and self._orphan_heap[0][0] <= expiry_ts:
            _, event_id = heapq.heappop(self._orphan_heap)
            if event_id in self._orphans:
                self._take_orphan(event_id)
                self._stats.orphan_events += 1
        self._compact()

    def _compact(self) -> None:
        """Drop heap entries of impressions closed early, so the heap tracks ``max_open``."""
        if len(self._open_heap) > 2 * len(self._open) + 1024:
            self._open_heap = [e for e in self._open_heap if (e[1], e[2]) in self._open]
            heapq.heapify(self._open_heap)
        if len(self._orphan_heap) > 2 * len(self._orphans) + 1024:
            self._orphan_heap = [e for e in self._orphan_heap if e[1] in self._orphans]
            heapq.heapify(self._orphan_heap)

    # ---- emission ----------------------------------------------------------------------------

    def _close(
        self, key: tuple[str, str], reason: CloseReason, cutoff: float, out: list[Example]
    ) -> None:
        entry = self._open.pop(key)
        imp = entry.impression
        self._unindex(imp)
        # Remember the key while an event for it could still arrive without being an orphan, so
        # a re-delivered impression is a duplicate and a straggling event is late.
        forget_at = _window_end(imp, self.config.window_s) + self._orphan_wait()
        self._closed[key] = forget_at
        heapq.heappush(self._closed_heap, (forget_at, imp.request_id, imp.item_id))
        while len(self._closed) > self.config.max_closed:  # oldest first: bounded memory
            _, request_id, item_id = heapq.heappop(self._closed_heap)
            self._closed.pop((request_id, item_id), None)
        events = [e for e in entry.events.values() if e.ts <= cutoff]
        self._stats.out_of_window_events += len(entry.events) - len(events)
        self._stats.emitted += 1
        if reason == "window":
            self._stats.emitted_window += 1
        elif reason == "terminal":
            self._stats.emitted_terminal += 1
        elif reason == "next_play":
            self._stats.emitted_next_play += 1
        else:
            self._stats.emitted_capacity += 1
        out.append(label(imp, events, reason))


def label(imp: Impression, events: Iterable[Engagement], closed_by: CloseReason) -> Example:
    """The labels of one impression from the engagements joined to it (order-free)."""
    events = list(events)
    types = {e.type for e in events}
    reported = [e.watch_ms for e in events if e.type in ("play", "skip") and e.watch_ms is not None]
    watch_ms = max(reported) if reported else None
    ratio = None
    if watch_ms is not None and imp.duration_s is not None and imp.duration_s > 0:
        ratio = watch_ms / (imp.duration_s * 1000.0)
    finish = "finish" in types or (ratio is not None and ratio >= 1.0)
    quick = not finish and (
        (watch_ms is not None and watch_ms < QUICK_SKIP_MS) or ("skip" in types and not reported)
    )
    return Example(
        example_id=f"{imp.request_id}/{imp.item_id}",
        request_id=imp.request_id,
        user_id=imp.user_id,
        item_id=imp.item_id,
        position=imp.position,
        model_version=imp.model_version,
        ts=imp.ts,
        features={str(k): float(v) for k, v in imp.features.items()},
        watch_ms=watch_ms,
        watch_ratio=ratio,
        finish=finish,
        quick_skip=quick,
        like="like" in types,
        share="share" in types,
        comment="comment" in types,
        follow="follow" in types,
        skip="skip" in types,
        negative=bool(types & {"not_interested", "report"}),
        n_events=len(events),
        closed_by=closed_by,
        inputs=imp.inputs,
    )

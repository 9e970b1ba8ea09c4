"""The bus between the joiner and the trainer: at-least-once delivery with consumer groups.

One small interface, :class:`Bus`, two implementations that pass the same conformance tests:

* :class:`InProcessBus` (``memory://``): the embedded default, a list with per-group cursors and
  pending sets, guarded by a condition variable;
* :class:`RedisStreamBus` (``redis://``): one Redis stream, consumer groups (``XADD``,
  ``XREADGROUP``, ``XACK``), and ``XAUTOCLAIM`` to take over the entries of a consumer that died.

Semantics, the same on both: every group sees every entry published (a group created late starts
from the oldest entry still held); within a group each entry goes to one consumer and stays
*pending* for it until acked; :meth:`Bus.reclaim` hands another consumer the entries pending longer
than ``min_idle_ms``. Delivery is at least once, so consumers must be idempotent: :func:`drain`
processes a batch through an :class:`IdempotenceFilter` keyed on the example id, acking only after
the handler returned.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

from fyp.errors import BackendUnavailable, InvalidInput
from fyp.online.joiner import Example

Payload = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    """One delivered entry: ``id`` is what :meth:`Bus.ack` takes."""

    id: str
    payload: dict[str, Any]


class Bus(Protocol):
    """At-least-once queue with consumer groups. Payloads are JSON-serialisable mappings."""

    def publish(self, batch: Sequence[Payload]) -> list[str]:
        """Append the batch, in order; returns the new entries' ids."""
        ...

    def consume(
        self, group: str, consumer: str, max_count: int = 100, block_ms: int = 0
    ) -> list[Message]:
        """Up to ``max_count`` entries this group has not delivered yet, oldest first, now pending
        for ``consumer``. With none ready, waits up to ``block_ms`` (0: return at once)."""
        ...

    def ack(self, group: str, ids: Sequence[str]) -> int:
        """Mark entries processed by the group; returns how many were pending."""
        ...

    def reclaim(
        self, group: str, consumer: str, min_idle_ms: int, max_count: int = 100
    ) -> list[Message]:
        """Take over entries pending (for any consumer) for at least ``min_idle_ms``: the way a
        live consumer picks up the work of a dead one. Entries trimmed meanwhile are dropped."""
        ...

    def pending(self, group: str) -> int:
        """Entries delivered to the group and not yet acked."""
        ...

    def __len__(self) -> int:
        """Entries held (published and not yet trimmed)."""
        ...

    def close(self) -> None: ...


def _encode(payload: Payload) -> str:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def _check_count(max_count: int) -> None:
    if max_count < 1:
        raise InvalidInput("max_count must be at least 1")


# ---- in process ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Group:
    next_seq: int = 0
    pending: dict[int, tuple[str, float]] = field(default_factory=dict)  # seq -> consumer, since


ACKED_RETENTION_S: Final = 60.0
"""How long the in-process bus keeps an entry every group has acked (a group created that soon
after still sees it, as one created at the same start does)."""


class InProcessBus:
    """The embedded bus: entries in memory, at most ``max_len`` kept (oldest trimmed first).

    An entry every group has acked is dropped ``keep_acked_s`` after it was published: the bus
    then holds what is still to be learned (and the last minute), not ``max_len`` entries of
    traffic long since learned from (about 0.8 KB each)."""

    def __init__(
        self,
        *,
        max_len: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        keep_acked_s: float = ACKED_RETENTION_S,
    ):
        if max_len is not None and max_len < 1:
            raise InvalidInput("max_len must be at least 1")
        if keep_acked_s < 0:
            raise InvalidInput("keep_acked_s must not be negative")
        self._max_len = max_len
        self._clock = clock
        self._keep_acked_s = keep_acked_s
        self._cond = threading.Condition()
        self._entries: OrderedDict[int, str] = OrderedDict()  # seq -> encoded payload
        self._published: deque[tuple[int, float]] = deque()  # (seq, when) of each held entry
        self._next = 0
        self._groups: dict[str, _Group] = {}

    def publish(self, batch: Sequence[Payload]) -> list[str]:
        encoded = [_encode(p) for p in batch]
        with self._cond:
            ids = []
            now = self._clock()
            for data in encoded:
                self._entries[self._next] = data
                self._published.append((self._next, now))
                ids.append(str(self._next))
                self._next += 1
            if self._max_len is not None:
                while len(self._entries) > self._max_len:
                    self._entries.popitem(last=False)
                    self._published.popleft()
            self._drop_acked()
            self._cond.notify_all()
        return ids

    def _drop_acked(self) -> None:
        """Drop the entries every group has acked, once ``keep_acked_s`` old (lock held)."""
        if not self._groups:
            return  # nobody consumes yet: kept until ``max_len``
        done = min(min(g.pending, default=g.next_seq) for g in self._groups.values())
        cutoff = self._clock() - self._keep_acked_s
        published = self._published
        while published and published[0][0] < done and published[0][1] <= cutoff:
            seq, _ = published.popleft()
            del self._entries[seq]

    def _group(self, name: str) -> _Group:
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = _Group()
        return group

    def consume(
        self, group: str, consumer: str, max_count: int = 100, block_ms: int = 0
    ) -> list[Message]:
        _check_count(max_count)
        deadline = self._clock() + block_ms / 1000.0
        with self._cond:
            g = self._group(group)
            while True:
                first = next(iter(self._entries), self._next)
                start = max(g.next_seq, first)
                if start < self._next:
                    break
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            taken: list[tuple[int, str]] = []
            now = self._clock()
            seq = start
            while seq < self._next and len(taken) < max_count:
                taken.append((seq, self._entries[seq]))
                g.pending[seq] = (consumer, now)
                seq += 1
            g.next_seq = seq
        # Decoded after the lock is released: publishers (feed and event requests) never wait
        # behind the trainer's JSON parsing.
        return [Message(str(seq), json.loads(data)) for seq, data in taken]

    def ack(self, group: str, ids: Sequence[str]) -> int:
        with self._cond:
            g = self._group(group)
            seqs = [int(i) for i in ids if i.isdigit()]  # another bus's ids are never pending
            acked = sum(g.pending.pop(seq, None) is not None for seq in seqs)
            self._drop_acked()
            return acked

    def reclaim(
        self, group: str, consumer: str, min_idle_ms: int, max_count: int = 100
    ) -> list[Message]:
        _check_count(max_count)
        with self._cond:
            g = self._group(group)
            now = self._clock()
            out: list[Message] = []
            for seq in sorted(g.pending):
                if len(out) >= max_count:
                    break
                _, since = g.pending[seq]
                if (now - since) * 1000.0 < min_idle_ms:
                    continue
                data = self._entries.get(seq)
                if data is None:  # trimmed while pending: nothing left to deliver
                    del g.pending[seq]
                    continue
                g.pending[seq] = (consumer, now)
                out.append(Message(str(seq), json.loads(data)))
            return out

    def pending(self, group: str) -> int:
        with self._cond:
            return len(self._group(group).pending)

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    def close(self) -> None:
        return None


# ---- Redis Streams -------------------------------------------------------------------------------


class RedisStreamBus:
    """One Redis stream (``key``) with consumer groups; at most ``max_len`` entries kept.

    Entries hold one field, ``data``, the JSON payload. Groups are created on first use, reading
    from the oldest entry. Needs Redis 7 or newer (``XAUTOCLAIM`` reporting deleted entries).
    """

    def __init__(self, url: str, key: str, *, max_len: int | None = None) -> None:
        import redis  # imported here: only a redis:// bus needs the client

        if max_len is not None and max_len < 1:
            raise InvalidInput("max_len must be at least 1")
        self.key = key
        self._max_len = max_len
        self._connection_error: type[Exception] = redis.ConnectionError
        self._response_error: type[Exception] = redis.ResponseError
        self._r: Any = redis.Redis.from_url(url, decode_responses=True)
        self._groups: set[str] = set()

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._connection_error as exc:
            raise BackendUnavailable(f"Redis bus {self.key!r} unreachable: {exc}") from exc

    def publish(self, batch: Sequence[Payload]) -> list[str]:
        if not batch:
            return []
        pipe = self._r.pipeline(transaction=False)
        for payload in batch:
            pipe.xadd(self.key, {"data": _encode(payload)}, maxlen=self._max_len, approximate=False)
        return [str(i) for i in self._call(pipe.execute)]

    def _ensure_group(self, group: str) -> None:
        if group in self._groups:
            return
        try:
            self._call(self._r.xgroup_create, self.key, group, id="0", mkstream=True)
        except self._response_error as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(group)

    @staticmethod
    def _messages(entries: Sequence[Any]) -> list[Message]:
        return [Message(str(i), json.loads(fields["data"])) for i, fields in entries if fields]

    def consume(
        self, group: str, consumer: str, max_count: int = 100, block_ms: int = 0
    ) -> list[Message]:
        _check_count(max_count)
        self._ensure_group(group)
        # Redis reads BLOCK 0 as "forever"; here 0 means "do not wait".
        reply = self._call(
            self._r.xreadgroup,
            group,
            consumer,
            {self.key: ">"},
            count=max_count,
            block=block_ms if block_ms > 0 else None,
        )
        if not reply:
            return []
        return self._messages(cast(list[Any], reply)[0][1])

    def ack(self, group: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        self._ensure_group(group)
        return int(self._call(self._r.xack, self.key, group, *ids))

    def reclaim(
        self, group: str, consumer: str, min_idle_ms: int, max_count: int = 100
    ) -> list[Message]:
        _check_count(max_count)
        self._ensure_group(group)
        out: list[Message] = []
        cursor = "0-0"
        while len(out) < max_count:
            reply = self._call(
                self._r.xautoclaim,
                self.key,
                group,
                consumer,
                min_idle_ms,
                start_id=cursor,
                count=max_count - len(out),
            )
            cursor, entries = str(reply[0]), reply[1]
            out.extend(self._messages(entries))
            if cursor == "0-0":
                break
        return out

    def pending(self, group: str) -> int:
        self._ensure_group(group)
        return int(self._call(self._r.xpending, self.key, group)["pending"])

    def __len__(self) -> int:
        return int(self._call(self._r.xlen, self.key))

    def delete(self) -> None:
        """Remove the stream and its groups (tests, teardown)."""
        self._call(self._r.delete, self.key)
        self._groups.clear()

    def close(self) -> None:
        self._r.close()


def open_bus(url: str, key: str = "fyp:examples", *, max_len: int | None = None) -> Bus:
    """A bus by URL scheme: ``memory://`` (in process) or ``redis://`` / ``rediss://``."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "memory":
        return InProcessBus(max_len=max_len)
    if scheme in ("redis", "rediss"):
        return RedisStreamBus(url, key, max_len=max_len)
    raise InvalidInput(f"no bus for URL scheme {scheme!r} (memory://, redis://)")


# ---- examples over the bus -----------------------------------------------------------------------


def publish_examples(bus: Bus, examples: Sequence[Example]) -> list[str]:
    return bus.publish([e.to_dict() for e in examples])


class IdempotenceFilter:
    """Remembers the last ``capacity`` processed example ids, so a redelivered one is skipped.

    Keep it with the state the handler changes (the trainer snapshots both together): after a
    crash, redelivered examples the restored state already learned from are then skipped.
    """

    def __init__(self, capacity: int = 1_000_000) -> None:
        if capacity < 1:
            raise InvalidInput("capacity must be at least 1")
        self._capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, example_id: object) -> bool:
        return example_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, example_id: str) -> None:
        self._seen[example_id] = None
        self._seen.move_to_end(example_id)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)


@dataclass(slots=True)
class DrainResult:
    delivered: int = 0
    processed: int = 0
    skipped_duplicates: int = 0


def drain_payloads(
    bus: Bus,
    group: str,
    consumer: str,
    handler: Callable[[list[Mapping[str, Any]]], None],
    seen: IdempotenceFilter,
    *,
    max_count: int = 512,
    block_ms: int = 0,
    reclaim_idle_ms: int | None = None,
) -> DrainResult:
    """One round: take over stale entries (``reclaim_idle_ms``), read new ones, hand the example
    payloads (``Example.to_dict`` form) not seen before to ``handler`` (one call, in bus order),
    then ack. Duplicates are recognised by ``example_id`` before anything else is decoded.

    If ``handler`` raises, nothing is acked or marked seen: the entries stay pending and are
    redelivered by a later :meth:`Bus.reclaim`.
    """
    messages: list[Message] = []
    if reclaim_idle_ms is not None:
        messages += bus.reclaim(group, consumer, reclaim_idle_ms, max_count)
    if len(messages) < max_count:
        messages += bus.consume(group, consumer, max_count - len(messages), block_ms)
    result = DrainResult(delivered=len(messages))
    fresh: list[Mapping[str, Any]] = []
    batch_ids: set[str] = set()
    for m in messages:
        example_id = m.payload.get("example_id")
        if not isinstance(example_id, str):
            raise InvalidInput(f"bus entry {m.id} carries no example_id")
        if example_id in seen or example_id in batch_ids:
            result.skipped_duplicates += 1
            continue
        batch_ids.add(example_id)
        fresh.append(m.payload)
    if fresh:
        handler(fresh)
    for example_id in batch_ids:
        seen.add(example_id)
    result.processed = len(fresh)
    if messages:
        bus.ack(group, [m.id for m in messages])
    return result


def drain(
    bus: Bus,
    group: str,
    consumer: str,
    handler: Callable[[list[Example]], None],
    seen: IdempotenceFilter,
    *,
    max_count: int = 512,
    block_ms: int = 0,
    reclaim_idle_ms: int | None = None,
) -> DrainResult:
    """:func:`drain_payloads` with each payload decoded into an :class:`Example`. (The online
    trainer reads the payloads themselves: building an ``Example`` per entry cost it a sixth of
    its time.)"""

    def decoded(payloads: list[Mapping[str, Any]]) -> None:
        handler([Example.from_dict(p) for p in payloads])

    return drain_payloads(
        bus,
        group,
        consumer,
        decoded,
        seen,
        max_count=max_count,
        block_ms=block_ms,
        reclaim_idle_ms=reclaim_idle_ms,
    )

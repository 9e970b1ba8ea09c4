"""Mixed load on a running ``fyp serve``: feeds, event batches, controls, user upserts, item
updates, exports and erasures, in one asyncio client (used by ``soak.py`` and ``memory_growth.py``).

The workload is drawn from a seeded generator over the server's own users and items (read from
its data directory, read-only). Users it creates (``<tag>-u<n>``) get events and feeds for a while
and are then erased, oldest first, so erasures always hit users with rows in every table; every
erased id is kept for the check that nothing of them is left. Two ways to drive it:

* :func:`run_closed` keeps ``concurrency`` requests in flight back to back: the maximum rate;
* :func:`run_open` starts requests on a fixed schedule (``rate`` per second) whatever the
  answers, so a slow server shows up as latency, not as a lower offered load. Latency is
  measured from each request's scheduled start (queueing in the client counts).

Each finished request is a :class:`Sample` (when it was scheduled, kind, status, latency).
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load_client import RawConnection

MIX: dict[str, float] = {
    "feed": 0.40,
    "events": 0.30,
    "controls": 0.08,
    "user": 0.08,
    "erase": 0.06,
    "item": 0.04,
    "export": 0.04,
}
"""Share of each kind of request."""

EVENTS_PER_BATCH = 5
LIVE_USERS = 40
"""Users this run created and has not erased yet; above it, the oldest is erased next."""
EVENT_TYPES = ("play", "play", "finish", "like", "skip", "share")


@dataclass
class World:
    """The server's users (id -> home region) and item ids, as its data directory holds them."""

    users: dict[str, str]
    items: list[str]


def read_world(data_dir: Path, limit: int = 5_000) -> World:
    """Users and items from the data directory's SQLite files (read-only; ids are plaintext)."""
    users: dict[str, str] = {}
    for path in sorted(data_dir.glob("region-*.db")):
        if path.name.endswith("-audit.db"):
            continue
        region = path.name[len("region-") : -len(".db")]
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            for (user_id,) in db.execute("SELECT user_id FROM users LIMIT ?", (limit,)):
                users[user_id] = region
    with sqlite3.connect(f"file:{data_dir / 'catalog.db'}?mode=ro", uri=True) as db:
        items = [row[0] for row in db.execute("SELECT item_id FROM items LIMIT ?", (limit,))]
    if not users or not items:
        raise SystemExit(f"{data_dir} holds no users or no items; build it with `fyp demo`")
    return World(users, items)


@dataclass
class Request:
    kind: str
    method: str
    path: str
    body: bytes | None = None
    user_id: str | None = None


@dataclass
class Sample:
    at_s: float
    """When the request was scheduled, seconds since the run's start."""
    kind: str
    status: str
    ms: float


@dataclass
class Workload:
    """The seeded stream of requests and what it did to the world."""

    world: World
    tag: str
    seed: int = 0
    mix: dict[str, float] = field(default_factory=lambda: dict(MIX))
    created: list[str] = field(default_factory=list)
    """Users this run created that are not (being) erased, oldest first."""
    erased: list[str] = field(default_factory=list)
    """Users whose erasure was sent (answered 200 or not: see ``erase_answers``)."""
    erase_answers: dict[str, int] = field(default_factory=dict)
    creating: set[str] = field(default_factory=set)
    """Users whose upsert has not been answered yet (not used in requests until it is)."""
    doomed: set[str] = field(default_factory=set)
    """Erased or being erased: requests about them may answer 404 (a lost race, not an error)."""

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.base_users = sorted(self.world.users)
        self.kinds = list(self.mix)
        self.weights = [self.mix[k] for k in self.kinds]
        self.count = 0

    def _user(self, created_share: float) -> str:
        if self.created and self.rng.random() < created_share:
            return self.rng.choice(self.created)
        return self.rng.choice(self.base_users)

    def next(self) -> Request:
        self.count += 1
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind == "erase" and len(self.created) <= LIVE_USERS // 2:
            kind = "user"  # keep some users alive long enough to collect rows everywhere
        if kind == "user" and len(self.created) + len(self.creating) >= LIVE_USERS:
            kind = "erase" if self.created else "feed"
        rng = self.rng
        if kind == "feed":
            user = self._user(0.3)
            return Request(kind, "GET", f"/v1/users/{user}/feed?n=10", user_id=user)
        if kind == "events":
            user = self._user(0.5)
            now = time.time()
            events = [
                {
                    "event_id": f"{self.tag}-e{self.count}-{i}",
                    "user_id": user,
                    "item_id": rng.choice(self.world.items),
                    "type": rng.choice(EVENT_TYPES),
                    "ts": now - rng.random() * 30,
                    "watch_ms": rng.randrange(500, 60_000),
                }
                for i in range(EVENTS_PER_BATCH)
            ]
            return Request(kind, "POST", "/v1/events", _json({"events": events}), user)
        if kind == "controls":
            user = self._user(0.5)
            body = {
                "personalized": rng.random() < 0.8,
                "keyword_filters": rng.sample(["spoiler", "prank", "asmr", "diet"], 2),
                "blocked_tags": rng.sample(["gym", "horror", "news"], 1),
            }
            return Request(kind, "PUT", f"/v1/users/{user}/controls", _json(body), user)
        if kind == "user":
            user = f"{self.tag}-u{self.count}"
            region = rng.choice(sorted(set(self.world.users.values())))
            self.creating.add(user)
            body = {"users": [{"user_id": user, "region": region, "attributes": {"soak": True}}]}
            return Request(kind, "PUT", "/v1/users", _json(body), user)
        if kind == "erase":
            user = self.created.pop(0)
            self.doomed.add(user)
            self.erased.append(user)
            return Request(kind, "DELETE", f"/v1/users/{user}", user_id=user)
        if kind == "item":
            item = rng.choice(self.world.items)
            body = {
                "items": [
                    {
                        "item_id": item,
                        "creator_id": f"{self.tag}-creator{rng.randrange(20)}",
                        "duration_s": round(rng.uniform(5, 120), 1),
                        "caption": f"updated by the soak {self.count}",
                        "tags": rng.sample(["dance", "food", "travel", "pets", "music"], 2),
                    }
                ]
            }
            return Request(kind, "PUT", "/v1/items", _json(body))
        user = self._user(0.5)
        return Request("export", "GET", f"/v1/users/{user}/export", user_id=user)

    def outcome(self, request: Request, status: int) -> str:
        """The status as counted: ``raced`` for a 404 about a user being erased."""
        if request.kind == "erase" and request.user_id is not None:
            self.erase_answers[request.user_id] = status
        if request.kind == "user" and request.user_id in self.creating:
            self.creating.discard(request.user_id)
            if status == 200:
                self.created.append(request.user_id)
        if status == 404 and request.user_id in self.doomed:
            return "raced"
        return str(status)


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


OK = frozenset({"200", "raced"})


async def _send(
    connection: RawConnection, workload: Workload, request: Request, timeout_s: float
) -> str:
    try:
        async with asyncio.timeout(timeout_s):
            response = await connection.request(request.method, request.path, request.body)
    except Exception as exc:  # transport errors and timeouts are counted, never raised
        return type(exc).__name__
    return workload.outcome(request, response.status)


async def run_closed(
    base_url: str,
    workload: Workload,
    seconds: float,
    concurrency: int,
    timeout_s: float = 30.0,
) -> tuple[list[Sample], float]:
    """``concurrency`` connections sending back to back for ``seconds``; returns the samples and
    the elapsed time."""
    samples: list[Sample] = []
    started = time.perf_counter()
    deadline = started + seconds

    async def worker() -> None:
        connection = RawConnection(base_url)
        try:
            while time.perf_counter() < deadline:
                request = workload.next()
                begin = time.perf_counter()
                status = await _send(connection, workload, request, timeout_s)
                ms = (time.perf_counter() - begin) * 1000.0
                samples.append(Sample(begin - started, request.kind, status, ms))
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


async def run_open(
    base_url: str,
    workload: Workload,
    seconds: float,
    rate: float,
    max_in_flight: int = 64,
    timeout_s: float = 30.0,
    on_tick: Callable[[float], None] | None = None,
    tick_s: float = 5.0,
) -> tuple[list[Sample], float]:
    """Start ``rate`` requests per second on a fixed schedule for ``seconds``.

    At most ``max_in_flight`` connections; a request whose turn comes while all are busy waits
    for one, and that wait counts in its latency. ``on_tick(elapsed)`` is called about every
    ``tick_s`` seconds (the caller samples the server's memory there).
    """
    samples: list[Sample] = []
    idle: asyncio.Queue[RawConnection] = asyncio.Queue()
    for _ in range(max_in_flight):
        idle.put_nowait(RawConnection(base_url))
    started = time.perf_counter()
    interval = 1.0 / rate
    pending: set[asyncio.Task[None]] = set()
    next_tick = tick_s

    async def one(request: Request, scheduled: float) -> None:
        connection = await idle.get()
        try:
            status = await _send(connection, workload, request, timeout_s)
        finally:
            idle.put_nowait(connection)
        ms = (time.perf_counter() - scheduled) * 1000.0
        samples.append(Sample(scheduled - started, request.kind, status, ms))

    n = 0
    while True:
        scheduled = started + n * interval
        if scheduled - started >= seconds:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(workload.next(), scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
        elapsed = time.perf_counter() - started
        if on_tick is not None and elapsed >= next_tick:
            next_tick += tick_s
            on_tick(elapsed)
    if pending:
        await asyncio.gather(*pending)
    elapsed = time.perf_counter() - started
    while not idle.empty():
        await idle.get_nowait().close()
    return samples, elapsed

"""A tiny per-region time-to-live cache for lists that are the same for every viewer.

Expiry is measured on the caller's clock (the request's ``now``, the engine's clock), not the
process's: with a simulated clock a replayed stream then refreshes at the same simulated moments
every run, so the same stream gets the same pages. A clock that moves backwards expires the
entry (it cannot tell how stale it is)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class RegionTTLCache(Generic[T]):
    """Caches one value per region for ``ttl_s`` seconds of the caller's clock."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl = ttl_s
        self._entries: dict[str, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, region: str, load: Callable[[], T], now: float) -> T:
        """The region's cached value, or ``load()``'s when the entry is older than the TTL at
        ``now`` (epoch seconds on the caller's clock)."""
        with self._lock:
            entry = self._entries.get(region)
        if entry is not None and entry[0] <= now < entry[0] + self._ttl:
            return entry[1]
        value = load()
        with self._lock:
            self._entries[region] = (now, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

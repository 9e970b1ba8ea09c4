"""The per-region TTL cache expires on the caller's clock, so a replayed stream with a simulated
clock refreshes at the same simulated moments whatever the wall clock does."""

from __future__ import annotations

from fyp.pipeline.cache import RegionTTLCache


def test_entries_expire_on_the_callers_clock() -> None:
    cache: RegionTTLCache[int] = RegionTTLCache(10.0)
    loads: list[int] = []

    def load() -> int:
        loads.append(1)
        return len(loads)

    assert cache.get("us", load, 1000.0) == 1
    assert cache.get("us", load, 1009.9) == 1  # within the TTL: cached
    assert cache.get("eu", load, 1009.9) == 2  # per region
    assert cache.get("us", load, 1010.0) == 3  # expired at exactly the TTL
    assert cache.get("us", load, 1015.0) == 3
    # A clock that moves backwards cannot tell how stale the entry is: it reloads.
    assert cache.get("us", load, 1001.0) == 4
    cache.clear()
    assert cache.get("us", load, 1001.0) == 5

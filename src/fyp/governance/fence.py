"""Orders a user's erasure after the writes about them that this process has in flight.

The region's database orders an erasure against every write about the user (a write that commits
after the erasure is ordered is refused; one that committed before it is deleted with the rest:
see ``SqlRegionStore.begin_erasure``). But a request does more than its transaction: after an
event batch or a feed commits, the engine hands the events or the impressions to the online
learner, which holds them in memory. If the erasure's hooks (which make the learner forget the
user) ran between that commit and that hand-off, the learner would keep what the erasure was meant
to remove.

So requests that write about users hold them in a :class:`UserFence` from before their transaction
until after their hand-off, and an erasure, once ordered, waits (:meth:`UserFence.drain`) until no
request of this process holds the user before it deletes anything and calls its hooks. New requests
may enter meanwhile; their transactions are refused, so they hand nothing off.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator

from fyp.errors import BackendUnavailable


class UserFence:
    """Counts this process's in-flight writes per user (see the module docstring)."""

    def __init__(self) -> None:
        self._held: Counter[str] = Counter()
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, user_ids: Iterable[str]) -> Iterator[None]:
        """Hold ``user_ids`` for the duration of a request that writes about them."""
        ids = set(user_ids)
        with self._changed:
            self._held.update(ids)
        try:
            yield
        finally:
            with self._changed:
                self._held.subtract(ids)
                for user_id in ids:
                    if self._held[user_id] <= 0:
                        del self._held[user_id]
                self._changed.notify_all()

    def drain(self, user_id: str, timeout_s: float = 30.0) -> None:
        """Wait until no request of this process holds ``user_id``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._held[user_id] > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendUnavailable(
                        f"requests about the user were still in flight after {timeout_s:.0f} s; "
                        "the erasure is ordered and will finish on retry"
                    )
                self._changed.wait(left)

    def held(self) -> int:
        """Users held right now (for tests and metrics)."""
        with self._changed:
            return len(self._held)

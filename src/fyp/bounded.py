"""Small containers with a size bound, for state a long-running process keeps about its traffic.

Every cache and queue a serving process holds has an explicit bound (listed in docs/TRUST.md,
"Memory bounds"); these are the shapes that are not already a library's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

from fyp.errors import InvalidInput

T = TypeVar("T")


class RecentSet(Generic[T]):
    """A set of at most ``capacity`` members: adding beyond it forgets the oldest added first.

    For memory of events that matters for a while and then no longer (an erased viewer whose
    examples may still be on the bus): the bound says how long "a while" is, in members.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise InvalidInput("capacity must be at least 1")
        self.capacity = capacity
        self._members: OrderedDict[T, None] = OrderedDict()

    def add(self, member: T) -> None:
        self._members[member] = None
        self._members.move_to_end(member)
        while len(self._members) > self.capacity:
            self._members.popitem(last=False)

    def discard(self, member: T) -> None:
        self._members.pop(member, None)

    def __contains__(self, member: object) -> bool:
        return member in self._members

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._members))

    def __len__(self) -> int:
        return len(self._members)

"""A bounded LRU map whose entries also expire with age. Pure, no I/O.

The agent keeps verified keys here (no argon2 and no Redis call on the hot
path) and limits known to refuse until some time (no Redis call either).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlLru(Generic[K, V]):
    def __init__(self, max_size: int, max_age: float) -> None:
        self.max_size = max_size
        self.max_age = max_age
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, now: float) -> V | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        stored_at, value = item
        if now - stored_at > self.max_age:
            del self._items[key]
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: K, value: V, now: float) -> None:
        self._items[key] = (now, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)

    def drop_where(self, predicate: Callable[[V], bool]) -> int:
        """Remove entries whose value matches (revocations are rare: O(n) is fine)."""
        doomed = [key for key, (_, value) in self._items.items() if predicate(value)]
        for key in doomed:
            del self._items[key]
        return len(doomed)

    def clear(self) -> None:
        self._items.clear()

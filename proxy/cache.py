"""A small LRU cache with an optional time to live, for the gate's lookups and verified credentials."""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(self, size: int, ttl: float | None = None) -> None:
        self.size, self.ttl = size, ttl
        self.data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self.data.get(key)
        if item is None:
            return None
        if self.ttl is not None and item[0] < time.monotonic():
            del self.data[key]
            return None
        self.data.move_to_end(key)
        return item[1]

    def put(self, key: K, value: V) -> None:
        self.data[key] = (time.monotonic() + (self.ttl or 0), value)
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)

    def drop(self, key: K) -> None:
        self.data.pop(key, None)

"""Throttling of failures by key (an account, a client address), in this replica's memory.

Each failure adds one to the key's bucket, which drains at `limit.drain` per second. Once a bucket
holds `limit.burst` failures, `wait(key)` says how long until the next attempt is allowed, so the
caller refuses it (429 with Retry-After) before doing any costly work for it. The buckets are
bounded: the least recently touched ones go first.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    burst: int          # failures allowed in a row
    drain: float        # failures forgiven per second after that


class Throttle:
    def __init__(self, limit: Limit, size: int = 100_000) -> None:
        self.limit, self.size = limit, size
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()   # key -> (level, when)

    def _level(self, key: str, now: float) -> float:
        level, when = self._buckets.get(key, (0.0, now))
        return max(0.0, level - (now - when) * self.limit.drain)

    def wait(self, key: str) -> float:
        """Seconds until `key` may try again (0: now)."""
        if key not in self._buckets:
            return 0.0
        excess = self._level(key, time.monotonic()) - (self.limit.burst - 1)
        return excess / self.limit.drain if excess > 0 else 0.0

    def failed(self, key: str) -> None:
        now = time.monotonic()
        self._buckets[key] = (self._level(key, now) + 1, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.size:
            self._buckets.popitem(last=False)

    def clear(self, key: str) -> None:
        self._buckets.pop(key, None)

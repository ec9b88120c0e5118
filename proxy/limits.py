"""Per-caller request budgets for `limits.requests_per_minute`, kept per replica, in bounded memory.

A token bucket per caller, stored as one number (GCRA, the generic cell rate algorithm): a
caller may send `per_minute` requests at once, then one more every `60 / per_minute` seconds;
over a long run that is `per_minute` a minute. `check(caller, now)` answers None (allowed, and
counted) or the seconds until the next request would be allowed, for `Retry-After`.

Memory: at most `max_callers` entries, least recently seen dropped first. A caller idle long
enough for its bucket to refill holds no state worth keeping, so dropping one costs nothing; only
with more than `max_callers` callers active within a minute does a dropped caller get a fresh
budget. Not thread-safe: the gate calls it from its one event loop.
"""
from __future__ import annotations

import math
from collections import OrderedDict


class RateLimiter:
    def __init__(self, per_minute: int, *, max_callers: int = 100_000) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.per_minute = per_minute
        self.interval = 60.0 / per_minute        # seconds one request uses of the budget
        self.burst = 60.0                        # a full bucket: per_minute requests' worth of seconds
        self.max_callers = max_callers
        self._due: OrderedDict[str, float] = OrderedDict()   # caller -> theoretical arrival time

    def check(self, caller_id: str, now: float) -> float | None:
        """None when `caller_id` may send a request at `now` (monotonic seconds), else the seconds to wait."""
        due = self._due.get(caller_id, now)
        start = max(due, now)
        after = start + self.interval
        if after - now > self.burst + 1e-9:
            return after - now - self.burst
        self._due[caller_id] = after
        self._due.move_to_end(caller_id)
        self._trim(now)
        return None

    def _trim(self, now: float) -> None:
        while self._due:
            oldest, due = next(iter(self._due.items()))
            if due > now and len(self._due) <= self.max_callers:
                return
            del self._due[oldest]      # refilled (nothing to keep), or over the bound

    def __len__(self) -> int:
        return len(self._due)


def retry_after(seconds: float) -> str:
    """The `Retry-After` header value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))

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


class Budgets:
    """The replica's budgets under the policy in force: the limiter is kept while `requests_per_minute`
    stays the same across reloads, rebuilt (every caller starts with a full budget) when it changes,
    and dropped when the limit is removed."""

    def __init__(self) -> None:
        self.limiter: RateLimiter | None = None

    def wait(self, per_minute: int | None, caller_id: str, now: float) -> float | None:
        """None when `caller_id` may send a request now (and it is counted), else the seconds to wait.
        Caller ids are compared without case, as the policy compares user ids."""
        if per_minute is None:
            self.limiter = None
            return None
        limiter = self.limiter
        if limiter is None or limiter.per_minute != per_minute:
            limiter = self.limiter = RateLimiter(per_minute)
        return limiter.check(caller_id.lower(), now)


def retry_after(seconds: float) -> str:
    """The `Retry-After` header value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))

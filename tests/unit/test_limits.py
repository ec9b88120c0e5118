"""The per-caller rate limiter: budgets, Retry-After, separate callers, bounded memory; the replica's budgets
across policy reloads."""
from __future__ import annotations

import json

import pytest

from proxy.errors import RateLimited, answer
from proxy.limits import Budgets, RateLimiter, retry_after


def allowed(limiter: RateLimiter, caller: str, now: float, n: int) -> int:
    return sum(limiter.check(caller, now) is None for _ in range(n))


@pytest.mark.parametrize(("per_minute", "burst_sent", "allowed_at_once"), [
    (1, 5, 1), (10, 10, 10), (10, 11, 10), (600, 1000, 600), (7, 100, 7),
])
def test_a_caller_may_send_its_budget_at_once_then_no_more(per_minute: int, burst_sent: int,
                                                          allowed_at_once: int) -> None:
    assert allowed(RateLimiter(per_minute), "bob", 100.0, burst_sent) == allowed_at_once


@pytest.mark.parametrize(("per_minute", "wait", "expected_retry"), [
    (60, 0.0, 1.0), (60, 0.25, 0.75), (600, 0.0, 0.1), (1, 0.0, 60.0), (1, 59.0, 1.0), (6, 3.0, 7.0),
])
def test_retry_after_is_the_time_until_the_next_request_fits(per_minute: int, wait: float,
                                                             expected_retry: float) -> None:
    limiter = RateLimiter(per_minute)
    assert allowed(limiter, "bob", 0.0, per_minute) == per_minute
    seconds = limiter.check("bob", wait)
    assert seconds == pytest.approx(expected_retry)
    assert limiter.check("bob", wait + seconds - 1e-6) is not None      # not a moment before
    assert limiter.check("bob", wait + seconds + 1e-6) is None          # and then one more fits


def test_the_budget_refills_at_the_rate_and_over_a_long_run_holds_it() -> None:
    limiter = RateLimiter(60)
    assert allowed(limiter, "bob", 0.0, 100) == 60
    assert allowed(limiter, "bob", 10.0, 100) == 10       # ten seconds: ten more
    # a steady sender over ten minutes gets the rate, and refused requests do not use the budget
    sent = sum(allowed(limiter, "bob", 10.0 + t / 10, 1) for t in range(1, 6001))
    assert sent == 600


def test_callers_have_separate_budgets() -> None:
    limiter = RateLimiter(3)
    assert allowed(limiter, "bob", 0.0, 5) == 3
    assert allowed(limiter, "carol", 0.0, 5) == 3
    assert limiter.check("bob", 0.0) is not None and limiter.check("dave", 0.0) is None


def test_memory_is_bounded_and_idle_callers_are_dropped_first() -> None:
    limiter = RateLimiter(60, max_callers=100)
    for i in range(1000):
        limiter.check(f"user-{i}", i * 0.001)
    assert len(limiter) <= 100
    # refilled callers hold no state at all
    limiter = RateLimiter(60)
    for i in range(50):
        limiter.check(f"user-{i}", 0.0)
    limiter.check("late", 120.0)
    assert len(limiter) == 1


def test_a_busy_caller_is_not_reset_by_others_within_the_bound() -> None:
    limiter = RateLimiter(2, max_callers=10)
    assert allowed(limiter, "bob", 0.0, 3) == 2
    for i in range(9):
        limiter.check(f"other-{i}", 0.0)
    assert limiter.check("bob", 0.0) is not None


@pytest.mark.parametrize(("seconds", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (59.5, "60")])
def test_retry_after_header(seconds: float, header: str) -> None:
    assert retry_after(seconds) == header


def test_a_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)


# --- the replica's budgets under the policy in force (services.budgets) ---------------------------------------

def test_budgets_follow_the_policys_limit() -> None:
    budgets = Budgets()
    assert budgets.wait(None, "bob", 0.0) is None and budgets.limiter is None       # no limit: nothing kept
    assert [budgets.wait(2, "bob", 0.0) is None for _ in range(3)] == [True, True, False]
    kept = budgets.limiter
    assert budgets.wait(2, "bob", 0.0) is not None and budgets.limiter is kept     # same limit: same budgets
    assert budgets.wait(3, "bob", 0.0) is None and budgets.limiter is not kept     # a new limit: new budgets
    assert budgets.limiter is not None and budgets.limiter.per_minute == 3
    assert budgets.wait(None, "bob", 0.0) is None and budgets.limiter is None       # limit removed: dropped


def test_a_429_carries_retry_after_in_whole_seconds() -> None:
    status, headers, body = answer(RateLimited("Too many requests.", 2.01))
    assert status == 429 and (b"retry-after", b"3") in headers
    assert json.loads(body) == {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "Too many requests."}


def test_one_budget_per_caller_whatever_the_case_of_the_id() -> None:
    budgets = Budgets()
    assert budgets.wait(1, "Bob@Corp.test", 0.0) is None
    assert budgets.wait(1, "bob@corp.test", 0.0) is not None

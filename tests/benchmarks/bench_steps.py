#!/usr/bin/env python
"""The per-request cost of the hot-path steps issue 15 added, in-process: the request-limit step
(`Gate.limit`: `limits.requests_per_minute`) and the per-team metrics (`Metrics.team_call`), next to
what every request already paid (`Metrics.request`) for scale.

Run from the checkout root:

    .venv/bin/python tests/benchmarks/bench_steps.py

Each figure is the best of 5 `timeit` runs, in microseconds per call. Callers are cycled round-robin
(1, 10,000 and 100,000 distinct callers, the limiter's bound), so the OrderedDict the limiter keeps
is as full as it would be. Writes tests/benchmarks/last-steps.json (machine-specific: do not commit it).

This file is deliberately not named test_*.py: pytest must not collect it.
"""
from __future__ import annotations

import itertools
import json
import sys
import timeit
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from proxy.call import Call
from proxy.decide import Decision
from proxy.gate import Gate
from proxy.identity import Identity
from proxy.limits import Budgets
from proxy.metrics import Metrics
from proxy.policy import Level, PolicyStore, load_policy_text
from proxy.routes import RouteTable

POLICY = """\
teams:
  vision: {members: [bob@corp.test], experiments: ["vision/"]}
limits: {requests_per_minute: %d}
"""
NUMBER = 200_000


def per_call_us(fn: Any, number: int = NUMBER) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def limit_step(per_minute: int | None, callers: int) -> float:
    """Gate.limit on a signed-in API route: budgets.wait under the policy in force, raising nothing."""
    text = POLICY % (per_minute or 1) if per_minute else POLICY.split("limits")[0]
    policy = load_policy_text(text)
    gate = Gate(SimpleNamespace(budgets=Budgets()))  # type: ignore[arg-type]
    route, _ = RouteTable().lookup("GET", "/api/2.0/mlflow/runs/get")
    calls = []
    for i in range(callers):
        call = Call({"method": "GET", "path": "/api/2.0/mlflow/runs/get"}, None, None)  # type: ignore[arg-type]
        call.policy, call.ident, call.route = policy, Identity(f"user-{i}@corp.test", frozenset()), route
        calls.append(call)
    cycle = itertools.cycle(calls)
    return per_call_us(lambda: gate.limit(next(cycle)))


def metrics_costs(tmp: Path) -> dict[str, float]:
    path = tmp / "p.yaml"
    path.write_text(POLICY.split("limits")[0])
    store = PolicyStore(path)
    m = Metrics(store)
    one = [Decision(True, "experiment", "vision/a", Level.READ, Level.EDIT, "member of team vision")]
    three = one * 3
    policy = store.current
    return {
        "metrics.request (every request, existing)": per_call_us(lambda: m.request("GET", 200, 0.001)),
        "team_call, no decision (admin, search)": per_call_us(lambda: m.team_call(policy, [])),
        "team_call, one decision": per_call_us(lambda: m.team_call(policy, one)),
        "team_call, three decisions (one team)": per_call_us(lambda: m.team_call(policy, three)),
    }


def main() -> None:
    import tempfile

    out: dict[str, float] = {"an empty call (this machine's floor)": per_call_us(lambda: None)}
    out["limit step, no limits in the policy"] = limit_step(None, 1)
    for callers in (1, 10_000, 100_000):
        # a budget so large nobody is refused: the allowed path, which is every request but the refused ones
        out[f"limit step, {callers} caller(s) round-robin"] = limit_step(10**9, callers)
    with tempfile.TemporaryDirectory() as tmp:
        out.update(metrics_costs(Path(tmp)))
    width = max(len(k) for k in out)
    for name, us in out.items():
        print(f"{name:<{width}}  {us:7.3f} µs")
    (HERE / "last-steps.json").write_text(json.dumps({"us_per_call": out}, indent=2))


if __name__ == "__main__":
    main()

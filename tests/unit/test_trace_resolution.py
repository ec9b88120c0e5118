"""Trace ids resolved on every MLflow version: the 3.0 route where the upstream has it, else 2.0's `/info`.

The upstream is a fake answering as the real servers do (2.22 and 3.1 answer the missing 3.0 route with
Flask's HTML 404); tests/compat runs the same lookups against the real servers of each version.
"""
from __future__ import annotations

import asyncio

import pytest
from test_upstream_version import FakeUpstream

from proxy.resources import Resolver, Unresolvable

V3 = "/api/3.0/mlflow/traces/tr-1"
V2 = "/api/2.0/mlflow/traces/tr-1/info"
V3_ANSWER = (200, {"trace": {"trace_info": {"trace_location": {"mlflow_experiment": {"experiment_id": "7"}}}}})
V2_ANSWER = (200, {"trace_info": {"request_id": "tr-1", "experiment_id": "7"}})
MISSING = (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Trace with ID tr-1 is not found."})


def test_trace_resolved_through_the_v3_route_where_it_exists() -> None:
    upstream = FakeUpstream({V3: V3_ANSWER, V2: V2_ANSWER})
    resolver = Resolver(upstream)  # type: ignore[arg-type]
    assert asyncio.run(resolver.trace("tr-1")) == "7"
    assert asyncio.run(resolver.trace("tr-1")) == "7"       # cached
    assert upstream.asked == [V3]


def test_trace_resolved_through_the_v2_info_route_on_2x() -> None:
    upstream = FakeUpstream({V2: V2_ANSWER})                  # 2.22 / 3.1: the v3 path is Flask's HTML 404
    resolver = Resolver(upstream)  # type: ignore[arg-type]
    assert asyncio.run(resolver.trace("tr-1")) == "7"
    other = "/api/2.0/mlflow/traces/tr-2/info"
    upstream.answers[other] = (200, {"trace_info": {"experiment_id": "8"}})
    assert asyncio.run(resolver.trace("tr-2")) == "8"
    assert upstream.asked == [V3, V2, other]                  # the missing route is asked once


def test_a_missing_trace_stays_unresolvable_on_every_version() -> None:
    for answers in ({V3: MISSING, V2: MISSING}, {V2: MISSING}, {V3: (403, {"error_code": "PERMISSION_DENIED"})}):
        with pytest.raises(Unresolvable):
            asyncio.run(Resolver(FakeUpstream(answers)).trace("tr-1"))  # type: ignore[arg-type]
    on_3x = FakeUpstream({V3: MISSING, V2: V2_ANSWER})        # 3.x says the trace is missing: no second opinion
    with pytest.raises(Unresolvable):
        asyncio.run(Resolver(on_3x).trace("tr-1"))  # type: ignore[arg-type]
    assert on_3x.asked == [V3]


def test_a_trace_in_no_experiment_is_unresolvable() -> None:
    with pytest.raises(Unresolvable) as refused:
        asyncio.run(Resolver(FakeUpstream({V2: (200, {"trace_info": {}})})).trace("tr-1"))  # type: ignore[arg-type]
    assert refused.value.detail == "not stored in an MLflow experiment"

"""Where the policy allows a request, the gate answers what MLflow answers: the same request is sent
direct and through the gate, and status and error code must agree (`same_answer.SameRequest`).

Missing objects the caller may see, malformed values, missing fields: MLflow's own answer, not the
gate's. (Ids the caller cannot resolve are refused by design: not listed here.)
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gate_it import ALICE, ROOT, World
from same_answer import SameRequest

pytestmark = pytest.mark.integration

A = "/api/2.0/mlflow"
METRIC = {"key": "k", "value": 1, "timestamp": 0}

CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    (ROOT, "GET", f"{A}/runs/get", {"params": {"run_id": "0" * 32}}),
    (ROOT, "GET", f"{A}/experiments/get", {"params": {"experiment_id": "999999"}}),
    (ROOT, "GET", f"{A}/registered-models/get", {"params": {"name": "no-such-model"}}),
    (ROOT, "POST", f"{A}/runs/log-metric", {"json": {"run_id": 31, **METRIC}}),
    (ALICE, "GET", f"{A}/registered-models/get", {"params": {"name": "alpha-no-such-model"}}),
    (ALICE, "GET", f"{A}/model-versions/get", {"params": {"name": "alpha-no-such-model", "version": "1"}}),
    (ALICE, "GET", f"{A}/experiments/get-by-name", {"params": {"experiment_name": "alpha/no-such-experiment"}}),
    (ALICE, "GET", f"{A}/runs/get", {"params": {}}),
    (ALICE, "POST", f"{A}/runs/log-metric", {"json": METRIC}),
    (ALICE, "GET", f"{A}/experiments/get", {"params": {"experiment_id": "abc"}}),
    (ALICE, "POST", f"{A}/experiments/create", {"json": {}}),
]


@pytest.fixture
def as_user(gate) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    opened: list[SameRequest] = []

    def make(user: str) -> SameRequest:
        opened.append(SameRequest(gate.upstream, gate.url, gate.token(user)))
        return opened[-1]

    yield make
    for same in opened:
        same.close()


@pytest.mark.parametrize(("user", "method", "path", "kwargs"), CASES,
                         ids=[f"{u.split('@')[0]}-{m}-{p.rsplit('/', 2)[-2]}/{p.rsplit('/', 1)[-1]}-{i}"
                              for i, (u, m, p, _) in enumerate(CASES)])
def test_same_status_and_error_code(as_user, user: str, method: str, path: str,  # type: ignore[no-untyped-def]
                                    kwargs: dict[str, Any]) -> None:
    direct, _gated = as_user(user).check(method, path, **kwargs)
    assert direct.status >= 400, f"the case should be an error direct: {direct}"


def test_bad_metric_value_on_own_run(as_user, world: World) -> None:  # type: ignore[no-untyped-def]
    direct, _ = as_user(ALICE).check("POST", f"{A}/runs/log-metric", message=True,
                                     json={"run_id": world.alpha_run, "key": "k", "value": "x", "timestamp": 0})
    assert (direct.status, direct.error_code) == (400, "INVALID_PARAMETER_VALUE")

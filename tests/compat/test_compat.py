"""Every MLflow version the gate fronts: that version's server and client, direct and through the gate.

For each selected series (see conftest.py) one `mlflow server` of that version runs with this
repository's gate in front; `workflow.py` runs with that version's client direct and through the
gate, and every step is judged: what works direct works through the gate with the same answer,
the other team's objects are refused or hidden. The route tables of all four versions are checked
against `proxy/routes.py`, and the gate must say in its log which version it fronts.
"""
from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import pytest
from compat_judge import direct_problem, gate_problem
from compat_stack import Runs
from compat_versions import VERSIONS, venv_python
from mlflow_routes import without_ajax_twins

from proxy.routes import ADMIN, CHECKED, PUBLIC, REFUSED, SIGNED_IN, RouteTable
from proxy.upstream_version import known_routes, sample_path

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.compat


def test_step(compat_runs: Runs, compat_step: tuple[str, str, str]) -> None:
    series, _, name = compat_step
    results = compat_runs.results_of(series)
    direct = next((r for r in results["direct"] if r["step"] == name), None)
    gate = next((r for r in results["gate"] if r["step"] == name), None)
    problems = [p for p in (direct_problem(name, direct), gate_problem(name, direct, gate)) if p]
    assert not problems, f"MLflow {VERSIONS[series].mlflow}: " + "\n".join(problems)


def test_gate_logs_the_version_it_fronts(compat_runs: Runs, compat_series: str) -> None:
    compat_runs.results_of(compat_series)
    log = compat_runs.gate_logs[compat_series]
    version = VERSIONS[compat_series].mlflow
    assert f"fronts MLflow {version}" in log, log[-2000:]
    assert f"MLflow {version}: every route is classified" in log, log[-2000:]


@functools.cache
def _routes_of(series: str) -> list[tuple[str, str]]:
    r = subprocess.run([str(venv_python(series)), str(HERE / "mlflow_routes.py")], capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(r.stdout)
    assert data["mlflow"] == VERSIONS[series].mlflow
    return [(m, p) for m, p in data["routes"]]


def test_every_route_of_every_version_is_classified(any_series: str) -> None:
    routes = _routes_of(any_series)
    assert len(routes) > 100, "route discovery found too few routes; has MLflow's app layout changed?"
    table, missing, unnamed = RouteTable(), [], []
    for method, pattern in routes:
        found = table.match(method, sample_path(pattern))
        if found is None:
            missing.append(f"{method} {pattern}")
            continue
        assert found[0].access in (PUBLIC, SIGNED_IN, CHECKED, ADMIN, REFUSED)
        if found[0].access == CHECKED and not found[0].needs:
            unnamed.append(f"{method} {pattern}")
    assert not missing, f"MLflow {VERSIONS[any_series].mlflow}: classify in proxy/routes.py: {missing}"
    assert not unnamed, f"checked but naming no resource: {unnamed}"


def test_shipped_route_list_is_that_versions_routes(any_series: str) -> None:
    """The gate's own copy of each version's routes (what it checks at start-up) matches the real server's."""
    version = VERSIONS[any_series].mlflow
    real = without_ajax_twins(set(_routes_of(any_series)))
    assert known_routes(version) == real, "regenerate with: python tests/compat/run_all.py --write-route-lists"

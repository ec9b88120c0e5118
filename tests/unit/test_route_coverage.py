"""Every route the installed MLflow server answers matches a row of the gate's route table.

The routes come from MLflow itself: the Flask `url_map` and the native FastAPI routes of
`create_fastapi_app()`. A route the table does not classify would fall to "unknown: admins only",
which is safe, but means the table is behind the installed MLflow: this test names it.
"""
from __future__ import annotations

import re

import pytest

from proxy.routes import ADMIN, CHECKED, PUBLIC, REFUSED, SIGNED_IN, Answer, RouteTable
from proxy.upstream_version import sample_path as concrete
from tests.compat.mlflow_routes import installed_routes

ROUTES = sorted(installed_routes())


def test_installed_mlflow_has_routes() -> None:
    assert len(ROUTES) > 300, "route discovery found too few routes; has MLflow's app layout changed?"


@pytest.mark.parametrize(("method", "pattern"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_mlflow_route_is_classified(method: str, pattern: str) -> None:
    found = RouteTable().match(method, concrete(pattern))
    assert found is not None, f"{method} {pattern} is not in proxy/routes.py: classify it"
    route, _ = found
    assert route.access in (PUBLIC, SIGNED_IN, CHECKED, ADMIN, REFUSED)
    if route.access == CHECKED:
        assert route.needs, f"{method} {pattern} is checked but names no resource"


def test_only_health_is_public() -> None:
    public = [(m, p) for m, p in ROUTES if RouteTable().match(m, concrete(p))[0].access == PUBLIC]  # type: ignore[index]
    assert public == [("GET", "/health")]


# The assistant's settings the UI reads on every page: answered by the gate itself (no provider), never forwarded.
ASSISTANT_SETTINGS = {("GET", "/ajax-api/3.0/mlflow/assistant/config"), ("GET", "/ajax-api/3.0/mlflow/assistant/providers"),
                      ("GET", "/api/3.0/mlflow/assistant/config"), ("GET", "/api/3.0/mlflow/assistant/providers")}


def test_assistant_is_refused_and_admin_families_are_admin_only() -> None:
    table = RouteTable()
    for method, pattern in ROUTES:
        route = table.match(method, concrete(pattern))[0]  # type: ignore[index]
        if (method, pattern) in ASSISTANT_SETTINGS:
            assert route.answer in (Answer.ASSISTANT_CONFIG, Answer.ASSISTANT_PROVIDERS), pattern
        elif "/assistant/" in pattern:
            assert route.access == REFUSED, pattern
        elif re.search(r"/(gateway|gateway-proxy|webhooks|workspaces|mcp-servers|skills)\b|/3\.0/(mlflow/)?jobs/", pattern):
            assert route.access == ADMIN, pattern


def test_api_and_ajax_api_twins_get_the_same_row() -> None:
    table = RouteTable()
    for method, pattern in ROUTES:
        if pattern.startswith("/api/"):
            twin = "/ajax-api/" + pattern[len("/api/"):]
            assert table.match(method, concrete(pattern))[0] is table.match(method, concrete(twin))[0]  # type: ignore[index]


def test_unknown_routes_do_not_match() -> None:
    table = RouteTable()
    assert table.match("GET", "/api/2.0/mlflow/no-such-thing") is None
    assert table.match("POST", "/api/2.0/mlflow/runs/get") is None     # right path, wrong method
    assert table.match("GET", "/admin") is None

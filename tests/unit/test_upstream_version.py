"""Which MLflow the gate fronts: reading `/version`, the shipped route lists, and the lines the gate logs.

The upstream is a fake with the answers real servers give (tests/compat checks the real servers).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from proxy.errors import UpstreamUnavailable
from proxy.routes import ROUTES, RouteTable, row
from proxy.upstream_version import UpstreamVersion, describe, known_routes, route_list_for, shipped_versions

FLASK_404 = {"raw": "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>"}


class FakeUpstream:
    base_url = "http://mlflow.test"

    def __init__(self, answers: dict[str, tuple[int, Any] | Exception]) -> None:
        self.answers, self.asked = answers, []

    async def get_json(self, path: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
        self.asked.append(path)
        answer = self.answers.get(path, (404, FLASK_404))
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_every_tested_release_has_a_route_list() -> None:
    assert shipped_versions() == ["2.22.1", "3.1.4", "3.10.1", "3.17.2"]
    assert ("GET", "/api/2.0/mlflow/traces/{request_id}/info") in known_routes("2.22.1")  # type: ignore[operator]


@pytest.mark.parametrize(("version", "listed"), [("3.17.2", "3.17.2"), ("3.17.5", "3.17.2"), ("2.22.4", "2.22.1"),
                                                 ("3.18.0", None), ("4.0", None), ("../etc/passwd", None)])
def test_route_list_of_a_release_or_its_series(version: str, listed: str | None) -> None:
    assert route_list_for(version) == listed


def test_describe_names_unclassified_routes() -> None:
    assert describe("2.22.1", RouteTable()) == (logging.INFO, "MLflow 2.22.1: every route is classified (82 routes)")
    without_info = tuple(r for r in ROUTES if r.pattern != "2.0/mlflow/traces/{request_id}/info")
    level, line = describe("2.22.1", RouteTable(without_info))
    assert (level, line) == (logging.WARNING, ("MLflow 2.22.1: 1 of 82 routes are not classified and admin-only: "
                                              "GET /api/2.0/mlflow/traces/{request_id}/info"))  # /ajax-api/ twin: same row
    level, line = describe("3.18.0", RouteTable((row("GET", "/health", "public"),)))
    assert level == logging.WARNING and "no route list is shipped for this version" in line


def test_watcher_logs_the_version_at_start_and_after_a_reconnect(caplog: pytest.LogCaptureFixture) -> None:
    upstream = FakeUpstream({"/version": (200, {"raw": "2.22.1"})})
    watcher = UpstreamVersion(upstream, RouteTable())  # type: ignore[arg-type]

    async def go() -> None:
        await watcher.check()
        await watcher.check()                      # the same version again: nothing new to say
        upstream.answers["/version"] = UpstreamUnavailable("down")
        await watcher.check()
        upstream.answers["/version"] = (200, {"raw": "3.17.2"})
        await watcher.check()                      # back, upgraded

    with caplog.at_level(logging.INFO, logger="mlflow_gate"):
        asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["fronts MLflow 2.22.1 at http://mlflow.test", "MLflow 2.22.1: every route is classified (82 routes)",
                     "upstream http://mlflow.test is unreachable; its version is read again when it is back",
                     "fronts MLflow 3.17.2 at http://mlflow.test",
                     "MLflow 3.17.2: every route is classified (272 routes)"]
    assert watcher.version == "3.17.2"


def test_an_answer_that_is_no_version_is_not_taken(caplog: pytest.LogCaptureFixture) -> None:
    watcher = UpstreamVersion(FakeUpstream({"/version": (200, {"raw": "<html>hi</html>"})}), RouteTable())  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="mlflow_gate"):
        asyncio.run(watcher.check())
    assert watcher.version is None
    assert [r.getMessage() for r in caplog.records] == [
        "upstream http://mlflow.test does not answer GET /version with an MLflow version"]

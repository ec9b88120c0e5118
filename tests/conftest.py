"""Session fixtures for the integration suites: a real `mlflow server` (sqlite, then PostgreSQL) with a real
`mlflow-gate serve --upstream` in front of it, and the hooks every suite shares. The helpers are in tests/support/.

Heavy servers start once per backend: `mlflow_server` is a session fixture parametrized over the backends, and
pytest groups the tests by that parameter, so the sqlite server (and the gate in front of it) is stopped before
the PostgreSQL one starts. Only one mlflow server runs at a time.
"""
from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.client import import_mlflow_client_modules, isolate_client_environment
from tests.support.echo import EchoGate, EchoUpstream
from tests.support.gate import Gate, start_gate
from tests.support.mlflow_server import PG_MISSING, MlflowServer, pg_bindir, start_mlflow_server
from tests.support.reporting import log_offsets, log_sections, logs_used

BACKENDS = ["sqlite", "postgres"]


def pytest_configure(config: pytest.Config) -> None:
    isolate_client_environment()  # before collection imports the test modules (and they import mlflow)


@pytest.fixture(scope="session", params=BACKENDS)
def mlflow_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    backend: str = request.param
    bindir = pg_bindir() if backend == "postgres" else None
    if backend == "postgres" and bindir is None:
        pytest.skip(PG_MISSING)
    with start_mlflow_server(backend, tmp_path_factory.mktemp(f"mlflow-{backend}"), bindir) as server:
        yield server


@pytest.fixture(scope="session")
def gate(mlflow_server: MlflowServer) -> Iterator[Gate]:
    import_mlflow_client_modules()
    with start_gate(mlflow_server.root / "gate", mlflow_server.url, backend=mlflow_server.backend) as g:
        yield g


@pytest.fixture(scope="session")
def echo_gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoGate]:
    upstream = EchoUpstream().start()
    try:
        g = start_gate(tmp_path_factory.mktemp("echo-gate"), upstream.url, backend="echo")
        try:
            yield EchoGate(g, upstream.records)
        finally:
            g.stop()
    finally:
        upstream.stop()


# --------------------------------------------------------------------------------------------------------------
# reporting: what the servers a failed test used logged during the test (gates, mlflow servers, moto, the OP)


_LOG_OFFSETS = pytest.StashKey[dict[Path, int]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    logs = logs_used(getattr(item, "funcargs", {}).values())
    if logs and call.when == "setup" and report.passed:
        item.stash[_LOG_OFFSETS] = log_offsets(logs)
    elif logs and call.when == "call" and report.failed:
        report.sections.extend(log_sections(logs, item.stash.get(_LOG_OFFSETS, {})))
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run every test of one backend before any test of the next, so one mlflow server runs at a time.

    pytest already groups session-parametrized tests by parameter; the stable sort makes it explicit (and keeps the
    unit tests, which use no backend, first).
    """
    def key(item: pytest.Item) -> int:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("mlflow_server") if callspec is not None else None
        return -1 if backend is None else BACKENDS.index(backend)

    items.sort(key=key)

"""The production-style "shared server" setup, once for this folder's module: a private PostgreSQL cluster as the
backend store, moto for team alpha's S3 bucket, the test OpenID provider, ONE `mlflow server --workers 1` whose
artifacts destination is gate 1's internal endpoint, and TWO `mlflow-gate serve --upstream` replicas sharing the
secret key and one policy folder (see prod_it.py).

Needs the PostgreSQL server binaries (`apt-get install postgresql`, as .ci/run does). The OIDC parts also need node and
tests/oidc/node_modules (`npm --prefix tests/oidc ci`); without them the OIDC tests are skipped and the rest runs.

Module scope: everything is stopped (process group by process group) when the module's last test is done, so this
folder never holds an mlflow server while another suite's runs.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.production.prod_it import SharedSetup, start_shared_setup
from tests.oidc.provider import unavailable_reason
from tests.support.client import import_mlflow_client_modules
from tests.support.mlflow_server import PG_MISSING, pg_bindir, start_pg


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedSetup]:
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip(PG_MISSING)
    import_mlflow_client_modules()
    root = tmp_path_factory.mktemp("production")
    pg = start_pg(bindir, "gate-prod-pg-")
    try:
        setup = start_shared_setup(root, pg, with_oidc=unavailable_reason() is None)
    except BaseException:
        pg.destroy()
        raise
    try:
        yield setup
    finally:
        setup.stop()
        pg.destroy()


@pytest.fixture
def oidc_op(shared: SharedSetup):  # type: ignore[no-untyped-def]
    reason = unavailable_reason()
    if reason or shared.op is None:
        pytest.skip(reason or "the OIDC provider was not started")
    return shared.op


@pytest.fixture
def up(shared: SharedSetup) -> SharedSetup:
    """The setup with every server running (an earlier test may have killed a gate)."""
    shared.ensure_up()
    return shared


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    import json

    from tests.integration.production.prod_it import FIGURES

    if FIGURES:
        terminalreporter.section("production setup: measured figures")
        for title, data in FIGURES:
            terminalreporter.write_line(f"{title}: {json.dumps(data, default=str)}")

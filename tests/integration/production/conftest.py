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

import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from prod_it import SharedSetup, start_shared_setup

from tests.conftest import PgCluster, import_mlflow_client_modules, pg_bindir
from tests.oidc.provider import unavailable_reason


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedSetup]:
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (/usr/lib/postgresql/*/bin/initdb missing): "
                    "`apt-get install postgresql`, as .ci/run does")
    import_mlflow_client_modules()
    root = tmp_path_factory.mktemp("production")
    # A directory the postgres user can enter (pytest's own tmp dirs are 0700 root).
    pg = PgCluster(bindir, Path(tempfile.mkdtemp(prefix="gate-prod-pg-")))
    try:
        pg.start()
        setup = start_shared_setup(root, pg, with_oidc=unavailable_reason() is None)
    except BaseException:
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)
        raise
    try:
        yield setup
    finally:
        setup.stop()
        shutil.rmtree(pg.root, ignore_errors=True)


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, show what both gates and the mlflow server logged during the test."""
    report = yield
    setup = getattr(item, "funcargs", {}).get("shared") or getattr(item, "funcargs", {}).get("up")
    if isinstance(setup, SharedSetup):
        if call.when == "setup" and report.passed:
            item.stash[_OFFSETS] = {s.name: s.log_size() for s in setup.services()}
        elif report.failed and call.when == "call":
            offsets = item.stash.get(_OFFSETS, {})
            for s in setup.services():
                lines = s.log_since(offsets.get(s.name, 0)).splitlines()
                report.sections.append((f"{s.name} log during the test ({s.log_path}), last 60 lines",
                                        "\n".join(lines[-60:]) or "<empty>"))
    return report


_OFFSETS = pytest.StashKey[dict[str, int]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    import json

    from prod_it import FIGURES

    if FIGURES:
        terminalreporter.section("production setup: measured figures")
        for title, data in FIGURES:
            terminalreporter.write_line(f"{title}: {json.dumps(data, default=str)}")

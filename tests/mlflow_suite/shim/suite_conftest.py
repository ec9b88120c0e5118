"""MLflow's REST suite against one URL: MLflow direct, or the gate in front of it as an admin or a member.

Set by tests/mlflow_suite/run.py through the environment:
  MLFLOW_SUITE_URL             what the tests talk to (the in-process server, or the gate)
  MLFLOW_SUITE_UPSTREAM_PORT   where the in-process server listens (the gate's upstream)
  MLFLOW_SUITE_TOKEN           the caller's token for the gate (unset direct)
  MLFLOW_SUITE_OUT             a JSON-lines file: one outcome per test

`requests` calls to the URL carry the token (the suite's raw REST calls send none); every test gets a
fresh SQLite store (`db_uri`, a copy of one migrated database); the file-store variants are left out
(the gate fronts a server, whatever its store); `async def` tests run under asyncio.run.
"""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

import mlflow.utils.providers
import pytest
import requests

URL = os.environ["MLFLOW_SUITE_URL"]
TOKEN = os.environ.get("MLFLOW_SUITE_TOKEN")
# The suite is newer than the installed MLflow by this one flag (tests skipped without litellm).
if not hasattr(mlflow.utils.providers, "_PROVIDER_BACKEND_AVAILABLE"):
    mlflow.utils.providers._PROVIDER_BACKEND_AVAILABLE = importlib.util.find_spec("litellm") is not None


def pytest_configure(config: pytest.Config) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = URL
    if TOKEN:
        os.environ["MLFLOW_TRACKING_TOKEN"] = TOKEN
        _send = requests.Session.request

        def request(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if str(url).startswith(URL):
                headers = dict(kwargs.pop("headers", None) or {})
                if not any(k.lower() == "authorization" for k in headers):
                    headers["Authorization"] = f"Bearer {TOKEN}"
                kwargs["headers"] = headers
            return _send(self, method, url, *args, **kwargs)

        requests.Session.request = request  # type: ignore[method-assign]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept = [i for i in items if "file" not in (getattr(i, "callspec", None) and i.callspec.params.values() or ())]
    config.hook.pytest_deselected(items=[i for i in items if i not in kept])
    items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**args))
    return True


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        message = ""
        if report.outcome != "passed":
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr)[-600:]
        with open(os.environ["MLFLOW_SUITE_OUT"], "a") as out:
            out.write(json.dumps({"test": report.nodeid, "when": report.when, "outcome": report.outcome,
                                  "message": message[:600]}) + "\n")


@pytest.fixture(scope="session")
def _migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    store = SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "artifacts"))
    store.engine.dispose()
    return path


@pytest.fixture
def db_uri(_migrated_db: Path, tmp_path: Path) -> str:
    path = tmp_path / "mlflow.db"
    shutil.copy(_migrated_db, path)
    return f"sqlite:///{path}"

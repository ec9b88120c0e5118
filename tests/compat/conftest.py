"""The compatibility suite's options and session state.

`--compat-versions` (or `MLFLOW_GATE_COMPAT_VERSIONS`) picks the MLflow series whose server and client
run the workflow: a comma list (`2.22,3.10`), `all`, or by default the oldest and the newest, which is
what `.ci/run` runs. The route-table checks run for every series always (a venv build is seconds).
A venv that cannot be built is an error of the run, never a skip.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compat_stack import Runs
from compat_versions import NEWEST, OLDEST, VERSIONS
from workflow import steps_for


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--compat-versions", default=os.environ.get("MLFLOW_GATE_COMPAT_VERSIONS", ""),
                     help="MLflow series to run the compatibility workflow with: comma list, 'all', "
                          f"default {OLDEST},{NEWEST}")


def selected_series(config: pytest.Config) -> list[str]:
    raw = str(config.getoption("--compat-versions") or "").strip()
    if raw == "all":
        return list(VERSIONS)
    names = [n.strip() for n in raw.split(",") if n.strip()] or [OLDEST, NEWEST]
    unknown = [n for n in names if n not in VERSIONS]
    if unknown:
        raise pytest.UsageError(f"--compat-versions: unknown series {unknown}; known: {', '.join(VERSIONS)}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "compat_step" in metafunc.fixturenames:
        cases = [(series, s.phase, s.name) for series in selected_series(metafunc.config)
                 for phase in ("seed", "main") for s in steps_for(VERSIONS[series].mlflow, phase)]
        metafunc.parametrize("compat_step", cases, ids=[f"{c[0]}-{c[2]}" for c in cases])
    elif "compat_series" in metafunc.fixturenames:
        series = selected_series(metafunc.config)
        metafunc.parametrize("compat_series", series, ids=series)
    elif "any_series" in metafunc.fixturenames:
        metafunc.parametrize("any_series", list(VERSIONS))


@pytest.fixture(scope="module")
def compat_runs(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Runs]:
    runs = Runs(tmp_path_factory.mktemp("compat"))
    request.config.stash[_RUNS] = runs
    try:
        yield runs
    finally:
        runs.close()


_RUNS = pytest.StashKey[Runs]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    runs = config.stash.get(_RUNS, None)
    if runs is None or not runs.results:
        return
    from compat_judge import table_rows

    terminalreporter.section("MLflow compatibility (steps passed)")
    terminalreporter.write_line("| server + client | through the gate | direct |")
    terminalreporter.write_line("|---|---|---|")
    for row in table_rows(runs.results):
        terminalreporter.write_line(row)
    for series, (up, workflows) in runs.seconds.items():
        terminalreporter.write_line(f"{series}: venv and servers up in {up:.0f} s, both workflows in {workflows:.0f} s")

"""What a failed test shows: what every server its fixtures hold logged while the test ran.

Anything that runs servers is a `LogSource`: its `logs()` names each server's log file. tests/conftest.py's
`pytest_runtest_makereport` notes the size of each log a test's fixtures expose when the test starts and, when the
test fails, appends what was written since as a report section.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tests.support.process import LogSource, log_since, log_size

LINES = 80  # of each log, the last ones


def logs_used(values: Iterable[object]) -> dict[Path, str]:
    """The log files (and their names) of the `LogSource`s among `values` and in the tuples and lists among them."""
    found: dict[Path, str] = {}
    for value in values:
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, LogSource):
                for name, path in v.logs().items():
                    found.setdefault(path, name)
    return found


def log_offsets(logs: Iterable[Path]) -> dict[Path, int]:
    return {path: log_size(path) for path in logs}


def log_sections(logs: dict[Path, str], offsets: dict[Path, int]) -> list[tuple[str, str]]:
    """(title, text) for each log: its last lines written since `offsets`."""
    sections = []
    for path, name in logs.items():
        lines = log_since(path, offsets.get(path, 0)).splitlines()
        sections.append((f"{name} log during the test ({path}), last {LINES} lines",
                         "\n".join(lines[-LINES:]) or "<empty>"))
    return sections

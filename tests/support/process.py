"""Server processes for the tests and the benchmarks: free loopback ports, the environment servers get, one process
wrapper (its own session and process group, a log file, stopped group-wide with SIGTERM then SIGKILL), waiting for a
health URL, and CPU / RSS of a process group read from /proc.
"""
from __future__ import annotations

import abc
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

BIN = Path(sys.executable).parent  # the venv's console scripts: mlflow, mlflow-gate, moto_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """This process' environment for a server, without a developer's tracking, gate, S3 or AWS settings (a server
    gets only what the caller gives it), with MLflow's job runner and telemetry off."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_GATE_", "MLFLOW_S3_", "AWS_"))}
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------------------------
# log files


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_since(path: Path, offset: int) -> str:
    """What a server logged from byte `offset` on ("" when the file cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class LogSource(abc.ABC):
    """Anything that runs servers: a failed test that holds one shows what they logged (tests/support/reporting.py)."""

    @abc.abstractmethod
    def logs(self) -> dict[str, Path]:
        """A name for each log file of the servers this object runs."""


# --------------------------------------------------------------------------------------------------------------
# process groups


def group_alive(pgid: int) -> bool:
    """Whether process group `pgid` has a process that is not a zombie."""
    return bool(group_pids(pgid))


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM the whole process group (mlflow spawns grandchildren), wait, then SIGKILL what is left of it."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        if not group_alive(pgid):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    _reap(proc, 5)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole process group at once (a crash: nothing is finished, nothing is flushed)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _reap(proc, 10)


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path, what: str, timeout: float = 120,
              statuses: tuple[int, ...] = (200,)) -> float:
    """Until `url` answers with one of `statuses`; the seconds that took. RuntimeError (with the log's tail) when the
    process exits first or the time is up."""
    started = time.monotonic()
    deadline = started + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; log tail ({log_path}):\n"
                               f"{log_tail(log_path)}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code in statuses:
                return time.monotonic() - started
            last = f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready at {url} after {timeout:.0f} s (last: {last}); log tail ({log_path}):\n"
                       f"{log_tail(log_path)}")


@dataclass
class Process(LogSource):
    """One server: started in its own session (so its process group is its own), stdout and stderr appended to
    `log_path`, stopped group by group. It can be stopped or killed and started again with the same command line,
    environment and port."""

    name: str
    cmd: list[str] = field(repr=False)
    env: dict[str, str] = field(repr=False)  # secrets included
    cwd: Path
    log_path: Path
    url: str = ""  # where it serves, "" for a process that does not
    health_path: str = ""  # GET url + health_path answers 200 once it is ready
    stdin_pipe: bool = False  # stdin an open pipe (a child that exits on EOF dies with this process), else /dev/null
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> Self:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            if self.starts:
                log.write(f"\n===== start #{self.starts + 1} at {time.strftime('%H:%M:%S')} =====\n".encode())
                log.flush()
            stdin = subprocess.PIPE if self.stdin_pipe else subprocess.DEVNULL
            self.popen = subprocess.Popen(self.cmd, stdin=stdin, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                          cwd=self.cwd, start_new_session=True)
        self.starts += 1
        return self

    def wait_ready(self, timeout: float = 180, statuses: tuple[int, ...] = (200,)) -> float:
        """Until url + health_path answers; the seconds that took."""
        return wait_http(self.url + self.health_path, self.proc, self.log_path, self.name, timeout, statuses)

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        """The process of the last start (RuntimeError before the first)."""
        if self.popen is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.popen

    @property
    def pid(self) -> int:
        """The process' pid, which is also its process group's id."""
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the process group, wait, SIGKILL what is left. Idempotent."""
        if self.popen is not None:
            stop_group(self.popen, timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group at once."""
        if self.popen is not None:
            kill_group(self.popen)

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.pid)

    def tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def log_size(self) -> int:
        return log_size(self.log_path)

    def log_since(self, offset: int) -> str:
        return log_since(self.log_path, offset)

    def logs(self) -> dict[str, Path]:
        return {self.name: self.log_path}


# --------------------------------------------------------------------------------------------------------------
# /proc: CPU and memory


def _proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields of /proc/<pid>/stat after the command name) for every process that can be read:
    fields[0] = state (field 3 of stat(5)), fields[2] = pgrp (5), fields[11..14] = utime, stime, cutime, cstime."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read().decode()
        except OSError:
            continue
        yield int(entry), data[data.rfind(")") + 2:].split()


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its children not included)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read().decode()
    fields = data[data.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in process group `pgid`, plus what their reaped children used
    (cutime + cstime)."""
    total = sum(sum(int(v) for v in rest[11:15]) for _, rest in _proc_stats() if int(rest[2]) == pgid)
    return total / os.sysconf("SC_CLK_TCK")


def group_pids(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    return [pid for pid, rest in _proc_stats() if rest[0] != "Z" and int(rest[2]) == pgid]


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server(LogSource):
    """Base of what a test holds of a running server: its `process` (a dataclass field of the subclass)."""

    process: Process

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def logs(self) -> dict[str, Path]:
        return self.process.logs()

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

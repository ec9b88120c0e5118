"""A private `mlflow-gate serve` for tests that need flags, environment or in-memory state of their own
(a metrics listener, the embedded server, throttling buckets no other test shares, several replicas).

It runs from the checkout (`python -m proxy`, so PYTHONPATH picks the copy under test) in its own process
group, logs to a file in its folder, and is stopped as a group.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

KEY = "private-gate-secret-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gate_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_GATE_", "AWS_"))}
    env.update(MLFLOW_GATE_SECRET_KEY=KEY, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true",
               DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def cli(*args: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    """`mlflow-gate ARGS` with this module's secret key."""
    return subprocess.run([sys.executable, "-m", "proxy", *args], check=False, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env=gate_env(MLFLOW_GATE_SECRET_KEY=key))


def token(user: str, *groups: str) -> str:
    args = ["token", "create", "--user", user, "--expires-in", "1d"]
    for g in groups:
        args += ["--group", g]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


@dataclass
class Served:
    url: str
    port: int
    root: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(root: Path, policy: str, *args: str, port: int | None = None, timeout: float = 90,
          **env: str) -> Iterator[Served]:
    """`mlflow-gate serve --policy <root>/policy.yaml --port PORT ARGS` until the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "policy.yaml").write_text(policy)
    port = port or free_port()
    log = root / "gate.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--policy", str(root / "policy.yaml"),
                                 "--host", "127.0.0.1", "--port", str(port), *args], cwd=root, env=gate_env(**env),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    served = Served(f"http://127.0.0.1:{port}", port, root, log, proc)
    try:
        _wait(served, timeout)
        yield served
    finally:
        stop(proc)


def _wait(served: Served, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            raise RuntimeError(f"mlflow-gate exited with {served.proc.returncode}:\n{served.log_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(served.url + "/_gate/health", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"mlflow-gate not healthy after {timeout:.0f} s:\n{served.log_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

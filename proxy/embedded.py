"""The embedded mlflow server of the quick start: a child process group on a free loopback port.

It is started with its own session (process group) and, on Linux, asked to die with the gate
(PR_SET_PDEATHSIG), so stopping the gate in any way leaves no orphan behind.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

log = logging.getLogger("mlflow_gate.embedded")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedMlflow:
    def __init__(self, backend_store_uri: str, artifacts_destination: str, port: int | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.extra_env = extra_env or {}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                     "--workers", "1", "--backend-store-uri", backend_store_uri,
                     "--artifacts-destination", artifacts_destination]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> None:
        env = dict(os.environ)
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        env.setdefault("DO_NOT_TRACK", "true")
        for key in [k for k in env if k.startswith(("MLFLOW_TRACKING_", "MLFLOW_GATE_"))]:
            env.pop(key)
        env.update(self.extra_env)
        log.info("starting the embedded mlflow server on %s", self.url)
        self.proc = subprocess.Popen(self.args, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the embedded mlflow server exited with code {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        log.info("embedded mlflow server is ready")
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the embedded mlflow server did not become healthy in {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None and not _group_alive(self.proc.pid):
            return
        pid = self.proc.pid
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _group_alive(pid):
            self.proc.poll()
            time.sleep(0.1)
        if _group_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

"""The embedded mlflow server of the quick start: a child process group that answers only the gate.

It listens on no TCP port: uvicorn (MLflow's server, given `--uds` through `--uvicorn-opts`) binds a
Unix domain socket in a fresh directory of mode 0700, so only the gate's own user can connect to it
(another local user cannot even reach the socket; on Unix, processes of the same user are one trust
domain anyway). The gate forwards over that socket (`forward.Upstream`, `unix://` upstream URLs).

Its own access log is off: the gate's audit stream already has one line per request.

It is started with its own session (process group) and, on Linux, asked to die with the gate
(PR_SET_PDEATHSIG), so stopping the gate in any way leaves no orphan behind.
"""
from __future__ import annotations

import ctypes
import http.client
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

log = logging.getLogger("mlflow_gate.embedded")


_MAX_SOCKET_PATH = 100     # sun_path holds 108 bytes on Linux


def _die_with_parent() -> None:
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def socket_status(path: str, request: str = "/health", timeout: float = 2) -> int:
    """The HTTP status of GET `request` on the Unix socket `path` (OSError when it cannot be reached)."""
    conn = http.client.HTTPConnection("localhost", timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        conn.sock = sock
        conn.request("GET", request)
        return conn.getresponse().status
    finally:
        conn.close()
        sock.close()


class EmbeddedMlflow:
    def __init__(self, backend_store_uri: str, artifacts_destination: str,
                 extra_env: dict[str, str] | None = None) -> None:
        self.extra_env = extra_env or {}
        self.dir = tempfile.mkdtemp(prefix="mlflow-gate-")      # mode 0700: this user only
        self.socket = os.path.join(self.dir, "mlflow.sock")
        if len(self.socket.encode()) > _MAX_SOCKET_PATH:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise ValueError(f"the embedded server's socket path {self.socket!r} is too long for a Unix socket; "
                             "set TMPDIR to a shorter folder")
        self.url = "unix://" + self.socket
        self.args = [sys.executable, "-m", "mlflow", "server", "--uvicorn-opts", shlex.join(["--uds", self.socket, "--no-access-log"]),
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
        log.info("starting the embedded mlflow server (Unix socket in a folder only this user can open)")
        self.proc = subprocess.Popen(self.args, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                raise RuntimeError(f"the embedded mlflow server exited with code {self.proc.returncode}")
            try:
                if socket_status(self.socket) == 200:
                    log.info("embedded mlflow server is ready")
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the embedded mlflow server did not become healthy in {timeout:.0f} s")

    def stop(self) -> None:
        try:
            self._stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _stop(self) -> None:
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

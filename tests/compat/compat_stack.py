"""One compatibility stack: an `mlflow server` of one version (its own venv), this repository's gate in
front of it, and that version's client running `workflow.py` direct and through the gate.

Self-contained on purpose (it starts servers from other venvs; the shared integration fixtures start
this repository's MLflow). Every server binds 127.0.0.1, runs in its own process group and is stopped
with it.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from compat_versions import venv_python

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# The checkout whose `proxy` the gate runs (run_all.py --gate-source: figures before and after a change).
GATE_SOURCE = Path(os.environ.get("MLFLOW_GATE_COMPAT_GATE_SOURCE") or REPO)
SECRET_KEY = "compat-suite-secret-key-0123456789abcdef0123"
ALICE, BOB, ROOT = "alice@compat.test", "bob@compat.test", "root@compat.test"
POLICY = """\
admins: [root@compat.test]
default: none
teams:
  alpha: {members: [alice@compat.test], experiments: ["alpha/"], models: ["alpha-"]}
  beta: {members: [bob@compat.test], experiments: ["beta/"], models: ["beta-"]}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"<cannot read {self.log}: {exc}>"

    def wait_ready(self, url: str, timeout: float) -> None:
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); {self.log}:\n{self.tail()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready at {url} after {timeout:.0f} s ({last}); {self.log}:\n{self.tail()}")

    def stop(self, timeout: float = 15) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):   # grandchildren of our own process group only
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _start(name: str, cmd: list[str], root: Path, env: dict[str, str]) -> Process:
    log = root / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
    return Process(name, proc, log)


def _gate_cli(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60,
                       cwd=GATE_SOURCE, stdin=subprocess.DEVNULL, check=False,
                       env=_env(MLFLOW_GATE_SECRET_KEY=SECRET_KEY, PYTHONPATH=str(GATE_SOURCE)))
    if r.returncode != 0:
        raise RuntimeError(f"mlflow-gate {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout.strip().splitlines()[-1]


@dataclass
class Stack:
    series: str
    python: Path
    root: Path
    mlflow_url: str = ""
    gate_url: str = ""
    procs: list[Process] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def gate_log(self) -> Path:
        return self.root / "gate.log"

    def workflow(self, phase: str, url: str, uid: str, user: str | None, seed: dict[str, str] | None = None,
                 ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Run one phase of workflow.py with this version's python; its step results and the ids it made."""
        extra = {"MLFLOW_TRACKING_TOKEN": self.tokens[user]} if user else {}
        env = _env(MLFLOW_ENABLE_ASYNC_TRACE_LOGGING="false", MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
                   MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1", MLFLOW_HTTP_REQUEST_TIMEOUT="60", **extra)
        env.pop("PYTHONPATH", None)      # the old venv imports nothing of this repository
        tag = f"{phase}-{'gate' if user else 'direct'}"
        cmd = [str(self.python), str(HERE / "workflow.py"), phase, "--url", url, "--uid", uid,
               "--seed", json.dumps(seed or {})]
        with open(self.root / f"workflow-{tag}.stderr", "wb") as err:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, env=env, cwd=self.root, timeout=600,
                               stdin=subprocess.DEVNULL, check=False)
        lines = [json.loads(x) for x in r.stdout.decode().splitlines() if x.startswith("{")]
        states = [x["state"] for x in lines if "state" in x]
        if r.returncode != 0 or not states:
            raise RuntimeError(f"workflow {tag} failed ({r.returncode}); stderr in {self.root}/workflow-{tag}.stderr")
        return [x for x in lines if "step" in x], states[-1]

    def run_mode(self, mode: str) -> list[dict[str, Any]]:
        """The whole workflow direct (no credentials) or through the gate (bob seeds, alice works)."""
        url, seeder, worker = (self.mlflow_url, None, None) if mode == "direct" else (self.gate_url, BOB, ALICE)
        uid = f"{mode}{uuid.uuid4().hex[:6]}"
        seeded, seed = self.workflow("seed", url, uid, seeder)
        results, _ = self.workflow("main", url, uid, worker, seed)
        return seeded + results

    def run_both(self) -> dict[str, list[dict[str, Any]]]:
        """Direct and through the gate at the same time (their names differ): about half the wall time."""
        with ThreadPoolExecutor(2) as pool:
            direct, gate = pool.submit(self.run_mode, "direct"), pool.submit(self.run_mode, "gate")
            return {"direct": direct.result(), "gate": gate.result()}


@contextlib.contextmanager
def stack(series: str, python: Path, root: Path, policy: str = POLICY) -> Iterator[Stack]:
    root.mkdir(parents=True, exist_ok=True)
    s = Stack(series, python, root)
    try:
        port = _free_port()
        server = _start("mlflow-server", [str(python.parent / "mlflow"), "server", "--workers", "1",
                                          "--host", "127.0.0.1", "--port", str(port),
                                          "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                                          "--artifacts-destination", str(root / "art")], root, _env())
        s.procs.append(server)
        s.mlflow_url = f"http://127.0.0.1:{port}"
        server.wait_ready(s.mlflow_url + "/health", timeout=180)
        (root / "policy.yaml").write_text(policy)
        gport = _free_port()
        gate = _start("gate", [sys.executable, "-m", "proxy", "serve", "--policy", str(root / "policy.yaml"),
                               "--host", "127.0.0.1", "--port", str(gport), "--upstream", s.mlflow_url], root,
                      _env(MLFLOW_GATE_SECRET_KEY=SECRET_KEY, PYTHONPATH=str(GATE_SOURCE)))
        s.procs.append(gate)
        s.gate_url = f"http://127.0.0.1:{gport}"
        gate.wait_ready(s.gate_url + "/_gate/health", timeout=60)
        s.tokens = {u: _gate_cli("token", "create", "--user", u, "--expires-in", "1d") for u in (ALICE, BOB, ROOT)}
        yield s
    finally:
        for p in reversed(s.procs):
            p.stop()


class Runs:
    """One stack at a time: the workflow results of the series whose stack ran last are kept for the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.gate_logs: dict[str, str] = {}
        self.seconds: dict[str, tuple[float, float]] = {}   # series -> (venv and servers up, both workflows)
        self._open: tuple[str, Any, Stack] | None = None

    def stack(self, series: str) -> Stack:
        if self._open and self._open[0] == series:
            return self._open[2]
        self.close()
        manager = stack(series, venv_python(series), self.root / series)
        self._open = (series, manager, manager.__enter__())
        return self._open[2]

    def results_of(self, series: str) -> dict[str, list[dict[str, Any]]]:
        if series not in self.results:
            start = time.monotonic()
            running = self.stack(series)
            started = time.monotonic()
            self.results[series] = running.run_both()
            self.seconds[series] = (started - start, time.monotonic() - started)
            (running.root / "results.json").write_text(json.dumps(self.results[series], indent=1))
            self.gate_logs[series] = running.gate_log.read_text(errors="replace")
        return self.results[series]

    def close(self) -> None:
        if self._open:
            self._open[1].__exit__(None, None, None)
            self._open = None

"""`mlflow-gate` for the tests and the benchmarks: its command line (`serve` and the other commands, all with the
tests' secret key), the one launcher of `mlflow-gate serve`, and `Gate`, what a test holds of a running gate.
"""
from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.client import UserClient, user_id
from tests.support.policies import team
from tests.support.process import BIN, Process, Server, child_env, free_port

SECRET_KEY = "integration-test-secret-key-0123456789abcdef"

# The policy of the integration suites' gates (tests/integration/gate_it.py names its users and their objects).
TEST_POLICY = """\
admins: [root@corp.test]
default: none
teams:
""" + team("alpha", "alice@corp.test", maintainers=["mo@corp.test"], experiments=["alpha/"], models=["alpha-"],
           tags={"cost-center": "a-1"}) \
    + team("beta", "bob@corp.test", "group:beta-team", experiments=["beta/"], models=["beta-"]) + """grants:
  - to: [everyone]
    experiments: ["shared/"]
    models: ["shared-"]
    permission: edit
  - to: [team:beta]
    experiments: ["alpha/public/"]
    permission: read
"""


# --------------------------------------------------------------------------------------------------------------
# the command line


def gate_command() -> list[str]:
    """The `mlflow-gate` command of this environment (its console script, else `python -m proxy`)."""
    exe = BIN / "mlflow-gate"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "proxy"]


def gate_env(**extra: str) -> dict[str, str]:
    """The environment of an `mlflow-gate` process: `child_env` with the tests' secret key (unless `extra` sets
    MLFLOW_GATE_SECRET_KEY itself; "" counts as unset)."""
    return child_env(**{"MLFLOW_GATE_SECRET_KEY": SECRET_KEY, **extra})


def gate_cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*gate_command(), *args], check=False, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, stdin=subprocess.DEVNULL, env=gate_env())


def gate_cli_line(*args: str) -> str:
    """The last line `mlflow-gate ARGS` printed; RuntimeError when it failed or printed nothing."""
    r = gate_cli(*args)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"mlflow-gate {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return lines[-1].strip()


def mint_token(user: str, groups: tuple[str, ...] = (), expires_in: str | None = None, name: str | None = None) -> str:
    args = ["token", "create", "--user", user_id(user)]
    for g in groups:
        args += ["--group", g]
    if expires_in:
        args += ["--expires-in", expires_in]
    if name:
        args += ["--name", name]
    return gate_cli_line(*args)


def internal_token() -> str:
    """The token the mlflow server sends to the gate's internal artifact endpoint."""
    return gate_cli_line("internal-token")


@functools.cache
def cached_token(user: str, groups: tuple[str, ...] = ()) -> str:
    """One token per (user, groups) for the whole session: tokens do not depend on the backend."""
    return mint_token(user, groups, expires_in="1d")


# --------------------------------------------------------------------------------------------------------------
# serve


def write_policy(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "policy.yaml"
    path.write_text(text)
    return path


def gate_process(root: Path, policy: Path, upstream: str | None, *, port: int | None = None,
                 args: Sequence[str] = (), env: Mapping[str, str] | None = None, name: str = "gate") -> Process:
    """`mlflow-gate serve --policy POLICY --upstream UPSTREAM ARGS` on 127.0.0.1:PORT (a free one unless given),
    working in ROOT and logging to ROOT/gate.log; not started. No upstream: the gate starts its embedded mlflow
    server."""
    port = port or free_port()
    cmd = [*gate_command(), "serve", "--policy", str(policy), "--host", "127.0.0.1", "--port", str(port)]
    if upstream is not None:
        cmd += ["--upstream", upstream]
    return Process(name, [*cmd, *args], gate_env(**(env or {})), root, root / "gate.log",
                   f"http://127.0.0.1:{port}", "/_gate/health")


@dataclass
class Gate(Server):
    """A running `mlflow-gate serve`, and the ways a test talks to it as a user."""

    policy_path: Path
    upstream: str
    backend: str
    process: Process

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    def wait_ready(self, timeout: float = 60, statuses: tuple[int, ...] = (200,)) -> None:
        """Until /_gate/health answers (with one of `statuses`); stops the gate when it does not."""
        try:
            self.process.wait_ready(timeout, statuses)
        except BaseException:
            self.process.stop()
            raise

    def logs(self) -> dict[str, Path]:
        return {f"gate ({self.backend or 'no backend'})": self.log_path}

    def token(self, user: str, groups: tuple[str, ...] | list[str] = ()) -> str:
        return cached_token(user_id(user), tuple(groups))

    def mint(self, user: str, groups: tuple[str, ...] = (), expires_in: str | None = None,
             name: str | None = None) -> str:
        """A fresh token from `mlflow-gate token create` (not cached)."""
        return mint_token(user, groups, expires_in=expires_in, name=name)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`mlflow-gate ARGS` with the gate's secret key."""
        return gate_cli(*args)

    def client(self, user: str, groups: tuple[str, ...] | list[str] = (), token: str | None = None) -> UserClient:
        return UserClient(self.url, user, token if token is not None else self.token(user, groups))

    @contextlib.contextmanager
    def as_user(self, user: str, groups: tuple[str, ...] | list[str] = ()) -> Iterator[UserClient]:
        with self.client(user, groups).acting() as c:
            yield c

    def http(self, user: str | None = None, groups: tuple[str, ...] | list[str] = (),
             **kwargs: Any) -> httpx.Client:
        headers = dict(kwargs.pop("headers", {}))
        if user is not None:
            headers["Authorization"] = f"Bearer {self.token(user, groups)}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def reloads(self, admin: str) -> int:
        """How many times the gate has tried to load its policy (ok or failed), read from /_gate/health as `admin`."""
        with self.http(admin) as client:
            counts = client.get("/_gate/health").json()["policy"]["reloads"]
        return int(counts["ok"]) + int(counts["failed"])

    def set_policy(self, text: str, admin: str) -> None:
        """Write the gate's policy file and wait until the gate has tried to load it (`admin` reads the health)."""
        before = self.reloads(admin)
        self.policy_path.write_text(text)
        deadline = time.monotonic() + 15
        while self.reloads(admin) == before:
            assert time.monotonic() < deadline, "the gate did not reload its policy"
            time.sleep(0.1)

    def log_size(self) -> int:
        return self.process.log_size()

    def log_since(self, offset: int) -> str:
        return self.process.log_since(offset)


def start_gate(root: Path, upstream: str | None, policy: str = TEST_POLICY, *, backend: str = "",
               port: int | None = None, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
               timeout: float = 60) -> Gate:
    """Write POLICY to ROOT/policy.yaml, start `mlflow-gate serve` on it (see `gate_process`) and wait until it
    is healthy. Stop it with `Gate.stop()`."""
    policy_path = write_policy(root, policy)
    process = gate_process(root, policy_path, upstream, port=port, args=args, env=env).start()
    gate = Gate(policy_path, upstream or "", backend, process)
    gate.wait_ready(timeout)
    return gate

"""Session fixtures for the integration suites: a real `mlflow server` (sqlite, then PostgreSQL) with a real
`mlflow-gate serve --upstream` in front of it, plus helpers that run the real `mlflow` client as a given user.

Heavy servers start once per backend: `mlflow_server` is a session fixture parametrized over the backends, and
pytest groups the tests by that parameter, so the sqlite server (and the gate in front of it) is stopped before
the PostgreSQL one starts. Only one mlflow server runs at a time.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

# The client must not talk to anything but our loopback servers, must not export traces from a background thread
# (it would read whichever user's token is in the environment when it runs), and must fail fast.
os.environ.update(
    MLFLOW_DISABLE_TELEMETRY="true",
    DO_NOT_TRACK="true",
    MLFLOW_ENABLE_ASYNC_TRACE_LOGGING="false",
    MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
    MLFLOW_HTTP_REQUEST_TIMEOUT="60",
)
for _var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
             "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
    os.environ.pop(_var, None)

BIN = Path(sys.executable).parent
SECRET_KEY = "integration-test-secret-key-0123456789abcdef"
DOMAIN = "corp.test"
BACKENDS = ["sqlite", "postgres"]

TEST_POLICY = """\
admins: [root@corp.test]
default: none
teams:
  alpha:
    members: [alice@corp.test]
    maintainers: [mo@corp.test]
    experiments: ["alpha/"]
    models: ["alpha-"]
    tags: {cost-center: a-1}
  beta:
    members: [bob@corp.test, group:beta-team]
    experiments: ["beta/"]
    models: ["beta-"]
grants:
  - to: [everyone]
    experiments: ["shared/"]
    models: ["shared-"]
    permission: edit
  - to: [team:beta]
    experiments: ["alpha/public/"]
    permission: read
"""


# --------------------------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "AWS_"))}
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def start_process(cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it; closed when the Popen object is collected
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True)
    finally:
        log.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM the whole process group (mlflow spawns grandchildren), wait, then SIGKILL what is left of it."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; log tail ({log_path}):\n"
                               f"{log_tail(log_path)}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.25)
    stop_process(proc)
    raise RuntimeError(f"{what} not ready at {url} after {timeout:.0f} s (last: {last}); log tail ({log_path}):\n"
                       f"{log_tail(log_path)}")


# --------------------------------------------------------------------------------------------------------------
# PostgreSQL (a private throw-away cluster, test-infra.md section 5)


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@dataclass
class PgCluster:
    bindir: Path
    root: Path
    port: int = field(default_factory=free_port)

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:  # initdb refuses to run as root
            cmd = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n"
                               f"{log_tail(self.root / 'server.log')}")

    def start(self) -> None:
        data, sock = self.root / "data", self.root / "sock"
        data.mkdir()
        sock.mkdir()
        self.root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
            shutil.chown(sock, "postgres", "postgres")
            (self.root / "server.log").touch()
            shutil.chown(self.root / "server.log", "postgres", "postgres")
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        opts = (f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off")
        self._run("pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-o", opts, "-w", "start")
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q", "-c",
                  "create database mlflow")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"


# --------------------------------------------------------------------------------------------------------------
# mlflow server


@dataclass
class MlflowServer:
    backend: str
    url: str
    root: Path
    log_path: Path


@pytest.fixture(scope="session", params=BACKENDS)
def mlflow_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    backend: str = request.param
    root = tmp_path_factory.mktemp(f"mlflow-{backend}")
    cluster: PgCluster | None = None
    if backend == "postgres":
        bindir = pg_bindir()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries not installed (/usr/lib/postgresql/*/bin/initdb missing; "
                        "`apt-get install postgresql`, as .ci/run does)")
        # A directory the postgres user can enter (pytest's own tmp dirs are 0700 root).
        cluster = PgCluster(bindir, Path(tempfile.mkdtemp(prefix="gate-it-pg-")))
        cluster.start()
        store_uri = cluster.uri
    else:
        store_uri = f"sqlite:///{root}/mlflow.db"
    port = free_port()
    log_path = root / "mlflow-server.log"
    cmd = [str(BIN / "mlflow"), "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", store_uri, "--artifacts-destination", str(root / "art")]
    proc = start_process(cmd, log_path, child_env(), cwd=root)
    server = MlflowServer(backend, f"http://127.0.0.1:{port}", root, log_path)
    try:
        wait_http(server.url + "/health", proc, log_path, f"mlflow server ({backend})", timeout=180)
        yield server
    finally:
        stop_process(proc)
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.root, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# tokens and the gate


def user_id(user: str) -> str:
    return user if "@" in user else f"{user}@{DOMAIN}"


def gate_base_cmd() -> list[str]:
    """The `mlflow-gate` command of this environment (its console script, else `python -m proxy`)."""
    exe = BIN / "mlflow-gate"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "proxy"]


def gate_cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*gate_base_cmd(), *args], check=False, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          stdin=subprocess.DEVNULL, env=child_env(MLFLOW_GATE_SECRET_KEY=SECRET_KEY))


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


def gate_cli_line(*args: str) -> str:
    """The last line `mlflow-gate ARGS` printed; RuntimeError when it failed or printed nothing."""
    r = gate_cli(*args)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"mlflow-gate {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return lines[-1].strip()


@functools.cache
def cached_token(user: str, groups: tuple[str, ...] = ()) -> str:
    """One token per (user, groups) for the whole session: tokens do not depend on the backend."""
    return mint_token(user, groups, expires_in="1d")


@contextlib.contextmanager
def env_vars(**values: str | None) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _forget_active_experiment() -> None:
    """`mlflow.set_experiment` is process-global; one user's choice must not leak into the next block."""
    from mlflow.tracking import fluent

    fluent._active_experiment_id = None


class UserClient:
    """An `MlflowClient` whose every call runs with this user's token in `MLFLOW_TRACKING_TOKEN`.

    `acting()` gives the same identity to the fluent API (`mlflow.start_run`, `mlflow.log_*`, `mlflow.genai`...).
    """

    def __init__(self, url: str, user: str, token: str) -> None:
        import mlflow

        self.url, self.user, self.token = url, user_id(user), token
        self._client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)

    @contextlib.contextmanager
    def acting(self) -> Iterator[UserClient]:
        import mlflow

        with env_vars(MLFLOW_TRACKING_URI=self.url, MLFLOW_REGISTRY_URI=self.url, MLFLOW_TRACKING_TOKEN=self.token,
                      MLFLOW_TRACKING_USERNAME=None, MLFLOW_TRACKING_PASSWORD=None, MLFLOW_EXPERIMENT_ID=None,
                      MLFLOW_EXPERIMENT_NAME=None, MLFLOW_RUN_ID=None):
            mlflow.set_tracking_uri(self.url)
            mlflow.set_registry_uri(self.url)
            _forget_active_experiment()
            try:
                yield self
            finally:
                while mlflow.active_run() is not None:
                    mlflow.end_run()
                _forget_active_experiment()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self.acting():
                return attr(*args, **kwargs)

        return call

    def __repr__(self) -> str:
        return f"UserClient({self.user})"


@dataclass
class Gate:
    url: str
    policy_path: Path
    log_path: Path
    upstream: str
    backend: str
    proc: subprocess.Popen[bytes] | None = None

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

    def log_size(self) -> int:
        return log_size(self.log_path)

    def log_since(self, offset: int) -> str:
        return log_since(self.log_path, offset)


def start_gate(upstream: str, root: Path, policy: str = TEST_POLICY, backend: str = "") -> tuple[Gate, Callable[[], None]]:
    root.mkdir(parents=True, exist_ok=True)
    policy_path = root / "policy.yaml"
    policy_path.write_text(policy)
    port = free_port()
    log_path = root / "gate.log"
    cmd = [*gate_base_cmd(), "serve", "--policy", str(policy_path), "--host", "127.0.0.1", "--port", str(port),
           "--upstream", upstream]
    proc = start_process(cmd, log_path, child_env(MLFLOW_GATE_SECRET_KEY=SECRET_KEY), cwd=root)
    gate = Gate(f"http://127.0.0.1:{port}", policy_path, log_path, upstream, backend, proc)
    wait_http(gate.url + "/_gate/health", proc, log_path, "mlflow-gate", timeout=60)
    return gate, functools.partial(stop_process, proc)


def import_mlflow_client_modules() -> None:
    """Import the client modules the suites use, once, with MLflow's own import-time warnings silenced.

    MLflow lazily imports modules that warn when they load (pydantic field shadowing in `mlflow.types.chat`,
    "Any type hint is inferred as AnyType" in `mlflow.pyfunc`). Under `filterwarnings = error` those warnings would
    surface in whichever test happens to import the module first; tracing swallows them and drops the trace.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.genai.datasets
        import mlflow.pyfunc
        import mlflow.sklearn
        import mlflow.types.chat  # noqa: F401


@pytest.fixture(scope="session")
def gate(mlflow_server: MlflowServer) -> Iterator[Gate]:
    import_mlflow_client_modules()
    g, stop = start_gate(mlflow_server.url, mlflow_server.root / "gate", backend=mlflow_server.backend)
    try:
        yield g
    finally:
        stop()


class _EchoHandler(BaseHTTPRequestHandler):
    """A stand-in upstream that records what the gate forwards and answers like a tiny MLflow."""

    protocol_version = "HTTP/1.1"
    server: _EchoServer

    def _answer(self) -> None:
        body = self._read_body()
        record = {"method": self.command, "path": self.path, "headers": list(self.headers.items()),
                  "body": body.decode(errors="replace")}
        self.server.records.append(record)
        if self.path.split("?")[0] == "/health":
            payload, ctype = b"OK", "text/plain"
        else:
            payload = json.dumps({"experiment": {"experiment_id": "1", "name": "alpha/echo", "lifecycle_stage": "active",
                                                 "artifact_location": "mlflow-artifacts:/1", "tags": []},
                                  "echo": record}).encode()
            ctype = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    records: list[dict[str, Any]]


@dataclass
class EchoGate:
    """A gate in front of the echo upstream: `records` holds every request the upstream received."""

    gate: Gate
    records: list[dict[str, Any]]


@pytest.fixture(scope="session")
def echo_gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoGate]:
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    server.records = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    upstream = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        g, stop = start_gate(upstream, tmp_path_factory.mktemp("echo-gate"), backend="echo")
        try:
            yield EchoGate(g, server.records)
        finally:
            stop()
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------------------------
# reporting: show what the gate logged during a failed test


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    g = getattr(item, "funcargs", {}).get("gate")
    # duck-typed: suites that import this file as `tests.conftest` hold Gate objects of a second module copy
    if g is not None and hasattr(g, "log_since") and hasattr(g, "log_size"):
        if call.when == "setup" and report.passed:
            item.stash[_GATE_LOG_OFFSET] = g.log_size()
        elif report.failed and call.when == "call":
            lines = g.log_since(item.stash.get(_GATE_LOG_OFFSET, 0)).splitlines()
            report.sections.append((f"gate log during the test ({g.log_path}), last 80 lines",
                                    "\n".join(lines[-80:]) or "<empty>"))
    return report


_GATE_LOG_OFFSET = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run every test of one backend before any test of the next, so one mlflow server runs at a time.

    pytest already groups session-parametrized tests by parameter; the stable sort makes it explicit (and keeps the
    unit tests, which use no backend, first).
    """
    def key(item: pytest.Item) -> int:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("mlflow_server") if callspec is not None else None
        return -1 if backend is None else BACKENDS.index(backend)

    items.sort(key=key)


def json_or_text(r: httpx.Response) -> Any:
    try:
        return r.json()
    except (ValueError, json.JSONDecodeError):
        return r.text

"""`mlflow server` for the tests and the benchmarks (`--workers 1`, jobs off, 127.0.0.1), on SQLite or on a private
throw-away PostgreSQL cluster (reference/test-infra.md, section 5).
"""
from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.process import BIN, Process, Server, child_env, free_port, log_tail


def mlflow_process(root: Path, store_uri: str, artifacts_destination: str, *, port: int | None = None,
                   env: Mapping[str, str] | None = None, name: str = "mlflow server") -> Process:
    """`mlflow server --workers 1` on 127.0.0.1:PORT (a free one unless given), working in ROOT and logging to
    ROOT/mlflow-server.log; not started."""
    port = port or free_port()
    cmd = [str(BIN / "mlflow"), "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", store_uri, "--artifacts-destination", artifacts_destination]
    return Process(name, cmd, child_env(**(env or {})), root, root / "mlflow-server.log",
                   f"http://127.0.0.1:{port}", "/health")


@dataclass
class MlflowServer(Server):
    """A running `mlflow server` (and its PostgreSQL cluster, when that is its store)."""

    backend: str  # sqlite, postgres
    root: Path
    process: Process
    pg: PgCluster | None = None

    def logs(self) -> dict[str, Path]:
        return {f"mlflow server ({self.backend})": self.log_path}

    def stop(self) -> None:
        self.process.stop()
        if self.pg is not None:
            self.pg.destroy()


def start_mlflow_server(backend: str, root: Path, pg_bindir: Path | None = None, timeout: float = 180) -> MlflowServer:
    """`mlflow server` with its store in ROOT (sqlite) or in a new PostgreSQL cluster (postgres: PG_BINDIR holds
    initdb), its artifacts in ROOT/art; ready. Stop it with `MlflowServer.stop()`."""
    pg = None
    if backend == "postgres":
        assert pg_bindir is not None, "postgres needs the PostgreSQL binaries"
        pg = start_pg(pg_bindir, "gate-it-pg-")
        store_uri = pg.uri
    else:
        store_uri = f"sqlite:///{root}/mlflow.db"
    server = MlflowServer(backend, root, mlflow_process(root, store_uri, str(root / "art")), pg)
    try:
        server.process.start().wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


# --------------------------------------------------------------------------------------------------------------
# PostgreSQL


def pg_bindir() -> Path | None:
    """Where the newest installed PostgreSQL's initdb is (None: not installed)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


PG_MISSING = ("PostgreSQL server binaries not installed (/usr/lib/postgresql/*/bin/initdb missing): "
              "`apt-get install postgresql`, as .ci/run does")


@dataclass
class PgCluster:
    """A private cluster in `root`, listening on 127.0.0.1:`port` with trust authentication, database `mlflow`."""

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

    def destroy(self) -> None:
        """Stop the cluster and delete its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"


def start_pg(bindir: Path, prefix: str) -> PgCluster:
    """A new cluster, started, in a new directory the postgres user can enter (pytest's own tmp dirs are 0700 root).
    On failure nothing is left running or on disk."""
    pg = PgCluster(bindir, Path(tempfile.mkdtemp(prefix=prefix)))
    try:
        pg.start()
    except BaseException:
        pg.destroy()
        raise
    return pg

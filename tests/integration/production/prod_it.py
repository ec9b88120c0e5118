"""The "shared server" production setup, as plain helpers (the fixtures are in conftest.py; the replica benchmark
uses the same pieces).

    PostgreSQL (private cluster) <- ONE `mlflow server --workers 1` (artifacts destination: gate 1's internal endpoint)
                                       ^                 ^
                  gate 1 (`mlflow-gate serve --upstream`)   gate 2 (same secret key, same policy FOLDER)
                  each: team alpha's artifacts on moto S3 (team-alpha bucket, alpha's own keys), OIDC sign-in

Everything binds to 127.0.0.1. Each server runs in its own process group; `Service.stop()` stops the group.
"""
from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.support.gate import gate_process, internal_token
from tests.support.mlflow_server import PgCluster, mlflow_process
from tests.support.moto import REGION, Moto, start_moto
from tests.support.process import LogSource, Process, free_port

ALPHA_BUCKET = "team-alpha"
ALICE, BOB, ROOT = "alice@corp.test", "bob@corp.test", "root@corp.test"
INTERNAL_DESTINATION = "/_gate/internal/api/2.0/mlflow-artifacts/artifacts"
# Figures the tests measured (title, data), printed in pytest's terminal summary by conftest.py.
FIGURES: list[tuple[str, dict[str, Any]]] = []
# Groups the test OP puts in ID tokens and access tokens.
OIDC_GROUPS = {ALICE: ["alpha"], BOB: ["beta"]}

TEAMS_YAML = """\
admins: [{root}]
default: none
teams:
  alpha:
    members: [{alice}, group:alpha]
    experiments: ["alpha/"]
    models: ["alpha-"]
    artifact_root: s3://{bucket}/mlflow
    storage: {{endpoint_url: "{s3}", region: {region}, credentials_env: ALPHA}}
  beta:
    members: [{bob}, group:beta]
    experiments: ["beta/"]
    models: ["beta-"]
"""


def access_yaml(grants: Sequence[dict[str, Any]] = (), revoked: Sequence[str] = ()) -> str:
    """The second policy file of the shared folder: grants and revoked token ids (what tests change)."""
    base = [{"to": ["everyone"], "experiments": ["shared/"], "permission": "edit"}]
    return json.dumps({"grants": base + list(grants), "revoked_tokens": list(revoked)}, indent=1) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace a policy file in one step (a gate polling the folder never reads half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")  # not *.yaml: the gates ignore it
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------------
# the whole setup


@dataclass
class SharedSetup(LogSource):
    """PostgreSQL + moto + (optional) OIDC provider + one mlflow server + two gates on one shared policy folder."""

    root: Path
    pg: PgCluster | None  # None: SQLite backend store
    moto: Moto  # team alpha's bucket, IAM enforced
    mlflow: Process
    gates: list[Process]
    policy_dir: Path
    op: Any = None  # tests.oidc.provider.OidcProvider when node and tests/oidc/node_modules are there
    internal_token: str = ""
    events: list[str] = field(default_factory=list)

    @property
    def access_file(self) -> Path:
        return self.policy_dir / "20-access.yaml"

    def set_access(self, grants: Sequence[dict[str, Any]] = (), revoked: Sequence[str] = ()) -> None:
        write_atomically(self.access_file, access_yaml(grants, revoked))

    def restart_mlflow(self, timeout: float = 180) -> tuple[float, float]:
        """SIGTERM the mlflow server's process group, start it again with the same arguments on the same port.
        Returns (seconds to stop, seconds until /health answered again)."""
        t0 = time.monotonic()
        self.mlflow.stop()
        t1 = time.monotonic()
        self.mlflow.start()
        self.mlflow.wait_ready(timeout=timeout)
        return t1 - t0, time.monotonic() - t1

    def ensure_up(self) -> None:
        """Start again whatever an earlier test left dead (a killed gate, a stopped mlflow server)."""
        if not self.mlflow.alive:
            self.mlflow.start()
            self.mlflow.wait_ready()
        for g in self.gates:
            if not g.alive:
                g.start()
        for g in self.gates:
            g.wait_ready(timeout=60)

    def services(self) -> list[Process]:
        return [*self.gates, self.mlflow, self.moto.process]

    def logs(self) -> dict[str, Path]:
        logs = {s.name: s.log_path for s in self.services()}
        return {**logs, **(self.op.logs() if self.op is not None else {})}

    def stop(self) -> None:
        for svc in self.services():
            with contextlib.suppress(Exception):
                svc.stop()
        if self.op is not None:
            with contextlib.suppress(Exception):
                self.op.stop()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.stop()


def start_shared_setup(root: Path, pg: PgCluster | None, *, with_oidc: bool = True, gates: int = 2) -> SharedSetup:
    """Start everything (pg, when given, must already be started; None: a SQLite file in `root`). On failure, stops
    what it started (not pg) and re-raises."""
    root.mkdir(parents=True, exist_ok=True)
    gate_ports = [free_port() for _ in range(gates)]
    gate_urls = [f"http://127.0.0.1:{p}" for p in gate_ports]
    moto: Moto | None = None
    op = None
    services: list[Process] = []
    try:
        moto = start_moto(root / "moto", {"alpha": ALPHA_BUCKET})
        policy_dir = root / "policy"
        policy_dir.mkdir()
        (policy_dir / "10-teams.yaml").write_text(TEAMS_YAML.format(
            root=ROOT, alice=ALICE, bob=BOB, bucket=ALPHA_BUCKET, s3=moto.url, region=REGION))
        write_atomically(policy_dir / "20-access.yaml", access_yaml())

        alpha_key, alpha_secret = moto.keys["alpha"]
        gate_env = {"ALPHA_AWS_ACCESS_KEY_ID": alpha_key, "ALPHA_AWS_SECRET_ACCESS_KEY": alpha_secret}
        if with_oidc:
            from tests.oidc.provider import OidcProvider

            op = OidcProvider(root / "op").start(
                resource=gate_urls[0], redirects=[u + "/_gate/callback" for u in gate_urls],
                post_logout=[u + "/_gate/signed-out" for u in gate_urls], groups=OIDC_GROUPS)
            gate_env |= {"MLFLOW_GATE_OIDC_ISSUER": op.issuer, "MLFLOW_GATE_OIDC_CLIENT_ID": "mlflow-gate",
                         "MLFLOW_GATE_OIDC_CLIENT_SECRET": "gate-secret", "MLFLOW_GATE_OIDC_AUDIENCE": gate_urls[0]}

        token = internal_token()
        store_uri = pg.uri if pg is not None else f"sqlite:///{root}/mlflow.db"
        mlflow = mlflow_process(root / "mlflow", store_uri, gate_urls[0] + INTERNAL_DESTINATION,
                                env={"MLFLOW_TRACKING_TOKEN": token})
        services.append(mlflow.start())

        default_store = root / "default-artifacts"
        gate_list = []
        for i, (port, url) in enumerate(zip(gate_ports, gate_urls, strict=True), start=1):
            public_url = {"MLFLOW_GATE_PUBLIC_URL": url} if with_oidc else {}
            g = gate_process(root / f"gate{i}", policy_dir, mlflow.url, port=port, name=f"gate {i}",
                             args=["--artifacts-destination", default_store.as_uri()],
                             env=gate_env | public_url)
            services.append(g.start())
            gate_list.append(g)
        mlflow.wait_ready(timeout=180)
        for g in gate_list:
            g.wait_ready(timeout=60)
        return SharedSetup(root=root, pg=pg, moto=moto, mlflow=mlflow, gates=gate_list, policy_dir=policy_dir,
                           op=op, internal_token=token)
    except BaseException:
        for svc in reversed(services):
            with contextlib.suppress(Exception):
                svc.stop()
        if op is not None:
            with contextlib.suppress(Exception):
                op.stop()
        if moto is not None:
            with contextlib.suppress(Exception):
                moto.stop()
        raise


# --------------------------------------------------------------------------------------------------------------
# REST helpers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


def api(url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.request(method, url + path, headers=bearer(token), json=body, params=params, timeout=30)


def create_experiment(url: str, token: str, name: str) -> str:
    r = api(url, token, "POST", "/api/2.0/mlflow/experiments/create", {"name": name})
    assert r.status_code == 200, r.text
    return str(r.json()["experiment_id"])


def create_run(url: str, token: str, exp_id: str) -> str:
    r = api(url, token, "POST", "/api/2.0/mlflow/runs/create",
            {"experiment_id": exp_id, "start_time": int(time.time() * 1000)})
    assert r.status_code == 200, r.text
    return str(r.json()["run"]["info"]["run_id"])


def metric_history(url: str, token: str, run_id: str, key: str) -> set[tuple[int, float]]:
    r = api(url, token, "GET", "/api/2.0/mlflow/metrics/get-history", params={"run_id": run_id, "metric_key": key})
    assert r.status_code == 200, r.text
    return {(int(m.get("step", 0)), float(m["value"])) for m in r.json().get("metrics", [])}


# --------------------------------------------------------------------------------------------------------------
# a retrying REST client (what the mlflow client does on connection errors and 502/503/504)


RETRY_STATUSES = frozenset({502, 503, 504})


class CallFailed(RuntimeError):
    """A call that ended with an answer the client does not retry (or with retries exhausted)."""


@dataclass
class CallStats:
    calls: int = 0              # logical calls that succeeded
    attempts: int = 0           # HTTP requests sent (or tried)
    retries: int = 0            # attempts after the first one of a call
    max_streak: int = 0         # most retries one call needed
    conn_errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)   # retried statuses seen
    failures: list[str] = field(default_factory=list)        # what was NOT retried past
    fail_times: list[float] = field(default_factory=list)    # monotonic times of retried failures
    ok_times: list[float] = field(default_factory=list)      # monotonic times of successes


class RetryingClient:
    """HTTP/1.1 keep-alive connections (one per gate) from one thread. Each call goes to `pick(call_number)`'s gate;
    on a connection error it is retried at `on_error(gate_index)`'s gate (e.g. the other one), on 502/503/504 at
    the same gate, with exponential backoff (base 0.1 s, at most `max_backoff`), until `give_up_after` seconds."""

    def __init__(self, urls: Sequence[str], token: str, *, pick: Callable[[int], int] = lambda n: 0,
                 on_error: Callable[[int], int] = lambda i: i, max_backoff: float = 2.0,
                 give_up_after: float = 150.0, timeout: float = 60.0) -> None:
        self.hosts = [(urlsplit(u).hostname or "127.0.0.1", urlsplit(u).port or 80) for u in urls]
        self.conns: list[http.client.HTTPConnection | None] = [None] * len(urls)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                        "Accept": "application/json"}
        self.pick, self.on_error = pick, on_error
        self.max_backoff, self.give_up_after, self.timeout = max_backoff, give_up_after, timeout
        self.stats = CallStats()
        self.n = 0
        self.rng = random.Random(os.getpid() ^ id(self))

    def _conn(self, i: int) -> http.client.HTTPConnection:
        c = self.conns[i]
        if c is None:
            c = self.conns[i] = http.client.HTTPConnection(*self.hosts[i], timeout=self.timeout)
        return c

    def _drop(self, i: int) -> None:
        c = self.conns[i]
        self.conns[i] = None
        if c is not None:
            c.close()

    def close(self) -> None:
        for i in range(len(self.conns)):
            self._drop(i)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        payload = json.dumps(body).encode() if body is not None else None
        s = self.stats
        gate = self.pick(self.n)
        self.n += 1
        started = time.monotonic()
        streak = 0
        while True:
            s.attempts += 1
            try:
                conn = self._conn(gate)
                conn.request(method, path, body=payload, headers=self.headers)
                r = conn.getresponse()
                data = r.read()
                status = r.status
                if r.will_close:
                    self._drop(gate)
            except (OSError, http.client.HTTPException) as exc:
                self._drop(gate)
                s.conn_errors += 1
                status, data = 0, repr(exc).encode()
            now = time.monotonic()
            if status == 200:
                s.calls += 1
                s.ok_times.append(now)
                s.max_streak = max(s.max_streak, streak)
                return json.loads(data) if data else {}
            if status and status not in RETRY_STATUSES:
                msg = f"{method} {path} -> {status} at gate {gate + 1}: {data[:300]!r}"
                s.failures.append(msg)
                raise CallFailed(msg)
            if status:
                s.statuses[status] = s.statuses.get(status, 0) + 1
            else:
                gate = self.on_error(gate)
            s.fail_times.append(now)
            if now - started > self.give_up_after:
                msg = (f"{method} {path}: gave up after {streak} retries in {now - started:.0f} s "
                       f"(last: {status or data[:200]!r})")
                s.failures.append(msg)
                raise CallFailed(msg)
            streak += 1
            s.retries += 1
            time.sleep(min(self.max_backoff, 0.1 * 2 ** min(streak - 1, 8)) * (0.5 + self.rng.random() / 2))


def merged_stats(stats: Sequence[CallStats]) -> dict[str, Any]:
    """Totals over clients, and the outage as the clients saw it."""
    fails = sorted(t for s in stats for t in s.fail_times)
    oks = sorted(t for s in stats for t in s.ok_times)
    statuses: dict[str, int] = {}
    for s in stats:
        for k, v in s.statuses.items():
            statuses[str(k)] = statuses.get(str(k), 0) + v
    out: dict[str, Any] = {
        "calls": sum(s.calls for s in stats), "requests": sum(s.attempts for s in stats),
        "retries": sum(s.retries for s in stats), "max_retry_streak": max((s.max_streak for s in stats), default=0),
        "connection_errors": sum(s.conn_errors for s in stats), "retried_statuses": statuses,
        "unretried_failures": [f for s in stats for f in s.failures],
    }
    if fails:
        # From the first failed attempt to the first success after the last failed attempt.
        after = [t for t in oks if t >= fails[-1]]
        out["outage_seconds"] = round((after[0] if after else fails[-1]) - fails[0], 2)
        out["first_failure"], out["last_failure"] = fails[0], fails[-1]
    else:
        out["outage_seconds"] = 0.0
    # The longest time in which no client got any answer it wanted.
    gaps = [b - a for a, b in itertools.pairwise(oks)]
    out["longest_gap_without_success"] = round(max(gaps, default=0.0), 2)
    return out

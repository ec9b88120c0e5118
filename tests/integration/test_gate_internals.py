"""What the gate shows of itself, and who can reach the embedded mlflow server (issue 8, items 6 and 7).

- anonymous `/_gate/health` is the status only; the details (upstream, stores, policy sources and errors) are
  for admins; `/_gate/metrics` is for admins, or for anyone on the separate listener `serve --metrics-port`,
  whose labels name teams, never storage roots;
- the embedded mlflow server of the quick start listens on no TCP port: on a Unix socket in a folder only the
  gate's user can open, so another local user cannot list experiments from it; the gate forwards over that
  socket, the server's own artifact reads and writes still go through the gate's internal endpoint, and the
  quick start prints no mlflow URL.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.gate_process import free_port, serve, token
from tests.support.policies import team

pytestmark = pytest.mark.integration

ALICE, ROOT = "alice@corp.test", "root@corp.test"
NOBODY = 65534


def test_anonymous_health_is_the_status_only(gate) -> None:  # type: ignore[no-untyped-def]
    anonymous = httpx.get(gate.url + "/_gate/health", timeout=30)
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}, anonymous.text
    member = httpx.get(gate.url + "/_gate/health", headers={"Authorization": f"Bearer {gate.token(ALICE)}"}, timeout=30)
    assert member.json() == {"status": "ok"}
    admin = httpx.get(gate.url + "/_gate/health", headers={"Authorization": f"Bearer {gate.token(ROOT)}"}, timeout=30)
    details = admin.json()
    assert details["status"] == "ok" and details["upstream"]["ok"] is True
    assert details["policy"]["sources"] == [str(gate.policy_path)] and details["policy"]["error"] is None
    bad = httpx.get(gate.url + "/_gate/health", headers={"Authorization": "Bearer mgt_forged"}, timeout=30)
    assert bad.status_code == 401 and bad.json()["error_code"] == "UNAUTHENTICATED"


def test_metrics_on_the_gates_port_are_for_admins(gate) -> None:  # type: ignore[no-untyped-def]
    anonymous = httpx.get(gate.url + "/_gate/metrics", timeout=30)
    assert anonymous.status_code == 401 and "--metrics-port" in anonymous.json()["message"]
    member = httpx.get(gate.url + "/_gate/metrics", headers={"Authorization": f"Bearer {gate.token(ALICE)}"}, timeout=30)
    assert member.status_code == 403 and member.json()["error_code"] == "PERMISSION_DENIED"
    admin = httpx.get(gate.url + "/_gate/metrics", headers={"Authorization": f"Bearer {gate.token(ROOT)}"}, timeout=30)
    assert admin.status_code == 200 and "mlflow_gate_requests_total" in admin.text


def test_the_metrics_listener_serves_anyone_and_names_teams_not_storage_roots(mlflow_server,  # type: ignore[no-untyped-def]
                                                                             tmp_path: Path) -> None:
    root = tmp_path / "alpha-store"
    policy = "admins: [root@corp.test]\nteams:\n" + team("alpha", "alice@corp.test", experiments=["alpha/"],
                                                         artifact_root=f"file://{root}")
    port = free_port()
    with serve(tmp_path / "gate", policy, "--upstream", mlflow_server.url, "--metrics-port", str(port)) as g, \
            httpx.Client(base_url=g.url, headers={"Authorization": f"Bearer {token(ALICE)}"}, timeout=60) as alice:
        exp = alice.post("/api/2.0/mlflow/experiments/create", json={"name": "alpha/metered"}).json()["experiment_id"]
        run = alice.post("/api/2.0/mlflow/runs/create", json={"experiment_id": exp}).json()["run"]["info"]["run_id"]
        body = b"x" * 1234
        put = alice.put(f"/api/2.0/mlflow-artifacts/artifacts/{exp}/{run}/artifacts/data.bin", content=body)
        assert put.status_code == 200, put.text
        assert any(root.rglob("data.bin")), "the upload did not land in the team's store"
        scraped = httpx.get(f"http://127.0.0.1:{port}/_gate/metrics", timeout=30)
        assert scraped.status_code == 200
        assert re.search(r'mlflow_gate_artifact_bytes_total\{direction="in",store="alpha"\} 1234\.0', scraped.text), \
            scraped.text
        assert str(root) not in scraped.text and "file://" not in scraped.text
        assert httpx.get(g.url + "/_gate/metrics", timeout=30).status_code == 401     # the main port still asks


# ------------------------------------------------------------------------------------------------ embedded server

def _pids_of_group(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    out.append(int(entry.name))
            except ProcessLookupError:
                pass
    return out


def _socket_inodes(pids: list[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except (FileNotFoundError, PermissionError):
            pass
    return inodes


def _tcp_listeners() -> set[str]:
    """Inodes of listening TCP sockets (state 0A) in this network namespace."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                found.add(fields[9])
    return found


def _unix_listener_paths(inodes: set[str]) -> list[str]:
    """Paths of the listening Unix sockets (flag __SO_ACCEPTCON) among these inodes."""
    paths = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes and int(fields[3], 16) & 0x10000:
            paths.append(fields[7])
    return paths


PROBE = """\
import http.client, socket, sys
conn = http.client.HTTPConnection("localhost", timeout=10)
conn.sock = socket.socket(socket.AF_UNIX)
try:
    conn.sock.connect(sys.argv[1])
except OSError as exc:
    print(type(exc).__name__)
    sys.exit(0)
conn.request("POST", "/api/2.0/mlflow/experiments/search", body=b'{"max_results": 100}',
             headers={"Content-Type": "application/json"})
print(conn.getresponse().read().decode())
"""


def _probe(socket_path: str, user: int | None = None) -> str:
    """Another local process (as `user`) asking the socket for every experiment, without the gate. The system's
    python runs it for another user (the venv's may sit in a folder only its owner can open)."""
    python = "/usr/bin/python3" if user is not None and os.path.exists("/usr/bin/python3") else sys.executable
    r = subprocess.run([python, "-c", PROBE, socket_path], capture_output=True, text=True, timeout=60,
                       user=user, cwd="/", check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_the_embedded_server_answers_only_the_gate(tmp_path: Path) -> None:
    policy = "admins: [root@corp.test]\nteams:\n  alpha:\n    members: [alice@corp.test]\n    experiments: [\"alpha/\"]\n"
    with serve(tmp_path / "quick", policy, timeout=240) as g, \
            httpx.Client(base_url=g.url, headers={"Authorization": f"Bearer {token(ALICE)}"}, timeout=60) as alice:
        exp = alice.post("/api/2.0/mlflow/experiments/create", json={"name": "alpha/secret-plans"})
        assert exp.status_code == 200, exp.text          # the gate reaches its server
        children = subprocess.run(["pgrep", "-P", str(g.proc.pid)], check=False, capture_output=True,
                                  text=True).stdout.split()
        assert children, "the gate started no embedded mlflow server"
        pids = [p for c in children for p in _pids_of_group(os.getpgid(int(c)))]
        inodes = _socket_inodes(pids)
        assert not inodes & _tcp_listeners(), "the embedded mlflow server listens on a TCP port"
        paths = _unix_listener_paths(inodes)
        assert len(set(paths)) == 1, paths
        folder = Path(paths[0]).parent
        info = folder.stat()
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
        # the probe works (run as the gate's own user, who may use the server: it is the gate's)...
        assert "alpha/secret-plans" in _probe(paths[0])
        # ...but another local user cannot even reach the socket
        if os.geteuid() == 0:
            assert _probe(paths[0], user=NOBODY) == "PermissionError"
        _server_side_artifacts(alice, g.root, exp.json()["experiment_id"])
        ports = {int(p) for p in re.findall(r"(?:127\.0\.0\.1|localhost|0\.0\.0\.0):(\d+)", g.log_text())}
        assert ports <= {g.port}, f"the quick start printed another address: {ports}"


def _server_side_artifacts(alice: httpx.Client, gate_root: Path, exp: str) -> None:
    """The embedded server writes and reads artifacts itself through the gate's internal endpoint."""
    run = alice.post("/api/2.0/mlflow/runs/create", json={"experiment_id": exp}).json()["run"]["info"]["run_id"]
    up = alice.post("/ajax-api/2.0/mlflow/upload-artifact", params={"run_uuid": run, "path": "notes.txt"},
                    content=b"written by the mlflow server")
    assert up.status_code == 200, up.text
    stored = list((gate_root / "mlartifacts").rglob("notes.txt"))
    assert stored and stored[0].read_bytes() == b"written by the mlflow server"
    model = alice.post("/api/2.0/mlflow/logged-models", json={"experiment_id": exp, "name": "m"}).json()
    model_id = model["model"]["info"]["model_id"]
    put = alice.put(f"/api/2.0/mlflow-artifacts/artifacts/{exp}/models/{model_id}/artifacts/MLmodel",
                    content=b"flavors: {}\n")
    assert put.status_code == 200, put.text
    listed = alice.get(f"/api/2.0/mlflow/logged-models/{model_id}/artifacts/directories")
    assert listed.status_code == 200, listed.text
    assert "MLmodel" in json.dumps(listed.json()), listed.text

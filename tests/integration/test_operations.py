"""Operations against real processes: the upstream going away and coming back, a broken policy file
during hot reload, and the embedded mlflow server stopping with the gate (no orphans)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support.gate import TEST_POLICY, gate_process, mint_token, start_gate
from tests.support.process import free_port, group_alive, log_tail

pytestmark = pytest.mark.integration
SEARCH = "/api/2.0/mlflow/experiments/search"


class Relay:
    """A TCP relay on a fixed loopback port that can be stopped and started: the 'network' to the upstream."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.base_events.Server | None = None
        self.conns: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.conns |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in self.conns:
                w.transport.abort()
            self.conns.clear()
            await self.server.wait_closed()
            self.server = None

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def relayed_gate(mlflow_server, tmp_path: Path) -> Iterator[tuple[object, Relay]]:  # type: ignore[no-untyped-def]
    relay = Relay(int(mlflow_server.url.rsplit(":", 1)[1]))
    relay.start()
    gate = start_gate(tmp_path / "gate", f"http://127.0.0.1:{relay.port}")
    try:
        yield gate, relay
    finally:
        gate.stop()
        relay.close()


def test_upstream_down_gives_503_and_the_gate_recovers(relayed_gate) -> None:  # type: ignore[no-untyped-def]
    gate, relay = relayed_gate
    with gate.http("alice") as http:  # type: ignore[attr-defined]
        assert http.post(SEARCH, json={"max_results": 5}).status_code == 200
        relay.stop()
        r = http.post(SEARCH, json={"max_results": 5})
        assert r.status_code == 503, r.text
        assert r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        r = http.get("/api/2.0/mlflow/runs/get", params={"run_id": "0" * 32})
        assert r.status_code == 503 and r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        admin = {"Authorization": f"Bearer {gate.token('root@corp.test')}"}  # type: ignore[attr-defined]
        health = httpx.get(gate.url + "/_gate/health", timeout=10)  # type: ignore[attr-defined]
        time.sleep(2.1)   # the health answer is cached for 2 s
        health = httpx.get(gate.url + "/_gate/health", headers=admin, timeout=10)  # type: ignore[attr-defined]
        assert health.status_code == 503 and health.json()["upstream"]["ok"] is False
        relay.start()
        assert http.post(SEARCH, json={"max_results": 5}).status_code == 200


def test_a_broken_policy_keeps_the_last_good_one_serving(mlflow_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gate = start_gate(tmp_path / "gate", mlflow_server.url)
    admin = {"Authorization": f"Bearer {gate.token('root@corp.test')}"}    # the policy's details are for admins
    try:
        with gate.http("alice") as alice:
            assert alice.post("/api/2.0/mlflow/experiments/create", json={"name": "alpha/reload-a"}).status_code == 200
            gate.policy_path.write_text(TEST_POLICY + "\nbogus_key: true\n")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                health = httpx.get(gate.url + "/_gate/health", headers=admin, timeout=10).json()
                if health["policy"]["error"]:
                    break
                time.sleep(0.2)
            assert "bogus_key" in health["policy"]["error"]
            # the old policy still serves: alice keeps her team's prefix
            assert alice.post("/api/2.0/mlflow/experiments/create", json={"name": "alpha/reload-b"}).status_code == 200
            # a good change is taken: alpha's prefix moves, alice loses "alpha/"
            gate.policy_path.write_text(TEST_POLICY.replace('experiments: ["alpha/"]', 'experiments: ["alpha2/"]'))
            deadline = time.monotonic() + 10
            status = 0
            while time.monotonic() < deadline:
                status = alice.post("/api/2.0/mlflow/experiments/create", json={"name": "alpha/reload-c"}).status_code
                if status == 403:
                    break
                time.sleep(0.2)
            assert status == 403
            assert httpx.get(gate.url + "/_gate/health", headers=admin, timeout=10).json()["policy"]["error"] is None
    finally:
        gate.stop()


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_the_embedded_server_stops_with_the_gate(tmp_path: Path, how: signal.Signals) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEST_POLICY)
    gate = gate_process(tmp_path, policy, None).start()  # no upstream: the gate starts its embedded mlflow server
    proc, log = gate.proc, gate.log_path
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_tail(log)
            try:
                if httpx.get(f"{gate.url}/_gate/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], check=False, capture_output=True,
                                  text=True).stdout.split()
        assert children, "the gate started no embedded mlflow server"
        mlflow_pgids = {os.getpgid(int(c)) for c in children}
        assert proc.pid not in mlflow_pgids          # the server runs in its own process group
        if how is signal.SIGINT:
            assert_one_line_per_request(gate)
        os.kill(proc.pid, how)
        code = proc.wait(timeout=60)
        if how is signal.SIGINT:                     # Ctrl-C: one line, no traceback
            assert code == 130 and "mlflow-gate: stopped." in log.read_text(), log_tail(log)
            assert "Traceback" not in log.read_text(), log_tail(log)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and any(group_alive(g) for g in mlflow_pgids):
            time.sleep(0.2)
        assert not any(group_alive(g) for g in mlflow_pgids), "the embedded mlflow server outlived the gate"
        assert (tmp_path / "mlflow.db").exists()       # the quick start's default store, in the working folder
    finally:
        gate.stop()


def assert_one_line_per_request(gate) -> None:  # type: ignore[no-untyped-def]
    """A request through the gate is logged once (its audit line), not also by the embedded server's access log."""
    offset = gate.log_size()
    token = mint_token("alice@corp.test")
    path = "/api/2.0/mlflow/experiments/search?max_results=7"
    assert httpx.get(gate.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
    time.sleep(1.5)                                  # the audit writer flushes within 50 ms; mlflow's log would be slower
    lines = [line for line in gate.log_since(offset).splitlines() if "experiments/search" in line]
    assert len(lines) == 1 and json.loads(lines[0])["path"] == "/api/2.0/mlflow/experiments/search", lines


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_requests_decisions_and_upstream_calls(gate) -> None:  # type: ignore[no-untyped-def]
    admin = {"Authorization": f"Bearer {gate.token('root@corp.test')}"}     # /_gate/metrics is for admins
    before = httpx.get(gate.url + "/_gate/metrics", headers=admin, timeout=10).text
    with gate.http("alice") as alice, gate.http() as anonymous:
        assert alice.post(SEARCH, json={"max_results": 1}).status_code == 200
        assert alice.post("/api/2.0/mlflow/experiments/create", json={"name": "beta/nope"}).status_code == 403
        assert anonymous.post(SEARCH, json={"max_results": 1}).status_code == 401
    after = httpx.get(gate.url + "/_gate/metrics", headers=admin, timeout=10).text
    for name, labels, at_least in [
        ("mlflow_gate_requests_total", {"method": "POST", "status": "2xx"}, 1),
        ("mlflow_gate_requests_total", {"method": "POST", "status": "4xx"}, 2),
        ("mlflow_gate_decisions_total", {"allowed": "false", "reason": "denied"}, 1),
        ("mlflow_gate_decisions_total", {"allowed": "false", "reason": "unauthenticated"}, 1),
        ("mlflow_gate_decisions_total", {"allowed": "true"}, 1),
        ("mlflow_gate_upstream_seconds_count", {}, 1),
    ]:
        assert _metric(after, name, **labels) - _metric(before, name, **labels) >= at_least, (name, labels)
    assert "mlflow_gate_policy_reloads_total" in after


class _SlowHealth(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/health"):
            time.sleep(2 if "slow" in self.path else 0)
        body = b"OK"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_graceful_shutdown_finishes_in_flight_requests_and_audit_is_its_own_stream(tmp_path: Path) -> None:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHealth)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    audit_log = tmp_path / "audit.jsonl"
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEST_POLICY)
    gate = gate_process(tmp_path, policy, f"http://127.0.0.1:{upstream.server_port}",
                        env={"MLFLOW_GATE_AUDIT_LOG": str(audit_log)}).start()
    proc, log = gate.proc, gate.log_path
    try:
        url = gate.url
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/_gate/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.post(url + SEARCH, json={"max_results": 1}, timeout=10).status_code == 401
        result: dict[str, object] = {}

        def slow() -> None:
            result["response"] = httpx.get(url + "/health?slow=1", timeout=30)

        worker = threading.Thread(target=slow)
        worker.start()
        time.sleep(0.7)                       # the request is in flight, waiting on the upstream
        os.kill(proc.pid, signal.SIGTERM)
        worker.join(30)
        response = result.get("response")
        assert isinstance(response, httpx.Response) and response.status_code == 200 and response.text == "OK"
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)   # uvicorn re-raises the signal after draining
        audit = [json.loads(line) for line in audit_log.read_text().splitlines()]
        assert any(a["allowed"] is False and a["status"] == 401 for a in audit)
        operational = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        assert operational and all("level" in e and "allowed" not in e for e in operational)
    finally:
        gate.stop()
        upstream.shutdown()
        upstream.server_close()


def test_liveness_does_not_depend_on_the_upstream(relayed_gate) -> None:  # type: ignore[no-untyped-def]
    gate, relay = relayed_gate
    relay.stop()
    time.sleep(2.1)                       # /_gate/health caches the upstream's answer for 2 s
    assert httpx.get(gate.url + "/_gate/health", timeout=10).status_code == 503
    assert httpx.get(gate.url + "/_gate/live", timeout=10).status_code == 200
    relay.start()

"""What two security measures of issue 8 cost or save, measured against real servers (standalone, not a test).

    python tests/benchmarks/bench_security.py guessing     # about 40 s
    python tests/benchmarks/bench_security.py transport    # about 90 s

`guessing` (item 5): one `mlflow server` and one gate; the latency of a signed-in request (GET
experiments/get-by-name, a personal token) while quiet, then while 8 anonymous clients send wrong Basic
credentials as fast as they can (unknown user names: the dummy-hash path, the same cost as a wrong password);
once from one address (the per-address throttle answers 429 before any hashing), once with a new spoofed
X-Forwarded-For per guess (the gate trusts the loopback proxy: no throttle applies, every guess is hashed, and
only the bounded thread pool keeps the event loop free).

`transport` (item 7): the same gate in front of an mlflow server on TCP loopback and one on a Unix socket (two
servers on one SQLite file, one gate each); sequential latency in alternating blocks (also straight to each
server, to tell the servers from the transport) and throughput at 8 clients, as an admin (pure forwarding),
with the gates' CPU per request.

Run it from the checkout root with the project's venv; PYTHONPATH picks the gate's code (e.g. an export of
main, to compare). JSON in tests/benchmarks/last-security.json.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    VENV_BIN,
    Proc,
    base_env,
    free_port,
    gate_argv,
    gate_cli,
    log,
    pct,
    wait_http_ok,
)

POLICY = """\
admins: [root@corp.test]
teams:
  alpha:
    members: [alice@corp.test]
    experiments: ["alpha/"]
"""


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path)


def start_mlflow(tmp: Path, name: str, db: Path, uds: str | None = None) -> tuple[Proc, int | None]:
    args = [str(VENV_BIN / "mlflow"), "server", "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
            "--artifacts-destination", str(tmp / "art")]
    port = None
    if uds:
        args += ["--uvicorn-opts", f"--uds {uds}"]
    else:
        port = free_port()
        args += ["--host", "127.0.0.1", "--port", str(port)]
    return Proc(name, args, base_env(), tmp / f"{name}.log", tmp), port


def wait_uds(path: str, proc: Proc, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            c = UnixConnection(path)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{proc.name} not ready:\n{proc.tail()}")


def start_gate(tmp: Path, name: str, upstream: str, *extra: str) -> tuple[Proc, int]:
    (tmp / f"{name}.yaml").write_text(POLICY)
    port = free_port()
    proc = Proc(name, gate_argv() + ["serve", "--policy", str(tmp / f"{name}.yaml"), "--port", str(port),
                                     "--upstream", upstream, *extra], base_env(), tmp / f"{name}.log", tmp)
    wait_http_ok(port, "/_gate/health", proc, 60)
    return proc, port


def timed_get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> float:
    """One request's time; a keep-alive connection the server closed while idle is reopened and not timed."""
    for _ in range(3):
        start = time.perf_counter()
        try:
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            r.read()
            return time.perf_counter() - start
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            conn.close()
    raise RuntimeError(f"GET {path} failed three times")


def signed_in_latency(port: int, token: str, seconds: float) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        out.append(timed_get(conn, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=alpha/none",
                             {"Authorization": f"Bearer {token}"}))
        time.sleep(0.02)
    conn.close()
    return out


def guessers(port: int, stop: threading.Event, spoof: bool, counts: dict[int, int]) -> list[threading.Thread]:
    lock = threading.Lock()

    def guess(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = 0
        while not stop.is_set():
            cred = base64.b64encode(f"guess-{n}-{i}@corp.test:wrong".encode()).decode()
            headers = {"Authorization": f"Basic {cred}", "Content-Type": "application/json"}
            if spoof:
                headers["X-Forwarded-For"] = f"10.{random.randrange(256)}.{random.randrange(256)}.{n}"
            try:
                conn.request("POST", "/api/2.0/mlflow/experiments/search", body=b'{"max_results": 1}',
                             headers=headers)
                r = conn.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException):   # the gate may close a refused request's connection
                conn.close()
                status = 0
            with lock:
                counts[status] = counts.get(status, 0) + 1
            i += 1
        conn.close()

    return [threading.Thread(target=guess, args=(n,), daemon=True) for n in range(8)]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median_ms": statistics.median(values) * 1000, "p90_ms": pct(values, 90) * 1000}


def under_attack(port: int, token: str, spoof: bool) -> dict[str, object]:
    stop, counts = threading.Event(), {}
    threads = guessers(port, stop, spoof, counts)
    for t in threads:
        t.start()
    time.sleep(0.5)
    start = time.monotonic()
    lat = signed_in_latency(port, token, 8)
    elapsed = time.monotonic() - start
    stop.set()
    for t in threads:
        t.join(30)
    return {**summary(lat), "guesses_per_s": sum(counts.values()) / elapsed, "guess_statuses": counts}


def bench_guessing(tmp: Path) -> dict[str, object]:
    mlflow, mport = start_mlflow(tmp, "mlflow", tmp / "mlflow.db")
    procs = [mlflow]
    try:
        wait_http_ok(mport or 0, "/health", mlflow, 180)
        gate, port = start_gate(tmp, "gate", f"http://127.0.0.1:{mport}", "--forwarded-allow-ips", "127.0.0.1")
        procs.append(gate)
        token = gate_cli("token", "create", "--user", "alice@corp.test")
        signed_in_latency(port, token, 1)
        quiet = summary(signed_in_latency(port, token, 3))
        log(f"quiet: {quiet}")
        one_address = under_attack(port, token, spoof=False)
        log(f"8 guessers, one address: {one_address}")
        time.sleep(2)
        spoofed = under_attack(port, token, spoof=True)
        log(f"8 guessers, spoofed addresses: {spoofed}")
        return {"quiet": quiet, "guessers_one_address": one_address, "guessers_spoofed_addresses": spoofed}
    finally:
        for p in reversed(procs):
            p.stop()


def sequential(conns: dict[str, http.client.HTTPConnection], token: str, rounds: int, block: int) -> dict[str, list]:
    lat: dict[str, list[float]] = {k: [] for k in conns}
    path = "/api/2.0/mlflow/experiments/get?experiment_id=0"
    for r in range(rounds):
        for name in (list(conns) if r % 2 == 0 else list(reversed(conns))):
            for _ in range(block):
                lat[name].append(timed_get(conns[name], path, {"Authorization": f"Bearer {token}"}))
    return lat


def throughput(port: int, token: str, seconds: float) -> float:
    stop, done = threading.Event(), [0] * 8

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while not stop.is_set():
            timed_get(conn, "/api/2.0/mlflow/experiments/get?experiment_id=0", {"Authorization": f"Bearer {token}"})
            done[n] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    return sum(done) / seconds


def bench_transport(tmp: Path) -> dict[str, object]:
    sock = str(Path(tempfile.mkdtemp(prefix="bench-uds-")) / "mlflow.sock")
    tcp, tport = start_mlflow(tmp, "mlflow-tcp", tmp / "mlflow.db")
    procs = [tcp]
    try:
        wait_http_ok(tport or 0, "/health", tcp, 180)
        uds, _ = start_mlflow(tmp, "mlflow-uds", tmp / "mlflow.db", uds=sock)
        procs.append(uds)
        wait_uds(sock, uds)
        gates = {}
        for name, upstream in (("tcp", f"http://127.0.0.1:{tport}"), ("uds", f"unix://{sock}")):
            proc, port = start_gate(tmp, f"gate-{name}", upstream)
            procs.append(proc)
            gates[name] = (proc, port)
        token = gate_cli("token", "create", "--user", "root@corp.test")
        conns: dict[str, http.client.HTTPConnection] = {
            name: http.client.HTTPConnection("127.0.0.1", port, timeout=60) for name, (_, port) in gates.items()}
        conns["direct-tcp"] = http.client.HTTPConnection("127.0.0.1", tport or 0, timeout=60)
        conns["direct-uds"] = UnixConnection(sock)
        sequential(conns, token, 2, 25)                                  # warm-up
        cpu0 = {n: p.cpu() for n, (p, _) in gates.items()}
        lat = sequential(conns, token, 12, 25)
        cpu = {n: (gates[n][0].cpu() - cpu0[n]) * 1000 / len(lat[n]) for n in gates}
        out: dict[str, object] = {n: {**summary(v), **({"gate_cpu_ms_per_req": cpu[n]} if n in cpu else {})}
                                  for n, v in lat.items()}
        rates: dict[str, list[float]] = {n: [] for n in gates}
        for r in range(4):
            for n in (list(gates) if r % 2 == 0 else list(reversed(gates))):
                rates[n].append(throughput(gates[n][1], token, 3))
        for n in gates:
            out[n]["req_per_s_8_clients"] = statistics.median(rates[n])  # type: ignore[index]
        log(json.dumps(out, indent=1))
        return out
    finally:
        for p in reversed(procs):
            p.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["guessing", "transport"])
    parser.add_argument("--out", default=str(Path(__file__).with_name("last-security.json")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-security-") as d:
        tmp = Path(d)
        result = bench_guessing(tmp) if args.part == "guessing" else bench_transport(tmp)
    Path(args.out).write_text(json.dumps({args.part: result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""What a remote user waits for, through mlflow-gate and directly, over an emulated slow link.

Run from the checkout root:

    .venv/bin/python tests/benchmarks/bench_remote.py            # 8-16 minutes (16 at load average 10)
    .venv/bin/python tests/benchmarks/bench_remote.py --quick    # 5-10 minutes

One run starts a real `mlflow server --workers 1` (SQLite) and `mlflow-gate serve --upstream ...` in front of it,
seeds them (500 runs with 10 params and 10 metrics each, a 20,000-point metric history, 1,000 experiments), and puts
link relays (linkrelay.py: bandwidth and delay in both directions) in front of both, for each link profile. Then, in
interleaved rounds, each user wait on a fresh connection, as a browser asks (`Accept-Encoding: gzip, deflate, br,
zstd`), the client decoding what it gets:

- UI first load: the index, then the main bundle and stylesheet on two parallel connections;
- a 500-run search page (`ajax-api/.../runs/search`), a 20,000-point metric history (`api/.../metrics/get-history`),
  a 1,000-item experiments page (`ajax-api/.../experiments/search`).

Targets: `direct` (mlflow), `gate` (compression as negotiated), `gate-identity` (no Accept-Encoding: what the gate
costs without compression). Also on loopback, without relays: the same waits, small `runs/get` requests, and the
gate's CPU per MB it compresses (per coding, against the same answers sent uncoded). Table on stdout, JSON in
tests/benchmarks/last-remote.json.

Not named test_*.py: pytest must not collect it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import http.client
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import brotli

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # benchlib, and tests.support from the checkout's root

from benchlib import git_head, log, print_table, raise_on_sigterm, verdict  # the benchmarks' own helpers

from proxy.codings import zstd  # the same zstd module the gate uses
from tests.support.gate import gate_process, mint_token, write_policy
from tests.support.mlflow_server import mlflow_process
from tests.support.process import Process, child_env, free_port

USER = "alice@corp.test"
BROWSER_AE = "gzip, deflate, br, zstd"
PROFILES = [("20 Mbit/s, 40 ms", 20.0, 40.0), ("100 Mbit/s, 10 ms", 100.0, 10.0)]
WAITS = ["ui_first_load", "search_500_runs", "metric_history_20k", "experiments_1000"]
GOAL_WAITS = ["ui_first_load", "search_500_runs", "metric_history_20k"]
TARGETS = {"slow_link_ratio_max": 0.5, "loopback_regression_max": 1.05}
DECODE = {"gzip": gzip.decompress, "br": brotli.decompress, "zstd": zstd.decompress}
POLICY = "admins: [admin@corp.test]\ndefault: none\nteams:\n  bench:\n    members: [alice@corp.test]\n" \
         '    experiments: ["bench/"]\n'


# --------------------------------------------------------------------------------------------
# HTTP: one request on a fresh connection, body decoded


def fetch(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> dict:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        first = r.read(1)
        ttfb = time.perf_counter() - t0
        wire = first + r.read()
        coding = r.getheader("content-encoding")
        data = DECODE[coding](wire) if coding in DECODE else wire
        return {"status": r.status, "s": time.perf_counter() - t0, "ttfb": ttfb, "wire": len(wire), "size": len(data),
                "coding": coding, "body": data, "etag": r.getheader("etag") or ""}
    finally:
        conn.close()


class Waits:
    """The four user waits against one port; `ae` is the Accept-Encoding sent (None: none)."""

    def __init__(self, ids: dict, token: str | None) -> None:
        self.ids = ids
        self.token = token

    def headers(self, ae: str | None, **extra: str) -> dict[str, str]:
        h = {"User-Agent": "bench_remote", **extra}
        if ae is not None:
            h["Accept-Encoding"] = ae
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def run(self, wait: str, port: int, ae: str | None) -> dict:
        if wait == "ui_first_load":
            return self.ui_first_load(port, ae)
        if wait == "search_500_runs":
            body = json.dumps({"experiment_ids": [self.ids["search_exp"]], "max_results": 500}).encode()
            return self.check(fetch(port, "POST", "/ajax-api/2.0/mlflow/runs/search",
                                    self.headers(ae, **{"Content-Type": "application/json"}), body), "runs", 500)
        if wait == "metric_history_20k":
            path = f"/api/2.0/mlflow/metrics/get-history?run_id={self.ids['history_run']}&metric_key=loss"
            return self.check(fetch(port, "GET", path, self.headers(ae)), "metrics", 20000)
        body = json.dumps({"max_results": 1000}).encode()
        return self.check(fetch(port, "POST", "/ajax-api/2.0/mlflow/experiments/search",
                                self.headers(ae, **{"Content-Type": "application/json"}), body), "experiments", 1000)

    @staticmethod
    def check(r: dict, field: str, n: int) -> dict:
        if r["status"] != 200:
            raise RuntimeError(f"answer {r['status']}: {r['body'][:300]!r}")
        got = len(json.loads(r["body"]).get(field, []))
        if got < n:
            raise RuntimeError(f"expected {n} {field}, got {got}")
        r.pop("body")
        return r

    def ui_first_load(self, port: int, ae: str | None) -> dict:
        """The index as a browser asks for it, then the bundle and stylesheet it names, in parallel."""
        t0 = time.perf_counter()
        accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        index = fetch(port, "GET", "/", self.headers(ae, Accept=accept))
        html = index["body"].decode()
        assets = ["/" + m for m in re.findall(r'(?:src|href)="(static-files/static/(?:js|css)/main\.[^"]+)"', html)]
        if index["status"] != 200 or len(assets) != 2:
            raise RuntimeError(f"index {index['status']}: {html[:300]}")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            parts = list(pool.map(lambda p: fetch(port, "GET", p, self.headers(ae, Accept="*/*")), assets))
        return {"status": 200, "s": time.perf_counter() - t0, "ttfb": index["ttfb"],
                "wire": index["wire"] + sum(p["wire"] for p in parts), "size": index["size"] + sum(p["size"] for p in parts),
                "coding": parts[0]["coding"]}


# --------------------------------------------------------------------------------------------
# servers and data


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Process] = []
        self.mlflow_port = self.gate_port = 0
        self.gate: Process | None = None

    def start(self) -> None:
        self.mlflow_port, self.gate_port = free_port(), free_port()
        mlflow = mlflow_process(self.tmp, f"sqlite:///{self.tmp}/m.db", str(self.tmp / "art"), port=self.mlflow_port)
        self.procs.append(mlflow.start())
        mlflow.wait_ready(180)
        self.gate = gate_process(self.tmp, write_policy(self.tmp, POLICY), f"http://127.0.0.1:{self.mlflow_port}",
                                 port=self.gate_port)
        self.procs.append(self.gate.start())
        self.gate.wait_ready(60)

    def relay(self, to: int, mbit: float, rtt: float) -> int:
        port = free_port()
        log_path = self.tmp / f"relay-{port}.log"
        p = Process(f"relay:{to}", [sys.executable, str(HERE / "linkrelay.py"), "--listen", str(port), "--to", str(to),
                                    "--mbit", str(mbit), "--rtt-ms", str(rtt)], child_env(), self.tmp, log_path)
        self.procs.append(p.start())
        deadline = time.monotonic() + 20
        while b"relay" not in (log_path.read_bytes() if log_path.exists() else b""):
            if time.monotonic() > deadline or not p.alive:
                raise RuntimeError(f"relay did not start: {p.tail()}")
            time.sleep(0.1)
        return port

    def stop(self) -> None:
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception:  # noqa: BLE001 - best effort on the way out
                traceback.print_exc()


def table_row(metric: str, gate: object, direct: object, value: object, target: str, ok: bool | None) -> dict:
    return {"metric": metric, "gate": gate, "direct": direct, "value": value, "target": target, "verdict": verdict(ok)}


def seed(port: int) -> dict:
    """500 runs x (10 params + 10 metrics), one run with a 20,000-point history, 1,000 experiments: directly."""
    def call(path: str, body: dict) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("POST", "/api/2.0/mlflow/" + path, json.dumps(body), {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(f"{path}: {r.status} {data[:300]!r}")
            return json.loads(data)
        finally:
            conn.close()

    now = int(time.time() * 1000)
    search_exp = call("experiments/create", {"name": "bench/search"})["experiment_id"]

    def one_run(i: int) -> None:
        run_id = call("runs/create", {"experiment_id": search_exp, "start_time": now})["run"]["info"]["run_id"]
        call("runs/log-batch", {"run_id": run_id,
                                "params": [{"key": f"param_{k}", "value": f"value-{i}-{k}"} for k in range(10)],
                                "metrics": [{"key": f"metric_{k}", "value": i * 0.001 + k, "timestamp": now, "step": 0}
                                            for k in range(10)]})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(one_run, range(500)))
    history_exp = call("experiments/create", {"name": "bench/history"})["experiment_id"]
    history_run = call("runs/create", {"experiment_id": history_exp, "start_time": now})["run"]["info"]["run_id"]
    for b in range(20):
        call("runs/log-batch", {"run_id": history_run, "metrics": [
            {"key": "loss", "value": 1.0 / (s + 1) + 0.0001 * (s % 7), "timestamp": now + s, "step": s}
            for s in range(b * 1000, (b + 1) * 1000)]})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: call("experiments/create", {"name": f"bench/e{i:04d}"}), range(1000)))
    return {"search_exp": search_exp, "history_run": history_run}


# --------------------------------------------------------------------------------------------
# measurements


def interleaved(waits: Waits, ports: dict[str, tuple[int, str | None]], rounds: int, names: list[str]) -> dict:
    """{wait: {target: [records]}}: every round runs each wait for each target, the target order rotating."""
    out: dict = {w: {t: [] for t in ports} for w in names}
    targets = list(ports)
    for r in range(rounds):
        for wait in names:
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for target in order:
                port, ae = ports[target]
                out[wait][target].append(waits.run(wait, port, ae))
    return out


def summary(records: dict) -> dict:
    """Medians per wait and target, and `paired`: the median over rounds of each target's time divided by the
    other targets' in the same round (back to back, so machine drift hits both; MLflow's own time still varies)."""
    res: dict = {}
    for wait, per in records.items():
        res[wait] = {"paired": {f"{a}/{b}": statistics.median(x["s"] / y["s"] for x, y in zip(per[a], per[b]))
                                for a in per for b in per if a != b}}
        for target, recs in per.items():
            res[wait][target] = {
                "median_s": statistics.median(x["s"] for x in recs), "min_s": min(x["s"] for x in recs),
                "ttfb_median_s": statistics.median(x["ttfb"] for x in recs),
                "transfer_median_s": statistics.median(x["s"] - x["ttfb"] for x in recs),
                "wire_bytes": recs[0]["wire"], "bytes": recs[0]["size"], "coding": recs[0]["coding"],
                "all_s": [round(x["s"], 3) for x in recs]}
    return res


def small_requests(waits: Waits, port: int, run_id: str, n: int) -> dict:
    """runs/get (a small answer, never coded) on a keep-alive connection: with and without Accept-Encoding."""
    lat: dict[str, list[float]] = {"browser-ae": [], "no-ae": []}
    conns = {k: http.client.HTTPConnection("127.0.0.1", port, timeout=60) for k in lat}
    path = f"/api/2.0/mlflow/runs/get?run_id={run_id}"
    for block in range(n // 20):
        for k in (list(lat) if block % 2 == 0 else list(lat)[::-1]):
            for _ in range(20):
                t0 = time.perf_counter()
                conns[k].request("GET", path, headers=waits.headers(BROWSER_AE if k == "browser-ae" else None))
                r = conns[k].getresponse()
                r.read()
                lat[k].append(time.perf_counter() - t0)
    for c in conns.values():
        c.close()
    return {k: statistics.median(v) for k, v in lat.items()}


def cpu_per_mb(b: Bench, waits: Waits, n: int) -> dict:
    """Gate CPU per MB of answer it compresses: the same answers with each coding and uncoded, blocks alternating."""
    assert b.gate is not None
    cpu: dict[str, float] = {}
    mb: dict[str, float] = {}
    for _ in range(2):
        for ae in ["identity", "zstd", "br", "gzip"]:
            before = b.gate.cpu_seconds()
            size = 0
            for _ in range(n):
                for wait in ("metric_history_20k", "search_500_runs"):
                    size += waits.run(wait, b.gate_port, ae)["size"]
            cpu[ae] = cpu.get(ae, 0.0) + b.gate.cpu_seconds() - before
            mb[ae] = mb.get(ae, 0.0) + size / 1e6
    base = cpu["identity"] / mb["identity"]
    return {ae: {"gate_cpu_ms_per_mb": round(1000 * cpu[ae] / mb[ae], 2),
                 "compression_ms_per_mb": round(1000 * (cpu[ae] / mb[ae] - base), 2) if ae != "identity" else 0.0}
            for ae in cpu}


def static_first(b: Bench, waits: Waits) -> dict:
    """The UI's first load right after the gate started (its files compressed then), and the next one."""
    assert b.gate is not None
    before = b.gate.cpu_seconds()
    cold = waits.run("ui_first_load", b.gate_port, BROWSER_AE)
    cpu = b.gate.cpu_seconds() - before
    warm = waits.run("ui_first_load", b.gate_port, BROWSER_AE)
    return {"cold_s": round(cold["s"], 3), "cold_gate_cpu_s": round(cpu, 3), "warm_s": round(warm["s"], 3),
            "bundle_and_css_wire_bytes": cold["wire"], "uncoded_bytes": cold["size"]}


def second_visit(waits: Waits, ports: dict[str, tuple[int, str | None]]) -> dict:
    """A returning browser: the index revalidated with its ETag (the assets are fresh in its cache)."""
    out = {}
    for target, (port, ae) in ports.items():
        first = fetch(port, "GET", "/", waits.headers(ae, Accept="text/html"))
        tag = first["etag"]
        again = fetch(port, "GET", "/", waits.headers(ae, Accept="text/html", **{"If-None-Match": tag}))
        out[target] = {"status": again["status"], "s": round(again["s"], 3), "first_s": round(first["s"], 3)}
    return out


# --------------------------------------------------------------------------------------------
# the table and main


def build_table(res: dict) -> list[dict]:
    rows = []
    for name, mbit, _ in PROFILES:
        per = res["links"][name]["waits"]
        for wait in WAITS:
            g, d, i = (per[wait][t]["median_s"] for t in ("gate", "direct", "gate-identity"))
            ratio, uncoded = per[wait]["paired"]["gate/direct"], per[wait]["paired"]["gate-identity/direct"]
            goal = mbit == PROFILES[0][1] and wait in GOAL_WAITS
            rows.append(table_row(f"{name}: {wait} (s)", g, d, ratio, "<= 0.50" if goal else "-",
                                  ratio <= TARGETS["slow_link_ratio_max"] if goal else None))
            rows.append(table_row(f"{name}: {wait} uncoded gate (s)", i, d, uncoded, "-", None))
    loop = res["loopback"]["waits"]
    for wait in WAITS:
        g, i, d = (loop[wait][t]["median_s"] for t in ("gate", "gate-identity", "direct"))
        ratio = loop[wait]["paired"]["gate/gate-identity"]
        rows.append(table_row(f"loopback: {wait} coded vs uncoded gate (s)", g, i, ratio, "<= 1.05",
                              ratio <= TARGETS["loopback_regression_max"]))
        rows.append(table_row(f"loopback: {wait} gate vs direct (s)", g, d, loop[wait]["paired"]["gate/direct"],
                              "-", None))
    zstd_ms = res["cpu"]["zstd"]["compression_ms_per_mb"]
    for wait in ("search_500_runs", "metric_history_20k"):     # what MLflow's time noise cannot hide: CPU
        share = zstd_ms * loop[wait]["gate"]["bytes"] / 1e6 / (1000 * loop[wait]["gate-identity"]["median_s"])
        rows.append(table_row(f"loopback: {wait} zstd CPU / uncoded wait", None, None, share, "<= 0.05",
                              share <= TARGETS["loopback_regression_max"] - 1))
    small = res["loopback"]["runs_get"]
    rows.append(table_row("loopback: runs/get, Accept-Encoding vs none (s)", small["browser-ae"], small["no-ae"],
                          small["browser-ae"] / small["no-ae"], "<= 1.05",
                          small["browser-ae"] / small["no-ae"] <= TARGETS["loopback_regression_max"]))
    for coding, c in res["cpu"].items():
        if coding != "identity":
            rows.append(table_row(f"gate CPU ms per MB compressed ({coding})", c["gate_cpu_ms_per_mb"],
                                  res["cpu"]["identity"]["gate_cpu_ms_per_mb"], c["compression_ms_per_mb"], "-", None))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per link profile (default 5, quick 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--out", default=str(HERE / "last-remote.json"))
    args = ap.parse_args()
    raise_on_sigterm()
    rounds = args.rounds or (3 if args.quick else 5)
    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    b = Bench(tmp)
    res: dict = {"git": git_head(), "python": platform.python_version(), "loadavg_start": os.getloadavg(),
                 "rounds": rounds, "accept_encoding": BROWSER_AE, "links": {}}
    ok = False
    try:
        b.start()
        token = mint_token(USER, name="bench-remote")
        log("seeding: 500 runs, a 20,000-point history, 1,000 experiments (directly on mlflow)")
        t0 = time.perf_counter()
        waits = Waits(seed(b.mlflow_port), token)
        log(f"  seeded in {time.perf_counter() - t0:.0f} s")
        res["static_first_load"] = static_first(b, waits)
        log(f"UI first load right after the gate started: {res['static_first_load']}")
        local = {"direct": (b.mlflow_port, BROWSER_AE), "gate": (b.gate_port, BROWSER_AE),
                 "gate-identity": (b.gate_port, None)}
        log("loopback: the four waits, coded and uncoded")
        res["loopback"] = {"waits": summary(interleaved(waits, local, rounds + 2, WAITS)),
                           "runs_get": small_requests(waits, b.gate_port, waits.ids["history_run"],
                                                      100 if args.quick else 200)}
        log("gate CPU per compressed MB")
        res["cpu"] = cpu_per_mb(b, waits, 1 if args.quick else 2)
        for name, mbit, rtt in PROFILES:
            log(f"link {name}: relays in front of the gate and of mlflow")
            gate_relay, direct_relay = b.relay(b.gate_port, mbit, rtt), b.relay(b.mlflow_port, mbit, rtt)
            ports = {"direct": (direct_relay, BROWSER_AE), "gate": (gate_relay, BROWSER_AE),
                     "gate-identity": (gate_relay, None)}
            res["links"][name] = {"waits": summary(interleaved(waits, ports, rounds, WAITS)),
                                  "second_visit": second_visit(waits, {k: ports[k] for k in ("direct", "gate")})}
        res["loadavg_end"] = os.getloadavg()
        rows = build_table(res)
        res["table"] = rows
        print_table(rows, [("metric", 62), ("gate", 8), ("direct", 8), ("value", 7), ("target", 8), ("verdict", 7)],
                    ".3f")
        print(f"load average: start {res['loadavg_start']}, end {res['loadavg_end']}")
        ok = True
    except KeyboardInterrupt:
        log("interrupted")
    except Exception:  # noqa: BLE001 - report, keep the logs
        traceback.print_exc()
        if b.gate is not None:
            print(b.gate.tail(40))
    finally:
        b.stop()
        Path(args.out).write_text(json.dumps(res, indent=2, default=str))
        log(f"JSON in {args.out}; servers' logs in {tmp}" if (args.keep or not ok) else f"JSON in {args.out}")
        if ok and not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

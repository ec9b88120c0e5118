#!/usr/bin/env python
"""Two mlflow-gate replicas on one machine: what a second replica gives, and what each request costs the gate.

Run from the checkout root:

    .venv/bin/python tests/benchmarks/bench_replicas.py             # about 2.5 minutes
    .venv/bin/python tests/benchmarks/bench_replicas.py --quick     # about 1 minute
    .venv/bin/python tests/benchmarks/bench_replicas.py --backend sqlite

It starts the production "shared server" setup of tests/integration/production/prod_it.py (without the OpenID
provider): one `mlflow server --workers 1` on PostgreSQL (a private cluster; `--backend sqlite` for a SQLite file),
moto for team alpha's bucket, and two `mlflow-gate serve --upstream` replicas sharing the secret key and the policy
folder, all on 127.0.0.1. Then, with 16 concurrent clients (threads, one keep-alive connection each), for
`GET runs/get` and `POST runs/log-metric`, in alternating time-boxed blocks:

- one:    all 16 clients on gate 1
- both:   8 clients on gate 1, 8 on gate 2
- direct: all 16 clients on the mlflow server itself (the ceiling the gates sit in front of)

Reported per operation and target: throughput (median over rounds), latency p50/p90, the gates' CPU time per request
(utime+stime of each gate process from /proc, before and after each block, divided by the requests it served), and
how many cores the gates and the mlflow server kept busy. Prints a table and writes JSON to
tests/benchmarks/last-replicas.json (machine-specific: do not commit it).

Every server runs in its own process group, stopped at the end (also on Ctrl-C / SIGTERM).
This file is deliberately not named test_*.py: pytest must not collect it.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # benchlib, and tests.support from the checkout's root

from benchlib import keep_or_remove, log, pct, raise_on_sigterm, time_boxed  # the benchmarks' own helpers

from tests.integration.production.prod_it import ALICE, SharedSetup, create_experiment, create_run, start_shared_setup
from tests.support.gate import mint_token
from tests.support.mlflow_server import PgCluster, pg_bindir, start_pg
from tests.support.process import group_cpu_seconds, proc_cpu_seconds

CLIENTS = 16
TARGETS = ("one", "both", "direct")
OPS = ("runs_get", "log_metric")


class Client:
    def __init__(self, url: str, token: str | None) -> None:
        host, port = url.split("://", 1)[1].split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, body: bytes | None) -> int:
        try:
            self.conn.request(method, path, body=body, headers=self.headers)
            r = self.conn.getresponse()
            r.read()
            if r.will_close:
                self.conn.close()
            return r.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            return 0

    def close(self) -> None:
        self.conn.close()


def block(setup: SharedSetup, op: str, target: str, seconds: float, token: str, run_ids: list[str],
          steps: list[int]) -> dict[str, Any]:
    """CLIENTS threads for `seconds` against the target; returns counts, latencies and CPU deltas."""
    g1, g2 = setup.gates
    if target == "one":
        urls = [g1.url] * CLIENTS
    elif target == "both":
        urls = [(g1.url, g2.url)[i % 2] for i in range(CLIENTS)]
    else:
        urls = [setup.mlflow.url] * CLIENTS
    lat: list[list[float]] = [[] for _ in range(CLIENTS)]
    per_url: dict[str, int] = {}
    errors = [0] * CLIENTS

    def worker(i: int, running: Callable[[], bool]) -> None:
        c = Client(urls[i], None if target == "direct" else token)
        try:
            while running():
                if op == "runs_get":
                    method, path, body = "GET", f"/api/2.0/mlflow/runs/get?run_id={run_ids[0]}", None
                else:
                    steps[i] += 1
                    method, path = "POST", "/api/2.0/mlflow/runs/log-metric"
                    body = json.dumps({"run_id": run_ids[i], "key": "bench", "value": steps[i] * 0.5,
                                       "step": steps[i], "timestamp": int(time.time() * 1000)}).encode()
                t = time.perf_counter()
                status = c.request(method, path, body)
                if status == 200:
                    lat[i].append(time.perf_counter() - t)
                else:
                    errors[i] += 1
        finally:
            c.close()

    cpu0 = {g.name: proc_cpu_seconds(g.pid) for g in setup.gates}
    mlflow0 = group_cpu_seconds(setup.mlflow.pid)
    wall = time_boxed(CLIENTS, worker, seconds)
    cpu1 = {g.name: proc_cpu_seconds(g.pid) for g in setup.gates}
    mlflow1 = group_cpu_seconds(setup.mlflow.pid)
    for i, u in enumerate(urls):
        per_url[u] = per_url.get(u, 0) + len(lat[i])
    ok = sum(len(x) for x in lat)
    all_lat = [v for x in lat for v in x]
    served = {g.name: per_url.get(g.url, 0) for g in setup.gates}
    gate_cpu = {name: cpu1[name] - cpu0[name] for name in cpu0}
    return {
        "op": op, "target": target, "seconds": wall, "ok": ok, "errors": sum(errors), "rps": ok / wall,
        "p50_ms": pct(all_lat, 50) * 1000, "p90_ms": pct(all_lat, 90) * 1000,
        "served": served, "gate_cpu_s": gate_cpu, "mlflow_cpu_s": mlflow1 - mlflow0,
    }


def summarize(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for op in OPS:
        for target in TARGETS:
            bs = [b for b in blocks if b["op"] == op and b["target"] == target]
            if not bs:
                continue
            served = sum(sum(b["served"].values()) for b in bs)
            gate_cpu = sum(sum(b["gate_cpu_s"].values()) for b in bs)
            wall = sum(b["seconds"] for b in bs)
            per_gate = {}
            for name in bs[0]["gate_cpu_s"]:
                n = sum(b["served"][name] for b in bs)
                cpu = sum(b["gate_cpu_s"][name] for b in bs)
                per_gate[name] = {"requests": n, "cpu_s": round(cpu, 3),
                                  "cpu_ms_per_request": round(cpu / n * 1000, 3) if n else None,
                                  "cores_busy": round(cpu / wall, 3)}
            rows.append({
                "op": op, "target": target, "rounds": len(bs),
                "rps_median": round(statistics.median(b["rps"] for b in bs), 1),
                "rps_min": round(min(b["rps"] for b in bs), 1), "rps_max": round(max(b["rps"] for b in bs), 1),
                "p50_ms": round(statistics.median(b["p50_ms"] for b in bs), 2),
                "p90_ms": round(statistics.median(b["p90_ms"] for b in bs), 2),
                "errors": sum(b["errors"] for b in bs),
                "gate_cpu_ms_per_request": round(gate_cpu / served * 1000, 3) if served else None,
                "gates_cores_busy": round(gate_cpu / wall, 3),
                "mlflow_cores_busy": round(sum(b["mlflow_cpu_s"] for b in bs) / wall, 3),
                "per_gate": per_gate,
            })
    return rows


def print_table(rows: list[dict[str, Any]], backend: str) -> None:
    print()
    print(f"mlflow-gate replicas ({CLIENTS} clients, backend {backend}, mlflow --workers 1, 2 gates)")
    head = (f"{'operation':<11} {'target':<7} {'req/s':>7} {'(min-max)':>13} {'p50 ms':>7} {'p90 ms':>7} "
            f"{'gate CPU ms/req':>15} {'gates cores':>11} {'mlflow cores':>12} {'errors':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        cpu = "-" if r["gate_cpu_ms_per_request"] is None else f"{r['gate_cpu_ms_per_request']:.2f}"
        print(f"{r['op']:<11} {r['target']:<7} {r['rps_median']:>7.1f} {r['rps_min']:>6.0f}-{r['rps_max']:<6.0f} "
              f"{r['p50_ms']:>7.1f} {r['p90_ms']:>7.1f} {cpu:>15} {r['gates_cores_busy']:>11.2f} "
              f"{r['mlflow_cores_busy']:>12.2f} {r['errors']:>6}")
    for op in OPS:
        by = {r["target"]: r for r in rows if r["op"] == op}
        if "one" in by and "both" in by and by["one"]["rps_median"]:
            print(f"{op}: both/one throughput = {by['both']['rps_median'] / by['one']['rps_median']:.2f}"
                  + (f", one/direct = {by['one']['rps_median'] / by['direct']['rps_median']:.2f}"
                     if "direct" in by and by["direct"]["rps_median"] else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--backend", choices=("postgres", "sqlite"), default=None,
                    help="mlflow's backend store (default: postgres when its binaries are installed, else sqlite)")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of one measured block (default 6)")
    ap.add_argument("--rounds", type=int, default=3, help="blocks per operation and target (default 3)")
    ap.add_argument("--quick", action="store_true", help="--seconds 3 --rounds 2")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, policy)")
    ap.add_argument("--out", default=str(HERE / "last-replicas.json"))
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds = 3.0, 2
    bindir = pg_bindir()
    backend = args.backend or ("postgres" if bindir else "sqlite")
    if backend == "postgres" and bindir is None:
        print("PostgreSQL binaries not installed (apt-get install postgresql); use --backend sqlite", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    pg: PgCluster | None = None
    setup: SharedSetup | None = None
    ok = False

    raise_on_sigterm()
    load_start = os.getloadavg()
    try:
        t = time.monotonic()
        if backend == "postgres":
            assert bindir is not None
            pg = start_pg(bindir, "bench-replicas-pg-")
        setup = start_shared_setup(tmp / "setup", pg, with_oidc=False)
        log(f"servers up in {time.monotonic() - t:.1f} s ({backend}); gates {setup.gates[0].url} (pid "
            f"{setup.gates[0].pid}) and {setup.gates[1].url} (pid {setup.gates[1].pid}), mlflow {setup.mlflow.url}")
        token = mint_token(ALICE, expires_in="1d", name="bench")
        exp_id = create_experiment(setup.gates[0].url, token, "alpha/bench-replicas")
        run_ids = [create_run(setup.gates[i % 2].url, token, exp_id) for i in range(CLIENTS)]
        steps = [0] * CLIENTS
        blocks: list[dict[str, Any]] = []
        for op in OPS:
            for target in TARGETS:  # warm-up: connections, caches, the run lookups
                block(setup, op, target, 1.0, token, run_ids, steps)
            for rnd in range(args.rounds):
                order = TARGETS if rnd % 2 == 0 else tuple(reversed(TARGETS))
                for target in order:
                    b = block(setup, op, target, args.seconds, token, run_ids, steps)
                    blocks.append(b)
                    log(f"{op:<10} {target:<6} round {rnd + 1}: {b['rps']:7.1f} req/s, p50 {b['p50_ms']:.1f} ms, "
                        f"errors {b['errors']}")
        rows = summarize(blocks)
        print_table(rows, backend)
        out = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "backend": backend, "clients": CLIENTS,
            "seconds_per_block": args.seconds, "rounds": args.rounds,
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "summary": rows, "blocks": blocks,
        }
        Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
        log(f"wrote {args.out}")
        ok = True
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if setup is not None:
            if not ok:
                for g in setup.services():
                    print(f"--- {g.name} log tail ({g.log_path}) ---\n{g.tail(30)}", file=sys.stderr)
            setup.stop()
        if pg is not None:
            pg.destroy()
        keep_or_remove(tmp, bool(args.keep or not ok))


if __name__ == "__main__":
    sys.exit(main())

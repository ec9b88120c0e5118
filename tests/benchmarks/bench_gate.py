#!/usr/bin/env python
"""End-to-end benchmark of mlflow-gate against the mlflow server behind it.

Run from the checkout root:

    .venv/bin/python tests/benchmarks/bench_gate.py            # full run, < 6 minutes
    .venv/bin/python tests/benchmarks/bench_gate.py --quick    # smaller run, < 2 minutes

One run starts a real `mlflow server --workers 1` (SQLite, in a temporary directory) and one
`mlflow-gate serve --upstream ...` in front of it, all on 127.0.0.1, and measures:

1. decision time of `proxy.decide.decide` on a 1,000-team policy (in-process, timeit);
2. latency of `runs/log-metric` and `runs/get`, sequential and at 8 concurrent clients, gate and
   direct interleaved in alternating blocks, plus throughput at 8 concurrent clients;
3. `experiments/search` (max_results 100) as a one-team user over 2,000 experiments of 20 teams:
   latency gate vs direct, correctness of the filtered page and of paging, and the number of
   upstream calls the gate makes per filtered page (counted from mlflow's own access log);
4. CPU per request of the gate process group, read from /proc.

It prints a summary table with the targets and writes it as JSON to tests/benchmarks/last-run.json.
Both servers run in their own process groups, which are stopped at the end, also on Ctrl-C.

This file is deliberately not named test_*.py: pytest must not collect it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import timeit
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # benchlib, and tests.support from the checkout's root

from benchlib import (  # the benchmarks' own helpers
    ROOT,
    Guard,
    Table,
    finish,
    keep_or_remove,
    log,
    new_record,
    pct,
    raise_on_sigterm,
    start_py_spy,
    stop_py_spy,
    time_boxed,
)

from tests.support.gate import gate_process, mint_token, write_policy
from tests.support.mlflow_server import mlflow_process
from tests.support.process import Process, child_env, free_port

USER = "alice@corp.test"
TEAM = "t00"
N_TEAMS = 20

TARGETS = {
    "latency_ratio_max": 1.10,
    "throughput_ratio_min": 0.90,
    "decision_us_max": 20.0,
    "upstream_calls_per_filtered_page_max": 3,
}


# --------------------------------------------------------------------------------------------
# small helpers


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


class Client:
    """Minimal keep-alive HTTP/1.1 client (stdlib http.client): low, constant per-request cost."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = dict(headers or {})
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method: str, path: str, body: object | None = None) -> tuple[int, bytes]:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: object | None = None) -> dict:
        status, data = self.request(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path} -> {status}: {data[:300]!r}")
        return json.loads(data) if data else {}

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------------------------
# policies


def team_yaml(name: str, members: list[str], maintainers: list[str] | None = None) -> list[str]:
    """The policy lines of team NAME, owner of the experiments `NAME/` and the models `NAME-`."""
    return [f"  {name}:", f"    members: [{', '.join(members)}]",
            *([f"    maintainers: [{', '.join(maintainers)}]"] if maintainers else []),
            f'    experiments: ["{name}/"]', f'    models: ["{name}-"]']


def bench_policy_yaml(n_teams: int = N_TEAMS) -> str:
    lines = ["admins: [admin@corp.test]", "default: none", "teams:"]
    for t in range(n_teams):
        name = f"t{t:02d}"
        lines += team_yaml(name, [f"group:{name}"] + ([USER] if name == TEAM else []))
    return "\n".join(lines) + "\n"


def decision_policy_yaml(n_teams: int = 1000) -> str:
    lines = ["admins: [group:mlflow-admins, root@corp.test]", "default: none", "teams:"]
    for t in range(n_teams):
        lines += team_yaml(f"t{t:04d}", [f"u{t:04d}@corp.test", f"group:g{t:04d}"], [f"m{t:04d}@corp.test"])
    lines.append("grants:")
    grants = [
        ("everyone", '["shared/"]', '["shared-"]', "edit"),
        ("everyone", '["users/{user}/"]', '["users/{user}/"]', "manage"),
        ("group:g1", '["t0001/public/"]', "[]", "read"),
        ("team:t0002", '["t0003/benchmarks/"]', "[]", "read"),
        ("team:t0004", '["t0005/"]', '["t0005-"]', "edit"),
        ("group:g0006", '["t0007/reports/"]', "[]", "read"),
        ("u0008@corp.test", '["t0009/"]', "[]", "read"),
        ("team:t0010", "[]", '["t0011-prod"]', "read"),
        ("group:readers", '["t0012/", "t0013/"]', "[]", "read"),
        ("everyone", '["t0999/demo/"]', "[]", "read"),
    ]
    for to, exps, models, perm in grants:
        lines += [
            f"  - to: [{to}]",
            f"    experiments: {exps}",
            f"    models: {models}",
            f"    permission: {perm}",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# 1. decision time (in-process)


def bench_decisions(quick: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    try:
        from proxy.decide import decide  # type: ignore[import-not-found]
        from proxy.identity import Identity
        from proxy.policy import Level, load_policy_text
    except Exception as exc:  # noqa: BLE001 - the core may not exist yet
        return {"error": f"cannot import the decision API: {exc!r}"}

    t0 = time.perf_counter()
    policy = load_policy_text(decision_policy_yaml(1000), source="<bench>")
    load_s = time.perf_counter() - t0
    ident = Identity(id="u0500@corp.test", groups=frozenset({"g1"}), via="token")
    cases = {
        "allowed (own team, edit)": ("t0500/exp-1", Level.EDIT, True),
        "denied (other team)": ("t0501/exp-1", Level.READ, False),
        "unowned name (default none)": ("zzz/exp-1", Level.READ, False),
        "grant (group:g1 read)": ("t0001/public/x", Level.READ, True),
    }
    number = 20_000 if quick else 100_000
    out: dict = {"policy_load_s": round(load_s, 3), "teams": 1000, "number": number, "cases": {}}
    for label, (name, level, expect) in cases.items():
        result = decide(policy, ident, "experiment", name, level)
        allowed = _allowed(result)
        runs = timeit.repeat(lambda name=name, level=level: decide(policy, ident, "experiment", name, level),
                             number=number, repeat=3)
        us = min(runs) / number * 1e6
        out["cases"][label] = {
            "name": name, "level": str(level), "allowed": allowed, "expected": expect,
            "us_per_decision": round(us, 3), "result": repr(result)[:200],
        }
    # a cold caller: first decision for an identity the policy has not seen (per-caller context build)
    cold = []
    for i in range(200):
        other = Identity(id=f"u{i:04d}@corp.test", groups=frozenset({f"g{i:04d}", "readers"}), via="token")
        t0 = time.perf_counter()
        decide(policy, other, "experiment", f"t{i:04d}/exp-1", Level.EDIT)
        cold.append((time.perf_counter() - t0) * 1e6)
    out["cold_first_decision_us_median"] = round(statistics.median(cold), 2)
    return out


def _allowed(result: object) -> bool | None:
    if isinstance(result, bool):
        return result
    for attr in ("allowed", "allow", "ok"):
        if hasattr(result, attr):
            return bool(getattr(result, attr))
    if isinstance(result, tuple) and result and isinstance(result[0], bool):
        return result[0]
    return None


# --------------------------------------------------------------------------------------------
# servers


@dataclass
class Servers:
    tmp: Path
    mlflow: Process | None = None
    mlflow_port: int = 0
    gate: Process | None = None
    gate_port: int = 0
    token: str = ""
    gate_kind: str = "mlflow-gate"
    stub: Process | None = None    # --baseline: a bare pass-through as a third target; --compare: another gate
    stub_port: int = 0
    stub_kind: str = "bare pass-through"
    startup: dict = field(default_factory=dict)

    def stop(self) -> None:
        for p in (self.stub, self.gate, self.mlflow):
            if p is not None:
                try:
                    p.stop()
                except Exception:  # noqa: BLE001 - best effort on the way out
                    traceback.print_exc()


def start_mlflow(s: Servers) -> None:
    s.mlflow_port = free_port()
    s.mlflow = mlflow_process(s.tmp, f"sqlite:///{s.tmp}/mlflow.db", str(s.tmp / "art"), port=s.mlflow_port).start()


STUB_GATE = textwrap.dedent(
    """
    # A bare pass-through: the gate's serving stack (raw ASGI under uvicorn with uvloop + httptools,
    # aiohttp client to the upstream, streamed relay) without any authentication or policy work.
    import sys, aiohttp, uvicorn
    UP = sys.argv[2]
    DROP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
            b"authorization", b"origin", b"content-length"}
    state = {}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup":
                    state["s"] = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=256), auto_decompress=False,
                        skip_auto_headers=("User-Agent", "Accept-Encoding"))
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await state["s"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/_gate/health":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.lower() not in DROP]
        headers.append(("Content-Length", str(len(body))))
        qs = scope["query_string"].decode()
        url = UP + scope["raw_path"].decode() + ("?" + qs if qs else "")
        resp = await state["s"].request(scope["method"], url, data=body, headers=headers,
                                        allow_redirects=False, compress=None)
        try:
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": [(k.lower(), v) for k, v in resp.raw_headers
                                    if k.lower() not in (b"connection", b"keep-alive", b"transfer-encoding")]})
            async for chunk in resp.content.iter_chunked(256 * 1024):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            resp.release()

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                loop="auto", http="auto", lifespan="on")
    """
)


def start_stub(s: Servers, as_gate: bool) -> None:
    """The bare pass-through, either in place of the gate (--stub-gate) or beside it (--baseline)."""
    port = free_port()
    script = s.tmp / "stub_gate.py"
    script.write_text(STUB_GATE)
    argv = [sys.executable, str(script), str(port), f"http://127.0.0.1:{s.mlflow_port}"]
    name = "gate" if as_gate else "stub"
    stub = Process(name, argv, child_env(), s.tmp, s.tmp / f"{name}.log", f"http://127.0.0.1:{port}",
                   "/_gate/health").start()
    if as_gate:
        s.gate_kind = "bare pass-through (uvicorn + aiohttp, no auth)"
        s.gate_port, s.gate = port, stub
    else:
        s.stub_port, s.stub = port, stub


def start_compare(s: Servers, checkout: Path) -> None:
    """A second mlflow-gate, of the code in another checkout, in the third target's place: the same policy,
    secret key and upstream, so both gates are measured in one run against one mlflow server."""
    port = free_port()
    root = s.tmp / "compare"
    root.mkdir()
    s.stub_kind = f"gate of {checkout}"
    s.stub_port = port
    s.stub = gate_process(root, write_policy(root, bench_policy_yaml()), f"http://127.0.0.1:{s.mlflow_port}",
                          port=port, env={"PYTHONPATH": str(checkout)}, name="compare").start()


def start_gate(s: Servers, stub: bool) -> None:
    if stub:
        start_stub(s, as_gate=True)
        return
    s.gate_port = free_port()
    s.gate = gate_process(s.tmp, write_policy(s.tmp, bench_policy_yaml()), f"http://127.0.0.1:{s.mlflow_port}",
                          port=s.gate_port).start()


def bench_token(stub: bool) -> str:
    if stub:
        return "stub-token"
    return mint_token(USER, (TEAM,), name="bench")


# --------------------------------------------------------------------------------------------
# MLflow fixtures


def create_experiments(port: int, per_team: int) -> tuple[dict[str, str], float]:
    """Create N_TEAMS * per_team experiments directly on mlflow, interleaving the teams (so a
    team's experiments are spread over the whole creation order, the worst case for a gate
    that filters pages after the fact). Returns name -> id and the time taken."""
    names = [f"t{t:02d}/e{j:04d}" for j in range(per_team) for t in range(N_TEAMS)]
    local = threading.local()
    ids: dict[str, str] = {}

    def one(name: str) -> None:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = Client(port)
        ids[name] = c.json("POST", "/api/2.0/mlflow/experiments/create", {"name": name})["experiment_id"]

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(one, n) for n in names]:
            f.result()
    return ids, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# 2. latency and throughput


def make_op(kind: str, run_id: str):
    counter = [0]
    lock = threading.Lock()

    def op(c: Client) -> None:
        if kind == "log-metric":
            with lock:
                counter[0] += 1
                step = counter[0]
            body = {"run_id": run_id, "key": "bench", "value": step * 0.5,
                    "timestamp": int(time.time() * 1000), "step": step}
            status, data = c.request("POST", "/api/2.0/mlflow/runs/log-metric", body)
        else:
            status, data = c.request("GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}")
        if status != 200:
            raise RuntimeError(f"{kind} -> {status}: {data[:300]!r}")

    return op


def timed(op, c: Client) -> float:
    t0 = time.perf_counter()
    op(c)
    return (time.perf_counter() - t0) * 1000.0


def _targets(s: Servers) -> dict[str, tuple[int, Process | None]]:
    """name -> (port, the proxy process in the path or None). Order of rounds rotates over these."""
    t: dict[str, tuple[int, Process | None]] = {"gate": (s.gate_port, s.gate), "direct": (s.mlflow_port, None)}
    if s.stub is not None:
        t["stub"] = (s.stub_port, s.stub)
    return t


def _order(names: list[str], r: int) -> list[str]:
    """Round r's order: rotate, and reverse every other round, so no target always goes first."""
    k = r % len(names)
    o = names[k:] + names[:k]
    return o if (r // len(names)) % 2 == 0 else o[::-1]


def bench_sequential(s: Servers, run_id: str, n: int, block: int) -> dict:
    auth = {"Authorization": f"Bearer {s.token}"}
    targets = _targets(s)
    names = list(targets)
    clients = {t: Client(port, auth) for t, (port, _) in targets.items()}
    out: dict = {}
    for kind in ("log-metric", "runs/get"):
        op = make_op(kind, run_id)
        for c in clients.values():  # warm-up (connections, caches)
            for _ in range(10):
                op(c)
        lat: dict[str, list[float]] = {t: [] for t in names}
        proxy_cpu = dict.fromkeys(names, 0.0)
        mlflow_cpu = dict.fromkeys(names, 0.0)
        block_medians: dict[str, list[float]] = {t: [] for t in names}
        rounds = max(2, n // block)
        time.sleep(0.2)
        log_lines0 = len(access_log_lines(s))
        for r in range(rounds):
            for t in _order(names, r):
                proxy = targets[t][1]
                p0, m0 = proxy.cpu_seconds() if proxy else 0.0, s.mlflow.cpu_seconds()
                v = [timed(op, clients[t]) for _ in range(block)]
                p1, m1 = proxy.cpu_seconds() if proxy else 0.0, s.mlflow.cpu_seconds()
                lat[t] += v
                block_medians[t].append(statistics.median(v))
                proxy_cpu[t] += p1 - p0
                mlflow_cpu[t] += m1 - m0
        done = rounds * block
        time.sleep(0.3)
        # every access-log line is one request reaching mlflow; direct and stub send exactly one each
        upstream = len(access_log_lines(s)) - log_lines0 - done * (len(names) - 1)
        d = summarize(lat) | {
            "n_per_target": done,
            "upstream_calls_per_gate_req": round(upstream / done, 3),
            "ratio_median_paired": round(statistics.median(
                g / dd for g, dd in zip(block_medians["gate"], block_medians["direct"], strict=True)), 3),
            "gate_cpu_ms_per_req": round(proxy_cpu["gate"] / done * 1000, 3),
            "mlflow_cpu_ms_per_req": {t: round(v / done * 1000, 3) for t, v in mlflow_cpu.items()},
        }
        if "stub" in names:
            d["stub_cpu_ms_per_req"] = round(proxy_cpu["stub"] / done * 1000, 3)
        out[kind] = d
        log(f"  sequential {kind:10s} " + fmt_lat(d) + f"  paired {d['ratio_median_paired']:.3f}")
        log(f"    gate CPU {d['gate_cpu_ms_per_req']} ms/req"
            + (f" ({s.stub_kind} {d['stub_cpu_ms_per_req']})" if "stub" in names else "")
            + f"; upstream calls per gate request {d['upstream_calls_per_gate_req']}; mlflow CPU ms/req "
            f"{d['mlflow_cpu_ms_per_req']}")
    for c in clients.values():
        c.close()
    return out


def summarize(lat: dict[str, list[float]]) -> dict:
    d: dict = {}
    for t, v in lat.items():
        d[t] = {"median_ms": round(statistics.median(v), 3), "p90_ms": round(pct(v, 90), 3),
                "mean_ms": round(statistics.fmean(v), 3)}
    d["ratio_median"] = round(d["gate"]["median_ms"] / d["direct"]["median_ms"], 3)
    d["ratio_p90"] = round(d["gate"]["p90_ms"] / d["direct"]["p90_ms"], 3)
    if "stub" in lat:
        d["stub_ratio_median"] = round(d["stub"]["median_ms"] / d["direct"]["median_ms"], 3)
        d["stub_ratio_p90"] = round(d["stub"]["p90_ms"] / d["direct"]["p90_ms"], 3)
    return d


def fmt_lat(d: dict) -> str:
    return (f"gate {d['gate']['median_ms']:.2f}/{d['gate']['p90_ms']:.2f} ms  "
            f"direct {d['direct']['median_ms']:.2f}/{d['direct']['p90_ms']:.2f} ms  "
            f"ratio {d['ratio_median']:.3f} (p90 {d['ratio_p90']:.3f})")


def run_concurrent_block(port: int, headers: dict, op, workers: int, seconds: float) -> tuple[list[float], float]:
    """`workers` threads, each with its own keep-alive connection, each issuing requests back to
    back until `seconds` have passed (time-boxed, so the tail is at most one request per worker).
    Returns per-request latencies and the wall time from the common start to the last finish."""
    clients = [Client(port, headers) for _ in range(workers)]
    for c in clients:  # open the connections outside the timed window
        c.conn.connect()
    lats: list[list[float]] = [[] for _ in range(workers)]

    def worker(i: int, running: Callable[[], bool]) -> None:
        while running():
            lats[i].append(timed(op, clients[i]))

    try:
        wall = time_boxed(workers, worker, seconds)
    finally:
        for c in clients:
            c.close()
    return [x for v in lats for x in v], wall


def bench_concurrent(s: Servers, run_id: str, workers: int, seconds: float, rounds: int) -> dict:
    auth = {"Authorization": f"Bearer {s.token}"}
    targets = _targets(s)
    names = list(targets)
    out: dict = {}
    for kind in ("log-metric", "runs/get"):
        op = make_op(kind, run_id)
        for t in names:  # warm-up
            run_concurrent_block(targets[t][0], auth, op, workers, 0.3)
        lat: dict[str, list[float]] = {t: [] for t in names}
        wall = dict.fromkeys(names, 0.0)
        count = dict.fromkeys(names, 0)
        per_block: dict[str, list[float]] = {t: [] for t in names}
        # CPU seconds per wall second of each party while the blocks run: on a 2-core machine a
        # sum near 2.0 means the box is CPU-bound, so every ms the gate spends costs throughput
        busy = {t: {"mlflow": 0.0, "proxy": 0.0, "client": 0.0} for t in names}
        for r in range(rounds):
            for t in _order(names, r):
                port, proxy = targets[t]
                p0, m0, c0 = proxy.cpu_seconds() if proxy else 0.0, s.mlflow.cpu_seconds(), time.process_time()
                v, w = run_concurrent_block(port, auth, op, workers, seconds)
                p1, m1, c1 = proxy.cpu_seconds() if proxy else 0.0, s.mlflow.cpu_seconds(), time.process_time()
                busy[t]["proxy"] += p1 - p0
                busy[t]["mlflow"] += m1 - m0
                busy[t]["client"] += c1 - c0
                lat[t] += v
                wall[t] += w
                count[t] += len(v)
                per_block[t].append(round(len(v) / w, 1))
        d = summarize(lat)
        rps = {t: count[t] / wall[t] for t in names}
        d["throughput_rps"] = {t: round(v, 1) for t, v in rps.items()}
        d["throughput_rps_per_block"] = per_block
        d["throughput_ratio"] = round(rps["gate"] / rps["direct"], 3)
        # drift-robust view: ratio of each gate block to the direct block of the same round
        d["throughput_ratio_paired_median"] = round(statistics.median(
            g / dd for g, dd in zip(per_block["gate"], per_block["direct"], strict=True)), 3)
        if "stub" in names:
            d["stub_throughput_ratio"] = round(rps["stub"] / rps["direct"], 3)
            d["stub_cpu_ms_per_req"] = round(busy["stub"]["proxy"] / count["stub"] * 1000, 3)
        d["n_per_target"] = count
        d["gate_cpu_ms_per_req"] = round(busy["gate"]["proxy"] / count["gate"] * 1000, 3)
        d["cpu_cores_busy"] = {t: {k: round(v / wall[t], 2) for k, v in b.items()} | {
            "total": round(sum(b.values()) / wall[t], 2)} for t, b in busy.items()}
        d["mlflow_cpu_ms_per_req"] = {t: round(busy[t]["mlflow"] / count[t] * 1000, 2) for t in busy}
        out[kind] = d
        log(f"  {workers} concurrent {kind:10s} " + fmt_lat(d)
            + f"  | {rps['gate']:.1f} vs {rps['direct']:.1f} req/s ratio {d['throughput_ratio']:.3f}"
            + f" (paired median {d['throughput_ratio_paired_median']:.3f})")
        if "stub" in names:
            log(f"    {s.stub_kind}: median ratio {d['stub_ratio_median']:.3f}, {rps['stub']:.1f} req/s ratio "
                f"{d['stub_throughput_ratio']:.3f}")
        log(f"    cores busy {d['cpu_cores_busy']}")
    return out


# --------------------------------------------------------------------------------------------
# 3. filtered search


def access_log_lines(s: Servers) -> list[str]:
    text = s.mlflow.log_path.read_text(errors="replace")
    return [ln for ln in text.splitlines() if '" ' in ln and ("HTTP/1.1" in ln or "HTTP/1.0" in ln)]


def count_upstream(s: Servers, fn) -> tuple[object, list[str]]:
    """Run fn() and return its result plus the mlflow access-log lines it caused."""
    time.sleep(0.05)
    before = len(access_log_lines(s))
    result = fn()
    time.sleep(0.3)  # let uvicorn's access logger write
    lines = access_log_lines(s)[before:]
    return result, [ln.split('"')[1] if '"' in ln else ln for ln in lines]


def bench_search(s: Servers, per_team: int, n: int) -> dict:
    auth = {"Authorization": f"Bearer {s.token}"}
    gate = Client(s.gate_port, auth)
    direct = Client(s.mlflow_port, auth)
    path = "/api/2.0/mlflow/experiments/search"
    body = {"max_results": 100}
    out: dict = {"experiments_total": per_team * N_TEAMS, "team_experiments": per_team}

    # correctness of one filtered page, and the upstream calls it costs
    page, calls = count_upstream(s, lambda: gate.json("POST", path, body))
    names = [e["name"] for e in page.get("experiments", [])]
    foreign = [nm for nm in names if not nm.startswith(f"{TEAM}/")]
    out["first_page"] = {
        "returned": len(names), "expected": min(100, per_team), "foreign_names": foreign[:5],
        "only_own_team": not foreign, "has_next_page_token": bool(page.get("next_page_token")),
        "upstream_calls": len(calls), "upstream_requests": calls[:25],
    }
    log(f"  first filtered page: {len(names)} experiments, foreign {len(foreign)}, upstream calls {len(calls)}")

    # paging through the gate: max_results 100 (as the brief), and 25 to exercise tokens
    out["paging"] = {}
    empty: dict[int, int] = {}
    for size in (100, 25):
        def walk(size: int = size) -> tuple[list[str], int]:
            seen: list[str] = []
            token = None
            pages = 0
            empty[size] = 0
            while pages < 200:
                b: dict = {"max_results": size}
                if token:
                    b["page_token"] = token
                p = gate.json("POST", path, b)
                pages += 1
                got = [e["name"] for e in p.get("experiments", [])]
                empty[size] += not got
                seen += got
                token = p.get("next_page_token")
                if not token:
                    break
            return seen, pages

        (seen, pages), calls = count_upstream(s, walk)
        want = {f"{TEAM}/e{j:04d}" for j in range(per_team)}
        ok = len(seen) == len(want) and set(seen) == want
        out["paging"][f"max_results={size}"] = {
            "pages": pages, "empty_pages": empty[size], "returned": len(seen), "distinct": len(set(seen)), "expected": len(want),
            "exact": ok, "missing": sorted(want - set(seen))[:5], "extra": sorted(set(seen) - want)[:5],
            "upstream_calls": len(calls), "upstream_calls_per_page": round(len(calls) / pages, 2),
        }
        log(f"  paging max_results={size}: {pages} pages ({empty[size]} empty), {len(seen)} names, exact={ok}, "
            f"upstream calls {len(calls)} ({len(calls) / pages:.2f}/page)")

    # latency, interleaved
    for c in (gate, direct):
        for _ in range(3):
            c.json("POST", path, body)
    lat: dict[str, list[float]] = {"gate": [], "direct": []}
    gate_cpu = 0.0
    mlflow_cpu = {"gate": 0.0, "direct": 0.0}
    size = {"gate": 0, "direct": 0}
    block = 5
    for r in range(max(1, n // block)):
        order = (("gate", gate), ("direct", direct)) if r % 2 == 0 else (("direct", direct), ("gate", gate))
        for t, c in order:
            g0, m0 = s.gate.cpu_seconds(), s.mlflow.cpu_seconds()
            for _ in range(block):
                t0 = time.perf_counter()
                status, data = c.request("POST", path, body)
                lat[t].append((time.perf_counter() - t0) * 1000)
                if status != 200:
                    raise RuntimeError(f"search via {t} -> {status}: {data[:300]!r}")
                size[t] = len(data)
            g1, m1 = s.gate.cpu_seconds(), s.mlflow.cpu_seconds()
            mlflow_cpu[t] += m1 - m0
            if t == "gate":
                gate_cpu += g1 - g0
    k = len(lat["gate"])
    out["latency"] = summarize(lat) | {
        "n_per_target": k,
        "gate_cpu_ms_per_req": round(gate_cpu / k * 1000, 3),
        "mlflow_cpu_ms_per_req": {t: round(v / k * 1000, 2) for t, v in mlflow_cpu.items()},
        "response_bytes": size,
    }
    log("  search max_results=100 " + fmt_lat(out["latency"]))
    log(f"    CPU per search: gate {out['latency']['gate_cpu_ms_per_req']} ms; mlflow via gate "
        f"{out['latency']['mlflow_cpu_ms_per_req']['gate']} ms, direct {out['latency']['mlflow_cpu_ms_per_req']['direct']} ms")
    gate.close()
    direct.close()
    return out


# --------------------------------------------------------------------------------------------
# optional: where the gate's CPU goes (py-spy)


# --------------------------------------------------------------------------------------------
# reporting


def build_table(res: dict) -> list[dict]:
    rows = Table()
    add = rows.add

    lr, tr = TARGETS["latency_ratio_max"], TARGETS["throughput_ratio_min"]
    for mode, key in (("seq", "sequential"), ("8c", "concurrent")):
        for kind, d in res.get(key, {}).items():
            for stat, rkey in (("median_ms", "ratio_median"), ("p90_ms", "ratio_p90")):
                add(f"{kind} {mode} {stat.split('_')[0]} (ms)", d["gate"][stat], d["direct"][stat], d[rkey],
                    f"ratio <= {lr}", d[rkey] <= lr if stat == "median_ms" else None)
            if "stub" in d:
                add(f"  {kind} {mode} median, {res.get('reference', 'bare pass-through')}", d["stub"]["median_ms"],
                    d["direct"]["median_ms"],
                    d["stub_ratio_median"], "(reference)", None)
            if key == "concurrent":
                add(f"{kind} 8c throughput (req/s)", d["throughput_rps"]["gate"], d["throughput_rps"]["direct"],
                    d["throughput_ratio"], f"ratio >= {tr}", d["throughput_ratio"] >= tr)
                if "stub" in d:
                    add(f"  {kind} 8c throughput, {res.get('reference', 'bare pass-through')}", d["throughput_rps"]["stub"],
                        d["throughput_rps"]["direct"], d["stub_throughput_ratio"], "(reference)", None)
    se = res.get("search")
    if se and "latency" in se:
        d = se["latency"]
        add("search 100 median (ms)", d["gate"]["median_ms"], d["direct"]["median_ms"], d["ratio_median"],
            "(report)", None)
        add("search 100 p90 (ms)", d["gate"]["p90_ms"], d["direct"]["p90_ms"], d["ratio_p90"], "(report)", None)
        fp = se["first_page"]
        add("filtered page: only own team", fp["returned"], "-", fp["only_own_team"], "True", fp["only_own_team"])
        for k, p in se["paging"].items():
            add(f"paging {k}: exact team set", p["returned"], "-", p["exact"], f"{p['expected']} exact", p["exact"])
        cmax = TARGETS["upstream_calls_per_filtered_page_max"]
        add("upstream calls per filtered page", "-", "-", fp["upstream_calls"], f"<= {cmax}",
            fp["upstream_calls"] <= cmax)
        for k, p in se["paging"].items():
            add(f"upstream calls/page ({k})", "-", "-", p["upstream_calls_per_page"], f"<= {cmax}",
                p["upstream_calls_per_page"] <= cmax)
    de = res.get("decision", {})
    dmax = TARGETS["decision_us_max"]
    for label, d in de.get("cases", {}).items():
        good = d["allowed"] == d["expected"] if d["allowed"] is not None else None
        add(f"decision {label} (us)", "-", "-", d["us_per_decision"], f"< {dmax}",
            d["us_per_decision"] < dmax and good is not False)
    if "cold_first_decision_us_median" in de:
        add("decision, first for a caller (us)", "-", "-", de["cold_first_decision_us_median"], "(report)", None)
    for key in ("sequential", "concurrent"):
        for kind, d in res.get(key, {}).items():
            add(f"gate CPU per {kind} ({key[:3]}, ms)", d.get("gate_cpu_ms_per_req"), "-", "-", "(report)", None)
            if "stub_cpu_ms_per_req" in d:
                add(f"  {res.get('reference', 'bare pass-through')} CPU per {kind} ({key[:3]}, ms)",
                    d["stub_cpu_ms_per_req"], "-", "-",
                    "(reference)", None)
    return rows


TABLE_COLS = [("metric", 48), ("gate", 10), ("direct", 10), ("value", 9), ("target", 14), ("verdict", 7)]


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller run (< 2 minutes)")
    ap.add_argument("--stub-gate", action="store_true",
                    help="replace mlflow-gate by a bare aiohttp pass-through (no auth): harness check, "
                         "and the cost of forwarding alone")
    ap.add_argument("--baseline", action="store_true",
                    help="also run the bare pass-through beside the gate as a third target in the latency and "
                         "throughput parts: separates what forwarding costs from what the gate's own work costs")
    ap.add_argument("--compare", metavar="CHECKOUT", type=Path, default=None,
                    help="also run the gate of another checkout (e.g. a worktree of the previous commit) beside this "
                         "one, as the third target: before/after figures from one run against one mlflow server")
    ap.add_argument("--skip-decision", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, db)")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="after setup, sleep this many seconds before measuring (to attach py-spy)")
    ap.add_argument("--py-spy", metavar="BIN", default=None,
                    help="path to a py-spy binary: sample the gate during the latency phases and report "
                         "where its CPU goes (collapsed stacks kept in the temporary directory)")
    ap.add_argument("--out", default=str(HERE / "last-run.json"))
    args = ap.parse_args()

    quick = args.quick
    cfg = {
        "seq_n": 100 if quick else 300, "seq_block": 25,
        "conc_workers": 8, "conc_seconds": 1.5, "conc_rounds": 3 if quick else 8,
        "per_team": 25 if quick else 100, "search_n": 20 if quick else 40,
    }
    started = time.time()
    res = new_record("quick" if quick else "full", cfg, TARGETS, ("mlflow",))

    # Ctrl-C and SIGTERM both unwind through the finally below
    raise_on_sigterm()

    if not args.skip_decision:
        log("decision time, 1,000-team policy (in-process)")
        res["decision"] = bench_decisions(quick)
        for label, d in res["decision"].get("cases", {}).items():
            log(f"  {label:32s} {d['us_per_decision']:.2f} us  allowed={d['allowed']}")
        if "error" in res["decision"]:
            log(f"  {res['decision']['error']}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    s = Servers(tmp=tmp)
    spy: tuple[subprocess.Popen, Path] | None = None

    def show_log() -> None:
        if s.gate is not None:
            print(f"--- gate log tail ({s.gate.log_path}) ---\n{s.gate.tail(40)}", file=sys.stderr)

    guard = Guard(res, show_log)
    try:
        log(f"starting mlflow server (workers 1, sqlite) in {tmp}")
        start_mlflow(s)
        s.startup["mlflow_s"] = round(s.mlflow.wait_ready(120), 1)
        log(f"  mlflow ready on :{s.mlflow_port} after {s.startup['mlflow_s']} s")
        start_gate(s, args.stub_gate)
        t1 = time.monotonic()
        s.token = bench_token(args.stub_gate)
        s.gate.wait_ready(60)
        s.startup["gate_s"] = round(time.monotonic() - t1, 1)
        log(f"  gate ({s.gate_kind}) ready on :{s.gate_port} after {s.startup['gate_s']} s")
        if args.compare is not None and not args.stub_gate:
            start_compare(s, args.compare.resolve())
            s.stub.wait_ready(60)
            log(f"  {s.stub_kind} ready on :{s.stub_port}")
            res["reference"] = s.stub_kind
        elif args.baseline and not args.stub_gate:
            start_stub(s, as_gate=False)
            s.stub.wait_ready(30)
            log(f"  bare pass-through (baseline) ready on :{s.stub_port}")
        res["gate_kind"] = s.gate_kind
        res["startup"] = s.startup

        direct = Client(s.mlflow_port)
        if not args.skip_search:
            log(f"creating {cfg['per_team'] * N_TEAMS} experiments over {N_TEAMS} teams (direct)")
            ids, took = create_experiments(s.mlflow_port, cfg["per_team"])
            res["setup_experiments_s"] = round(took, 1)
            log(f"  done in {took:.1f} s")
            exp_id = ids[f"{TEAM}/e0000"]
        else:
            exp_id = direct.json("POST", "/api/2.0/mlflow/experiments/create", {"name": f"{TEAM}/e0000"})[
                "experiment_id"]
        # the run the latency part works on; created through the gate, so that path is checked too
        gate = Client(s.gate_port, {"Authorization": f"Bearer {s.token}"})
        run = gate.json("POST", "/api/2.0/mlflow/runs/create",
                        {"experiment_id": exp_id, "start_time": int(time.time() * 1000), "run_name": "bench"})
        run_id = run["run"]["info"]["run_id"]
        res["run"] = {"experiment_id": exp_id, "run_id": run_id,
                      "mlflow.user": next((t["value"] for t in run["run"]["data"].get("tags", [])
                                           if t["key"] == "mlflow.user"), None)}
        gate.close()
        direct.close()

        if args.hold:
            log(f"holding {args.hold:.0f} s (gate pgid {s.gate.pid}, mlflow pgid {s.mlflow.pid})")
            time.sleep(args.hold)

        spy = start_py_spy(args.py_spy, s) if args.py_spy else None
        log(f"sequential latency ({cfg['seq_n']} per op and target, blocks of {cfg['seq_block']})")
        res["sequential"] = bench_sequential(s, run_id, cfg["seq_n"], cfg["seq_block"])
        log(f"{cfg['conc_workers']} concurrent clients ({cfg['conc_rounds']} rounds x "
            f"{cfg['conc_seconds']} s per target)")
        res["concurrent"] = bench_concurrent(s, run_id, cfg["conc_workers"], cfg["conc_seconds"],
                                             cfg["conc_rounds"])
        if spy is not None:
            res["gate_profile"] = stop_py_spy(spy, s)
            spy = None
        if not args.skip_search:
            log("experiments/search as a one-team user")
            res["search"] = bench_search(s, cfg["per_team"], cfg["search_n"])
    except BaseException as exc:
        if not guard.absorb(exc):
            raise
    finally:
        if spy is not None and spy[0].poll() is None:
            spy[0].kill()
        log("stopping servers")
        s.stop()
        res["gate_log_bytes"] = (tmp / "gate.log").stat().st_size if (tmp / "gate.log").exists() else None
        keep_or_remove(tmp, bool(args.keep or guard.rc), res)

    finish(res, started, build_table, TABLE_COLS, ".2f", args.out)
    return guard.rc


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""What a filtered search costs through mlflow-gate, against the same search of one prefix sent to MLflow directly.

Run from the checkout root:

    .venv/bin/python tests/benchmarks/bench_search.py            # 22k and 100k experiments, about 6-10 minutes
    .venv/bin/python tests/benchmarks/bench_search.py --quick    # 22k only, fewer repetitions, about 3 minutes

Per server size it builds a SQLite store quickly (the schema created by MLflow's own SqlAlchemyStore classes, then
bulk inserts: 50 teams, a shared area and personal areas), starts `mlflow server --workers 1` on it and
`mlflow-gate serve --upstream ...` in front, and measures, for callers who may read 1, 3 and 10 name prefixes, for
experiments and registered models:

- first page (max_results 100, MLflow's default order): the gate's page vs a direct page of one prefix
  (`name LIKE 't00/%'`), medians of interleaved blocks;
- full listing (pages of 100, and of 1000 for experiments): paging through the gate until the last token vs the
  sum of the direct listings of each readable prefix (same page size);
- upstream calls per gate page, counted from MLflow's own access log;
- exactness: the gate's listing equals the readable rows, in MLflow's order (computed from the rows inserted).

The readable sets are the same at every size (420 experiments and 40 models per prefix): the servers grow by other
teams' objects only, so flat figures mean a search costs what the caller can read, not what the server holds.

Not named test_*.py: pytest must not collect it. Results (machine-specific) go to tests/benchmarks/last-search.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_gate import Client
from benchlib import (
    ROOT,
    VENV_BIN,
    Proc,
    base_env,
    free_port,
    gate_argv,
    gate_cli,
    git_head,
    log,
    print_table,
    raise_on_sigterm,
    table_row,
    wait_http_ok,
)

N_TEAMS = 50
PER_PREFIX_EXPERIMENTS = 420
PER_PREFIX_MODELS = 40
T0 = 1_700_000_000_000
TARGETS = {"first_page_ratio_max": 1.5, "listing_ratio_max": 1.5}
CALLERS = {  # user -> teams it is a member of (the grant adds shared/ and its personal area for c3 and c10)
    "c1@corp.test": ["t00"],
    "c3@corp.test": ["t00"],
    "c10@corp.test": [f"t{t:02d}" for t in range(8)],
}
GRANTED = ("c3@corp.test", "c10@corp.test")
KINDS = {
    "experiments": {"path": "/api/2.0/mlflow/experiments/search", "method": "POST", "list": "experiments",
                    "sep": "/", "page_sizes": (100, 1000)},
    "registered_models": {"path": "/api/2.0/mlflow/registered-models/search", "method": "GET",
                          "list": "registered_models", "sep": "-", "page_sizes": (100,)},
}


# --------------------------------------------------------------------------------------------
# the policy and the data


def policy_yaml() -> str:
    lines = ["admins: [admin@corp.test]", "default: none", "teams:"]
    for t in range(N_TEAMS):
        name = f"t{t:02d}"
        members = [f"group:{name}"] + [u for u, teams in CALLERS.items() if name in teams]
        lines += [f"  {name}:", f"    members: [{', '.join(members)}]",
                  f'    experiments: ["{name}/"]', f'    models: ["{name}-"]']
    lines += ["grants:", f"  - to: [{', '.join(GRANTED)}]",
              '    experiments: ["shared/", "users/{user}/"]', '    models: ["shared-", "u-{user}-"]',
              "    permission: read"]
    return "\n".join(lines) + "\n"


def readable_prefixes(user: str, sep: str) -> list[str]:
    out = [f"{t}{sep}" for t in CALLERS[user]]
    if user in GRANTED:
        out += [f"shared{sep}", f"users/{user}/" if sep == "/" else f"u-{user}-"]
    return out


def all_readable_prefixes(sep: str) -> list[str]:
    return sorted({p for u in CALLERS for p in readable_prefixes(u, sep)})


def names(total: int, per_prefix: int, sep: str, seed: int) -> list[str]:
    """`total` names: `per_prefix` under every prefix some caller reads, the rest spread over the other teams;
    shuffled, so every prefix is spread over the whole creation order."""
    fixed = all_readable_prefixes(sep)
    out = [f"{p}e{j:06d}" for p in fixed for j in range(per_prefix)]
    others = [f"t{t:02d}{sep}" for t in range(N_TEAMS) if f"t{t:02d}{sep}" not in fixed]
    rest = total - len(out)
    out += [f"{others[i % len(others)]}e{i:06d}" for i in range(rest)]
    random.Random(seed).shuffle(out)
    return out


def create_schema(db: Path) -> float:
    """An empty MLflow store, created by MLflow's own store classes (migrations included)."""
    code = ("import sys\nfrom mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as T\n"
            "from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as R\n"
            "T(sys.argv[1], sys.argv[2]); R(sys.argv[1])\n")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}", str(db.parent / "art")], check=True,
                   env=base_env(), capture_output=True, timeout=300)
    return time.perf_counter() - t0


def fill(db: Path, n_experiments: int, n_models: int) -> dict[str, list[tuple]]:
    """Bulk inserts; returns the rows the exactness checks compare with."""
    exps = names(n_experiments, PER_PREFIX_EXPERIMENTS, "/", 1)
    models = names(n_models, PER_PREFIX_MODELS, "-", 2)
    exp_rows = [(i + 1, n, f"mlflow-artifacts:/{i + 1}", "active", T0 + i * 1000, T0 + i * 1000)
                for i, n in enumerate(exps)]
    model_rows = [(n, T0 + i * 1000, T0 + i * 1000, "") for i, n in enumerate(models)]
    with sqlite3.connect(db) as c:
        c.executemany("INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, "
                      "creation_time, last_update_time) VALUES (?, ?, ?, ?, ?, ?)", exp_rows)
        c.executemany("INSERT INTO experiment_tags (key, value, experiment_id) VALUES (?, ?, ?)",
                      [("mlflow-gate.artifact-store", r[1].split("/")[0], r[0]) for r in exp_rows])
        c.executemany("INSERT INTO registered_models (name, creation_time, last_updated_time, description) "
                      "VALUES (?, ?, ?, ?)", model_rows)
    return {"experiments": exp_rows, "registered_models": model_rows}


def expected(kind: str, rows: list[tuple], prefixes: list[str]) -> list[str]:
    """The readable names in MLflow's default order: experiments creation_time DESC, experiment_id ASC;
    registered models name ASC."""
    if kind == "experiments":
        mine = [r for r in rows if r[1].startswith(tuple(prefixes))]
        return [r[1] for r in sorted(mine, key=lambda r: (-r[4], r[0]))]
    return sorted(r[0] for r in rows if r[0].startswith(tuple(prefixes)))


# --------------------------------------------------------------------------------------------
# servers


@dataclass
class Servers:
    tmp: Path
    mlflow: Proc
    mlflow_port: int
    gate: Proc
    gate_port: int

    def stop(self) -> None:
        for p in (self.gate, self.mlflow):
            try:
                p.stop()
            except Exception:  # noqa: BLE001 - best effort on the way out
                traceback.print_exc()

    def upstream_lines(self) -> int:
        text = self.mlflow.logfile.read_text(errors="replace")
        return sum(1 for ln in text.splitlines() if "HTTP/1.1\" " in ln)


def start(tmp: Path, db: Path) -> Servers:
    mport, gport = free_port(), free_port()
    mlflow = Proc("mlflow", [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}",
                             "--artifacts-destination", str(tmp / "art"), "--host", "127.0.0.1",
                             "--port", str(mport), "--workers", "1"],
                  base_env(), tmp / f"mlflow-{db.stem}.log", tmp)
    wait_http_ok(mport, "/health", mlflow, 180)
    (tmp / "policy.yaml").write_text(policy_yaml())
    gate = Proc("gate", gate_argv() + ["serve", "--policy", str(tmp / "policy.yaml"), "--host", "127.0.0.1",
                                       "--port", str(gport), "--upstream", f"http://127.0.0.1:{mport}"],
                base_env() | {"MLFLOW_GATE_AUDIT_LOG": "off"}, tmp / f"gate-{db.stem}.log", ROOT)
    try:
        wait_http_ok(gport, "/_gate/health", gate, 60)
    except Exception:
        mlflow.stop()
        gate.stop()
        raise
    return Servers(tmp, mlflow, mport, gate, gport)


# --------------------------------------------------------------------------------------------
# measuring


def search(c: Client, kind: str, max_results: int, token: str | None = None, flt: str | None = None) -> dict:
    k = KINDS[kind]
    if k["method"] == "POST":
        body: dict = {"max_results": max_results}
        if token:
            body["page_token"] = token
        if flt:
            body["filter"] = flt
        return c.json("POST", k["path"], body)
    from urllib.parse import urlencode

    query = {"max_results": max_results} | ({"page_token": token} if token else {}) | ({"filter": flt} if flt else {})
    return c.json("GET", f"{k['path']}?{urlencode(query)}")


def listing(c: Client, kind: str, size: int, flt: str | None = None) -> tuple[list[str], int]:
    """Every page until the last token: the names, and the number of pages."""
    got: list[str] = []
    token, pages = None, 0
    while True:
        page = search(c, kind, size, token, flt)
        pages += 1
        got += [x["name"] for x in page.get(KINDS[kind]["list"], [])]
        token = page.get("next_page_token")
        if not token:
            return got, pages
        if pages > 10_000:
            raise RuntimeError("page tokens never end")


def like(prefix: str) -> str:
    return f"name LIKE '{prefix}%'"


def interleaved(fns: dict[str, Callable[[], object]], blocks: int, per_block: int) -> dict[str, list[float]]:
    """ms per call of each function, in alternating blocks (order flipped every block) so drift hits all."""
    for fn in fns.values():
        fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for b in range(blocks):
        for name in (order if b % 2 == 0 else order[::-1]):
            for _ in range(per_block):
                t0 = time.perf_counter()
                fns[name]()
                out[name].append((time.perf_counter() - t0) * 1000)
    return out


def counted(s: Servers, fn: Callable[[], object]) -> tuple[object, int]:
    time.sleep(0.1)
    before = s.upstream_lines()
    result = fn()
    time.sleep(0.4)  # uvicorn's access logger writes asynchronously
    return result, s.upstream_lines() - before


def bench_caller(s: Servers, kind: str, user: str, token: str, rows: list[tuple], cfg: dict) -> dict:
    k = KINDS[kind]
    prefixes = readable_prefixes(user, k["sep"])
    gate, direct = Client(s.gate_port, {"Authorization": f"Bearer {token}"}), Client(s.mlflow_port)
    out: dict = {"prefixes": len(prefixes)}
    want = expected(kind, rows, prefixes)
    page, calls = counted(s, lambda: search(gate, kind, 100))
    first = [x["name"] for x in page.get(k["list"], [])]  # type: ignore[union-attr]
    out["first_page"] = {"exact": first == want[:100], "upstream_calls": calls}
    lat = interleaved({"gate": lambda: search(gate, kind, 100),
                       "direct": lambda: search(direct, kind, 100, flt=like(prefixes[0]))},
                      cfg["blocks"], cfg["per_block"])
    out["first_page"] |= {t: round(statistics.median(v), 2) for t, v in lat.items()}
    out["first_page"]["ratio"] = round(out["first_page"]["gate"] / out["first_page"]["direct"], 3)
    out["listing"] = {}
    for size in k["page_sizes"]:
        (got, pages), calls = counted(s, lambda size=size: listing(gate, kind, size))
        gate_ms, direct_ms, gate_cpu = [], [], 0.0
        for r in range(cfg["listing_reps"]):
            for target in (("gate", "direct") if r % 2 == 0 else ("direct", "gate")):
                t0, c0 = time.perf_counter(), s.gate.cpu()
                if target == "gate":
                    listing(gate, kind, size)
                    gate_cpu += s.gate.cpu() - c0
                else:
                    for p in prefixes:
                        listing(direct, kind, size, like(p))
                (gate_ms if target == "gate" else direct_ms).append((time.perf_counter() - t0) * 1000)
        g, d = statistics.median(gate_ms), statistics.median(direct_ms)
        out["listing"][size] = {"exact": got == want, "items": len(got), "pages": pages, "upstream_calls": calls,
                                "calls_per_page": round(calls / pages, 2), "gate": round(g, 1), "direct": round(d, 1),
                                "ratio": round(g / d, 3),
                                "gate_cpu_ms_per_page": round(gate_cpu * 1000 / (pages * cfg["listing_reps"]), 2)}
    gate.close()
    direct.close()
    return out


def bench_size(tmp: Path, schema: Path, n: int, tokens: dict[str, str], cfg: dict) -> dict:
    db = tmp / f"mlflow-{n}.db"
    shutil.copy(schema, db)
    t0 = time.perf_counter()
    rows = fill(db, n, n // 11)
    res: dict = {"n_experiments": n, "n_models": n // 11, "fill_s": round(time.perf_counter() - t0, 1)}
    log(f"{n} experiments, {n // 11} registered models inserted in {res['fill_s']} s; starting servers")
    s = start(tmp, db)
    try:
        for kind in KINDS:
            res[kind] = {}
            for user in CALLERS:
                r = bench_caller(s, kind, user, tokens[user], rows[kind], cfg)
                res[kind][user] = r
                fp = r["first_page"]
                log(f"  {kind} {len(readable_prefixes(user, KINDS[kind]['sep']))} prefixes: first page "
                    f"{fp['gate']} vs {fp['direct']} ms ({fp['ratio']}x, {fp['upstream_calls']} calls, "
                    f"exact {fp['exact']})")
                for size, li in r["listing"].items():
                    log(f"    listing by {size}: {li['gate']} vs {li['direct']} ms ({li['ratio']}x), {li['pages']} "
                        f"pages, {li['calls_per_page']} calls/page, {li['items']} items, exact {li['exact']}, "
                        f"gate CPU {li['gate_cpu_ms_per_page']} ms/page")
    finally:
        s.stop()
    return res


# --------------------------------------------------------------------------------------------
# reporting


def table(res: dict) -> list[dict]:
    rows = []
    fr, lr = TARGETS["first_page_ratio_max"], TARGETS["listing_ratio_max"]
    for size in res["sizes"]:
        for kind in KINDS:
            for r in size[kind].values():
                tag = f"{size['n_experiments'] // 1000}k {kind[:5]} {r['prefixes']}p"
                fp = r["first_page"]
                rows.append(table_row(f"{tag} first page (ms)", fp["gate"], fp["direct"], fp["ratio"], f"<= {fr}",
                                      fp["ratio"] <= fr and fp["exact"]))
                rows.append(table_row(f"{tag} first page upstream calls", fp["upstream_calls"], "-", "-",
                                      f"<= {r['prefixes']}", fp["upstream_calls"] <= r["prefixes"]))
                for page_size, li in r["listing"].items():
                    rows.append(table_row(f"{tag} listing by {page_size} (ms)", li["gate"], li["direct"], li["ratio"],
                                          f"<= {lr}", li["ratio"] <= lr and li["exact"]))
                    rows.append(table_row(f"{tag} listing by {page_size} calls/page", li["calls_per_page"], "-", "-",
                                          f"<= {r['prefixes']}", li["calls_per_page"] <= r["prefixes"]))
    return rows


TABLE_COLS = [("metric", 44), ("gate", 9), ("direct", 9), ("value", 7), ("target", 8), ("verdict", 7)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="22k only, fewer repetitions")
    ap.add_argument("--sizes", default=None, help="comma-separated experiment counts (default 22000,100000)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, dbs)")
    ap.add_argument("--out", default=str(HERE / "last-search.json"))
    args = ap.parse_args()
    sizes = [int(x) for x in (args.sizes or ("22000" if args.quick else "22000,100000")).split(",")]
    cfg = {"blocks": 4 if args.quick else 6, "per_block": 3 if args.quick else 5, "listing_reps": 1 if args.quick else 3}
    res: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": cfg, "targets": TARGETS, "sizes": [],
                 "env": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "git_head": git_head(),
                         "proxy": os.environ.get("PYTHONPATH", "(installed)")}}
    raise_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="bench-search-"))
    rc = 0
    try:
        tokens = {u: gate_cli("token", "create", "--user", u, "--name", "bench") for u in CALLERS}
        schema = tmp / "schema.db"
        log(f"creating the MLflow schema in {tmp}")
        res["schema_s"] = round(create_schema(schema), 1)
        for n in sizes:
            res["sizes"].append(bench_size(tmp, schema, n, tokens, cfg))
    except KeyboardInterrupt:
        res["error"], rc = "interrupted", 130
    except Exception as exc:  # noqa: BLE001 - reported; the servers are stopped already
        traceback.print_exc()
        res["error"], rc = f"{type(exc).__name__}: {exc}", 1
    finally:
        res["env"]["loadavg_end"] = os.getloadavg()
        if args.keep or rc:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    if res["sizes"]:
        print_table(table(res), TABLE_COLS, ".1f")
    log(f"load average {res['env']['loadavg_start']} -> {res['env']['loadavg_end']}; JSON in {args.out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

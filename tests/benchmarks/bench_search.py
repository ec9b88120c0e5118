#!/usr/bin/env python
"""What a filtered search costs through mlflow-gate, against the same search of one prefix sent to MLflow directly.

Run from the checkout root:

    .venv/bin/python tests/benchmarks/bench_search.py            # 22k and 100k experiments, about 10-12 minutes
    .venv/bin/python tests/benchmarks/bench_search.py --quick    # 22k only, fewer repetitions, about 4 minutes
    .venv/bin/python tests/benchmarks/bench_search.py --quick --sizes 4840   # the smallest server: a check that it runs
    .venv/bin/python tests/benchmarks/bench_search.py --compare ../before   # + the gate of another checkout

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
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # benchlib, and tests.support from the checkout's root

from bench_gate import Client  # the keep-alive stdlib client of the other benchmark
from benchlib import Guard, Table, finish, keep_or_remove, log, new_record, raise_on_sigterm

from tests.support.gate import gate_process, mint_token, write_policy
from tests.support.mlflow_server import mlflow_process
from tests.support.process import Process, child_env

N_TEAMS = 50
PER_PREFIX_EXPERIMENTS = 420
PER_PREFIX_MODELS = 40
T0 = 1_700_000_000_000
MODELS_PER_EXPERIMENT = 11   # a server of n experiments holds n // 11 registered models
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
                   env=child_env(), capture_output=True, timeout=300)
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
    mlflow: Process
    gates: dict[str, Process]           # "gate" (this checkout's) and, with --compare, "compare"

    def stop(self) -> None:
        for p in (*self.gates.values(), self.mlflow):
            try:
                p.stop()
            except Exception:  # noqa: BLE001 - best effort on the way out
                traceback.print_exc()

    def upstream_lines(self) -> int:
        text = self.mlflow.log_path.read_text(errors="replace")
        return sum(1 for ln in text.splitlines() if "HTTP/1.1\" " in ln)

    def port(self, name: str) -> int:
        return int((self.mlflow if name == "direct" else self.gates[name]).url.rsplit(":", 1)[1])


def start(tmp: Path, db: Path, compare: Path | None) -> Servers:
    root = tmp / db.stem
    mlflow = mlflow_process(root, f"sqlite:///{db}", str(tmp / "art")).start()
    gates: dict[str, Process] = {}
    s = Servers(mlflow, gates)
    try:
        mlflow.wait_ready(180)
        upstream = mlflow.url
        gates["gate"] = gate_process(root / "gate", write_policy(root / "gate", policy_yaml()), upstream,
                                     env={"MLFLOW_GATE_AUDIT_LOG": "off"}).start()
        if compare is not None:
            gates["compare"] = gate_process(root / "compare", write_policy(root / "compare", policy_yaml()), upstream,
                                            env={"MLFLOW_GATE_AUDIT_LOG": "off", "PYTHONPATH": str(compare)},
                                            name="compare").start()
        for g in gates.values():
            g.wait_ready(60)
    except BaseException:
        s.stop()
        raise
    return s


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


def first_page(s: Servers, clients: dict[str, Client], kind: str, prefixes: list[str], want: list[str],
               cfg: dict) -> dict:
    """The gates' first page against the direct page of one prefix; each gate's upstream calls and exactness."""
    out: dict = {}
    for name in s.gates:
        page, calls = counted(s, lambda name=name: search(clients[name], kind, 100))
        got = [x["name"] for x in page.get(KINDS[kind]["list"], [])]  # type: ignore[union-attr]
        out[name] = {"exact": got == want[:100], "upstream_calls": calls}
    fns = {name: (lambda name=name: search(clients[name], kind, 100)) for name in s.gates}
    fns["direct"] = lambda: search(clients["direct"], kind, 100, flt=like(prefixes[0]))
    lat = {t: statistics.median(v) for t, v in interleaved(fns, cfg["blocks"], cfg["per_block"]).items()}
    out["direct"] = {"ms": round(lat["direct"], 2)}
    for name in s.gates:
        out[name] |= {"ms": round(lat[name], 2), "ratio": round(lat[name] / lat["direct"], 3)}
    return out


def full_listing(s: Servers, clients: dict[str, Client], kind: str, size: int, prefixes: list[str],
                 want: list[str], cfg: dict) -> dict:
    """Every page through each gate against the direct listings of each readable prefix (rounds alternate)."""
    out: dict = {}
    for name in s.gates:
        (got, pages), calls = counted(s, lambda name=name: listing(clients[name], kind, size))
        out[name] = {"exact": got == want, "items": len(got), "pages": pages, "upstream_calls": calls,
                     "calls_per_page": round(calls / pages, 2)}
    ms: dict[str, list[float]] = {t: [] for t in (*s.gates, "direct")}
    cpu = dict.fromkeys(s.gates, 0.0)
    reps = cfg["listing_reps"]
    for r in range(reps):
        for target in (list(ms) if r % 2 == 0 else list(ms)[::-1]):
            t0, c0 = time.perf_counter(), s.gates[target].cpu_seconds() if target in s.gates else 0.0
            if target == "direct":
                for p in prefixes:
                    listing(clients["direct"], kind, size, like(p))
            else:
                listing(clients[target], kind, size)
                cpu[target] += s.gates[target].cpu_seconds() - c0
            ms[target].append((time.perf_counter() - t0) * 1000)
    direct = statistics.median(ms["direct"])
    out["direct"] = {"ms": round(direct, 1)}
    for name in s.gates:
        med = statistics.median(ms[name])
        out[name] |= {"ms": round(med, 1), "ratio": round(med / direct, 3),
                      "cpu_ms_per_page": round(cpu[name] * 1000 / (out[name]["pages"] * reps), 2)}
    return out


def bench_caller(s: Servers, kind: str, user: str, token: str, rows: list[tuple], cfg: dict) -> dict:
    prefixes = readable_prefixes(user, KINDS[kind]["sep"])
    auth = {"Authorization": f"Bearer {token}"}
    clients = {name: Client(s.port(name), auth) for name in s.gates} | {"direct": Client(s.port("direct"))}
    want = expected(kind, rows, prefixes)
    try:
        return {"prefixes": len(prefixes), "first_page": first_page(s, clients, kind, prefixes, want, cfg),
                "listing": {size: full_listing(s, clients, kind, size, prefixes, want, cfg)
                            for size in KINDS[kind]["page_sizes"]}}
    finally:
        for c in clients.values():
            c.close()


def bench_size(tmp: Path, schema: Path, n: int, tokens: dict[str, str], cfg: dict, compare: Path | None) -> dict:
    db = tmp / f"mlflow-{n}.db"
    shutil.copy(schema, db)
    t0 = time.perf_counter()
    rows = fill(db, n, n // MODELS_PER_EXPERIMENT)
    res: dict = {"n_experiments": n, "n_models": n // MODELS_PER_EXPERIMENT, "fill_s": round(time.perf_counter() - t0, 1)}
    log(f"{n} experiments, {n // MODELS_PER_EXPERIMENT} registered models inserted in {res['fill_s']} s; starting servers")
    s = start(tmp, db, compare)
    try:
        for kind in KINDS:
            res[kind] = {}
            for user in CALLERS:
                r = res[kind][user] = bench_caller(s, kind, user, tokens[user], rows[kind], cfg)
                for name in s.gates:
                    fp = r["first_page"][name]
                    log(f"  {name}: {kind}, {r['prefixes']} prefixes: first page {fp['ms']} vs "
                        f"{r['first_page']['direct']['ms']} ms ({fp['ratio']}x, {fp['upstream_calls']} calls, "
                        f"exact {fp['exact']})")
                    for size, li in r["listing"].items():
                        g = li[name]
                        log(f"    listing by {size}: {g['ms']} vs {li['direct']['ms']} ms ({g['ratio']}x), "
                            f"{g['pages']} pages, {g['calls_per_page']} calls/page, {g['items']} items, "
                            f"exact {g['exact']}, gate CPU {g['cpu_ms_per_page']} ms/page")
    finally:
        s.stop()
    return res


# --------------------------------------------------------------------------------------------
# reporting


def table(res: dict) -> list[dict]:
    rows = Table()
    fr, lr = TARGETS["first_page_ratio_max"], TARGETS["listing_ratio_max"]
    for size in res["sizes"]:
        for kind in KINDS:
            for r in size[kind].values():
                for name in (n for n in r["first_page"] if n != "direct"):
                    tag = f"{name[:4]} {size['n_experiments'] // 1000}k {kind[:5]} {r['prefixes']}p"
                    fp, k = r["first_page"][name], r["prefixes"]
                    rows.add(f"{tag} first page (ms)", fp["ms"], r["first_page"]["direct"]["ms"], fp["ratio"],
                             f"<= {fr}", fp["ratio"] <= fr and fp["exact"])
                    rows.add(f"{tag} first page calls", fp["upstream_calls"], "-", "-", f"<= {k}",
                             fp["upstream_calls"] <= k)
                    for page_size, li in r["listing"].items():
                        g = li[name]
                        rows.add(f"{tag} listing by {page_size} (ms)", g["ms"], li["direct"]["ms"], g["ratio"],
                                 f"<= {lr}", g["ratio"] <= lr and g["exact"])
                        rows.add(f"{tag} listing by {page_size} calls/page", g["calls_per_page"], "-", "-",
                                 f"<= {k}", g["calls_per_page"] <= k)
    return rows


TABLE_COLS = [("metric", 46), ("gate", 9), ("direct", 9), ("value", 7), ("target", 8), ("verdict", 7)]


def min_size() -> int:
    """The smallest server: the rows some caller reads, the same at every size (4840 experiments)."""
    return len(all_readable_prefixes("/")) * max(PER_PREFIX_EXPERIMENTS, PER_PREFIX_MODELS * MODELS_PER_EXPERIMENT)


def main() -> int:
    smallest = min_size()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="22k only, fewer repetitions")
    ap.add_argument("--sizes", default=None, help="comma-separated experiment counts (default 22000,100000; "
                    f"at least {smallest}: `--quick --sizes {smallest}` is the smallest run, a few minutes)")
    ap.add_argument("--compare", metavar="CHECKOUT", type=Path, default=None,
                    help="also measure the gate of another checkout (before/after in one run, same servers)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, dbs)")
    ap.add_argument("--out", default=str(HERE / "last-search.json"))
    args = ap.parse_args()
    try:
        sizes = [int(x) for x in (args.sizes or ("22000" if args.quick else "22000,100000")).split(",")]
    except ValueError:
        ap.error(f"--sizes takes comma-separated integers, got {args.sizes!r}")
    if min(sizes) < smallest:
        ap.error(f"--sizes: at least {smallest} experiments (the readable rows every size holds), got {min(sizes)}")
    cfg = {"sizes": sizes, "blocks": 4 if args.quick else 6, "per_block": 3 if args.quick else 5,
           "listing_reps": 1 if args.quick or args.compare else 3}
    started = time.time()
    res = new_record("quick" if args.quick else "full", cfg, TARGETS, ("mlflow",))
    res["sizes"] = []
    raise_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="bench-search-"))
    guard = Guard(res)
    try:
        tokens = {u: mint_token(u, name="bench") for u in CALLERS}
        schema = tmp / "schema.db"
        log(f"creating the MLflow schema in {tmp}")
        res["schema_s"] = round(create_schema(schema), 1)
        for n in sizes:
            res["sizes"].append(bench_size(tmp, schema, n, tokens, cfg, args.compare.resolve() if args.compare else None))
    except BaseException as exc:
        if not guard.absorb(exc):
            raise
    finally:
        keep_or_remove(tmp, bool(args.keep or guard.rc))
    finish(res, started, table, TABLE_COLS, ".1f", args.out)
    return guard.rc


if __name__ == "__main__":
    sys.exit(main())

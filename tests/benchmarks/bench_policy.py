#!/usr/bin/env python
"""Policy review timings on a 1,000-team policy: load, `policy diff`, `policy who-can`, decisions.

Run from the checkout root:

    .venv/bin/python tests/benchmarks/bench_policy.py

The old policy is bench_gate's decision policy (1,000 teams, 3 subjects each, 10 grants); the new
one is a realistic pull request on it: a new team, members added to 10 teams, 5 denies, a grant to
a team, one more admin. Measures in-process (best of 3) and the `mlflow-gate policy diff` command
end to end (process start included, median of 3), and the decision time per case with and without
denies in the policy. Writes tests/benchmarks/last-policy.json.

This file is deliberately not named test_*.py: pytest must not collect it.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from bench_gate import decision_policy_yaml
from benchlib import ROOT, gate_argv

from proxy.decide import decide
from proxy.identity import Identity
from proxy.policy import Level, load_policy_text
from proxy.review import diff, who_can


def pull_request(old: str) -> str:
    new = old.replace("admins: [group:mlflow-admins, root@corp.test]",
                      "admins: [group:mlflow-admins, root@corp.test, ops@corp.test]")
    for t in range(100, 110):
        new = new.replace(f"    members: [u{t:04d}@corp.test, group:g{t:04d}]",
                          f"    members: [u{t:04d}@corp.test, group:g{t:04d}, new{t}@corp.test]")
    new = new.replace("grants:\n", textwrap.dedent("""\
          t1000:
            members: [group:g1000]
            maintainers: [m1000@corp.test]
            experiments: ["t1000/"]
            models: ["t1000-"]
        grants:
          - to: [team:t0100]
            experiments: ["t0200/"]
            permission: read
        """))
    new += "denies:\n" + "".join(f'  - {{to: [group:g{t:04d}], experiments: ["t{t:04d}/secret/"], keep: read}}\n'
                                 for t in range(300, 305))
    return new


def best(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def decisions(policy_text: str) -> dict[str, float]:
    policy = load_policy_text(policy_text, "<bench>")
    ident = Identity("u0500@corp.test", frozenset({"g1"}))
    cases = {"own team": ("t0500/exp-1", Level.EDIT), "other team": ("t0501/exp-1", Level.READ),
             "unowned": ("zzz/exp-1", Level.READ), "grant": ("t0001/public/x", Level.READ)}
    out = {}
    for label, (name, level) in cases.items():
        runs = timeit.repeat(lambda n=name, lv=level: decide(policy, ident, "experiment", n, lv), number=50_000, repeat=3)
        out[label] = round(min(runs) / 50_000 * 1e6, 3)
    return out


def main() -> int:
    old_text = decision_policy_yaml(1000)
    new_text = pull_request(old_text)
    out: dict = {"teams": 1000}
    out["load_s"] = round(best(lambda: load_policy_text(new_text, "new")), 3)
    old, new = load_policy_text(old_text, "old"), load_policy_text(new_text, "new")
    result = diff(old, new)
    out["diff_changes"] = len(result.changes)
    out["diff_other"] = len(result.other)
    out["diff_s"] = round(best(lambda: diff(old, new)), 3)
    out["who_can_s"] = round(best(lambda: who_can(new, "experiment", "t0300/secret/x")), 3)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "old.yaml").write_text(old_text)
        (Path(tmp) / "new.yaml").write_text(new_text)
        walls = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = subprocess.run([*gate_argv(), "policy", "diff", f"{tmp}/old.yaml", f"{tmp}/new.yaml"],
                               capture_output=True, text=True, cwd=ROOT, check=False)
            walls.append(time.perf_counter() - t0)
            assert r.returncode == 3, r.stderr
        out["cli_diff_s_median"] = round(statistics.median(walls), 3)
    out["decision_us"] = decisions(old_text)
    out["decision_us_with_denies"] = decisions(new_text)
    for key, value in out.items():
        print(f"{key:28} {json.dumps(value)}")
    (HERE / "last-policy.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the compatibility suite for every MLflow series (CI runs the oldest and the newest only).

    python tests/compat/run_all.py                       # all four, then the table of steps passed
    python tests/compat/run_all.py --versions 3.1,3.10   # some of them
    python tests/compat/run_all.py --gate-source DIR     # the gate from another checkout (before/after figures)
    python tests/compat/run_all.py --write-route-lists   # regenerate proxy/upstream_routes/ from the venvs

Extra arguments go to pytest (`-x`, `-k trace`...). Run it with this repository's venv python.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from compat_versions import VERSIONS, venv_python
from mlflow_routes import without_ajax_twins


def write_route_lists() -> None:
    out = REPO / "proxy" / "upstream_routes"
    for series in VERSIONS:
        r = subprocess.run([str(venv_python(series)), str(HERE / "mlflow_routes.py")], capture_output=True,
                           text=True, timeout=300, check=True, stdin=subprocess.DEVNULL)
        data = json.loads(r.stdout)
        routes = sorted(without_ajax_twins({(m, p) for m, p in data["routes"]}), key=lambda mp: (mp[1], mp[0]))
        (out / f"{data['mlflow']}.txt").write_text("".join(f"{m} {p}\n" for m, p in routes))
        print(f"{data['mlflow']}: {len(routes)} routes -> {out / (data['mlflow'] + '.txt')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", default="all", help=f"comma list of {', '.join(VERSIONS)}, or all")
    parser.add_argument("--gate-source", type=Path, help="a checkout whose `proxy` package the gate runs from")
    parser.add_argument("--write-route-lists", action="store_true")
    args, rest = parser.parse_known_args()
    if args.write_route_lists:
        write_route_lists()
        return 0
    env = dict(os.environ)
    if args.gate_source:
        env["MLFLOW_GATE_COMPAT_GATE_SOURCE"] = str(args.gate_source.resolve())
    cmd = [sys.executable, "-m", "pytest", "-q", str(HERE), f"--compat-versions={args.versions}", *rest]
    return subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())

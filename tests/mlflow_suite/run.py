"""MLflow's own REST integration tests, direct and through the gate, and the differences between them.

    python tests/mlflow_suite/run.py --mlflow-tests DIR [--modes direct,admin,member] [--keep]

DIR holds `test_rest_tracking.py` and `test_model_registry.py` of MLflow's repository (tests/tracking/;
they are MLflow's code, not this repository's: fetch them for the MLflow version you test). Each mode
runs them in a fresh pytest process against one URL (shim/conftest.py):

  direct  MLflow's app, in the test process, as MLflow's own fixtures run it
  admin   a `mlflow-gate serve` in front of that app, as an admin
  member  the same gate, as a non-admin the policy gives `default: edit`

Every test gets a fresh SQLite store, as in MLflow's CI; the file-store variants are left out. The run
prints each test whose outcome differs from direct, and exits 1 when one is not in `expected.py`
(the documented design choices) or an expected one no longer differs. Not part of the default test run
(it takes about half an hour): tests/mlflow_suite is outside `testpaths`, and its conftest is
shim/suite_conftest.py, installed as conftest.py only in the tree it builds, so `pytest tests` does not load it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO), str(HERE)]

from expected import explain

from tests.support.gate import Gate, gate_process, mint_token, write_policy
from tests.support.process import free_port

SUITE_FILES = ("test_rest_tracking.py", "test_model_registry.py")
ADMIN, MEMBER = "root@suite.test", "carol@suite.test"
POLICY = f"admins: [{ADMIN}]\ndefault: edit\n"
SHIM = {"suite_conftest.py": "tests/conftest.py", "helper_functions.py": "tests/helper_functions.py",
        "integration_utils.py": "tests/integration/utils.py",
        "integration_test_utils.py": "tests/tracking/integration_test_utils.py"}


def build_tree(root: Path, mlflow_tests: Path) -> Path:
    """A `tests` package laid out as MLflow's: the shims and the two suite files."""
    for package in ("tests", "tests/integration", "tests/tracking"):
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").touch()
    for source, target in SHIM.items():
        shutil.copy(HERE / "shim" / source, root / target)
    for name in SUITE_FILES:
        shutil.copy(mlflow_tests / name, root / "tests/tracking" / name)
    (root / "pytest.ini").write_text("[pytest]\nfilterwarnings =\n    ignore::DeprecationWarning\n")
    return root


def run_mode(mode: str, tree: Path, url: str, port: int, token: str | None, select: str | None) -> dict:
    """One pytest run of the suite; {test id: (outcome, message)}."""
    out = tree / "outcomes.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               MLFLOW_SUITE_URL=url, MLFLOW_SUITE_UPSTREAM_PORT=str(port), MLFLOW_SUITE_OUT=str(out))
    if token:
        env["MLFLOW_SUITE_TOKEN"] = token
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(tree / "pytest.ini"),
           "--rootdir", str(tree), "tests/tracking", *(["-k", select] if select else [])]
    start = time.monotonic()
    with open(tree / "pytest.log", "w") as log:
        subprocess.run(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    print(f"{mode}: {time.monotonic() - start:.0f} s", flush=True)
    results: dict[str, tuple[str, str]] = {}
    for line in out.read_text().splitlines() if out.exists() else []:
        record = json.loads(line)
        if record["test"] not in results or record["outcome"] != "passed":
            results[record["test"]] = (record["outcome"], record["message"])
    return results


def start_gate(root: Path, upstream: str) -> Gate:
    """The gate in front of the port the suite's in-process server will listen on (it is down until then:
    the gate's health says so, 503)."""
    policy = write_policy(root, POLICY)
    gate = Gate(policy, upstream, "mlflow-suite", gate_process(root, policy, upstream).start())
    gate.wait_ready(60, statuses=(200, 503))
    return gate


def compare(outcomes: dict[str, dict]) -> int:
    """Print the differences from direct, each with its expected reason; the number of surprises."""
    direct, surprises = outcomes["direct"], 0
    print(f"direct: {sum(o == 'passed' for o, _ in direct.values())}/{len(direct)} passed")
    for mode, results in outcomes.items():
        if mode == "direct":
            continue
        same = sum(results.get(t, ("missing", ""))[0] == o for t, (o, _) in direct.items())
        print(f"\n{mode}: {same}/{len(direct)} tests end as they do direct")
        for test, (outcome, _) in sorted(direct.items()):
            got, message = results.get(test, ("missing", "not run"))
            reason = explain(mode, test)
            if got == outcome:
                if reason:
                    print(f"  FIXED? {test}: expected to differ ({reason}), but {got} as direct")
                    surprises += 1
                continue
            surprises += reason is None
            print(f"  {'expected' if reason else 'UNEXPECTED'} {test}: direct {outcome}, {got} "
                  f"[{reason or message[:300]}]")
    return surprises


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlflow-tests", type=Path, required=True)
    parser.add_argument("--modes", default="direct,admin,member")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, outcomes)")
    parser.add_argument("-k", dest="select", help="only the tests pytest -k selects")
    args = parser.parse_args()
    modes = args.modes.split(",")
    work = Path(tempfile.mkdtemp(prefix="mlflow-suite-"))
    gates: list[Gate] = []
    try:
        runs = {}
        for mode in modes:      # each mode its own tree, upstream port and (for gated modes) gate: they run at once
            tree, port = build_tree(work / mode, args.mlflow_tests), free_port()
            url, token = f"http://127.0.0.1:{port}", None
            if mode != "direct":
                gates.append(start_gate(work / f"gate-{mode}", url))
                url, token = gates[-1].url, mint_token(ADMIN if mode == "admin" else MEMBER)
            runs[mode] = (tree, url, port, token)
        with ThreadPoolExecutor(len(runs)) as pool:
            futures = {mode: pool.submit(run_mode, mode, *run, args.select) for mode, run in runs.items()}
            outcomes = {mode: future.result() for mode, future in futures.items()}
    finally:
        for gate in gates:
            gate.stop()
    surprises = compare(outcomes) if "direct" in outcomes else 0
    print(f"\nwork directory: {work}" + ("" if args.keep else " (removed; --keep keeps it)"))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if surprises else 0


if __name__ == "__main__":
    sys.exit(main())

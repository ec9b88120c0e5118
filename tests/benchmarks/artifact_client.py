"""The real MLflow client's part of bench_artifacts.py: `MlflowClient().log_artifact` of the big file (multipart:
MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true, 5 MiB minimum) and `download_artifacts` back (sha256 checked), in a
subprocess, with the gate's and moto's CPU around it and the gate's RSS during it.

Two runs in one benchmark: team `a` (proxied: the parts go through the gate's signed part URLs) and team `d`
(`storage.direct`: parts PUT and ranges GET straight to the bucket with presigned URLs,
MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=true as well).

Not named test_*.py or bench_*.py: neither pytest nor a reader should take it for a benchmark of its own.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.support.process import Process, child_env, group_cpu_seconds

MiB = 1024 * 1024

CLIENT_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys, time
    from mlflow import MlflowClient
    run_id, big, dst, sha = sys.argv[1:5]
    name = os.path.basename(big)
    c = MlflowClient()
    out = {}
    out["up_t0"] = time.time()
    c.log_artifact(run_id, big, artifact_path="client")
    out["up_t1"] = time.time()
    # where did it land? mlflow's protocol puts it at <artifact_path>/<basename of the body's "path">
    listed = [(f.path, f.is_dir, f.file_size) for f in c.list_artifacts(run_id, "client")]
    top = [(f.path, f.is_dir, f.file_size) for f in c.list_artifacts(run_id)]
    out["listed_client_dir"], out["listed_root"] = listed, top
    remote = "client/" + name
    if not any(p == remote for p, d, _ in listed):
        out["misplaced"] = True
        remote = next((p for p, d, size in top if p == "client" and not d), remote)
    out["remote"] = remote
    out["down_t0"] = time.time()
    local = c.download_artifacts(run_id, remote, dst)
    out["down_t1"] = time.time()
    h = hashlib.sha256()
    with open(local, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    out["sha_ok"] = h.hexdigest() == sha
    out["size"] = os.path.getsize(local)
    os.unlink(local)
    print("RESULT " + json.dumps(out), flush=True)
""")


def count_mpu(gate_log: Path, before: str) -> dict[str, int]:
    """mpu/create and mpu/complete requests in the gate's audit lines written since `before`."""
    text = gate_log.read_text(errors="replace")[len(before):]
    return {"mpu_create": text.count("mlflow-artifacts/mpu/create/"),
            "mpu_complete": text.count("mlflow-artifacts/mpu/complete/")}


def run_client(s: Any, sampler: Any, label: str, run_id: str, big: Path, sha: str, token: str, timeout: float,
               env_extra: dict[str, str]) -> dict[str, Any]:
    """The client script (process "client" in s.procs while it runs, log LABEL.log) against run RUN_ID; what it
    measured."""
    tmp: Path = s.tmp
    name = "client"
    script = tmp / "client.py"
    script.write_text(CLIENT_SCRIPT)
    (dst := tmp / f"{label}-dl").mkdir()
    env = child_env()
    # multipart for any size here (mlflow's default minimum is 500 MB, above the --quick file)
    env.update(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{s.ports['gate']}", MLFLOW_TRACKING_TOKEN=token,
               MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD="true", MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE=str(5 * MiB),
               **env_extra)
    gate_log_before = (tmp / "gate.log").read_text(errors="replace")
    cpu0 = {n: group_cpu_seconds(s.procs[n].pid) for n in ("gate", "moto")}
    started = time.time()
    client = s.procs[name] = Process(name, [sys.executable, str(script), run_id, str(big), str(dst), sha], env, tmp,
                                     tmp / f"{label}.log")
    client.start()
    try:
        client.proc.wait(timeout=max(60.0, timeout))
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    finally:
        cpu = {n: round(group_cpu_seconds(s.procs[n].pid) - cpu0[n], 2) for n in ("gate", "moto")}
        wall = time.time() - started
        client.stop()
        del s.procs[name]
    out = [line for line in (tmp / f"{label}.log").read_text(errors="replace").splitlines()
           if line.startswith("RESULT ")]
    if not out:
        return {"error": client.tail(15)}
    c = json.loads(out[-1][len("RESULT "):])
    size = big.stat().st_size
    up, down = c["up_t1"] - c["up_t0"], c["down_t1"] - c["down_t0"]
    return {
        "up_s": round(up, 2), "up_mb_s": round(size / up / 1e6, 1), "down_s": round(down, 2),
        "down_mb_s": round(size / down / 1e6, 1), "sha_ok": c["sha_ok"], "size": c["size"],
        "gate_cpu_s": cpu["gate"], "moto_cpu_s": cpu["moto"], "wall_s": round(wall, 2),
        "gate_cpu_s_per_gib": round(cpu["gate"] / (size / (1024 * MiB)), 3),
        "gate_rss_peak_up_mib": sampler.peak_mib("gate", c["up_t0"], c["up_t1"]),
        "gate_rss_peak_down_mib": sampler.peak_mib("gate", c["down_t0"], c["down_t1"]),
        "env": {k: v for k, v in env.items() if k.startswith("MLFLOW_") and "TOKEN" not in k},
        "multipart_used": count_mpu(tmp / "gate.log", gate_log_before),
        "landed_at": c["remote"], "expected_at": "client/big.bin", "at_expected_path": not c.get("misplaced", False),
        "listed_client_dir": c["listed_client_dir"], "listed_root": c["listed_root"],
        "t": (c["up_t0"], c["up_t1"], c["down_t0"], c["down_t1"]),
    }


def client_rows(add: Any, label: str, c: dict[str, Any], cpu_max: float | None = None) -> None:
    """The summary table's rows of one client run."""
    used = c.get("multipart_used", {})
    add(f"mlflow client {label}: log_artifact (MB/s)", c["up_mb_s"], "-", c["up_s"], "(report: s)", None)
    add(f"mlflow client {label}: multipart (create/complete)", "-", "-",
        f"{used.get('mpu_create')}/{used.get('mpu_complete')}", "1/1",
        used.get("mpu_create") == 1 and used.get("mpu_complete") == 1)
    add(f"mlflow client {label}: download_artifacts (MB/s)", c["down_mb_s"], "-", c["down_s"], "(report: s)", None)
    add(f"mlflow client {label}: sha256 equal", "-", "-", c["sha_ok"], "True", c["sha_ok"])
    add(f"mlflow client {label}: object at client/big.bin", "-", "-", c["at_expected_path"], "True",
        c["at_expected_path"])
    add(f"mlflow client {label}: gate CPU s/GiB (up+down), raw", "-", "-", c["gate_cpu_s_per_gib"], "(report)", None)
    above = c.get("gate_cpu_above_idle_s_per_gib")
    if cpu_max is not None and above is not None:
        add(f"mlflow client {label}: gate CPU s/GiB, above idle", "-", "-", above, f"<= {cpu_max}", above <= cpu_max)


def above_idle(c: dict[str, Any], idle_per_s: float, size: int) -> None:
    """The gate's CPU during the client run less what it spends idle over that time (`idle_per_s`, measured while
    boto3 alone moved bytes), per GiB."""
    c["gate_cpu_above_idle_s_per_gib"] = round(max(0.0, c["gate_cpu_s"] - idle_per_s * c["wall_s"])
                                               / (size / (1024 * MiB)), 3)


def wait_budget(started: float, budget: float) -> float:
    """How long a client run may take: what is left of the budget, plus a minute."""
    return max(60.0, budget + 60 - (time.time() - started))

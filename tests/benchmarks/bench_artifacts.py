#!/usr/bin/env python
"""Benchmark of large artifact transfers through mlflow-gate against the same S3 store reached directly.

Run from the checkout root:

    .venv/bin/python tests/benchmarks/bench_artifacts.py            # 1 GiB file, 2 rounds, < 8 minutes
    .venv/bin/python tests/benchmarks/bench_artifacts.py --quick    # 256 MiB file, < 3 minutes

One run starts, all on 127.0.0.1 and each in its own process group:
  - `moto_server` (the S3 store; bucket `team-a`; credentials not enforced),
  - a real `mlflow server --workers 1` (SQLite) whose `--artifacts-destination` is the gate's internal
    artifact endpoint (it sends `mlflow-gate internal-token` as MLFLOW_TRACKING_TOKEN),
  - `mlflow-gate serve --upstream <mlflow>` with a policy giving team `a` (alice@corp.test, experiments
    `a/`) the artifact root `s3://team-a/mlflow` on the moto server, with its own credentials (TEAMA_*).

It creates experiment `a/bench` and a run through the gate, writes one random file of --size-mib MiB,
and then, interleaved (gate-up, direct-up, gate-down, direct-down) for --rounds rounds, measures:
  - gate upload:   one streaming `PUT /api/2.0/mlflow-artifacts/artifacts/<exp>/<run>/artifacts/big.bin`
                   (httpx, 1 MiB chunks read from the file, Content-Length set, Bearer token);
  - gate download: `GET` of the same URL, streamed and hashed (sha256 must equal the file's);
  - direct upload / download with boto3 to moto, key `direct/big.bin`: by default `put_object` with
    the open file as Body (one streaming PUT) and `get_object` streamed in 1 MiB chunks and hashed
    (--direct transfer: `upload_file` / `download_file` with the default TransferConfig instead).
The gate's RSS (its process group) is sampled from /proc every 50 ms throughout; CPU seconds of the
gate, moto and this client are read around every transfer. Optionally (on by default) the real MLflow
client path: `MlflowClient().log_artifact` with MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true (multipart
through the gate's signed part URLs) and `download_artifacts` back, in a subprocess.

Prints a table with the targets (throughput gate/direct >= 0.7 up and down, gate RSS growth < 100 MiB)
and writes JSON to tests/benchmarks/last-artifacts.json (git-ignored).

This file is deliberately not named test_*.py: pytest must not collect it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # benchlib, and tests.support from the checkout's root

from benchlib import (  # the benchmarks' own helpers
    Guard,
    Table,
    finish,
    log,
    new_record,
    raise_on_sigterm,
    start_py_spy,
    stop_py_spy,
)

from tests.support.gate import gate_process, internal_token, mint_token, write_policy
from tests.support.mlflow_server import mlflow_process
from tests.support.moto import start_moto
from tests.support.process import Process, child_env, free_port, group_cpu_seconds, group_pids, rss_kib

MiB = 1024 * 1024
CHUNK = MiB
GATE_PART = 8 * MiB          # proxy.artifacts.PART: the part size of the gate's own S3 uploads
BUCKET = "team-a"
DIRECT_KEY = "direct/big.bin"
USER = "alice@corp.test"
TARGETS = {"throughput_ratio_min": 0.7, "gate_rss_growth_mib_max": 100.0}


# --------------------------------------------------------------------------------------------
# /proc: RSS of a process group, sampled in a thread


class RssSampler(threading.Thread):
    """VmRSS summed over each watched process group, every `interval` seconds (wall-clock stamps)."""

    def __init__(self, groups: dict[str, int], interval: float = 0.05) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.groups = groups
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.members: dict[str, list[int]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            if n % 20 == 0:          # group membership: refreshed once a second
                self.members = {name: group_pids(pgid) for name, pgid in self.groups.items()}
            now = time.time()
            self.samples.append((now, {name: sum(rss_kib(p) for p in pids)
                                       for name, pids in self.members.items()}))
            n += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)

    def window(self, name: str, t0: float, t1: float) -> list[int]:
        return [s[name] for t, s in self.samples if t0 <= t <= t1 + self.interval and name in s]

    def peak_mib(self, name: str, t0: float, t1: float) -> float | None:
        w = self.window(name, t0, t1)
        return round(max(w) / 1024, 1) if w else None

    def median_mib(self, name: str, t0: float, t1: float) -> float | None:
        w = self.window(name, t0, t1)
        return round(statistics.median(w) / 1024, 1) if w else None

    def now_mib(self, name: str) -> float | None:
        for _, s in reversed(self.samples):
            if name in s:
                return round(s[name] / 1024, 1)
        return None


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------------------------
# servers


def policy_yaml(moto_port: int) -> str:
    return textwrap.dedent(f"""\
        admins: [admin@corp.test]
        default: none
        teams:
          a:
            members: [{USER}]
            experiments: ["a/"]
            artifact_root: s3://{BUCKET}/mlflow
            storage: {{endpoint_url: "http://127.0.0.1:{moto_port}", region: us-east-1, credentials_env: TEAMA}}
        """)


class Servers:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, Process] = {}
        self.ports: dict[str, int] = {}

    def start_all(self) -> None:
        """moto (no IAM: any key works), then the mlflow server and the gate; moto is ready, the others are started."""
        moto = start_moto(self.tmp / "moto", timeout=60)
        self.procs["moto"] = moto.process
        self.ports = {"moto": int(moto.url.rsplit(":", 1)[1]), "mlflow": free_port(), "gate": free_port()}
        internal = (f"http://127.0.0.1:{self.ports['gate']}/_gate/internal/api/2.0/mlflow-artifacts/artifacts")
        self.procs["mlflow"] = mlflow_process(self.tmp, f"sqlite:///{self.tmp}/mlflow.db", internal,
                                              port=self.ports["mlflow"],
                                              env={"MLFLOW_TRACKING_TOKEN": internal_token()}).start()
        policy = write_policy(self.tmp, policy_yaml(self.ports["moto"]))
        (self.tmp / "default").mkdir()
        self.procs["gate"] = gate_process(
            self.tmp, policy, f"http://127.0.0.1:{self.ports['mlflow']}", port=self.ports["gate"],
            args=["--artifacts-destination", f"file://{self.tmp}/default"],
            env={"TEAMA_AWS_ACCESS_KEY_ID": "x", "TEAMA_AWS_SECRET_ACCESS_KEY": "y"}).start()

    def stop(self) -> None:
        """SIGTERM to every group at once, then wait for each (SIGKILL after 8 s). A second Ctrl-C or
        SIGTERM during this does not cut it short: leftover servers would outlive the run."""
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            order = [self.procs[n] for n in ("client", "gate", "mlflow", "moto") if n in self.procs]
            for p in order:
                if p.alive:
                    try:
                        os.killpg(p.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            for p in order:
                try:
                    p.stop()
                except Exception:  # noqa: BLE001 - best effort on the way out
                    traceback.print_exc()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------
# the file


def make_file(path: Path, size_mib: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size_mib):
            chunk = os.urandom(MiB)
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


def file_chunks(path: Path):
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def sha256_of(chunks) -> tuple[str, int]:
    """The sha256 (hex) and the length of the bytes CHUNKS yields."""
    h = hashlib.sha256()
    n = 0
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


# --------------------------------------------------------------------------------------------
# transfers: each returns the seconds it took (and raises on any mismatch)


class Transfers:
    def __init__(self, s: Servers, token: str, exp_id: str, run_id: str, big: Path, sha: str,
                 direct_method: str) -> None:
        import boto3
        import httpx
        import requests
        from botocore.config import Config

        self.big, self.sha, self.size = big, sha, big.stat().st_size
        self.direct_method = direct_method
        self.path = f"{exp_id}/{run_id}/artifacts/big.bin"
        self.url = f"http://127.0.0.1:{s.ports['gate']}/api/2.0/mlflow-artifacts/artifacts/{self.path}"
        self.gate_key = f"mlflow/{self.path}"
        self.http = httpx.Client(headers={"Authorization": f"Bearer {token}"},
                                 timeout=httpx.Timeout(180.0, connect=10.0))
        # downloads use requests: urllib3 reading 1 MiB at a time, the same read path as botocore's
        # get_object body, so the client's own cost is the same for both targets
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s.ports['moto']}", region_name="us-east-1",
                               aws_access_key_id="x", aws_secret_access_key="y",
                               config=Config(retries={"max_attempts": 1}, read_timeout=180, connect_timeout=10))
        self.dl = s.tmp / "download.bin"

    def close(self) -> None:
        self.http.close()
        self.session.close()

    def gate_up(self) -> float:
        t0 = time.perf_counter()
        r = self.http.put(self.url, content=file_chunks(self.big),
                          headers={"Content-Length": str(self.size), "Content-Type": "application/octet-stream"})
        took = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"gate upload -> {r.status_code}: {r.text[:300]}")
        return took

    def gate_down(self) -> float:
        t0 = time.perf_counter()
        with self.session.get(self.url, stream=True, timeout=(10, 180)) as r:
            if r.status_code != 200:
                raise RuntimeError(f"gate download -> {r.status_code}: {r.content[:300]!r}")
            digest, n = sha256_of(r.iter_content(CHUNK))
        took = time.perf_counter() - t0
        self._check(digest, n, "gate download")
        return took

    def direct_up(self) -> float:
        t0 = time.perf_counter()
        if self.direct_method == "transfer":
            self.s3.upload_file(str(self.big), BUCKET, DIRECT_KEY)
        else:
            with open(self.big, "rb") as f:
                self.s3.put_object(Bucket=BUCKET, Key=DIRECT_KEY, Body=f)
        return time.perf_counter() - t0

    def direct_mpu_up(self) -> float:
        """Reference: what the gate itself does towards S3 for one streamed PUT (proxy.artifacts.S3Store.write):
        sequential multipart upload of 8 MiB parts, one part in flight, from the client's own process."""
        key = "direct-mpu/big.bin"
        t0 = time.perf_counter()
        upload_id = self.s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        parts = []
        with open(self.big, "rb") as f:
            while part := f.read(GATE_PART):
                etag = self.s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=len(parts) + 1,
                                           Body=part)["ETag"]
                parts.append({"PartNumber": len(parts) + 1, "ETag": etag})
        self.s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id,
                                          MultipartUpload={"Parts": parts})
        took = time.perf_counter() - t0
        self.s3.delete_object(Bucket=BUCKET, Key=key)
        return took

    def direct_down(self) -> float:
        if self.direct_method == "transfer":
            t0 = time.perf_counter()
            self.s3.download_file(BUCKET, DIRECT_KEY, str(self.dl))
            took = time.perf_counter() - t0
            digest, n = sha256_of(file_chunks(self.dl))
            self.dl.unlink()
        else:
            t0 = time.perf_counter()
            body = self.s3.get_object(Bucket=BUCKET, Key=DIRECT_KEY)["Body"]
            digest, n = sha256_of(body.iter_chunks(CHUNK))
            took = time.perf_counter() - t0
        self._check(digest, n, "direct download")
        return took

    def _check(self, digest: str, n: int, what: str) -> None:
        if n != self.size or digest != self.sha:
            raise RuntimeError(f"{what}: got {n} bytes, sha256 {digest[:16]}..., expected {self.size} bytes, "
                               f"sha256 {self.sha[:16]}...")


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


def _count_mpu(gate_log: Path, before: str) -> dict:
    """mpu/create and mpu/complete requests in the gate's audit lines written since `before`."""
    text = gate_log.read_text(errors="replace")[len(before):]
    return {"mpu_create": text.count("mlflow-artifacts/mpu/create/"),
            "mpu_complete": text.count("mlflow-artifacts/mpu/complete/")}


# --------------------------------------------------------------------------------------------
# reporting


def mbps(size: int, seconds: float | None) -> float | None:
    return round(size / seconds / 1e6, 1) if seconds else None


def summarize(size: int, times: list[float]) -> dict:
    if not times:
        return {}
    rates = [size / t / 1e6 for t in times]
    return {"seconds": [round(t, 2) for t in times], "mb_s": [round(r, 1) for r in rates],
            "best_mb_s": round(max(rates), 1), "median_mb_s": round(statistics.median(rates), 1)}


def build_table(res: dict) -> list[dict]:
    rows = Table()
    add = rows.add

    tr = TARGETS["throughput_ratio_min"]
    for way in ("up", "down"):
        d = res.get("throughput", {}).get(way)
        if not d or not d.get("gate") or not d.get("direct"):
            continue
        add(f"{way}load median (MB/s)", d["gate"]["median_mb_s"], d["direct"]["median_mb_s"], d["ratio_median"],
            f"ratio >= {tr}", d["ratio_median"] >= tr)
        add(f"{way}load best (MB/s)", d["gate"]["best_mb_s"], d["direct"]["best_mb_s"], d["ratio_best"],
            "(report)", None)
        if d.get("direct_mpu"):
            add(f"  {way}load ref: direct multipart 8 MiB (MB/s)", d["gate"]["median_mb_s"],
                d["direct_mpu"]["median_mb_s"], d.get("ratio_median_vs_direct_mpu"), "(reference)", None)
            add(f"  {way}load ref: moto CPU s/GiB (gate / d-mpu)", d.get("moto_cpu_s_per_gib_gate"),
                d["direct_mpu"]["moto_cpu_s_per_gib"], "-", "(reference)", None)
        if d.get("paired_ratios"):
            add(f"{way}load paired ratios (per round)", "-", "-", " ".join(f"{x:.2f}" for x in d["paired_ratios"]),
                "(report)", None)
        if d.get("gate_cpu_s_per_gib") is not None:
            add(f"{way}load CPU s/GiB: the gate process", d["gate_cpu_s_per_gib"], "-", "-", "(report)", None)
            add(f"{way}load CPU s/GiB: moto", d["moto_cpu_s_per_gib_gate"], d["moto_cpu_s_per_gib_direct"], "-",
                "(report)", None)
            add(f"{way}load CPU s/GiB: this client", d["client_cpu_s_per_gib_gate"],
                d["client_cpu_s_per_gib_direct"], "-", "(report)", None)
    m = res.get("memory", {})
    if m.get("gate_growth_mib") is not None:
        gmax = TARGETS["gate_rss_growth_mib_max"]
        add("gate RSS baseline -> peak (MiB)", m["gate_baseline_mib"], "-", m["gate_peak_mib"], "(report)", None)
        add("gate RSS growth, raw transfers (MiB)", m["gate_growth_mib"], "-", "-", f"< {gmax}",
            m["gate_growth_mib"] < gmax)
        if m.get("gate_growth_with_client_mib") is not None:
            add("gate RSS growth, incl. mlflow client (MiB)", m["gate_growth_with_client_mib"], "-", "-",
                f"< {gmax}", m["gate_growth_with_client_mib"] < gmax)
        add("moto RSS baseline -> peak (MiB)", m.get("moto_baseline_mib"), "-", m.get("moto_peak_mib"),
            "(context)", None)
    c = res.get("mlflow_client")
    if c and "up_mb_s" in c:
        used = c.get("multipart_used", {})
        add("mlflow client log_artifact, multipart (MB/s)", c["up_mb_s"], "-", c["up_s"], "(report: s)", None)
        add("mlflow client: multipart used (create/complete)", "-", "-",
            f"{used.get('mpu_create')}/{used.get('mpu_complete')}", "1/1",
            used.get("mpu_create") == 1 and used.get("mpu_complete") == 1)
        add("mlflow client download_artifacts (MB/s)", c["down_mb_s"], "-", c["down_s"], "(report: s)", None)
        add("mlflow client: sha256 equal", "-", "-", c["sha_ok"], "True", c["sha_ok"])
        add("mlflow client: object at client/big.bin", "-", "-", c["at_expected_path"], "True", c["at_expected_path"])
    return rows


TABLE_COLS = [("metric", 46), ("gate", 10), ("direct", 10), ("value", 11), ("target", 13), ("verdict", 7)]


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 MiB file (unless --size-mib), < 3 minutes")
    ap.add_argument("--size-mib", type=int, default=None, help="file size in MiB (default 1024; 256 with --quick)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of gate-up, direct-up, gate-down, direct-down")
    ap.add_argument("--direct", choices=("stream", "transfer"), default="stream",
                    help="direct boto3 method: put_object/get_object streaming (default), or "
                         "upload_file/download_file with the default TransferConfig")
    ap.add_argument("--no-mpu-reference", action="store_true",
                    help="leave out the reference upload 'direct-mpu' (boto3 sequential multipart, 8 MiB parts: "
                         "the gate's own pattern towards S3)")
    ap.add_argument("--skip-client", action="store_true", help="leave out the MLflow client path")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds after which no further transfer starts (default 420; 150 with --quick)")
    ap.add_argument("--py-spy", metavar="BIN", default=None,
                    help="sample the gate with py-spy during round 1's gate upload and download; print its top frames")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, policy, db)")
    ap.add_argument("--out", default=str(HERE / "last-artifacts.json"))
    args = ap.parse_args()

    size_mib = args.size_mib or (256 if args.quick else 1024)
    budget = args.budget or (150.0 if args.quick else 420.0)
    started = time.time()
    config = {"size_mib": size_mib, "rounds": args.rounds, "direct_method": args.direct,
                   "direct_method_detail": ("boto3 upload_file/download_file, default TransferConfig (8 MiB "
                                            "multipart threshold and parts, 10 threads)" if args.direct == "transfer"
                                            else "boto3 put_object(Body=<open file>) / get_object streamed in "
                                                 "1 MiB chunks, sha256 inline"),
                   "gate_method": "httpx PUT with a 1 MiB-chunk file generator and Content-Length / "
                                  "GET streamed (iter_raw), sha256 inline",
                   "budget_s": budget, "rss_interval_s": 0.05}
    res = new_record("quick" if args.quick else "full", config, TARGETS, ("mlflow", "moto", "boto3", "httpx"))
    res["notes"] = []

    raise_on_sigterm(sigint_too=True)   # SIGINT also when started in the background

    tmp = Path(tempfile.mkdtemp(prefix="bench-artifacts-"))
    s = Servers(tmp)
    sampler: RssSampler | None = None
    spy = None
    transfers: Transfers | None = None

    def show_logs() -> None:
        for name in ("gate", "mlflow", "moto"):
            if name in s.procs:
                print(f"--- {name} log tail ({s.procs[name].log_path}) ---\n{s.procs[name].tail(30)}",
                      file=sys.stderr)

    guard = Guard(res, show_logs)
    try:
        log(f"starting moto, mlflow server (workers 1, sqlite) and the gate in {tmp}")
        t0 = time.monotonic()
        s.start_all()
        big = tmp / "big.bin"
        log(f"writing a {size_mib} MiB random file")
        t1 = time.monotonic()
        sha = make_file(big, size_mib)
        res["file"] = {"size": big.stat().st_size, "sha256": sha, "write_s": round(time.monotonic() - t1, 1)}
        s.procs["mlflow"].wait_ready(120)
        s.procs["gate"].wait_ready(60)
        res["startup_s"] = round(time.monotonic() - t0, 1)
        log(f"  ready after {res['startup_s']} s: moto :{s.ports['moto']}, mlflow :{s.ports['mlflow']}, "
            f"gate :{s.ports['gate']} (pid {s.procs['gate'].pid})")

        import httpx

        token = mint_token(USER, name="bench-artifacts")
        api = httpx.Client(base_url=f"http://127.0.0.1:{s.ports['gate']}/api/2.0/mlflow",
                           headers={"Authorization": f"Bearer {token}"}, timeout=30)
        r = api.post("/experiments/create", json={"name": "a/bench"})
        r.raise_for_status()
        exp_id = r.json()["experiment_id"]
        exp = api.get("/experiments/get", params={"experiment_id": exp_id}).json()["experiment"]
        r = api.post("/runs/create", json={"experiment_id": exp_id, "start_time": int(time.time() * 1000),
                                           "run_name": "bench-artifacts"})
        r.raise_for_status()
        run_id = r.json()["run"]["info"]["run_id"]
        api.close()
        res["run"] = {"experiment_id": exp_id, "run_id": run_id,
                      "artifact_location": exp.get("artifact_location"),
                      "store_tag": next((t["value"] for t in exp.get("tags", [])
                                         if t["key"] == "mlflow-gate.artifact-store"), None)}
        log(f"  experiment a/bench = {exp_id} (store tag {res['run']['store_tag']!r}), run {run_id}")

        transfers = Transfers(s, token, exp_id, run_id, big, sha, args.direct)
        transfers.s3.create_bucket(Bucket=BUCKET)

        sampler = RssSampler({"gate": s.procs["gate"].pid, "moto": s.procs["moto"].pid})
        sampler.start()
        time.sleep(0.5)
        res["memory"] = {"gate_cold_mib": sampler.now_mib("gate")}

        # warm-up: a 1 MiB artifact through the gate (builds the team's S3 client) and direct
        small = tmp / "small.bin"
        small.write_bytes(os.urandom(MiB))
        for target in ("gate", "direct"):
            w = Transfers(s, token, exp_id, run_id, small, hashlib.sha256(small.read_bytes()).hexdigest(),
                          args.direct)
            if target == "gate":
                w.url = w.url.replace("big.bin", "warmup.bin")
                w.gate_up(), w.gate_down()
            else:
                w.direct_up(), w.direct_down()
                transfers.s3.delete_object(Bucket=BUCKET, Key=DIRECT_KEY)
            w.close()
        head = transfers.s3.head_object(Bucket=BUCKET, Key=transfers.gate_key.replace("big.bin", "warmup.bin"))
        if head["ContentLength"] != MiB:
            raise RuntimeError("the warm-up artifact did not land in the team's bucket")
        time.sleep(1.5)
        tb = time.time()
        time.sleep(1.5)
        base_gate, base_moto = sampler.median_mib("gate", tb, time.time()), sampler.median_mib("moto", tb, time.time())
        res["memory"].update(gate_baseline_mib=base_gate, moto_baseline_mib=base_moto)
        log(f"  gate RSS: cold {res['memory']['gate_cold_mib']} MiB, after warm-up (baseline) {base_gate} MiB; "
            f"moto {base_moto} MiB")

        steps = [("gate", "up", transfers.gate_up), ("direct", "up", transfers.direct_up),
                 ("gate", "down", transfers.gate_down), ("direct", "down", transfers.direct_down)]
        if not args.no_mpu_reference:
            steps.insert(2, ("direct-mpu", "up", transfers.direct_mpu_up))
        spy_handle = SimpleNamespace(tmp=tmp, gate=s.procs["gate"])
        records: list[dict] = []
        last: dict[str, float] = {}
        stopped_early = False
        for rnd in range(1, args.rounds + 1):
            for target, way, fn in steps:
                elapsed = time.time() - started
                guess = last.get(f"{target}-{way}", 0.0)
                if rnd > 1 and elapsed + guess > budget:
                    res["notes"].append(f"budget of {budget:.0f} s reached: round {rnd} {target}-{way} and later "
                                        "steps skipped")
                    stopped_early = True
                    break
                if args.py_spy and rnd == 1 and target == "gate":
                    log(f"  py-spy on the gate during gate-{way}")
                    spy = start_py_spy(args.py_spy, spy_handle)
                cpu0 = {n: group_cpu_seconds(s.procs[n].pid) for n in ("gate", "moto")}
                me0 = self_cpu()
                w0 = time.time()
                took = fn()
                w1 = time.time()
                if spy is not None:
                    res.setdefault("gate_profile", {})[way] = stop_py_spy(spy, spy_handle)
                    (tmp / "gate.pyspy.txt").rename(tmp / f"gate.pyspy.{way}.txt")
                    spy = None
                cpu = {n: round(group_cpu_seconds(s.procs[n].pid) - cpu0[n], 2) for n in ("gate", "moto")}
                rec = {"round": rnd, "target": target, "way": way, "seconds": round(took, 3),
                       "mb_s": mbps(transfers.size, took), "gate_cpu_s": cpu["gate"], "moto_cpu_s": cpu["moto"],
                       "client_cpu_s": round(self_cpu() - me0, 2), "t0": w0, "t1": w1,
                       "gate_rss_peak_mib": sampler.peak_mib("gate", w0, w1),
                       "moto_rss_peak_mib": sampler.peak_mib("moto", w0, w1)}
                records.append(rec)
                last[f"{target}-{way}"] = took
                log(f"  round {rnd} {target:6s} {way:4s} {took:6.2f} s  {rec['mb_s']:7.1f} MB/s   "
                    f"CPU s gate {cpu['gate']:5.2f} moto {cpu['moto']:5.2f} client {rec['client_cpu_s']:5.2f}   "
                    f"RSS peak gate {rec['gate_rss_peak_mib']} MiB, moto {rec['moto_rss_peak_mib']} MiB")
            if stopped_early:
                break
        res["transfers"] = records
        head = transfers.s3.head_object(Bucket=BUCKET, Key=transfers.gate_key)
        if head["ContentLength"] != transfers.size:
            raise RuntimeError(f"s3://{BUCKET}/{transfers.gate_key} has {head['ContentLength']} bytes")
        res["run"]["gate_object"] = f"s3://{BUCKET}/{transfers.gate_key} ({head['ContentLength']} bytes)"

        gib = transfers.size / (1024 * MiB)
        res["throughput"] = {}
        for way in ("up", "down"):
            g = [r for r in records if r["target"] == "gate" and r["way"] == way]
            d = [r for r in records if r["target"] == "direct" and r["way"] == way]
            entry: dict = {"gate": summarize(transfers.size, [r["seconds"] for r in g]),
                           "direct": summarize(transfers.size, [r["seconds"] for r in d])}
            m = [r for r in records if r["target"] == "direct-mpu" and r["way"] == way]
            if m:
                entry["direct_mpu"] = summarize(transfers.size, [r["seconds"] for r in m])
                entry["direct_mpu"]["moto_cpu_s_per_gib"] = round(statistics.median(r["moto_cpu_s"] for r in m) / gib,
                                                                  2)
                if g:
                    entry["ratio_median_vs_direct_mpu"] = round(
                        entry["gate"]["median_mb_s"] / entry["direct_mpu"]["median_mb_s"], 3)
            if g and d:
                entry["ratio_median"] = round(entry["gate"]["median_mb_s"] / entry["direct"]["median_mb_s"], 3)
                entry["ratio_best"] = round(entry["gate"]["best_mb_s"] / entry["direct"]["best_mb_s"], 3)
                entry["paired_ratios"] = [round(b["seconds"] / a["seconds"], 3) for a, b in zip(g, d)]
                entry["gate_cpu_s_per_gib"] = round(statistics.median(r["gate_cpu_s"] for r in g) / gib, 2)
                entry["moto_cpu_s_per_gib_gate"] = round(statistics.median(r["moto_cpu_s"] for r in g) / gib, 2)
                entry["moto_cpu_s_per_gib_direct"] = round(statistics.median(r["moto_cpu_s"] for r in d) / gib, 2)
                entry["client_cpu_s_per_gib_gate"] = round(statistics.median(r["client_cpu_s"] for r in g) / gib, 2)
                entry["client_cpu_s_per_gib_direct"] = round(statistics.median(r["client_cpu_s"] for r in d) / gib,
                                                             2)
            res["throughput"][way] = entry
        up = res["throughput"]["up"]
        if up.get("ratio_median") is not None and up["ratio_median"] < TARGETS["throughput_ratio_min"] \
                and up.get("ratio_median_vs_direct_mpu") is not None:
            res["notes"].append(
                f"upload: gate/direct {up['ratio_median']:.2f}, but gate/direct-mpu (boto3 sequential multipart, "
                f"8 MiB parts, the gate's own pattern) {up['ratio_median_vs_direct_mpu']:.2f}; moto CPU per GiB "
                f"{up['moto_cpu_s_per_gib_gate']} s for the gate's upload, {up['direct_mpu']['moto_cpu_s_per_gib']} s "
                f"for direct-mpu, {up['moto_cpu_s_per_gib_direct']} s for one put_object; the gate's own CPU "
                f"{up['gate_cpu_s_per_gib']} s per GiB")
        t_first, t_last = records[0]["t0"], records[-1]["t1"]
        mem = res["memory"]
        mem["gate_peak_mib"] = sampler.peak_mib("gate", t_first, t_last)
        mem["moto_peak_mib"] = sampler.peak_mib("moto", t_first, t_last)
        mem["gate_growth_mib"] = round(mem["gate_peak_mib"] - base_gate, 1)
        mem["gate_peak_by_step_mib"] = {f"r{r['round']} {r['target']}-{r['way']}": r["gate_rss_peak_mib"]
                                        for r in records if r["target"] == "gate"}
        mem["gate_after_transfers_mib"] = sampler.now_mib("gate")

        # the real MLflow client: multipart upload through the gate's part URLs, download back
        if args.skip_client:
            pass
        elif time.time() - started + 2.5 * (last.get("gate-up", 0) + last.get("gate-down", 0)) + 15 > budget:
            res["notes"].append("budget: the mlflow client part was skipped")
        else:
            log("mlflow client: log_artifact (MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true) and download_artifacts")
            script = tmp / "client.py"
            script.write_text(CLIENT_SCRIPT)
            (tmp / "client-dl").mkdir()
            env = child_env()
            # multipart for any size here (mlflow's default minimum is 500 MB, above the --quick file)
            env.update(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{s.ports['gate']}", MLFLOW_TRACKING_TOKEN=token,
                       MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD="true",
                       MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE=str(5 * MiB))
            gate_log_before = (tmp / "gate.log").read_text(errors="replace")
            cpu0 = {n: group_cpu_seconds(s.procs[n].pid) for n in ("gate", "moto")}
            client = s.procs["client"] = Process("client", [sys.executable, str(script), run_id, str(big),
                                                            str(tmp / "client-dl"), sha], env, tmp, tmp / "client.log")
            client.start()
            try:
                client.proc.wait(timeout=max(60.0, budget + 60 - (time.time() - started)))
            except subprocess.TimeoutExpired:
                res["notes"].append("the mlflow client part timed out")
            out = [line for line in (tmp / "client.log").read_text(errors="replace").splitlines()
                   if line.startswith("RESULT ")]
            cpu = {n: round(group_cpu_seconds(s.procs[n].pid) - cpu0[n], 2) for n in ("gate", "moto")}
            if not out:
                res["mlflow_client"] = {"error": client.tail(15)}
                log(f"  failed:\n{client.tail(15)}")
            else:
                c = json.loads(out[-1][len("RESULT "):])
                up, down = c["up_t1"] - c["up_t0"], c["down_t1"] - c["down_t0"]
                res["mlflow_client"] = {
                    "up_s": round(up, 2), "up_mb_s": mbps(transfers.size, up), "down_s": round(down, 2),
                    "down_mb_s": mbps(transfers.size, down), "sha_ok": c["sha_ok"], "size": c["size"],
                    "gate_cpu_s": cpu["gate"], "moto_cpu_s": cpu["moto"],
                    "gate_rss_peak_up_mib": sampler.peak_mib("gate", c["up_t0"], c["up_t1"]),
                    "gate_rss_peak_down_mib": sampler.peak_mib("gate", c["down_t0"], c["down_t1"]),
                    "multipart": "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true, MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE"
                                 "=5 MiB, 10 MiB parts (mlflow's default), parts PUT in parallel by mlflow's "
                                 "thread pool (2 x CPUs threads)",
                    "multipart_used": _count_mpu(tmp / "gate.log", gate_log_before),
                    "landed_at": c["remote"], "expected_at": "client/big.bin",
                    "at_expected_path": not c.get("misplaced", False),
                    "listed_client_dir": c["listed_client_dir"], "listed_root": c["listed_root"],
                }
                if c.get("misplaced"):
                    res["notes"].append(
                        f"mlflow client multipart upload: log_artifact(run, big.bin, artifact_path='client') left the "
                        f"object at {c['remote']!r}, not 'client/big.bin' (listing of 'client': "
                        f"{c['listed_client_dir']}); mlflow's own server keys it <artifact_path>/<basename of the "
                        "request body's 'path'>")
                mem["gate_growth_with_client_mib"] = round(
                    max(mem["gate_peak_mib"], res["mlflow_client"]["gate_rss_peak_up_mib"] or 0,
                        res["mlflow_client"]["gate_rss_peak_down_mib"] or 0) - base_gate, 1)
                mem["moto_peak_mib"] = max(mem["moto_peak_mib"] or 0, sampler.peak_mib("moto", c["up_t0"],
                                                                                      c["down_t1"]) or 0)
                mc = res["mlflow_client"]
                log(f"  log_artifact {up:.2f} s ({mc['up_mb_s']} MB/s, gate RSS peak {mc['gate_rss_peak_up_mib']} MiB)"
                    f", download_artifacts {down:.2f} s ({mc['down_mb_s']} MB/s), sha256 equal: {c['sha_ok']}")
            client.stop()
        mem["gate_end_mib"] = sampler.now_mib("gate")
        mem["moto_end_mib"] = sampler.now_mib("moto")
    except BaseException as exc:
        if not guard.absorb(exc):
            raise
    finally:
        try:
            if spy is not None and spy[0].poll() is None:
                spy[0].kill()
            if sampler is not None:
                sampler.stop()
                res["rss_samples"] = len(sampler.samples)
            if transfers is not None:
                transfers.close()
        except Exception:  # noqa: BLE001 - the servers must be stopped whatever happened
            traceback.print_exc()
        log("stopping servers")
        s.stop()
        if args.keep or guard.rc:
            for f in ("big.bin", "small.bin", "download.bin"):
                (tmp / f).unlink(missing_ok=True)
            log(f"kept {tmp} (without the data files)")
            res["tmp"] = str(tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    for r in res.get("transfers", []):
        r.pop("t0", None), r.pop("t1", None)
    finish(res, started, build_table, TABLE_COLS, ".1f", args.out)
    return guard.rc


if __name__ == "__main__":
    sys.exit(main())

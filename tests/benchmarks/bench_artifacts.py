#!/usr/bin/env python
"""Benchmark of large artifact transfers through mlflow-gate, proxied and in direct mode (`storage.direct`),
against the same S3 store reached directly with boto3.

Run from the checkout root:

    .venv/bin/python tests/benchmarks/bench_artifacts.py            # 1 GiB file, 2 rounds, < 15 minutes
    .venv/bin/python tests/benchmarks/bench_artifacts.py --quick    # 256 MiB file, < 5 minutes

One run starts, all on 127.0.0.1 and each in its own process group:
  - `moto_server` (the S3 store and STS; buckets `team-a` and `team-d`; credentials not enforced),
  - a real `mlflow server --workers 1` (SQLite) whose `--artifacts-destination` is the gate's internal
    artifact endpoint (it sends `mlflow-gate internal-token` as MLFLOW_TRACKING_TOKEN),
  - `mlflow-gate serve --upstream <mlflow>` with a policy giving alice@corp.test two teams: `a` (experiments
    `a/`, artifact root `s3://team-a/mlflow`, its own credentials TEAMA_*: proxied) and `d` (experiments `d/`,
    `s3://team-d/mlflow`, a role the gate assumes with its own identity, `direct: true`, object tags).

It creates experiments `a/bench` and `d/bench` with a run each through the gate, writes one random file of
--size-mib MiB, and then, interleaved (gate-up, direct-up, presigned-up, [direct-mpu-up,] gate-down, direct-down,
presigned-down) for --rounds rounds, measures:
  - gate upload:   one streaming `PUT /api/2.0/mlflow-artifacts/artifacts/<exp>/<run>/artifacts/big.bin`
                   (httpx, 1 MiB chunks read from the file, Content-Length set, Bearer token);
  - gate download: `GET` of the same URL, streamed and hashed (sha256 must equal the file's);
  - direct upload / download with boto3 to moto, key `direct/big.bin`: by default `put_object` with
    the open file as Body (one streaming PUT) and `get_object` streamed in 1 MiB chunks and hashed
    (--direct transfer: `upload_file` / `download_file` with the default TransferConfig instead);
  - presigned (direct mode, team d): `POST .../artifacts/presigned-upload-url` to the gate, then one streaming
    PUT of the file to the URL with the headers it came with; `GET .../mlflow-artifacts/presigned/<path>`, then
    one streamed GET of the URL, hashed. The time includes the gate's answer.
The gate's RSS (its process group) is sampled from /proc every 50 ms throughout; CPU seconds of the
gate, moto and this client are read around every transfer. Optionally (on by default) the real MLflow
client path (artifact_client.py), for team a and team d: `MlflowClient().log_artifact` with
MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true (multipart: through the gate's signed part URLs for a, presigned part
URLs straight to the bucket for d) and `download_artifacts` back (for d with MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD:
ranged GETs of a presigned URL), in a subprocess.

Prints a table with the targets (proxied gate/direct >= 0.7 up and down, gate RSS growth < 100 MiB; direct mode
presigned/direct >= 0.9 up and down and the gate's CPU <= 0.05 s per GiB) and writes JSON to
tests/benchmarks/last-artifacts.json (git-ignored).

This file is deliberately not named test_*.py: pytest must not collect it.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import signal
import statistics
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

from artifact_client import above_idle, client_rows, run_client, wait_budget  # the mlflow client's part
from benchlib import (  # the benchmarks' own helpers
    Guard,
    Table,
    finish,
    keep_or_remove,
    log,
    new_record,
    raise_on_sigterm,
    start_py_spy,
    stop_py_spy,
)

from tests.support.gate import gate_process, internal_token, mint_token, write_policy
from tests.support.mlflow_server import mlflow_process
from tests.support.moto import start_moto
from tests.support.process import Process, free_port, group_cpu_seconds, group_pids, rss_kib

MiB = 1024 * 1024
CHUNK = MiB
GATE_PART = 8 * MiB          # proxy.s3.PART: the part size of the gate's own S3 uploads
BUCKET = "team-a"
DIRECT_BUCKET = "team-d"     # team d: storage.direct, reached through a role (moto's STS: any role is granted)
DIRECT_KEY = "direct/big.bin"
USER = "alice@corp.test"
TARGETS = {"throughput_ratio_min": 0.7, "gate_rss_growth_mib_max": 100.0,
           "direct_mode_ratio_min": 0.9, "direct_mode_gate_cpu_s_per_gib_max": 0.05}


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
          d:
            members: [{USER}]
            experiments: ["d/"]
            artifact_root: s3://{DIRECT_BUCKET}/mlflow
            storage: {{endpoint_url: "http://127.0.0.1:{moto_port}", region: us-east-1, direct: true,
                      role_arn: "arn:aws:iam::123456789012:role/bench-d", object_tags: {{bench: direct}}}}
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
            env={"TEAMA_AWS_ACCESS_KEY_ID": "x", "TEAMA_AWS_SECRET_ACCESS_KEY": "y",
                 # the gate's own identity, which assumes team d's role (STS at moto)
                 "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                 "AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{self.ports['moto']}"}).start()

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
        self.gate = f"http://127.0.0.1:{s.ports['gate']}"
        self.d_path = ""            # team d's big.bin (storage.direct): set by the caller
        self.d_run = ""
        self.bare = httpx.Client(timeout=httpx.Timeout(180.0, connect=10.0))   # to the bucket: no gate token
        self.bare_session = requests.Session()

    def close(self) -> None:
        for c in (self.http, self.session, self.bare, self.bare_session):
            c.close()

    def _put(self, client, url: str, headers: dict, what: str) -> None:
        """One streaming PUT of the file (1 MiB chunks, Content-Length set)."""
        r = client.put(url, content=file_chunks(self.big), headers={**headers, "Content-Length": str(self.size)})
        if r.status_code != 200:
            raise RuntimeError(f"{what} -> {r.status_code}: {r.text[:300]}")

    def _get(self, session, url: str, what: str) -> None:
        """One streamed GET, hashed; the bytes must be the file's."""
        with session.get(url, stream=True, timeout=(10, 180)) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{what} -> {r.status_code}: {r.content[:300]!r}")
            digest, n = sha256_of(r.iter_content(CHUNK))
        self._check(digest, n, what)

    def presigned_up(self) -> float:
        """Direct mode: the gate signs a URL (`presigned-upload-url`), then one streaming PUT straight to the bucket."""
        t0 = time.perf_counter()
        r = self.http.post(self.gate + "/api/2.0/mlflow/artifacts/presigned-upload-url",
                           json={"run_id": self.d_run, "path": "big.bin"})
        if r.status_code != 200:
            raise RuntimeError(f"presigned-upload-url -> {r.status_code}: {r.text[:300]}")
        # the file object through requests/urllib3, as botocore's put_object sends it: the clients' own cost alike
        with open(self.big, "rb") as f:
            put = self.bare_session.put(r.json()["presigned_url"], data=f, timeout=(10, 180),
                                        headers={**r.json()["headers"], "Content-Length": str(self.size)})
        if put.status_code != 200:
            raise RuntimeError(f"presigned PUT -> {put.status_code}: {put.text[:300]}")
        return time.perf_counter() - t0

    def presigned_down(self) -> float:
        """Direct mode: the gate signs a URL (`mlflow-artifacts/presigned/...`), then one streamed GET from the bucket."""
        t0 = time.perf_counter()
        r = self.http.get(f"{self.gate}/api/2.0/mlflow-artifacts/presigned/{self.d_path}")
        if r.status_code != 200:
            raise RuntimeError(f"presigned -> {r.status_code}: {r.text[:300]}")
        self._get(self.bare_session, r.json()["url"], "presigned download")
        return time.perf_counter() - t0

    def gate_up(self) -> float:
        t0 = time.perf_counter()
        self._put(self.http, self.url, {"Content-Type": "application/octet-stream"}, "gate upload")
        return time.perf_counter() - t0

    def gate_down(self) -> float:
        t0 = time.perf_counter()
        self._get(self.session, self.url, "gate download")
        return time.perf_counter() - t0

    def direct_up(self) -> float:
        t0 = time.perf_counter()
        if self.direct_method == "transfer":
            self.s3.upload_file(str(self.big), BUCKET, DIRECT_KEY)
        else:
            with open(self.big, "rb") as f:
                self.s3.put_object(Bucket=BUCKET, Key=DIRECT_KEY, Body=f)
        return time.perf_counter() - t0

    def direct_mpu_up(self) -> float:
        """Reference: what the gate itself does towards S3 for one streamed PUT (proxy.s3.S3Store.write):
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


# --------------------------------------------------------------------------------------------
# reporting


def new_run(api, name: str) -> tuple[str, str, dict]:
    """Experiment NAME and a run in it, through the gate: (experiment id, run id, the experiment)."""
    r = api.post("/experiments/create", json={"name": name})
    r.raise_for_status()
    exp_id = r.json()["experiment_id"]
    exp = api.get("/experiments/get", params={"experiment_id": exp_id}).json()["experiment"]
    r = api.post("/runs/create", json={"experiment_id": exp_id, "start_time": int(time.time() * 1000),
                                       "run_name": "bench-artifacts"})
    r.raise_for_status()
    return exp_id, r.json()["run"]["info"]["run_id"], exp


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
        pm = d.get("presigned")
        if pm:
            dr, dc = TARGETS["direct_mode_ratio_min"], TARGETS["direct_mode_gate_cpu_s_per_gib_max"]
            add(f"{way}load direct mode median (MB/s)", pm["median_mb_s"], d["direct"]["median_mb_s"],
                pm["ratio_median"], f"ratio >= {dr}", pm["ratio_median"] >= dr)
            add(f"{way}load direct mode paired ratios", "-", "-", " ".join(f"{x:.2f}" for x in pm["paired_ratios"]),
                "(report)", None)
            add(f"{way}load direct mode CPU s/GiB: the gate, above idle", "-", "-",
                pm["gate_cpu_above_idle_s_per_gib"], f"<= {dc}", pm["gate_cpu_above_idle_s_per_gib"] <= dc)
            add(f"{way}load direct mode CPU s/GiB: the gate, raw", "-", "-", pm["gate_cpu_s_per_gib"],
                f"(idle {pm['gate_idle_cpu_s_per_s']} s/s)", None)
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
    for key, label, cpu_max in (("mlflow_client", "(proxied)", None),
                                ("mlflow_client_direct", "(direct)", TARGETS["direct_mode_gate_cpu_s_per_gib_max"])):
        if "up_mb_s" in res.get(key, {}):
            client_rows(add, label, res[key], cpu_max)
    return rows


TABLE_COLS = [("metric", 46), ("gate", 10), ("direct", 10), ("value", 11), ("target", 13), ("verdict", 7)]


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 MiB file (unless --size-mib), < 3 minutes")
    ap.add_argument("--size-mib", type=int, default=None, help="file size in MiB (default 1024; 256 with --quick)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of gate-up, direct-up, presigned-up, gate-down, direct-down, presigned-down")
    ap.add_argument("--direct", choices=("stream", "transfer"), default="stream",
                    help="direct boto3 method: put_object/get_object streaming (default), or "
                         "upload_file/download_file with the default TransferConfig")
    ap.add_argument("--no-mpu-reference", action="store_true",
                    help="leave out the reference upload 'direct-mpu' (boto3 sequential multipart, 8 MiB parts: "
                         "the gate's own pattern towards S3)")
    ap.add_argument("--skip-client", action="store_true", help="leave out the MLflow client path")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds after which no further transfer starts (default 900; 300 with --quick)")
    ap.add_argument("--py-spy", metavar="BIN", default=None,
                    help="sample the gate with py-spy during round 1's gate upload and download; print its top frames")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, policy, db)")
    ap.add_argument("--out", default=str(HERE / "last-artifacts.json"))
    args = ap.parse_args()

    size_mib = args.size_mib or (256 if args.quick else 1024)
    budget = args.budget or (300.0 if args.quick else 900.0)
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
        exp_id, run_id, exp = new_run(api, "a/bench")
        d_exp_id, d_run_id, _ = new_run(api, "d/bench")
        api.close()
        res["run"] = {"experiment_id": exp_id, "run_id": run_id,
                      "artifact_location": exp.get("artifact_location"),
                      "store_tag": next((t["value"] for t in exp.get("tags", [])
                                         if t["key"] == "mlflow-gate.artifact-store"), None),
                      "direct_mode_run": f"d/bench {d_exp_id}/{d_run_id}"}
        log(f"  experiment a/bench = {exp_id} (store tag {res['run']['store_tag']!r}), run {run_id}; "
            f"d/bench (storage.direct) = {d_exp_id}, run {d_run_id}")

        transfers = Transfers(s, token, exp_id, run_id, big, sha, args.direct)
        transfers.d_run, transfers.d_path = d_run_id, f"{d_exp_id}/{d_run_id}/artifacts/big.bin"
        transfers.s3.create_bucket(Bucket=BUCKET)
        transfers.s3.create_bucket(Bucket=DIRECT_BUCKET)

        sampler = RssSampler({"gate": s.procs["gate"].pid, "moto": s.procs["moto"].pid})
        sampler.start()
        time.sleep(0.5)
        res["memory"] = {"gate_cold_mib": sampler.now_mib("gate")}

        # warm-up: a 1 MiB artifact through the gate (builds the team's S3 client) and direct
        small = tmp / "small.bin"
        small.write_bytes(os.urandom(MiB))
        for target in ("gate", "direct", "presigned"):
            w = Transfers(s, token, exp_id, run_id, small, hashlib.sha256(small.read_bytes()).hexdigest(),
                          args.direct)
            w.d_run, w.d_path = transfers.d_run, transfers.d_path
            if target == "gate":
                w.url = w.url.replace("big.bin", "warmup.bin")
                w.gate_up(), w.gate_down()
            elif target == "presigned":     # team d's role session and S3 client, then big.bin is overwritten
                w.presigned_up(), w.presigned_down()
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
                 ("presigned", "up", transfers.presigned_up),
                 ("gate", "down", transfers.gate_down), ("direct", "down", transfers.direct_down),
                 ("presigned", "down", transfers.presigned_down)]
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
            p = [r for r in records if r["target"] == "presigned" and r["way"] == way]
            if p and d:
                pm = entry["presigned"] = summarize(transfers.size, [r["seconds"] for r in p])
                pm["ratio_median"] = round(pm["median_mb_s"] / entry["direct"]["median_mb_s"], 3)
                pm["paired_ratios"] = [round(b["seconds"] / a["seconds"], 3) for a, b in zip(p, d)]
                pm["gate_cpu_s_per_gib"] = round(statistics.median(r["gate_cpu_s"] for r in p) / gib, 3)
                # the gate's CPU while it is idle (during the boto3 step of the same round, which it takes no part
                # in: policy watcher, timers) is not the transfer's: counted at that rate over the step and taken off
                idle = {r["round"]: r["gate_cpu_s"] / r["seconds"] for r in d}
                pm["gate_idle_cpu_s_per_s"] = round(statistics.median(idle.values()), 4)
                pm["gate_cpu_above_idle_s_per_gib"] = round(statistics.median(
                    max(0.0, r["gate_cpu_s"] - idle.get(r["round"], 0.0) * r["seconds"]) for r in p) / gib, 3)
                pm["moto_cpu_s_per_gib"] = round(statistics.median(r["moto_cpu_s"] for r in p) / gib, 2)
                pm["client_cpu_s_per_gib"] = round(statistics.median(r["client_cpu_s"] for r in p) / gib, 2)
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

        # the real MLflow client: multipart through the gate's part URLs (team a), straight to the bucket (team d)
        clients = [("mlflow_client", run_id, {}),
                   ("mlflow_client_direct", d_run_id, {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "true"})]
        for key, rid, extra in clients:
            if args.skip_client:
                break
            if time.time() - started + 2.5 * (last.get("gate-up", 0) + last.get("gate-down", 0)) + 15 > budget:
                res["notes"].append(f"budget: the mlflow client part {key} was skipped")
                break
            log(f"{key}: log_artifact (MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true) and download_artifacts")
            c = res[key] = run_client(s, sampler, key, rid, big, sha, token, wait_budget(started, budget), extra)
            if "error" in c:
                log(f"  failed: {c['error']}")
                continue
            t0, *_, t1 = c.pop("t")
            idle = [r["gate_cpu_s"] / r["seconds"] for r in records if r["target"] == "direct"]
            if idle:
                above_idle(c, statistics.median(idle), transfers.size)
            if not c["at_expected_path"]:
                res["notes"].append(f"{key}: log_artifact(run, big.bin, artifact_path='client') left the object at "
                                    f"{c['landed_at']!r}, not 'client/big.bin' (listing: {c['listed_client_dir']})")
            peak = mem["gate_peak_with_client_mib"] = max(mem.get("gate_peak_with_client_mib", mem["gate_peak_mib"]),
                                                          c["gate_rss_peak_up_mib"] or 0,
                                                          c["gate_rss_peak_down_mib"] or 0)
            mem["gate_growth_with_client_mib"] = round(peak - base_gate, 1)
            mem["moto_peak_mib"] = max(mem["moto_peak_mib"] or 0, sampler.peak_mib("moto", t0, t1) or 0)
            log(f"  log_artifact {c['up_s']:.2f} s ({c['up_mb_s']} MB/s, gate RSS peak {c['gate_rss_peak_up_mib']} "
                f"MiB), download_artifacts {c['down_s']:.2f} s ({c['down_mb_s']} MB/s), sha256 equal: {c['sha_ok']}, "
                f"gate CPU {c['gate_cpu_s']} s")
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
        kept = bool(args.keep or guard.rc)
        if kept:
            for f in ("big.bin", "small.bin", "download.bin"):
                (tmp / f).unlink(missing_ok=True)
        keep_or_remove(tmp, kept, res, " (without the data files)")

    for r in res.get("transfers", []):
        r.pop("t0", None), r.pop("t1", None)
    finish(res, started, build_table, TABLE_COLS, ".1f", args.out)
    return guard.rc


if __name__ == "__main__":
    sys.exit(main())

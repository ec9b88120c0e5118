"""The shared harness of the benchmark scripts in this folder (bench_gate.py, bench_artifacts.py, bench_replicas.py).

Servers in their own process groups logging to files, free ports, waiting for a health URL, CPU and RSS of a
process group from /proc, the environment the servers get, SIGTERM handling, the summary table and py-spy.

The scripts run as `python tests/benchmarks/X.py` and import this module from their own folder:

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib import ...

Not named test_*.py: pytest must not collect it.
"""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SECRET = "bench-secret-key-0123456789abcdef0123456789abcdef"


# --------------------------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    """q-th percentile (0..100), linear interpolation."""
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def raise_on_sigterm(sigint_too: bool = False) -> None:
    """SIGTERM (and, with `sigint_too`, SIGINT even when started in the background, where it is ignored) raise
    KeyboardInterrupt, so that both unwind through the script's `finally` that stops the servers."""
    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if sigint_too:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def git_head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------------------------
# /proc: process groups, CPU, RSS


def _proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields of /proc/<pid>/stat after the command name) for every process that can be read:
    fields[0] = state (field 3 of stat(5)), fields[2] = pgrp (5), fields[11..14] = utime, stime, cutime, cstime."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read().decode()
        except OSError:
            continue
        yield int(entry), data[data.rfind(")") + 2:].split()


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in process group `pgid` (children that exited and
    were reaped are included in their parent's cutime/cstime, which we add too)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for _, rest in _proc_stats():
        if int(rest[2]) != pgid:
            continue
        total += int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return total / tick


def group_pids(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    return [pid for pid, rest in _proc_stats() if rest[0] != "Z" and int(rest[2]) == pgid]


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --------------------------------------------------------------------------------------------
# servers


class Proc:
    """A server in its own session/process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logfile: Path, cwd: Path) -> None:
        self.name = name
        self.logfile = logfile
        self._log = open(logfile, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pgid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu(self) -> float:
        return group_cpu_seconds(self.pgid)

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            if self.popen.poll() is not None and not group_pids(self.pgid):
                break
            time.sleep(0.1)
        if group_pids(self.pgid):
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_http_ok(port: int, path: str, proc: Proc, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready on :{port}{path} after {timeout:.0f}s:\n{proc.tail()}")


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        MLFLOW_GATE_SECRET_KEY=SECRET,
        PYTHONUNBUFFERED="1",
    )
    for k in list(env):  # never let the benchmark pick up a developer's gate configuration
        if k.startswith("MLFLOW_GATE_") and k != "MLFLOW_GATE_SECRET_KEY":
            del env[k]
    return env


def gate_argv() -> list[str]:
    exe = VENV_BIN / "mlflow-gate"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "proxy"]


def gate_cli(*args: str) -> str:
    """`mlflow-gate ARGS` with the benchmark's secret key; its last line of output."""
    r = subprocess.run(gate_argv() + list(args), check=False, env=base_env(), cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"mlflow-gate {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return r.stdout.strip().splitlines()[-1].strip()


# --------------------------------------------------------------------------------------------
# the summary table


def fmt(v: object, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


def table_row(metric: str, gate: object, direct: object, value: object, target: str, ok: bool | None) -> dict:
    return {"metric": metric, "gate": gate, "direct": direct, "value": value, "target": target,
            "verdict": verdict(ok)}


def print_table(rows: list[dict], cols: list[tuple[str, int]], gate_direct_spec: str) -> None:
    """`cols`: (column, width); the gate and direct columns formatted with `gate_direct_spec`, the others .3f."""
    print()
    print("  ".join(name.ljust(w) for name, w in cols))
    print("  ".join("-" * w for _, w in cols))
    for r in rows:
        cells = []
        for name, w in cols:
            v = r[name]
            s = fmt(v, gate_direct_spec if name in ("gate", "direct") else ".3f") if not isinstance(v, bool) else str(v)
            cells.append(s.ljust(w) if name in ("metric", "target") else s.rjust(w))
        print("  ".join(cells))
    print()


# --------------------------------------------------------------------------------------------
# optional: where the gate's CPU goes (py-spy). `s` has `tmp` (a folder) and `gate` (a Proc).


def start_py_spy(binary: str, s: object) -> tuple[subprocess.Popen, Path]:
    out = s.tmp / "gate.pyspy.txt"
    argv = [binary, "record", "--pid", str(s.gate.popen.pid), "--subprocesses", "--format", "raw",
            "--rate", "250", "--output", str(out), "--nonblocking", "--full-filenames"]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(s.tmp / "py-spy.log", "wb"),  # noqa: SIM115
                         start_new_session=True)
    time.sleep(1.0)
    return p, out


def _short_frame(frame: str) -> str:
    """'fn (/abs/.../site-packages/pkg/mod.py:12)' -> 'fn (pkg/mod.py:12)'."""
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        i = frame.find(marker)
        if i != -1:
            j = frame.rfind("(", 0, i)
            return frame[:j + 1] + frame[i + len(marker):]
    return frame


def stop_py_spy(spy: tuple[subprocess.Popen, Path], s: object) -> dict:
    p, out = spy
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
    if not out.exists():
        return {"error": (s.tmp / "py-spy.log").read_text(errors="replace")[-500:]}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = idle = 0
    for line in out.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        frames = [_short_frame(f) for f in stack.split(";")]
        if frames and (".select (" in frames[-1] or frames[-1].startswith(("select (", "Runner.run ("))):
            idle += k  # the event loop waiting (uvloop's loop is native: its frame is Runner.run)
            continue
        total += k
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + k
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + k
    top_own = sorted(own.items(), key=lambda kv: -kv[1])[:20]
    top_incl = sorted(((f, n) for f, n in inclusive.items() if "proxy/" in f), key=lambda kv: -kv[1])[:20]
    log(f"  py-spy: {total} busy samples of the gate; collapsed stacks in {out}")
    for f, n in top_own[:12]:
        log(f"    own {100 * n / max(total, 1):5.1f}%  {f[:150]}")
    for f, n in top_incl[:12]:
        log(f"    incl {100 * n / max(total, 1):5.1f}%  {f[:150]}")
    return {"samples": total, "idle_samples": idle, "file": str(out),
            "top_own": [(f, round(100 * n / max(total, 1), 1)) for f, n in top_own],
            "top_inclusive_proxy": [(f, round(100 * n / max(total, 1), 1)) for f, n in top_incl]}

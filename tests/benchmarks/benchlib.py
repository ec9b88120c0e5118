"""What the benchmark scripts in this folder (bench_gate.py, bench_artifacts.py, bench_replicas.py) share besides the
servers (those come from tests/support, as for the tests): logging, percentiles, SIGTERM handling, the summary table
and py-spy.

The scripts run as `python tests/benchmarks/X.py` and import this module from their own folder, tests.support from
the checkout's root:

    sys.path[:0] = [str(HERE), str(HERE.parents[1])]
    from benchlib import ...

Not named test_*.py: pytest must not collect it.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def keep_or_remove(tmp: Path, keep: bool, record: dict[str, Any] | None = None, note: str = "") -> None:
    """A run's temporary folder: kept (said, and named in `record`) when asked or after a failure, else removed."""
    if keep:
        log(f"kept {tmp}{note}")
        if record is not None:
            record["tmp"] = str(tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


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
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------------------------
# the record of a run (written as JSON at the end), its errors


def new_record(mode: str, config: dict, targets: dict, packages: tuple[str, ...]) -> dict:
    """When, what was asked, the machine and the versions of PACKAGES."""
    env: dict = {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
                 "git_head": git_head()}
    try:
        from importlib.metadata import version

        env.update({p: version(p) for p in packages})
    except Exception as exc:  # noqa: BLE001
        env["versions"] = repr(exc)
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mode": mode, "config": config, "targets": targets,
            "env": env}


class Guard:
    """`except BaseException as exc: if not guard.absorb(exc): raise` turns an interruption (Ctrl-C, SIGTERM) or an
    error into `record["error"]` and the exit code `rc` (130, 1) instead of raising, so that the script's `finally`
    stops the servers and the record is still written. On an error, the traceback is printed and `on_error` called
    (to show the servers' logs)."""

    def __init__(self, record: dict, on_error: Callable[[], None] = lambda: None) -> None:
        self.record, self.on_error, self.rc = record, on_error, 0

    def absorb(self, exc: BaseException) -> bool:
        if isinstance(exc, KeyboardInterrupt):
            log("interrupted")
            self.record["error"], self.rc = "interrupted", 130
            return True
        if isinstance(exc, Exception):
            traceback.print_exception(exc)
            self.record["error"], self.rc = f"{type(exc).__name__}: {exc}", 1
            self.on_error()
            return True
        return False


def finish(record: dict, started: float, table: Callable[[dict], list[dict]], cols: list[tuple[str, int]],
           gate_direct_spec: str, out: str) -> None:
    """Close the record (elapsed time, load), print its summary table and notes, write it to OUT as JSON."""
    record["elapsed_s"] = round(time.time() - started, 1)
    record["env"]["loadavg_end"] = os.getloadavg()
    record["summary"] = table(record)
    print_table(record["summary"], cols, gate_direct_spec)
    for note in record.get("notes", []):
        log(f"note: {note}")
    Path(out).write_text(json.dumps(record, indent=2, default=str) + "\n")
    log(f"wrote {out} (elapsed {record['elapsed_s']} s)")


def time_boxed(workers: int, work: Callable[[int, Callable[[], bool]], None], seconds: float) -> float:
    """`work(i, running)` in WORKERS threads released together; `running()` is true until SECONDS after the release.
    Returns the wall time from the release to the end of the last thread; re-raises the first error of a thread."""
    go = threading.Barrier(workers + 1)
    end = [0.0]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        go.wait()
        try:
            work(i, lambda: time.perf_counter() < end[0])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    end[0] = t0 + seconds
    go.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall


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


class Table(list[dict]):
    """The summary rows."""

    def add(self, metric: str, gate: object, direct: object, value: object, target: str, ok: bool | None) -> None:
        self.append({"metric": metric, "gate": gate, "direct": direct, "value": value, "target": target,
                     "verdict": verdict(ok)})


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
# optional: where the gate's CPU goes (py-spy). `s` has `tmp` (a folder) and `gate` (a tests.support Process).


def start_py_spy(binary: str, s: object) -> tuple[subprocess.Popen, Path]:
    out = s.tmp / "gate.pyspy.txt"
    argv = [binary, "record", "--pid", str(s.gate.pid), "--subprocesses", "--format", "raw",
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

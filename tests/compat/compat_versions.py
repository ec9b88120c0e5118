"""The MLflow versions the gate fronts, and one cached venv per version with its server and client.

A venv is built by `uv` (a few seconds from the registry, against 1-2 minutes for pip) under
`$MLFLOW_GATE_COMPAT_CACHE`, else `$XDG_CACHE_HOME/mlflow-gate-compat`, else
`~/.cache/mlflow-gate-compat`: outside the repository, kept between runs, one directory per
(version, requirements, python) so a changed pin builds a new one. A venv counts only once its
`.complete` marker is written; a half-built one is removed and built again.

The 3.17 series is the version this repository's own venv installs: it is used as it is.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Today's releases of SQLAlchemy (2.1) and OpenTelemetry (1.45) break the 2.22 and 3.1 servers and
# their tracing even without a gate (reference/test-infra.md, "Older MLflow servers").
_OLD_PINS = ("sqlalchemy<2.1", "opentelemetry-api==1.34.1", "opentelemetry-sdk==1.34.1",
             "opentelemetry-semantic-conventions==0.55b1")


@dataclass(frozen=True)
class Version:
    series: str                    # "2.22"
    mlflow: str                    # the exact release tested
    pins: tuple[str, ...] = ()
    reuse_repo_venv: bool = False  # the repository's venv already has this release

    @property
    def requirements(self) -> tuple[str, ...]:
        # scikit-learn: the workflow logs and loads an sklearn model.
        return (f"mlflow=={self.mlflow}", "scikit-learn", *self.pins)


VERSIONS: dict[str, Version] = {v.series: v for v in (
    Version("2.22", "2.22.1", _OLD_PINS),
    Version("3.1", "3.1.4", _OLD_PINS),
    Version("3.10", "3.10.1"),
    Version("3.17", "3.17.2", reuse_repo_venv=True),
)}
OLDEST, NEWEST = "2.22", "3.17"


def cache_root() -> Path:
    explicit = os.environ.get("MLFLOW_GATE_COMPAT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlflow-gate-compat"


def _key(version: Version) -> str:
    text = json.dumps([version.requirements, sys.version_info[:2]])
    return f"mlflow-{version.mlflow}-py{sys.version_info[0]}{sys.version_info[1]}-" + \
        hashlib.sha256(text.encode()).hexdigest()[:10]


def _installed_mlflow(python: Path) -> str:
    r = subprocess.run([str(python), "-c", "import mlflow; print(mlflow.__version__)"], capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    return r.stdout.strip() if r.returncode == 0 else f"<import failed: {r.stderr.strip()[-300:]}>"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # two sessions building the same venv wait for each other
        yield


def _uv(*args: str, log: Path) -> None:
    cmd = [sys.executable, "-m", "uv", *args]
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=900,
                           check=False)
    if r.returncode != 0:
        raise RuntimeError(f"`uv {' '.join(args)}` failed ({r.returncode}); see {log}:\n"
                           + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))


def venv_python(series: str) -> Path:
    """The python of the venv for `series`, built first when the cache has none. Raises when it cannot be built:
    a missing venv is a failure of the compatibility run, never a skip."""
    version = VERSIONS[series]
    if version.reuse_repo_venv:
        found = _installed_mlflow(Path(sys.executable))
        if found != version.mlflow:
            raise RuntimeError(f"the repository's venv has mlflow {found}, the compat table expects "
                               f"{version.mlflow}: update VERSIONS in {__file__}")
        return Path(sys.executable)
    root = cache_root()
    target = root / _key(version)
    python = target / "bin" / "python"
    with _locked(root / f"{target.name}.lock"):
        if not (target / ".complete").exists():
            build(version, target)
    found = _installed_mlflow(python)
    if found != version.mlflow:
        raise RuntimeError(f"{target} has mlflow {found}, expected {version.mlflow}; remove the directory")
    return python


def build(version: Version, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    log = target.parent / f"{target.name}.build.log"
    log.write_text("")
    start = time.monotonic()
    _uv("venv", "--quiet", "--python", sys._base_executable, str(target), log=log)  # type: ignore[attr-defined]
    _uv("pip", "install", "--quiet", "--python", str(target / "bin" / "python"), *version.requirements, log=log)
    seconds = time.monotonic() - start
    (target / ".complete").write_text(json.dumps({"requirements": version.requirements,
                                                  "build_seconds": round(seconds, 1)}) + "\n")


if __name__ == "__main__":   # python tests/compat/compat_versions.py [SERIES...]: build (or find) the venvs, print them
    for name in sys.argv[1:] or list(VERSIONS):
        t0 = time.monotonic()
        print(name, venv_python(name), f"{time.monotonic() - t0:.1f} s", flush=True)

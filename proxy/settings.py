"""Settings from flags and MLFLOW_GATE_* environment variables; secrets only from the environment or files."""
from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

LEGACY_SECRET_FILE = Path(".mlflow-gate/secret-key")     # before 0.2: per working folder, no longer read
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

log = logging.getLogger("mlflow_gate")


@dataclass(frozen=True)
class Settings:
    policy: str = "policies/example.yaml"
    host: str = "127.0.0.1"
    port: int = 5000
    upstream: str | None = None
    backend_store_uri: str = "sqlite:///mlflow.db"
    artifacts_destination: str | None = None     # the gate's default artifact store (file:// or s3://)
    public_url: str | None = None
    session_lifetime: int = 12 * 3600
    internal_from_anywhere: bool = False         # the internal artifact endpoint also answers non-loopback peers
    metrics_port: int | None = None              # a separate listener for /_gate/metrics, for anyone who reaches it
    metrics_host: str = "127.0.0.1"
    session_check: float = 30.0                  # seconds between checks of a provider session with the provider
    secret_key: str = field(default="", repr=False)

    def __repr__(self) -> str:  # never print the secret
        return (f"Settings(policy={self.policy!r}, host={self.host!r}, port={self.port}, upstream={self.upstream!r}, "
                f"public_url={self.public_url!r}, secret_key=***)")


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(f"MLFLOW_GATE_{name}")
    return value if value not in (None, "") else default


class DurationError(ValueError):
    pass


def parse_duration(text: str) -> int:
    """'30d', '12h', '90m', '45s' or '2w' -> seconds. A bare number is refused: 30 could mean anything."""
    m = _DURATION.match(text)
    if m and int(m.group(1)) > 0:
        return int(m.group(1)) * _UNITS[m.group(2)]
    if text.strip().isdigit():
        raise DurationError(f"{text.strip()!r} has no unit: write it with s, m, h, d or w "
                            f"({text.strip()}s, {text.strip()}m, {text.strip()}h or {text.strip()}d)")
    raise DurationError(f"{text!r} is not a duration: use a positive number with s, m, h, d or w (e.g. 30d)")


def secret_key_file() -> Path:
    """Where the secret key is kept when MLFLOW_GATE_SECRET_KEY is unset: MLFLOW_GATE_SECRET_KEY_FILE, else
    $XDG_STATE_HOME/mlflow-gate/secret-key (~/.local/state/...): one per user, whatever the working folder."""
    given = env("SECRET_KEY_FILE")
    if given:
        return Path(given).expanduser()
    state = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):          # unset, or relative (which the XDG spec says to ignore)
        try:
            state = str(Path.home() / ".local" / "state")
        except RuntimeError as exc:
            raise ValueError("no home folder to keep the secret key in: set MLFLOW_GATE_SECRET_KEY, or "
                             "MLFLOW_GATE_SECRET_KEY_FILE to a file holding it") from exc
    return Path(state) / "mlflow-gate" / "secret-key"


def secret_key_source() -> str:
    """Where `secret_key()` reads the key, in words (for messages about tokens signed with another key)."""
    return "MLFLOW_GATE_SECRET_KEY" if env("SECRET_KEY") else str(secret_key_file())


def secret_key() -> str:
    """MLFLOW_GATE_SECRET_KEY; else the file MLFLOW_GATE_SECRET_KEY_FILE names (it must exist); else the
    user's own key file, generated once (mode 0600) in a folder only the user can open."""
    key = env("SECRET_KEY")
    if key:
        if len(key) < 16:
            raise ValueError("MLFLOW_GATE_SECRET_KEY is too short: use at least 16 characters (32 random bytes is best).")
        return key
    path = secret_key_file()
    if env("SECRET_KEY_FILE"):
        return _read_key(path)
    _warn_about_legacy_key(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:          # another mlflow-gate made it meanwhile
            return _read_key(path)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return _read_key(path)


def _read_key(path: Path) -> str:
    try:
        key = path.read_text().strip()
    except FileNotFoundError as exc:
        raise ValueError(f"MLFLOW_GATE_SECRET_KEY_FILE={path} does not exist: point it at the file holding the "
                         "gate's secret key, or unset it to use the key of this user") from exc
    if len(key) < 16:
        raise ValueError(f"the secret key in {path} is too short: at least 16 characters (32 random bytes is best)")
    return key


def _warn_about_legacy_key(path: Path) -> None:
    """A key file of the old per-folder place is ignored now; say how to keep using it."""
    if LEGACY_SECRET_FILE.is_file() and not (path.exists() and LEGACY_SECRET_FILE.resolve() == path.resolve()):
        log.warning("%s in this folder is no longer read (the key is now %s, the same in every folder); to keep "
                    "tokens signed with it working, set MLFLOW_GATE_SECRET_KEY_FILE=%s", LEGACY_SECRET_FILE, path,
                    LEGACY_SECRET_FILE.resolve())

"""Settings from flags and MLFLOW_GATE_* environment variables; secrets only from the environment or files."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

SECRET_FILE = Path(".mlflow-gate/secret-key")


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


def secret_key() -> str:
    """MLFLOW_GATE_SECRET_KEY, else a key generated once into .mlflow-gate/secret-key (mode 0600)."""
    key = env("SECRET_KEY")
    if key:
        if len(key) < 16:
            raise ValueError("MLFLOW_GATE_SECRET_KEY is too short: use at least 16 characters (32 random bytes is best).")
        return key
    key_file = Path(env("SECRET_KEY_FILE", str(SECRET_FILE)) or SECRET_FILE)
    if key_file.exists():
        return key_file.read_text().strip()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    key = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key

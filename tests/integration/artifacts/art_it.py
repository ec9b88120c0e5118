"""Helpers for the artifact suites (plain functions; fixtures live in conftest.py)."""
from __future__ import annotations

import hashlib
import http.client
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import mlflow
import numpy as np
import yaml

from tests.support.gate import Gate
from tests.support.moto import GATE_USER, Moto
from tests.support.process import LogSource

BUCKETS = {"alpha": "team-alpha", "beta": "team-beta"}
ALICE, BOB, CAROL, MO, ROOT = "alice@corp.test", "bob@corp.test", "carol@corp.test", "mo@corp.test", "root@corp.test"
# Teams reached through a role the gate assumes (storage.role_arn): eta with presigned URLs (storage.direct) and
# object tags, theta proxied as alpha and beta are.
ROLE_BUCKETS = {"eta": "team-eta", "theta": "team-theta"}
EXTERNAL_IDS = {"eta": "acme-eta-7f3a", "theta": "acme-theta-91c2"}
ETA_TAGS = {"cost-center": "eta-42", "team": "eta"}
ERIN, TOM = "erin@corp.test", "tom@corp.test"
INTERNAL_PREFIX = "/_gate/internal/api/2.0/mlflow-artifacts/artifacts"

FIGURES: list[tuple[str, Any]] = []  # what the suites measured, shown at the end of the session (conftest.py)

UNSAFE_MARKERS = ("flavors:", "sklearn_version", '"spans"')  # bytes of an MLmodel file or of trace data


def uid() -> str:
    return uuid.uuid4().hex[:8]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Logged:
    """What one user logged in one experiment through the gate."""

    team: str  # alpha, beta, gamma, shared
    user: str
    exp_name: str
    exp_id: str
    run_id: str
    model_id: str
    model_uri: str
    trace_id: str
    attachment_id: str
    attachment: bytes
    marker: str  # a string in every file logged here, found nowhere else
    files: dict[str, bytes] = field(default_factory=dict)  # run-relative path -> content
    X: Any = None
    predictions: list[int] = field(default_factory=list)

    @property
    def run_prefix(self) -> str:
        return f"{self.exp_id}/{self.run_id}/artifacts"

    @property
    def model_prefix(self) -> str:
        return f"{self.exp_id}/models/{self.model_id}/artifacts"

    @property
    def trace_attachment_path(self) -> str:
        return f"{self.exp_id}/traces/{self.trace_id}/artifacts/attachments/{self.attachment_id}"

    def expected_paths(self) -> dict[str, bytes | None]:
        """Store-relative paths (under the root) this log must have produced; None: any content."""
        out: dict[str, bytes | None] = {f"{self.run_prefix}/{p}": c for p, c in self.files.items()}
        for name in ("MLmodel", "model.skops", "requirements.txt", "conda.yaml", "python_env.yaml"):
            out[f"{self.model_prefix}/{name}"] = None
        out[self.trace_attachment_path] = self.attachment
        return out


@mlflow.trace
def traced_answer(question: str, blob: bytes) -> dict[str, Any]:
    from mlflow.tracing.attachments import Attachment

    return {"answer": question.upper(), "blob": Attachment(content_type="application/octet-stream",
                                                           content_bytes=blob)}


def log_everything(gate: Any, user: str, team: str, exp_name: str) -> Logged:
    """As `user` through the gate with the real mlflow client: an experiment, a run with params, metrics, a file,
    a directory, an sklearn model (a LoggedModel) and a trace with an attachment."""
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    marker = f"{team}-secret-{uid()}"
    rng = np.random.default_rng(abs(hash(marker)) % 2**32)
    X = rng.random((40, 3))
    y = (X[:, 0] > 0.5).astype(int)
    files = {
        "notes/hello.txt": f"hello from {marker}\n".encode(),
        "dir/a.txt": f"a of {marker}\n".encode(),
        "dir/sub/b.bin": marker.encode() + rng.bytes(200_000),
    }
    attachment = f"attachment of {marker}".encode() + rng.bytes(1000)
    with gate.as_user(user) as c, tempfile.TemporaryDirectory() as tmp:
        exp_id = c.create_experiment(exp_name)
        mlflow.set_experiment(experiment_id=exp_id)
        notes = Path(tmp, "notes")
        notes.mkdir()
        (notes / "hello.txt").write_bytes(files["notes/hello.txt"])
        d = Path(tmp, "d")
        (d / "sub").mkdir(parents=True)
        (d / "a.txt").write_bytes(files["dir/a.txt"])
        (d / "sub" / "b.bin").write_bytes(files["dir/sub/b.bin"])
        with mlflow.start_run() as run:
            mlflow.log_param("team", team)
            mlflow.log_metric("loss", 0.25)
            mlflow.log_artifact(str(notes / "hello.txt"), "notes")
            mlflow.log_artifacts(str(d), "dir")
            model = LogisticRegression().fit(X, y)
            info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
            traced_answer(f"question of {team}", attachment)
            trace_id = mlflow.get_last_active_trace_id()
        assert trace_id, "no trace was recorded"
        trace = mlflow.get_trace(trace_id)
        assert trace is not None, f"trace {trace_id} cannot be read back"
        ref = trace.data.spans[0].outputs["blob"]
        from mlflow.tracing.attachments import Attachment

        parsed = Attachment.parse_ref(ref)
        assert parsed, f"the trace output is not an attachment reference: {ref!r}"
    return Logged(team=team, user=user, exp_name=exp_name, exp_id=exp_id, run_id=run.info.run_id,
                  model_id=info.model_id, model_uri=info.model_uri, trace_id=trace_id,
                  attachment_id=str(parsed["attachment_id"]), attachment=attachment, marker=marker, files=files, X=X,
                  predictions=[int(v) for v in model.predict(X[:5])])


def raw_request(base_url: str, method: str, raw_path: str, token: str | None = None, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes]:
    """Send `raw_path` exactly as given (no normalisation of `..`, `%2e`, `%2F` or backslashes)."""
    u = urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json" if body[:1] in (b"{", b"[") else
                            "application/octet-stream")
        conn.request(method, raw_path, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------------------
# the policy: alpha and beta on their own S3 bucket, gamma in a folder, everything else in the default store


def team_policy(name: str, members: list[str], **settings: Any) -> dict[str, Any]:
    """A team owning the experiments `NAME/` and the models `NAME-`."""
    return {"members": members, "experiments": [f"{name}/"], "models": [f"{name}-"], **settings}


def s3_store(bucket: str, endpoint: str, credentials_env: str) -> dict[str, Any]:
    """A team's artifacts in BUCKET on the S3 server at ENDPOINT, with the keys in CREDENTIALS_ENV_AWS_*."""
    return {"artifact_root": f"s3://{bucket}/mlflow",
            "storage": {"endpoint_url": endpoint, "region": "us-east-1", "credentials_env": credentials_env}}


def role_store(s3: Moto, team: str, external_id: str, **storage: Any) -> dict[str, Any]:
    """A team's artifacts in its bucket of ROLE_BUCKETS, reached through its role, assumed with EXTERNAL_ID."""
    return {"artifact_root": f"s3://{ROLE_BUCKETS[team]}/mlflow",
            "storage": {"endpoint_url": s3.url, "region": "us-east-1", "role_arn": s3.roles[team],
                        "external_id": external_id, **storage}}


def render_policy(s3: Moto, gamma_root: Path, alpha_env: str = "ALPHA", beta_env: str = "BETA",
                  extra_teams: dict[str, Any] | None = None, eta_external_id: str = EXTERNAL_IDS["eta"]) -> str:
    teams = {
        "alpha": team_policy("alpha", [ALICE], maintainers=[MO], **s3_store(BUCKETS["alpha"], s3.url, alpha_env)),
        "beta": team_policy("beta", [BOB], **s3_store(BUCKETS["beta"], s3.url, beta_env)),
        "gamma": team_policy("gamma", [CAROL], artifact_root=gamma_root.as_uri()),
        "eta": team_policy("eta", [ERIN], **role_store(s3, "eta", eta_external_id, direct=True, object_tags=ETA_TAGS)),
        "theta": team_policy("theta", [TOM], **role_store(s3, "theta", EXTERNAL_IDS["theta"])),
        **(extra_teams or {}),
    }
    grants = [{"to": ["everyone"], "experiments": ["shared/"], "models": ["shared-"], "permission": "edit"}]
    return yaml.safe_dump({"admins": [ROOT], "default": "none", "teams": teams, "grants": grants}, sort_keys=False)


def team_env(s3: Moto, **extra: str) -> dict[str, str]:
    """The gate's extra environment: alpha's and beta's keys, and the gate's own AWS identity (allowed nothing but
    assuming the team roles), with STS at moto."""
    return dict(ALPHA_AWS_ACCESS_KEY_ID=s3.keys["alpha"][0], ALPHA_AWS_SECRET_ACCESS_KEY=s3.keys["alpha"][1],
                BETA_AWS_ACCESS_KEY_ID=s3.keys["beta"][0], BETA_AWS_SECRET_ACCESS_KEY=s3.keys["beta"][1],
                AWS_ACCESS_KEY_ID=s3.keys[GATE_USER][0], AWS_SECRET_ACCESS_KEY=s3.keys[GATE_USER][1],
                AWS_ENDPOINT_URL_STS=s3.url, AWS_DEFAULT_REGION="us-east-1", **extra)


# --------------------------------------------------------------------------------------------------------------
# the servers


@dataclass
class ArtGate(Gate):
    """The gate plus what the artifact tests need to look behind it."""

    s3: Moto
    root: Path
    default_root: Path  # the gate's --artifacts-destination (file://)
    gamma_root: Path  # team gamma's artifact_root (file://)
    mlflow_log: Path
    internal_token: str

    @property
    def env(self) -> dict[str, str]:
        """The gate's environment (secrets included)."""
        return self.process.env

    def logs(self) -> dict[str, Path]:
        return {**super().logs(), "mlflow server": self.mlflow_log}

    def health(self) -> httpx.Response:
        """/_gate/health as an admin (anonymous callers get the status only)."""
        return httpx.get(self.url + "/_gate/health", headers={"Authorization": f"Bearer {self.token('root@corp.test')}"},
                         timeout=30)


@dataclass
class Version:
    name: str
    version: str
    source: Logged


@dataclass
class BadGate(LogSource):
    """A second gate on the same upstream whose policy breaks two stores: beta's keys have the wrong secret,
    delta's endpoint is a closed port."""

    gate: ArtGate
    wrong_secret: str
    delta_secret: str

    def logs(self) -> dict[str, Path]:
        return {"second gate (broken stores)": self.gate.log_path}

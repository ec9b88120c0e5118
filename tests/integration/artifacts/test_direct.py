"""`storage.role_arn` and `storage.direct`, end to end: the gate reaches team eta's and team theta's buckets only
through their roles (assumed with its own AWS identity, which no bucket lets in, and each team's external id), and
hands eta's clients URLs presigned for one object each, so that the real mlflow client (MLFLOW_ENABLE_PROXY_MULTIPART_
UPLOAD / _DOWNLOAD, lowered thresholds) moves the bytes straight to and from the bucket. moto checks the URLs'
signatures, their expiry and the signer's policies (tests/support/moto_presigned.py).

The mlflow client talks to the gate through a relay that counts the bytes (tests/support/relay.py): what goes
through the gate must not grow with the artifact's size.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.exceptions import ClientError
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

from tests.integration.artifacts.art_it import (
    ERIN,
    ETA_TAGS,
    FIGURES,
    ROLE_BUCKETS,
    TOM,
    ArtGate,
    BadGate,
    sha256,
    uid,
)
from tests.support.client import UserClient, env_vars
from tests.support.moto import GATE_USER, WEB_ROLE, WEB_SESSION, Moto, s3_client
from tests.support.relay import CountingRelay

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
API = "/api/2.0/mlflow-artifacts"
REST = "/api/2.0/mlflow/artifacts"
DIRECT_ENV = {"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true", "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "true",
              "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(5 * MiB),
              "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": str(5 * MiB),
              "MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE": str(4 * MiB)}
SIZES = {"small": 12 * MiB, "large": 36 * MiB}      # 3 and 8 parts up, 3 and 9 ranges down


@dataclass
class Transfer:
    """What the mlflow client did for one file: the bytes through the gate each way, what the gate answered."""

    size: int
    digest: str
    key: str                                   # in the team's bucket
    up_bytes: int = 0
    down_bytes: int = 0
    down_digest: str = ""
    created: list[Any] = field(default_factory=list)      # CreateMultipartUploadResponse
    presigned: list[Any] = field(default_factory=list)    # PresignedDownloadUrlResponse


@dataclass
class TeamRun:
    team: str
    user: str
    exp_id: str
    run_id: str
    transfers: dict[str, Transfer]


@contextlib.contextmanager
def spying(into: dict[str, list[Any]]) -> Iterator[None]:
    """Record what the gate answered to the client's multipart create and presigned download calls."""
    create, presigned = HttpArtifactRepository.create_multipart_upload, HttpArtifactRepository._get_presigned_download_url

    def spy_create(self: Any, *args: Any, **kwargs: Any) -> Any:
        into["created"].append(response := create(self, *args, **kwargs))
        return response

    def spy_presigned(self: Any, *args: Any, **kwargs: Any) -> Any:
        into["presigned"].append(response := presigned(self, *args, **kwargs))
        return response

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HttpArtifactRepository, "create_multipart_upload", spy_create)
        mp.setattr(HttpArtifactRepository, "_get_presigned_download_url", spy_presigned)
        yield


def transfer_through(gate: ArtGate, team: str, user: str, tmp: Path) -> TeamRun:
    """As USER, with the real mlflow client through a counting relay: upload then download each file of SIZES."""
    relay = CountingRelay(gate.url)
    client = UserClient(relay.url, user, gate.token(user))
    try:
        exp_id = client.create_experiment(f"{team}/direct-{uid()}")
        run_id = client.create_run(exp_id).info.run_id
        transfers: dict[str, Transfer] = {}
        for name, size in SIZES.items():
            data = os.urandom(size)
            (tmp / name).mkdir()
            (local := tmp / name / f"{name}.bin").write_bytes(data)
            t = transfers[name] = Transfer(size, sha256(data), f"mlflow/{exp_id}/{run_id}/artifacts/{name}/{name}.bin")
            seen: dict[str, list[Any]] = {"created": t.created, "presigned": t.presigned}
            with env_vars(**DIRECT_ENV), spying(seen):
                before = relay.total()
                client.log_artifact(run_id, str(local), name)
                t.up_bytes = relay.total() - before
                before = relay.total()
                got = client.download_artifacts(run_id, f"{name}/{name}.bin", str(tmp / name / "back"))
                t.down_bytes = relay.total() - before
            t.down_digest = sha256(Path(got).read_bytes())
        return TeamRun(team, user, exp_id, run_id, transfers)
    finally:
        relay.close()


@pytest.fixture(scope="module")
def eta_run(gate: ArtGate, tmp_path_factory: pytest.TempPathFactory) -> TeamRun:
    return transfer_through(gate, "eta", ERIN, tmp_path_factory.mktemp("eta-direct"))


@pytest.fixture(scope="module")
def theta_run(gate: ArtGate, tmp_path_factory: pytest.TempPathFactory) -> TeamRun:
    return transfer_through(gate, "theta", TOM, tmp_path_factory.mktemp("theta-role"))


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def role_session_of(s3: Moto, url: str) -> tuple[str, str]:
    """(role ARN, session name) of the assumed-role session whose key signed URL (moto's record of its sessions)."""
    key_id = query_of(url)["X-Amz-Credential"].split("/")[0]
    sessions = httpx.get(s3.url + "/moto-api/data.json", timeout=30).json()["sts"]["AssumedRole"]
    found = [(r["role_arn"], r["session_name"]) for r in sessions if r["access_key_id"] == key_id]
    assert found, f"{key_id} is not the key of an assumed-role session"
    return found[0]


# --------------------------------------------------------------------------------------------------------------
# eta: direct


def test_direct_bytes_land_in_the_team_bucket(gate: ArtGate, eta_run: TeamRun) -> None:
    s3 = gate.s3
    for name, t in eta_run.transfers.items():
        assert sha256(s3.get(ROLE_BUCKETS["eta"], t.key, who="eta")) == t.digest, name
        assert t.down_digest == t.digest, f"{name}: the download differs"
        for other in ("team-alpha", "team-beta", "team-theta"):
            assert t.key not in s3.keys_in(other), f"{t.key} is in {other}"
        pending = s3.client("eta").list_multipart_uploads(Bucket=ROLE_BUCKETS["eta"], Prefix=t.key)
        assert not pending.get("Uploads"), pending


def test_direct_bytes_do_not_go_through_the_gate(eta_run: TeamRun, theta_run: TeamRun) -> None:
    small, large = eta_run.transfers["small"], eta_run.transfers["large"]
    FIGURES.append(("bytes through the gate, mlflow client, 12 and 36 MiB up then down", {
        f"{run.team} ({'direct' if run.team == 'eta' else 'proxied'})": {
            name: {"up": t.up_bytes, "down": t.down_bytes} for name, t in run.transfers.items()}
        for run in (eta_run, theta_run)}))
    for way in ("up_bytes", "down_bytes"):
        a, b = getattr(small, way), getattr(large, way)
        assert a < MiB and b < MiB, f"{way}: {a} and {b} bytes through the gate for 12 and 36 MiB"
        assert b - a < 64 * 1024, f"{way}: the gate's traffic grows with the artifact's size ({a} -> {b} bytes)"


def test_client_used_presigned_urls_for_parts_and_downloads(gate: ArtGate, eta_run: TeamRun) -> None:
    bucket_netloc = urlsplit(gate.s3.url).netloc
    for name, t in eta_run.transfers.items():
        (created,) = t.created
        assert len(created.credentials) == -(-t.size // (5 * MiB)), name
        urls = [c.url for c in created.credentials] + [p.url for p in t.presigned]
        assert t.presigned and all(p.file_size == t.size for p in t.presigned), t.presigned
        for url in urls:
            parts = urlsplit(url)
            assert parts.netloc == bucket_netloc, f"{url[:80]} does not go to the bucket"
            assert parts.path == f"/{ROLE_BUCKETS['eta']}/{t.key}", parts.path
            assert int(query_of(url)["X-Amz-Expires"]) <= 900, url


def test_urls_are_signed_by_the_callers_role_session(gate: ArtGate, eta_run: TeamRun) -> None:
    t = eta_run.transfers["small"]
    for url in (t.created[0].credentials[0].url, t.presigned[0].url):
        assert role_session_of(gate.s3, url) == (gate.s3.roles["eta"], ERIN)


def test_download_url_is_an_attachment_of_that_object(gate: ArtGate, eta_run: TeamRun) -> None:
    url = eta_run.transfers["small"].presigned[0].url
    assert query_of(url)["response-content-disposition"] == 'attachment; filename="small.bin"'
    other = url.replace("/small/small.bin?", "/large/large.bin?")
    r = httpx.get(other, timeout=30)
    assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content, (r.status_code, r.text[:300])


def test_uploads_carry_the_team_object_tags(gate: ArtGate, eta_run: TeamRun) -> None:
    c = gate.s3.client("eta")
    for t in eta_run.transfers.values():
        tags = c.get_object_tagging(Bucket=ROLE_BUCKETS["eta"], Key=t.key)["TagSet"]
        assert {x["Key"]: x["Value"] for x in tags} == ETA_TAGS


def test_small_uploads_through_the_gate_are_tagged_too(gate: ArtGate, eta_run: TeamRun) -> None:
    with gate.as_user(ERIN) as erin:
        erin.log_text(eta_run.run_id, "below the multipart threshold", "notes/small.txt")
    key = f"mlflow/{eta_run.exp_id}/{eta_run.run_id}/artifacts/notes/small.txt"
    tags = gate.s3.client("eta").get_object_tagging(Bucket=ROLE_BUCKETS["eta"], Key=key)["TagSet"]
    assert {x["Key"]: x["Value"] for x in tags} == ETA_TAGS


def test_another_team_is_refused_before_any_url(gate: ArtGate, eta_run: TeamRun, theta_run: TeamRun) -> None:
    path = f"{eta_run.exp_id}/{eta_run.run_id}/artifacts/small/small.bin"
    folder = f"{eta_run.exp_id}/{eta_run.run_id}/artifacts/stolen"
    with gate.http(TOM) as h:
        answers = [h.get(f"{API}/presigned/{path}"),
                   h.post(f"{API}/mpu/create/{folder}", json={"path": "x.bin", "num_parts": 2}),
                   h.post(f"{REST}/presigned-download-url", json={"run_id": eta_run.run_id, "path": "small/small.bin"}),
                   h.post(f"{REST}/presigned-upload-url", json={"run_id": eta_run.run_id, "path": "stolen/x.bin"}),
                   h.get(f"{API}/presigned/999999999/nope/artifacts/x.bin")]
    for r in answers:
        assert r.status_code == 403 and r.json()["error_code"] == "PERMISSION_DENIED", (r.status_code, r.text[:300])
        assert "X-Amz" not in r.text and "http" not in r.json()["message"], r.text
    pending = gate.s3.client("eta").list_multipart_uploads(Bucket=ROLE_BUCKETS["eta"], Prefix=f"mlflow/{folder}")
    assert not pending.get("Uploads"), "a multipart upload was started for another team"


def test_missing_object_is_not_found(gate: ArtGate, eta_run: TeamRun) -> None:
    with gate.http(ERIN) as h:
        r = h.get(f"{API}/presigned/{eta_run.exp_id}/{eta_run.run_id}/artifacts/no-such-file.bin")
        assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", r.text
        r = h.post(f"{REST}/presigned-download-url", json={"run_id": eta_run.run_id, "path": "no-such-file.bin"})
        assert r.status_code == 404, r.text


def test_rest_presigned_upload_and_download(gate: ArtGate, eta_run: TeamRun) -> None:
    """The REST pair (SageMaker's mlflow plugin and the like): the tagging header is signed, so it must be sent."""
    data = os.urandom(300_000)
    with gate.http(ERIN) as h:
        r = h.post(f"{REST}/presigned-upload-url", json={"run_id": eta_run.run_id, "path": "rest/up.bin"})
        assert r.status_code == 200, r.text
        up = r.json()
        assert up["headers"] == {"Content-Type": "application/octet-stream",
                                 "x-amz-tagging": "cost-center=eta-42&team=eta"}, up
        assert int(query_of(up["presigned_url"])["X-Amz-Expires"]) <= 900
        untagged = httpx.put(up["presigned_url"], content=data, headers={"Content-Type": "application/octet-stream"})
        assert untagged.status_code == 403, "an upload without the team's tags was accepted"
        assert httpx.put(up["presigned_url"], content=data, headers=up["headers"]).status_code == 200
        r = h.post(f"{REST}/presigned-download-url", json={"run_id": eta_run.run_id, "path": "rest/up.bin",
                                                           "expiration": 3600})
        assert r.status_code == 200, r.text
        down = r.json()
    assert down["file_size"] == len(data) and down["headers"] == {}, down
    assert query_of(down["presigned_url"])["X-Amz-Expires"] == "900", "a URL lives 15 minutes at most"
    assert httpx.get(down["presigned_url"], timeout=30).content == data
    key = f"mlflow/{eta_run.exp_id}/{eta_run.run_id}/artifacts/rest/up.bin"
    tags = gate.s3.client("eta").get_object_tagging(Bucket=ROLE_BUCKETS["eta"], Key=key)["TagSet"]
    assert {x["Key"]: x["Value"] for x in tags} == ETA_TAGS


def test_presigned_url_expires(gate: ArtGate, eta_run: TeamRun) -> None:
    with gate.http(ERIN) as h:
        r = h.post(f"{REST}/presigned-download-url", json={"run_id": eta_run.run_id, "path": "small/small.bin",
                                                           "expiration": 1})
    assert r.status_code == 200, r.text
    time.sleep(2.5)
    r = httpx.get(r.json()["presigned_url"], timeout=30)
    assert r.status_code == 403 and b"Request has expired" in r.content, (r.status_code, r.text[:300])


def test_presigned_upload_for_a_logged_model(gate: ArtGate, eta_run: TeamRun) -> None:
    with gate.as_user(ERIN) as erin:
        model_id = erin.create_logged_model(eta_run.exp_id, name="direct-model").model_id
    with gate.http(ERIN) as h:
        r = h.post(f"{REST}/presigned-upload-url", json={"model_id": model_id, "path": "weights.bin"})
        assert r.status_code == 200, r.text
        up = r.json()
        assert httpx.put(up["presigned_url"], content=b"weights", headers=up["headers"]).status_code == 200
        both = h.post(f"{REST}/presigned-upload-url", json={"model_id": model_id, "run_id": eta_run.run_id,
                                                            "path": "x.bin"})
        assert both.status_code == 400 and both.json()["error_code"] == "INVALID_PARAMETER_VALUE", both.text
        bad = h.post(f"{REST}/presigned-download-url", json={"run_id": eta_run.run_id, "path": "x", "expiration": 0})
        assert bad.status_code == 400, bad.text
        escape = h.post(f"{REST}/presigned-upload-url", json={"run_id": eta_run.run_id, "path": "../../x.bin"})
        assert escape.status_code == 400, escape.text
    key = f"mlflow/{eta_run.exp_id}/models/{model_id}/artifacts/weights.bin"
    assert gate.s3.get(ROLE_BUCKETS["eta"], key, who="eta") == b"weights"


def test_the_gates_own_identity_reaches_no_bucket(gate: ArtGate) -> None:
    own = s3_client(gate.s3.url, *gate.s3.keys[GATE_USER])
    for bucket in ROLE_BUCKETS.values():
        with pytest.raises(ClientError) as exc:
            own.list_objects_v2(Bucket=bucket)
        assert exc.value.response["Error"]["Code"] == "AccessDenied"


# --------------------------------------------------------------------------------------------------------------
# theta: a role, no direct (today's proxied transfers, with the caller's role session)


def test_role_without_direct_proxies_the_bytes(gate: ArtGate, theta_run: TeamRun) -> None:
    for name, t in theta_run.transfers.items():
        assert sha256(gate.s3.get(ROLE_BUCKETS["theta"], t.key, who="theta")) == t.digest, name
        assert t.down_digest == t.digest
        assert not t.presigned, "no presigned download for a team without storage.direct"
        assert t.up_bytes > t.size and t.down_bytes > t.size, "the bytes went through the gate"
        assert all(urlsplit(c.url).path.startswith("/_gate/artifact-part/") for c in t.created[0].credentials)
    with gate.http(TOM) as h:
        r = h.get(f"{API}/presigned/{theta_run.exp_id}/{theta_run.run_id}/artifacts/small/small.bin")
    assert r.status_code == 501, r.text


def test_proxied_role_transfers_run_as_the_callers_session(gate: ArtGate, theta_run: TeamRun) -> None:
    sessions = httpx.get(gate.s3.url + "/moto-api/data.json", timeout=30).json()["sts"]["AssumedRole"]
    names = {r["session_name"] for r in sessions if r["role_arn"] == gate.s3.roles["theta"]}
    assert TOM in names, names


def test_the_gates_identity_may_be_a_web_identity(web_identity_gate: ArtGate, eta_run: TeamRun) -> None:
    """EKS (IRSA): botocore's default chain reads the token file and assumes the gate's role with it; that role
    session assumes the team's role, per caller."""
    with web_identity_gate.http(ERIN) as h:
        r = h.get(f"{API}/presigned/{eta_run.exp_id}/{eta_run.run_id}/artifacts/small/small.bin")
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    assert role_session_of(web_identity_gate.s3, url) == (web_identity_gate.s3.roles["eta"], ERIN)
    assert sha256(httpx.get(url, timeout=30).content) == eta_run.transfers["small"].digest
    sessions = httpx.get(web_identity_gate.s3.url + "/moto-api/data.json", timeout=30).json()["sts"]["AssumedRole"]
    assert any(r["role_arn"].endswith(f":role/{WEB_ROLE}") and r["session_name"] == WEB_SESSION for r in sessions)


# --------------------------------------------------------------------------------------------------------------
# a role that refuses the gate (wrong external id)


def test_wrong_external_id_is_refused(bad_gate: BadGate, eta_run: TeamRun) -> None:
    g = bad_gate.gate
    with g.http(ERIN) as h:
        r = h.get(f"{API}/presigned/{eta_run.exp_id}/{eta_run.run_id}/artifacts/small/small.bin")
    assert r.status_code == 503 and r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE", r.text
    message = r.json()["message"]
    assert "team eta" in message and "could not assume" in message and "external_id" in message, message
    health = g.health().json()
    assert health["stores"]["eta"]["ok"] is False, health["stores"]
    assert json.dumps(health).count(g.s3.keys[GATE_USER][1]) == 0

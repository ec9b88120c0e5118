"""Large artifacts: the mlflow client's proxied multipart upload lands complete in the team's bucket, and uploads
cut off mid-body leave nothing behind at their key."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

from tests.integration.artifacts.art_it import ALICE, BUCKETS, CAROL, ArtGate, Logged, raw_request, sha256, uid
from tests.support.client import env_vars

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
API = "/api/2.0/mlflow-artifacts"
MULTIPART_ENV = {"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
                 "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(5 * MiB),
                 "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": "5242880"}


@dataclass
class Upload:
    run_id: str
    key: str  # in team-alpha
    size: int
    digest: str
    calls: dict[str, list[Any]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def multipart_upload(gate: ArtGate, alpha_log: Logged, tmp_path_factory: pytest.TempPathFactory) -> Upload:
    data = os.urandom(12 * MiB)
    local = tmp_path_factory.mktemp("mpu") / "big.bin"
    local.write_bytes(data)
    calls: dict[str, list[Any]] = {"create": [], "complete": [], "abort": []}
    create, complete, abort = (HttpArtifactRepository.create_multipart_upload,
                               HttpArtifactRepository.complete_multipart_upload,
                               HttpArtifactRepository.abort_multipart_upload)

    def spy_create(self: Any, local_file: str, num_parts: int = 1, artifact_path: str | None = None) -> Any:
        response = create(self, local_file, num_parts, artifact_path)
        calls["create"].append((num_parts, response))
        return response

    def spy_complete(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["complete"].append((args, kwargs))
        return complete(self, *args, **kwargs)

    def spy_abort(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["abort"].append((args, kwargs))
        return abort(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp, env_vars(**MULTIPART_ENV):
        mp.setattr(HttpArtifactRepository, "create_multipart_upload", spy_create)
        mp.setattr(HttpArtifactRepository, "complete_multipart_upload", spy_complete)
        mp.setattr(HttpArtifactRepository, "abort_multipart_upload", spy_abort)
        with gate.as_user(ALICE) as alice:
            run_id = alice.create_run(alpha_log.exp_id).info.run_id
            alice.log_artifact(run_id, str(local), "big")
    return Upload(run_id, f"mlflow/{alpha_log.exp_id}/{run_id}/artifacts/big/big.bin", len(data), sha256(data), calls)


def test_client_used_multipart_upload(multipart_upload: Upload) -> None:
    calls = multipart_upload.calls
    assert [n for n, _ in calls["create"]] == [3], calls
    assert len(calls["complete"]) == 1 and not calls["abort"], calls


def test_multipart_parts_go_to_the_gate(gate: ArtGate, multipart_upload: Upload) -> None:
    """Clients talk only to the gate: the part URLs handed out point at the gate, not at the bucket."""
    (_, response), = multipart_upload.calls["create"]
    urls = [c.url for c in response.credentials]
    assert len(urls) == 3
    gate_netloc = urlsplit(gate.url).netloc
    assert all(urlsplit(u).netloc == gate_netloc for u in urls), urls


def test_multipart_object_is_complete_in_team_bucket(gate: ArtGate, multipart_upload: Upload) -> None:
    s3 = gate.s3
    c = s3.client("alpha")
    run_keys = s3.keys_in(BUCKETS["alpha"], multipart_upload.key.split("/artifacts/")[0] + "/", who="alpha")
    assert multipart_upload.key in run_keys, f"{multipart_upload.key} is not there; the run holds {run_keys}"
    head = c.head_object(Bucket=BUCKETS["alpha"], Key=multipart_upload.key)
    assert head["ContentLength"] == multipart_upload.size
    assert sha256(s3.get(BUCKETS["alpha"], multipart_upload.key, who="alpha")) == multipart_upload.digest
    pending = c.list_multipart_uploads(Bucket=BUCKETS["alpha"], Prefix=multipart_upload.key).get("Uploads", [])
    assert not pending, pending
    assert multipart_upload.key.split("/", 1)[1] not in {k.split("/", 1)[-1] for k in s3.keys_in(BUCKETS["beta"])}


def test_multipart_object_downloads_back(gate: ArtGate, multipart_upload: Upload, tmp_path: Path) -> None:
    with gate.as_user(ALICE) as alice:
        local = alice.download_artifacts(multipart_upload.run_id, "big/big.bin", str(tmp_path))
    assert os.path.getsize(local) == multipart_upload.size
    assert sha256(Path(local).read_bytes()) == multipart_upload.digest
    digest = hashlib.sha256()
    with gate.http(ALICE) as h, h.stream("GET", "/get-artifact",
                                         params={"run_uuid": multipart_upload.run_id, "path": "big/big.bin"}) as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == multipart_upload.digest


# --------------------------------------------------------------------------------------------------------------
# interrupted uploads


def _cut_off_content_length(gate: ArtGate, token: str, raw_path: str, declared: int, sent: int) -> None:
    """A PUT that announces `declared` bytes, sends `sent`, then the connection goes away."""
    u = urlsplit(gate.url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall((f"PUT {raw_path} HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {token}\r\n"
                   f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n").encode())
        chunk = os.urandom(MiB)
        for _ in range(sent // MiB):
            s.sendall(chunk)
        time.sleep(0.5)  # let the gate start writing to the store


def _cut_off_chunked(gate: ArtGate, token: str, raw_path: str, sent: int) -> None:
    """A chunked PUT whose body generator fails after `sent` bytes (no final chunk is ever sent)."""
    def body() -> Iterator[bytes]:
        chunk = os.urandom(MiB)
        for _ in range(sent // MiB):
            yield chunk
        time.sleep(0.5)
        raise RuntimeError("the client died mid-upload")

    with pytest.raises((RuntimeError, httpx.HTTPError)):
        httpx.put(gate.url + raw_path, content=body(), headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _present(gate: ArtGate, log: Logged, rel: str) -> bool:
    if log.team == "gamma":
        return (gate.gamma_root / log.exp_id / rel).exists()
    return gate.s3.exists(BUCKETS[log.team], f"mlflow/{log.exp_id}/{rel}", who=log.team)


def _absent_for_a_while(gate: ArtGate, log: Logged, rel: str, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not _present(gate, log, rel), f"an interrupted upload left {rel} in {log.team}'s store"
        time.sleep(0.25)


@pytest.mark.parametrize("how", ["content-length", "chunked"])
@pytest.mark.parametrize("team", ["alpha", "gamma"])
def test_interrupted_upload_leaves_nothing(gate: ArtGate, request: pytest.FixtureRequest, team: str,
                                           how: str) -> None:
    log: Logged = request.getfixturevalue(f"{team}_log")
    user = ALICE if team == "alpha" else CAROL
    token = gate.token(user)
    with gate.as_user(user) as c:
        run_id = c.create_run(log.exp_id).info.run_id
    name = f"interrupted-{how}-{uid()}.bin"
    rel = f"{run_id}/artifacts/{name}"
    raw_path = f"{API}/artifacts/{log.exp_id}/{rel}"
    # 9 MiB of a 16 MiB body: more than one 8 MiB part, so a store that writes in parts has started one.
    if how == "content-length":
        _cut_off_content_length(gate, token, raw_path, declared=16 * MiB, sent=9 * MiB)
    else:
        _cut_off_chunked(gate, token, raw_path, sent=9 * MiB)
    _absent_for_a_while(gate, log, rel)
    with gate.http(user) as h:
        listing = h.get(f"{API}/artifacts", params={"path": f"{log.exp_id}/{run_id}/artifacts"})
        assert listing.status_code == 200, listing.text
        assert name not in listing.text, listing.text
        # the key is usable: a complete upload afterwards lands
        r = h.put(raw_path, content=b"complete now")
        assert r.status_code == 200, r.text
        assert h.get(raw_path).content == b"complete now"
    assert _present(gate, log, rel)


def test_aborted_multipart_upload_leaves_nothing(gate: ArtGate, alpha_log: Logged) -> None:
    s3 = gate.s3
    with gate.as_user(ALICE) as c:
        run_id = c.create_run(alpha_log.exp_id).info.run_id
    rel = f"{run_id}/artifacts/aborted.bin"
    path = f"{alpha_log.exp_id}/{rel}"
    token = gate.token(ALICE)
    status, body = raw_request(gate.url, "POST", f"{API}/mpu/create/{path}", token=token,
                               body=json.dumps({"path": "aborted.bin", "num_parts": 2}).encode())
    assert status == 200, body
    created = json.loads(body)
    part = httpx.put(created["credentials"][0]["url"], content=os.urandom(5 * MiB), timeout=60)
    assert part.status_code == 200, part.text
    # the second part is cut off mid-body, then the client aborts
    second = created["credentials"][1]["url"]
    u = urlsplit(second)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall((f"PUT {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Length: {5 * MiB}\r\n\r\n").encode()
                  + os.urandom(2 * MiB))
        time.sleep(0.3)
    assert not s3.exists(BUCKETS["alpha"], f"mlflow/{path}", who="alpha")
    status, body = raw_request(gate.url, "POST", f"{API}/mpu/abort/{path}", token=token,
                               body=json.dumps({"path": "aborted.bin", "upload_id": created["upload_id"]}).encode())
    assert status == 200, body
    assert not s3.exists(BUCKETS["alpha"], f"mlflow/{path}", who="alpha")
    pending = s3.client("alpha").list_multipart_uploads(Bucket=BUCKETS["alpha"], Prefix=f"mlflow/{path}")
    assert not pending.get("Uploads"), pending.get("Uploads")
    # the aborted upload cannot be completed any more
    status, body = raw_request(gate.url, "POST", f"{API}/mpu/complete/{path}", token=token,
                               body=json.dumps({"path": "aborted.bin", "upload_id": created["upload_id"],
                                                "parts": [{"part_number": 1, "etag": part.headers.get("etag", "")}]
                                                }).encode())
    assert status != 200, body
    assert not s3.exists(BUCKETS["alpha"], f"mlflow/{path}", who="alpha")


def test_gate_healthy_after_interruptions(gate: ArtGate) -> None:
    r = gate.health()
    assert r.status_code == 200, r.text
    assert all(v.get("ok") for k, v in r.json().get("stores", {}).items()), r.text

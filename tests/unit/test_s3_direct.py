"""The S3 store's parts that need no server: role session names, the per-caller session cache, which credentials a
request signs with, presigned URLs (botocore's own, re-signed parts), expiry caps. (The policy's storage keys:
tests/unit/test_policy_keys.py.)"""
from __future__ import annotations

import asyncio
import datetime
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.credentials import Credentials

from proxy import aws_credentials
from proxy.artifact_views import _expiration
from proxy.aws_credentials import SIGNING, CallerCredentials, RoleSessions, session_name
from proxy.errors import BadRequest
from proxy.policy import Storage
from proxy.s3 import PRESIGN_SECONDS, S3Store, resign_parts

ROLE = "arn:aws:iam::111122223333:role/mlflow-vision"


@pytest.mark.parametrize(("caller", "expected"), [
    ("alice@corp.test", "alice@corp.test"),
    ("ci-bot", "ci-bot"),
    (None, "mlflow-gate"),
    ("", "mlflow-gate"),
])
def test_session_name_is_the_callers_id(caller: str | None, expected: str) -> None:
    assert session_name(caller) == expected


@pytest.mark.parametrize("caller", ["x", "a b/c:d", "élise@corp.test", "u" * 65, "svc:team/robot#1", "mlflow-gate"])
def test_session_name_fits_sts_and_stays_distinct(caller: str) -> None:
    name = session_name(caller)
    assert 2 <= len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "_+=,.@-") for c in name), name
    assert name != session_name(caller + "x") and name != session_name(caller[:-1] + "?")


def test_long_ids_sharing_a_prefix_get_different_sessions() -> None:
    a, b = "a" * 70 + "@corp.test", "a" * 70 + "@other.test"
    assert session_name(a) != session_name(b) and session_name(a)[:53] == session_name(b)[:53]


def role_sessions(**storage: Any) -> RoleSessions:
    return RoleSessions(Storage(role_arn=ROLE, **storage), "eu-west-1")


def test_one_session_per_caller_kept_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws_credentials, "CALLERS", 3)
    sessions = role_sessions(external_id="acme")
    alice = sessions.for_caller("alice@corp.test")
    assert sessions.for_caller("alice@corp.test") is alice
    for who in ("b@x.test", "c@x.test", "d@x.test"):
        sessions.for_caller(who)
    assert len(sessions._sessions) == 3
    assert sessions.for_caller("alice@corp.test") is not alice, "the least recently used session was dropped"


def test_concurrent_first_requests_share_one_session() -> None:
    sessions = role_sessions()
    got: list[Credentials] = []
    threads = [threading.Thread(target=lambda: got.append(sessions.for_caller("new@corp.test"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in got}) == 1


def test_assume_role_is_asked_with_the_session_name_and_external_id(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    class FakeSts:
        def assume_role(self, **kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            return {"Credentials": {"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "s", "SessionToken": "t",
                                    "Expiration": "2999-01-01T00:00:00Z"},
                    "AssumedRoleUser": {"Arn": f"{ROLE}/x"}}

    sessions = role_sessions(external_id="acme-vision")
    monkeypatch.setattr(sessions, "_client", lambda *a, **k: FakeSts())
    monkeypatch.setattr(sessions, "get_frozen_credentials", Credentials("GATEKEY", "s").get_frozen_credentials)
    frozen = sessions.for_caller("bob@corp.test").get_frozen_credentials()
    assert frozen.access_key == "ASIAEXAMPLE"
    sessions.for_caller("bob@corp.test").get_frozen_credentials()           # cached, not asked again
    assert calls == [{"RoleArn": ROLE, "RoleSessionName": "bob@corp.test", "DurationSeconds": 3600,
                      "ExternalId": "acme-vision"}]


def test_a_request_signs_with_its_callers_session() -> None:
    signer = CallerCredentials(role_sessions())

    async def signing_as(key: str) -> str:
        token = SIGNING.set(Credentials(key, "secret"))
        try:   # botocore signs in the worker thread that runs the call
            return await asyncio.to_thread(lambda: str(signer.get_frozen_credentials().access_key))
        finally:
            SIGNING.reset(token)

    async def both() -> list[str]:
        return list(await asyncio.gather(signing_as("BOBKEY"), signing_as("CAROLKEY")))

    assert asyncio.run(both()) == ["BOBKEY", "CAROLKEY"]


# --------------------------------------------------------------------------------------------------------------
# presigned URLs


def store(**storage: Any) -> S3Store:
    env = {"T_AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "T_AWS_SECRET_ACCESS_KEY": "secret"}
    return S3Store("s3://bucket/root", Storage(endpoint_url="http://127.0.0.1:9", region="eu-west-1",
                                               credentials_env="T", **storage), "the store of team t", "t", env)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_resigned_part_urls_are_botocores(monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.auth

    now = datetime.datetime(2026, 12, 1, 12, 0, 0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)   # one second for every signature
    s = store(direct=True)
    params = {"Bucket": "bucket", "Key": "root/1/r/artifacts/a b+c.bin", "UploadId": "up/load=id", "PartNumber": 1}
    first = s.client.generate_presigned_url("upload_part", Params=params, ExpiresIn=900)
    ours = resign_parts(first, s._frozen(), "eu-west-1", range(2, 5))
    for number, url in enumerate(ours, 2):
        q = query(url)
        theirs = query(s.client.generate_presigned_url("upload_part", Params={**params, "PartNumber": number},
                                                       ExpiresIn=900))
        assert q == theirs
        assert q["partNumber"] == str(number) and q["uploadId"] == "up/load=id" and q["X-Amz-Expires"] == "900"
        assert urlsplit(url).path == urlsplit(first).path


def test_presigned_urls_live_15_minutes_at_most() -> None:
    s = store(direct=True, object_tags=(("cost-center", "cv 42"), ("team", "t")))
    url, headers = asyncio.run(s.upload_url("1/r/artifacts/model.json", seconds=604800))
    assert query(url)["X-Amz-Expires"] == str(PRESIGN_SECONDS) == "900"
    assert headers == {"Content-Type": "application/json", "x-amz-tagging": "cost-center=cv%2042&team=t"}
    assert "x-amz-tagging" in query(url)["X-Amz-SignedHeaders"].split(";"), "the tags are part of the signature"
    urls = asyncio.run(s.part_urls("1/r/artifacts/big.bin", "upload-1", 3))
    assert [query(u)["partNumber"] for u in urls] == ["1", "2", "3"]
    assert all(query(u)["X-Amz-Expires"] == "900" and urlsplit(u).path == "/bucket/root/1/r/artifacts/big.bin"
               for u in urls)


def test_only_direct_stores_presign() -> None:
    assert store().presigned is None
    assert store(direct=True).presigned is not None
    assert store(object_tags=(("a", "b"),)).tags == {"Tagging": "a=b"}
    assert store().tags == {}


@pytest.mark.parametrize(("value", "expected"), [(None, 300), ("60", 60), ("604800", 604800)])
def test_expiration_asked(value: str | None, expected: int) -> None:
    assert _expiration(value, 300) == expected


@pytest.mark.parametrize("value", ["0", "-5", "604801", "soon"])
def test_expiration_refused(value: str) -> None:
    with pytest.raises(BadRequest):
        _expiration(value, 300)

"""`moto_server` that also checks presigned S3 URLs once IAM is enforced.

moto 5.2.5 enforces IAM (INITIAL_NO_AUTH_ACTION_COUNT) for requests signed in the `Authorization` header only: a
request signed in its query string (a presigned URL, SigV4 `X-Amz-Signature`) fails with a 500 (KeyError
'HTTP_AUTHORIZATION') once IAM is enforced, and is not checked at all before. This launcher teaches moto's S3 check
the query form, as S3 does it: the signature is recomputed with the signer's secret over the method, the path, the
query without the signature and the signed headers; a URL past X-Amz-Date + X-Amz-Expires is refused ("Request has
expired"); then the signer's own policies decide, as for any other request. Presigned URLs of the old form (SigV2,
`AWSAccessKeyId=...&Signature=...`) are refused. It also lets STS AssumeRoleWithWebIdentity through unsigned, as AWS
does (an EKS pod's identity), and keeps /moto-api/data.json answering (see `_model_data`).

Run by file path (it imports only moto and botocore): `python tests/support/moto_presigned.py -H 127.0.0.1 -p PORT`.
"""
from __future__ import annotations

import datetime as dt
import hmac
import json
import os
import sys
from typing import Any
from urllib.parse import parse_qsl, urlsplit

if __name__ == "__main__":  # run by path, this folder leads sys.path: its moto.py would shadow the moto package
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam.access_control import S3IAMRequest
from moto.s3.exceptions import S3ClientError

MAX_EXPIRES = 7 * 24 * 3600   # what S3 accepts for X-Amz-Expires


class RequestExpired(S3ClientError):
    code = 403

    def __init__(self) -> None:
        super().__init__("AccessDenied", "Request has expired")


class QuerySignedRequest(S3IAMRequest):
    """An S3 request signed in its query string (SigV4), checked like moto checks a header-signed one."""

    def __init__(self, account_id: str, method: str, path: str, data: dict[str, str], body: bytes,
                 headers: Any, action: str) -> None:
        self.query = dict(parse_qsl(urlsplit(path).query, keep_blank_values=True))
        fake = {k: v for k, v in headers.items()}
        if "X-Amz-Credential" not in self.query or self.query.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
            fake["Authorization"] = "Credential=unsigned/19700101/us-east-1/s3/aws4_request,"
        else:
            fake["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.query['X-Amz-Credential']},"
                                     f" SignedHeaders={self.query.get('X-Amz-SignedHeaders', '')},"
                                     f" Signature={self.query.get('X-Amz-Signature', '')}")
        if "X-Amz-Security-Token" in self.query:
            fake["X-Amz-Security-Token"] = self.query["X-Amz-Security-Token"]
        self.original_headers = headers
        super().__init__(account_id, method, path, data, body, fake, action)

    def check_signature(self) -> None:
        q = self.query
        try:
            signed_at = dt.datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
            expires = int(q["X-Amz-Expires"])
        except (KeyError, ValueError):
            self._raise_signature_does_not_match()
            return
        if not 1 <= expires <= MAX_EXPIRES:
            self._raise_signature_does_not_match()
        if dt.datetime.now(dt.UTC) > signed_at + dt.timedelta(seconds=expires):
            raise RequestExpired()
        if not hmac.compare_digest(q.get("X-Amz-Signature", ""), self._query_signature(expires)):
            self._raise_signature_does_not_match()

    def _query_signature(self, expires: int) -> str:
        parts = urlsplit(self._path)
        query = "&".join(p for p in parts.query.split("&") if not p.startswith("X-Amz-Signature="))
        signed = set(self.query.get("X-Amz-SignedHeaders", "host").split(";"))
        headers = {k: v for k, v in self.original_headers.items() if k.lower() in signed}
        request = AWSRequest(method=self._method, url=f"http://{self.original_headers.get('Host', '')}{parts.path}"
                                                      f"?{query}", headers=headers)
        request.context["timestamp"] = self.query["X-Amz-Date"]
        auth = S3SigV4QueryAuth(self._access_key.create_credentials(), "s3", self._region, expires=expires)
        canonical = auth.canonical_request(request)
        return str(auth.signature(auth.string_to_sign(request, canonical), request))


_header_check = ActionAuthenticatorMixin._authenticate_and_authorize_s3_action


def _s3_action(self: Any, bucket_name: str | None = None, key_name: str | None = None) -> None:
    if "Authorization" in self.headers or "Signature=" not in urlsplit(self.uri).query:
        _header_check(self, bucket_name=bucket_name, key_name=key_name)
        return
    arn = f"{bucket_name or '*'}/{key_name}" if key_name else (bucket_name or "*")
    from moto.utilities.utils import get_partition

    self._authenticate_and_authorize_action(QuerySignedRequest, f"arn:{get_partition(self.region)}:s3:::{arn}")


_signed_check = ActionAuthenticatorMixin._authenticate_and_authorize_normal_action


def _normal_action(self: Any, resource: str = "*") -> None:
    """STS AssumeRoleWithWebIdentity is unsigned (the web identity token is the proof); moto 5.2.5 fails on it (no
    Authorization header) once IAM is enforced. moto checks neither the token nor the role's trust for it."""
    if "Authorization" not in self.headers and self._get_action() == "AssumeRoleWithWebIdentity":
        return
    _signed_check(self, resource)


def _model_data(self: Any, request: Any, full_url: str, headers: Any) -> tuple[int, dict[str, str], str]:
    """moto's /moto-api/data.json (the tests read the STS role sessions from it), skipping attributes that fail to
    read: moto 5.2.5's FakeKey.status raises MissingBucket for some keys, which fails the whole answer."""
    from moto.core.model_instances import model_data

    out = {service: {name: [_readable(i) for i in model.instances_tracked]  # type: ignore[attr-defined]
                     for name, model in sorted(models.items())}
           for service, models in sorted(model_data.items())}
    return 200, {"Content-Type": "application/javascript"}, json.dumps(out)


def _readable(instance: Any) -> dict[str, Any]:
    out = {}
    for attr in dir(instance):
        if attr.startswith("_"):
            continue
        try:
            value = getattr(instance, attr)
            json.dumps(value)
        except Exception:  # noqa: BLE001, S112 - moto's models: any attribute may fail to read or to serialize
            continue
        out[attr] = value
    return out


def install() -> None:
    from moto.moto_api._internal.responses import MotoAPIResponse

    ActionAuthenticatorMixin._authenticate_and_authorize_s3_action = _s3_action  # type: ignore[method-assign]
    ActionAuthenticatorMixin._authenticate_and_authorize_normal_action = _normal_action  # type: ignore[method-assign]
    MotoAPIResponse.model_data = _model_data  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    from moto.server import main

    sys.exit(main())

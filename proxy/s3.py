"""A team's artifacts in S3 (or an S3-compatible store): boto3's botocore clients run in worker threads (the reference
S3 client, with the explicit multipart API that MLflow's multipart upload needs), every transfer streamed.

With `storage.direct`, the store also signs URLs for one object each (SigV4, valid PRESIGN_SECONDS at most), so
that the client moves the bytes straight to and from the bucket; the gate itself then only creates, completes and
aborts multipart uploads and reads an object's size. With `storage.object_tags`, every object the gate writes, and
every object written through a URL it signs, carries the team's tags (cost attribution).
"""
from __future__ import annotations

import asyncio
import copy
import mimetypes
import os
import posixpath
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .artifacts import ArtifactMissing, FileInfo, StoreUnavailable, chunks_of, join
from .aws_credentials import SIGNING, CallerCredentials, RoleSessions, base_session, session_with
from .policy import Storage

PART = 8 * 1024 * 1024          # S3 parts of the gate's own uploads (the minimum is 5 MiB)
IN_FLIGHT = 4                   # parts of one upload sent at the same time (memory: about PART x (IN_FLIGHT + 1))
SPOOL = 1024 * 1024             # a client's multipart part beyond this is spooled to disk, not held in memory
PRESIGN_SECONDS = 15 * 60       # the longest a URL the gate signs is valid
_MISSING = ("NoSuchKey", "404", "NotFound", "NoSuchUpload")


def _config() -> Config:
    return Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                  max_pool_connections=32, s3={"addressing_style": "path"}, signature_version="s3v4",
                  # no extra CRC32 pass over every byte where S3 does not require one
                  request_checksum_calculation="when_required", response_checksum_validation="when_required")


class S3Store:
    def __init__(self, root: str, storage: Storage, label: str, name: str = "",
                 environ: Mapping[str, str] = os.environ) -> None:
        parts = urlsplit(root)
        self.bucket, self.prefix, self.label, self.name = parts.netloc, parts.path.strip("/"), label, name
        self.region = storage.region or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.direct = storage.direct
        self.tagging = urlencode(storage.object_tags, quote_via=quote)
        self.tags = {"Tagging": self.tagging} if self.tagging else {}
        self.roles = RoleSessions(storage, self.region) if storage.role_arn else None
        self.signing: Credentials | None = None       # the caller's role session (see acting_for)
        # what the client signs with: the caller's role session, the team's keys, or (None) the default chain
        self.credentials: Credentials | None = None
        if self.roles is not None:
            self.credentials = CallerCredentials(self.roles)
        elif storage.credentials_env:
            self.credentials = Credentials(environ.get(f"{storage.credentials_env}_AWS_ACCESS_KEY_ID") or "",
                                           environ.get(f"{storage.credentials_env}_AWS_SECRET_ACCESS_KEY") or "")
        self.session = session_with(self.region, self.credentials) if self.credentials else base_session(self.region)
        self.client: Any = self.session.create_client("s3", endpoint_url=storage.endpoint_url, config=_config())

    def acting_for(self, caller: str | None) -> S3Store:
        """This store signing as CALLER's own role session (with a role; without one, there is one identity)."""
        if self.roles is None:
            return self
        bound = copy.copy(self)
        bound.signing = self.roles.for_caller(caller)
        return bound

    @property
    def presigned(self) -> S3Store | None:
        return self if self.direct else None

    def _key(self, path: str) -> str:
        return join(self.prefix, path)

    async def _run(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """FN(**KWARGS) in a worker thread, signing as this store's caller; S3's answers mapped to the store's
        exceptions."""
        token = SIGNING.set(self.signing)
        try:
            return await asyncio.to_thread(fn, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _MISSING:
                raise ArtifactMissing(kwargs.get("Key", "")) from exc
            if exc.operation_name == "AssumeRole" and self.roles is not None:
                raise StoreUnavailable(f"{self.label}: the gate could not assume {self.roles.role_arn} "
                                       f"({code or 'error'}); check the role's trust policy (it must name the "
                                       "gate's AWS identity) and the team's external_id.") from exc
            raise StoreUnavailable(f"{self.label} refused the request ({code or 'error'}); check the team's "
                                   "storage settings and credentials.") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"{self.label} is unreachable or has no credentials "
                                   f"({exc.__class__.__name__}).") from exc
        finally:
            SIGNING.reset(token)

    async def _call(self, name: str, **kwargs: Any) -> Any:
        return await self._run(getattr(self.client, name), **kwargs)

    async def open(self, path: str) -> tuple[int | None, AsyncIterator[bytes]]:
        resp = await self._call("get_object", Bucket=self.bucket, Key=self._key(path))
        return resp.get("ContentLength"), chunks_of(resp["Body"])

    async def write(self, path: str, chunks: AsyncIterator[bytes]) -> int:
        """Stream to S3: one PUT for small bodies, else parts of PART bytes, each sent while the next
        is being received (at most two parts in memory). A failure aborts the multipart upload, so
        an interrupted upload leaves no object behind."""
        key = self._key(path)
        upload = _PartSender(self, key)
        pending: list[bytes] = []
        size = total = 0
        try:
            async for chunk in chunks:
                pending.append(chunk)
                size += len(chunk)
                total += len(chunk)
                if size >= PART:
                    await upload.send(b"".join(pending))
                    pending, size = [], 0
            if upload.upload_id is None:
                await self._call("put_object", Bucket=self.bucket, Key=key, Body=b"".join(pending), **self.tags)
                return total
            if pending:
                await upload.send(b"".join(pending))
            await upload.complete()
            return total
        except BaseException:
            await upload.abort()
            raise

    async def listdir(self, path: str) -> list[FileInfo]:
        prefix = self._key(path)
        prefix = prefix + "/" if prefix else ""
        out: list[FileInfo] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            resp = await self._call("list_objects_v2", **kwargs)
            out += [FileInfo(p["Prefix"][len(prefix):].rstrip("/"), True) for p in resp.get("CommonPrefixes", [])]
            out += [FileInfo(o["Key"][len(prefix):], False, int(o["Size"])) for o in resp.get("Contents", [])
                    if o["Key"] != prefix]
            token = resp.get("NextContinuationToken")
            if not token:
                return out

    async def delete(self, path: str) -> None:
        key = self._key(path)
        keys = [key]
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": key + "/"}
            if token:
                kwargs["ContinuationToken"] = token
            resp = await self._call("list_objects_v2", **kwargs)
            keys += [o["Key"] for o in resp.get("Contents", [])]
            token = resp.get("NextContinuationToken")
            if not token:
                break
        for i in range(0, len(keys), 1000):
            await self._call("delete_objects", Bucket=self.bucket,
                             Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    async def mpu_create(self, path: str) -> str:
        created = await self._call("create_multipart_upload", Bucket=self.bucket, Key=self._key(path), **self.tags)
        return str(created["UploadId"])

    async def mpu_part(self, path: str, upload_id: str, number: int, chunks: AsyncIterator[bytes]) -> str:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL) as spool:
            async for chunk in chunks:
                await asyncio.to_thread(spool.write, chunk)
            size = spool.tell()
            spool.seek(0)
            resp = await self._call("upload_part", Bucket=self.bucket, Key=self._key(path), UploadId=upload_id,
                                    PartNumber=number, Body=spool, ContentLength=size)
        return str(resp["ETag"])

    async def mpu_complete(self, path: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        await self._call("complete_multipart_upload", Bucket=self.bucket, Key=self._key(path), UploadId=upload_id,
                         MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in sorted(parts)]})

    async def mpu_abort(self, path: str, upload_id: str) -> None:
        await self._call("abort_multipart_upload", Bucket=self.bucket, Key=self._key(path), UploadId=upload_id)

    async def check(self) -> tuple[bool, str]:
        try:
            await self._call("list_objects_v2", Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)
        except (StoreUnavailable, ArtifactMissing) as exc:
            return False, str(exc)
        return True, f"{self.label} reachable"

    # --- presigned URLs (storage.direct) --------------------------------------------------------

    async def download_url(self, path: str, seconds: int = PRESIGN_SECONDS) -> tuple[str, int]:
        """A URL to GET the object at PATH (served as an attachment) and its size; ArtifactMissing when there is none."""
        key = self._key(path)

        def sign() -> tuple[str, int]:
            size = int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
            disposition = _attachment(posixpath.basename(key))
            return self.client.generate_presigned_url("get_object", ExpiresIn=min(seconds, PRESIGN_SECONDS), Params={
                "Bucket": self.bucket, "Key": key, "ResponseContentDisposition": disposition}), size

        return await self._run(sign)  # type: ignore[no-any-return]

    async def upload_url(self, path: str, seconds: int = PRESIGN_SECONDS) -> tuple[str, dict[str, str]]:
        """A URL to PUT the object at PATH, and the headers the client must send with it (they are signed)."""
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        params = {"Bucket": self.bucket, "Key": self._key(path), "ContentType": content_type, **self.tags}
        url = await self._call("generate_presigned_url", ClientMethod="put_object", Params=params,
                               ExpiresIn=min(seconds, PRESIGN_SECONDS))
        headers = {"Content-Type": content_type, **({"x-amz-tagging": self.tagging} if self.tagging else {})}
        return str(url), headers

    async def part_urls(self, path: str, upload_id: str, count: int) -> list[str]:
        """URLs to PUT parts 1..COUNT of a multipart upload of PATH (the gate created it, with the team's tags)."""
        params = {"Bucket": self.bucket, "Key": self._key(path), "UploadId": upload_id, "PartNumber": 1}

        def sign() -> list[str]:
            first = self.client.generate_presigned_url("upload_part", Params=params, ExpiresIn=PRESIGN_SECONDS)
            return [first, *resign_parts(first, self._frozen(), self.client.meta.region_name, range(2, count + 1))]

        return await self._run(sign)  # type: ignore[no-any-return]

    def _frozen(self) -> Any:
        """The credentials the client signs with right now (in `_run`: as this store's caller)."""
        credentials = self.credentials or self.session.get_credentials()
        if credentials is None:
            raise NoCredentialsError()
        return credentials.get_frozen_credentials()


def resign_parts(first: str, frozen: Any, region: str, numbers: range) -> list[str]:
    """The URL of part 1 signed again for each of NUMBERS: the same host, path and upload, signed with botocore's
    own SigV4 query signer. botocore's generate_presigned_url takes ~0.4 ms a URL (parameter validation, endpoint
    rules, events); this ~0.15 ms (1 GiB in mlflow's 10 MiB parts: 103 URLs). tests/unit/test_s3.py checks that the
    URLs are the ones botocore would make."""
    parts = urlsplit(first)
    expires = int(dict(parse_qsl(parts.query))["X-Amz-Expires"])
    keep = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not k.startswith("X-Amz-")]
    out = []
    for number in numbers:
        query = urlencode([(k, str(number) if k == "partNumber" else v) for k, v in keep], quote_via=quote)
        request = AWSRequest(method="PUT", url=f"{parts.scheme}://{parts.netloc}{parts.path}?{query}")
        S3SigV4QueryAuth(frozen, "s3", region, expires=expires).add_auth(request)
        out.append(request.url)
    return out


def _attachment(name: str) -> str:
    """Content-Disposition of a presigned download, as MLflow's own S3 repository sets it: a browser saves the file
    instead of rendering it on the bucket's origin."""
    if not name.isascii() or not name.isprintable():
        return f"attachment; filename*=UTF-8''{quote(name)}"
    return 'attachment; filename="{}"'.format(name.replace("\\", "\\\\").replace('"', '\\"'))


class _PartSender:
    """The parts of one multipart upload to S3, up to IN_FLIGHT of them sent at once in the background
    while the next ones are received."""

    def __init__(self, store: S3Store, key: str) -> None:
        self.store, self.key = store, key
        self.upload_id: str | None = None
        self.etags: dict[int, str] = {}
        self.in_flight: set[asyncio.Task[None]] = set()
        self.count = 0

    async def send(self, body: bytes) -> None:
        if self.upload_id is None:
            created = await self.store._call("create_multipart_upload", Bucket=self.store.bucket, Key=self.key,
                                             **self.store.tags)
            self.upload_id = str(created["UploadId"])
        while len(self.in_flight) >= IN_FLIGHT:
            done, self.in_flight = await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()                        # a failed part fails the upload now
        self.count += 1
        self.in_flight.add(asyncio.create_task(self._part(self.count, body)))

    async def _part(self, number: int, body: bytes) -> None:
        resp = await self.store._call("upload_part", Bucket=self.store.bucket, Key=self.key,
                                      UploadId=self.upload_id, PartNumber=number, Body=body)
        self.etags[number] = resp["ETag"]

    async def complete(self) -> None:
        if self.in_flight:
            await asyncio.gather(*self.in_flight)
            self.in_flight = set()
        parts = [{"PartNumber": n, "ETag": self.etags[n]} for n in range(1, self.count + 1)]
        await self.store._call("complete_multipart_upload", Bucket=self.store.bucket, Key=self.key,
                               UploadId=self.upload_id, MultipartUpload={"Parts": parts})

    async def abort(self) -> None:
        # parts already travelling finish first (a thread cannot be cancelled), so the abort is final
        await asyncio.gather(*self.in_flight, return_exceptions=True)
        if self.upload_id is not None:               # an interrupted upload leaves no object behind
            try:
                await self.store._call("abort_multipart_upload", Bucket=self.store.bucket, Key=self.key,
                                       UploadId=self.upload_id)
            except (StoreUnavailable, ArtifactMissing):
                pass


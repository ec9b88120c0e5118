"""Artifact stores: each team's root (S3 or a folder) reached with the team's own credentials,
and the default store. Every operation streams: memory does not grow with an artifact's size.

S3 is reached with boto3 (run in worker threads): it is the reference S3 client, speaks every
S3-compatible store, and has the explicit multipart API that MLflow's multipart upload needs.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from .policy import Policy, Storage

CHUNK = 1024 * 1024
PART = 8 * 1024 * 1024          # S3 parts of the gate's own uploads (the minimum is 5 MiB)
IN_FLIGHT = 4                   # parts of one upload sent at the same time (memory: about PART x (IN_FLIGHT + 1))
SPOOL = 1024 * 1024             # a client's multipart part beyond this is spooled to disk, not held in memory


class StoreUnavailable(Exception):
    """The store is down or refuses the credentials; the message names the store, never a secret."""


class ArtifactMissing(Exception):
    pass


@dataclass(frozen=True)
class FileInfo:
    path: str
    is_dir: bool
    size: int | None = None


class Store(Protocol):
    label: str      # for messages: names the team and its root
    name: str       # for metrics: the team's name (or "default"), never a storage root

    async def open(self, path: str) -> tuple[int | None, AsyncIterator[bytes]]: ...
    async def write(self, path: str, chunks: AsyncIterator[bytes]) -> int: ...
    async def listdir(self, path: str) -> list[FileInfo]: ...
    async def delete(self, path: str) -> None: ...
    async def mpu_create(self, path: str) -> str: ...
    async def mpu_part(self, path: str, upload_id: str, number: int, chunks: AsyncIterator[bytes]) -> str: ...
    async def mpu_complete(self, path: str, upload_id: str, parts: list[tuple[int, str]]) -> None: ...
    async def mpu_abort(self, path: str, upload_id: str) -> None: ...
    async def check(self) -> tuple[bool, str]: ...


async def _chunks(stream: Any) -> AsyncIterator[bytes]:
    """A blocking byte stream (an S3 body, a file) read in worker threads, CHUNK bytes at a time; closed at the end."""
    try:
        while chunk := await asyncio.to_thread(stream.read, CHUNK):
            yield chunk
    finally:
        stream.close()


def _join(prefix: str, path: str) -> str:
    return "/".join(p for p in (prefix.strip("/"), path.strip("/")) if p)


# ---------------------------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------------------------

class S3Store:
    def __init__(self, root: str, storage: Storage, label: str, name: str = "") -> None:
        import boto3
        from botocore.config import Config

        parts = urlsplit(root)
        self.bucket, self.prefix, self.label, self.name = parts.netloc, parts.path.strip("/"), label, name
        key_id = secret = None
        if storage.credentials_env:
            key_id = os.environ.get(f"{storage.credentials_env}_AWS_ACCESS_KEY_ID")
            secret = os.environ.get(f"{storage.credentials_env}_AWS_SECRET_ACCESS_KEY")
        session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret,
                                        region_name=storage.region or os.environ.get("AWS_DEFAULT_REGION")
                                        or "us-east-1")
        self.client: Any = session.client(
            "s3", endpoint_url=storage.endpoint_url,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                          max_pool_connections=32, s3={"addressing_style": "path"},
                          # no extra CRC32 pass over every byte where S3 does not require one
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def _key(self, path: str) -> str:
        return _join(self.prefix, path)

    async def _call(self, name: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(getattr(self.client, name), **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload"):
                raise ArtifactMissing(kwargs.get("Key", "")) from exc
            raise StoreUnavailable(f"{self.label} refused the request ({code or 'error'}); check the team's "
                                   "storage settings and credentials.") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"{self.label} is unreachable ({exc.__class__.__name__}).") from exc

    async def open(self, path: str) -> tuple[int | None, AsyncIterator[bytes]]:
        resp = await self._call("get_object", Bucket=self.bucket, Key=self._key(path))
        return resp.get("ContentLength"), _chunks(resp["Body"])

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
                await self._call("put_object", Bucket=self.bucket, Key=key, Body=b"".join(pending))
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
        return str((await self._call("create_multipart_upload", Bucket=self.bucket, Key=self._key(path)))["UploadId"])

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
            created = await self.store._call("create_multipart_upload", Bucket=self.store.bucket, Key=self.key)
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


# ---------------------------------------------------------------------------------------------
# A folder
# ---------------------------------------------------------------------------------------------

class FileStore:
    MPU = ".mlflow-gate-mpu"

    def __init__(self, root: str, label: str, name: str = "") -> None:
        self.root = Path(unquote(urlsplit(root).path) if root.startswith("file:") else root).resolve()
        self.label, self.name = label, name

    def _path(self, path: str) -> Path:
        target = (self.root / path.strip("/")).resolve() if path.strip("/") else self.root
        if target != self.root and self.root not in target.parents:
            raise ArtifactMissing(path)
        return target

    async def open(self, path: str) -> tuple[int | None, AsyncIterator[bytes]]:
        target = self._path(path)
        if not target.is_file():
            raise ArtifactMissing(path)
        return target.stat().st_size, _chunks(await asyncio.to_thread(open, target, "rb"))

    async def write(self, path: str, chunks: AsyncIterator[bytes]) -> int:
        target = self._path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"{self.label} cannot be written ({exc.strerror}).") from exc
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.partial"
        total = 0
        try:
            with await asyncio.to_thread(open, tmp, "wb") as fh:
                async for chunk in chunks:
                    await asyncio.to_thread(fh.write, chunk)
                    total += len(chunk)
            os.replace(tmp, target)          # only a complete upload gets the real name
        finally:
            tmp.unlink(missing_ok=True)
        return total

    async def listdir(self, path: str) -> list[FileInfo]:
        target = self._path(path)
        if not target.is_dir():
            return []
        return [FileInfo(e.name, e.is_dir(), None if e.is_dir() else e.stat().st_size)
                for e in sorted(os.scandir(target), key=lambda e: e.name) if not self._hidden(e.name)]

    def _hidden(self, name: str) -> bool:
        """Uploads in progress: partial files and multipart parts."""
        return name == self.MPU or (name.startswith(".") and name.endswith(".partial"))

    async def delete(self, path: str) -> None:
        target = self._path(path)
        if target.is_dir():
            await asyncio.to_thread(shutil.rmtree, target)
        elif target.exists():
            target.unlink()

    def _mpu_dir(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise ArtifactMissing(upload_id)
        return self.root / self.MPU / upload_id

    async def mpu_create(self, path: str) -> str:
        upload_id = secrets.token_hex(16)
        folder = self._mpu_dir(upload_id)
        folder.mkdir(parents=True)
        (folder / "target").write_text(path)       # an upload id serves the path it was created for only
        return upload_id

    def _upload(self, path: str, upload_id: str) -> Path:
        folder = self._mpu_dir(upload_id)
        try:
            if (folder / "target").read_text() == path:
                return folder
        except OSError:
            pass
        raise ArtifactMissing(upload_id)

    async def mpu_part(self, path: str, upload_id: str, number: int, chunks: AsyncIterator[bytes]) -> str:
        folder = self._upload(path, upload_id)
        with await asyncio.to_thread(open, folder / f"{number:06d}", "wb") as fh:
            async for chunk in chunks:
                await asyncio.to_thread(fh.write, chunk)
        return f'"{upload_id}-{number}"'

    async def mpu_complete(self, path: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        folder = self._upload(path, upload_id)

        async def joined() -> AsyncIterator[bytes]:
            for number, _ in sorted(parts):
                with await asyncio.to_thread(open, folder / f"{number:06d}", "rb") as fh:
                    while chunk := await asyncio.to_thread(fh.read, CHUNK):
                        yield chunk

        await self.write(path, joined())
        shutil.rmtree(folder, ignore_errors=True)

    async def mpu_abort(self, path: str, upload_id: str) -> None:
        shutil.rmtree(self._upload(path, upload_id), ignore_errors=True)

    async def check(self) -> tuple[bool, str]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            ok = os.access(self.root, os.W_OK)
        except OSError as exc:
            return False, f"{self.label} is not usable ({exc.strerror})"
        return ok, f"{self.label} {'writable' if ok else 'is not writable'}"


def open_store(root: str, storage: Storage, label: str, name: str) -> Store:
    if root.startswith("s3://"):
        return S3Store(root, storage, label, name)
    return FileStore(root, label, name)


class Stores:
    """The stores the policy names, built once per (root, storage) and kept across reloads."""

    def __init__(self, default_root: str | None) -> None:
        self.default = open_store(default_root, Storage(), f"the default artifact store ({default_root})",
                                  "default") if default_root else None
        self._built: dict[tuple[str, str, Storage], Store] = {}

    def team(self, policy: Policy, team: str) -> Store | None:
        spec = policy.teams.get(team)
        if spec is None or not spec.artifact_root:
            return None
        key = (team, spec.artifact_root, spec.storage)
        store = self._built.get(key)
        if store is None:
            store = open_store(spec.artifact_root, spec.storage,
                               f"the artifact store of team {team} ({spec.artifact_root})", team)
            self._built[key] = store
        return store

    async def health(self, policy: Policy) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, team in policy.teams.items():
            store = self.team(policy, name) if team.artifact_root else None
            if store is not None:
                ok, detail = await store.check()
                out[name] = {"ok": ok, "root": team.artifact_root, "detail": detail}
        if self.default is not None:
            ok, detail = await self.default.check()
            out["(default)"] = {"ok": ok, "detail": detail}
        return out

"""Artifact stores: each team's root (S3, `s3.py`, or a folder, here) reached with the team's own credentials,
and the default store. Every operation streams: memory does not grow with an artifact's size.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from .policy import Policy, Storage

CHUNK = 1024 * 1024


class StoreUnavailable(Exception):
    """The store is down or refuses the credentials; the message names the store, never a secret."""


class ArtifactMissing(Exception):
    pass


@dataclass(frozen=True)
class FileInfo:
    path: str
    is_dir: bool
    size: int | None = None


class Presigned(Protocol):
    """A store that signs URLs for one object each (`storage.direct`): the client moves the bytes itself."""

    async def download_url(self, path: str, seconds: int = ...) -> tuple[str, int]: ...
    async def upload_url(self, path: str, seconds: int = ...) -> tuple[str, dict[str, str]]: ...
    async def part_urls(self, path: str, upload_id: str, count: int) -> list[str]: ...


class Store(Protocol):
    label: str      # for messages: names the team and its root
    name: str       # for metrics: the team's name (or "default"), never a storage root

    @property
    def presigned(self) -> Presigned | None: ...
    def acting_for(self, caller: str | None) -> Store: ...
    async def open(self, path: str) -> tuple[int | None, AsyncIterator[bytes]]: ...
    async def write(self, path: str, chunks: AsyncIterator[bytes]) -> int: ...
    async def listdir(self, path: str) -> list[FileInfo]: ...
    async def delete(self, path: str) -> None: ...
    async def mpu_create(self, path: str) -> str: ...
    async def mpu_part(self, path: str, upload_id: str, number: int, chunks: AsyncIterator[bytes]) -> str: ...
    async def mpu_complete(self, path: str, upload_id: str, parts: list[tuple[int, str]]) -> None: ...
    async def mpu_abort(self, path: str, upload_id: str) -> None: ...
    async def check(self) -> tuple[bool, str]: ...


async def chunks_of(stream: Any) -> AsyncIterator[bytes]:
    """A blocking byte stream (an S3 body, a file) read in worker threads, CHUNK bytes at a time; closed at the end."""
    try:
        while chunk := await asyncio.to_thread(stream.read, CHUNK):
            yield chunk
    finally:
        stream.close()


def join(prefix: str, path: str) -> str:
    return "/".join(p for p in (prefix.strip("/"), path.strip("/")) if p)


# ---------------------------------------------------------------------------------------------
# A folder
# ---------------------------------------------------------------------------------------------

class FileStore:
    MPU = ".mlflow-gate-mpu"
    presigned = None

    def __init__(self, root: str, label: str, name: str = "") -> None:
        self.root = Path(unquote(urlsplit(root).path) if root.startswith("file:") else root).resolve()
        self.label, self.name = label, name

    def acting_for(self, caller: str | None) -> FileStore:
        return self

    def _path(self, path: str) -> Path:
        target = (self.root / path.strip("/")).resolve() if path.strip("/") else self.root
        if target != self.root and self.root not in target.parents:
            raise ArtifactMissing(path)
        return target

    async def open(self, path: str) -> tuple[int | None, AsyncIterator[bytes]]:
        target = self._path(path)
        if not target.is_file():
            raise ArtifactMissing(path)
        return target.stat().st_size, chunks_of(await asyncio.to_thread(open, target, "rb"))

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
        from .s3 import S3Store  # botocore is imported only when a policy names a bucket

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

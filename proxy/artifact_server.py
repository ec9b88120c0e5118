"""MLflow's artifact protocol (`mlflow-artifacts`), served by the gate from the stores.

The same implementation answers clients on the public routes (after the gate authorized the
path) and the upstream mlflow server on the internal endpoint, which the server uses as its
`--artifacts-destination` for its own artifact reads (UI downloads, model-version artifacts,
logged-model files, trace data). An experiment's store is chosen once, at its creation, by the
tag `mlflow-gate.artifact-store` naming the team; renaming the experiment does not move it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import mimetypes
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from itsdangerous import BadSignature, URLSafeSerializer

from .artifacts import ArtifactMissing, FileInfo, Store, Stores, StoreUnavailable
from .edge import read_body
from .errors import BadRequest, GateError, NotFound, PermissionDenied, Unauthenticated, UpstreamUnavailable, send_error
from .forward import Receive, Send, send_bytes, stream_body
from .metrics import Metrics
from .params import parse_body, parse_query
from .policy import Policy, PolicyStore
from .resources import Resolver
from .rewrite import STORE_TAG
from .uris import artifact_experiment

__all__ = ["STORE_TAG", "ArtifactServer", "artifact_experiment", "internal_token", "route_of"]

INTERNAL_PREFIX = "/_gate/internal"
PART_PATH = "/_gate/artifact-part/"
_PLAIN_TYPES = {"text/html", "application/javascript", "text/javascript", "image/svg+xml", "application/xhtml+xml"}
_JSON = [(b"content-type", b"application/json")]
SMALL_BODY = 16 * 1024 * 1024       # multipart create/complete/abort bodies


@dataclass(frozen=True)
class _Op:
    """One artifact-protocol operation: the request's channels, the store and the path it acts on."""
    scope: dict[str, Any]
    receive: Receive
    send: Send
    store: Store
    path: str
    body: bytes | None
    caller: str | None = None
    team: str | None = None     # the team owning the experiment, for the per-team byte counts


def _file_infos(found: list[FileInfo]) -> list[dict[str, Any]]:
    return [{"path": f.path, "is_dir": f.is_dir, **({} if f.is_dir else {"file_size": f.size})} for f in found]


class ArtifactNotFound(NotFound):
    code = "RESOURCE_DOES_NOT_EXIST"


def internal_token(secret_key: str) -> str:
    """The bearer token the upstream mlflow server sends to the internal endpoint."""
    return "mgi_" + hmac.new(secret_key.encode(), b"mlflow-gate internal artifacts", hashlib.sha256).hexdigest()


class ArtifactServer:
    def __init__(self, stores: Stores, resolver: Resolver, policy: PolicyStore, secret_key: str,
                 public_url: str | None, *, internal_from_anywhere: bool = False,
                 metrics: Metrics | None = None) -> None:
        self.internal_from_anywhere = internal_from_anywhere
        self.metrics = metrics
        self.stores = stores
        self.resolver = resolver
        self.policy = policy            # read once per request, by the caller of these methods
        self.secret_key = secret_key
        self.public_url = public_url.rstrip("/") if public_url else None
        self._parts = URLSafeSerializer(secret_key, salt="mlflow-gate.artifact-part")

    async def store_for(self, path: str, policy: Policy) -> Store | None:
        """The store holding `path` (`<experiment id>/...`): the team's, else the default (None: the upstream's)."""
        team = await self.resolver.experiment_store(artifact_experiment(path))
        if team:
            store = self.stores.team(policy, team)
            if store is None:
                raise UpstreamUnavailable(f"The artifact store of team {team} is not configured in the policy any "
                                          "more; ask an admin.")
            return store
        return self.stores.default

    async def team_of(self, path: str, policy: Policy) -> str | None:
        """The team owning the experiment `path` is under (by its name now; None for the store's root), for the
        per-team byte counts (the experiment was resolved already, to find its store)."""
        if not path:
            return None
        owner = policy.owner("experiment", await self.resolver.experiment_name(artifact_experiment(path)))
        return owner.name if owner is not None else None

    async def serves(self, path: str, policy: Policy) -> bool:
        return path != "" and await self.store_for(path, policy) is not None

    async def listing(self, path: str, policy: Policy, caller: str | None = None) -> list[dict[str, Any]]:
        """The folder `path` as MLflow's file infos (names relative to it)."""
        store = await self.store_for(path, policy)
        if store is None:
            return []
        try:
            return _file_infos(await store.acting_for(caller).listdir(path))
        except StoreUnavailable as exc:
            raise UpstreamUnavailable(str(exc)) from exc

    async def presigned_url(self, path: str, policy: Policy, caller: str, *, upload: bool,
                            seconds: int) -> dict[str, Any] | None:
        """MLflow's answer to `artifacts/presigned-(download|upload)-url` for PATH, signed as CALLER; None when no
        direct store holds PATH (the request goes to the upstream, which refuses proxied artifact storage)."""
        store = await self.store_for(path, policy)
        direct = store.acting_for(caller).presigned if store is not None else None
        if direct is None:
            return None
        try:
            if upload:
                url, headers = await direct.upload_url(path, seconds)
                return {"presigned_url": url, "headers": headers}
            url, size = await direct.download_url(path, seconds)
            return {"presigned_url": url, "headers": {}, "file_size": size}
        except ArtifactMissing as exc:
            raise ArtifactNotFound(f"Artifact {path!r} does not exist.") from exc
        except StoreUnavailable as exc:
            raise UpstreamUnavailable(str(exc)) from exc

    # --- the protocol ------------------------------------------------------------------------

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Send, op: str, path: str,
                     policy: Policy, body: bytes | None = None, caller: str | None = None) -> None:
        """One operation of the protocol on PATH, for CALLER (None: the gate itself, for the mlflow server)."""
        try:
            store = await self.store_for(path, policy) if path else self.stores.default
            if store is None:
                raise ArtifactNotFound("No artifact store serves this path.")
            handler = self._ops.get(op)
            if handler is None:
                raise BadRequest(f"Unknown artifact operation {op!r}.")
            await handler(self, _Op(scope, receive, send, store.acting_for(caller), path, body, caller,
                                    await self.team_of(path, policy)))
        except ArtifactMissing as exc:
            raise ArtifactNotFound(f"Artifact {path!r} does not exist.") from exc
        except StoreUnavailable as exc:
            raise UpstreamUnavailable(str(exc)) from exc

    def _count(self, direction: str, op: _Op, size: int) -> None:
        self._count_as(direction, op.store, op.team, size)

    def _count_as(self, direction: str, store: Store, team: str | None, size: int) -> None:
        if self.metrics is not None:
            self.metrics.artifact_bytes.labels(direction, store.name).inc(size)
            self.metrics.team_bytes(team, direction, size)

    async def _download(self, op: _Op) -> None:
        size, chunks = await op.store.open(op.path)
        self._count("out", op, await _stream_out(op.send, op.path, size, chunks))

    async def _upload(self, op: _Op) -> None:
        self._count("in", op, await op.store.write(op.path, stream_body(op.receive)))
        await send_bytes(op.send, 200, _JSON, b"{}")

    async def _delete(self, op: _Op) -> None:
        await op.store.delete(op.path)
        await send_bytes(op.send, 200, _JSON, b"{}")

    async def _list(self, op: _Op) -> None:
        files = _file_infos(await op.store.listdir(op.path))
        await send_bytes(op.send, 200, _JSON, json.dumps({"files": files} if files else {}).encode())

    async def _mpu_create(self, op: _Op) -> None:
        data = parse_body(op.body or b"")
        path = _mpu_target(op.path, data)
        try:
            count = int(data.get("num_parts") or data.get("numParts") or 1)
        except (TypeError, ValueError) as exc:
            raise BadRequest("num_parts must be an integer.") from exc
        if not 1 <= count <= 10_000:
            raise BadRequest("num_parts must be between 1 and 10000.")
        upload_id = await op.store.mpu_create(path)
        direct = op.store.presigned
        if direct is not None:          # the parts go straight to the bucket
            urls = await direct.part_urls(path, upload_id, count)
        else:
            base = self.public_url or _origin(op.scope)
            urls = [base + PART_PATH + self._parts.dumps({"p": path, "u": upload_id, "n": n, "w": op.caller,
                                                          "x": int(time.time()) + 86400})
                    for n in range(1, count + 1)]
        credentials = [{"part_number": n, "url": url, "headers": {}} for n, url in enumerate(urls, 1)]
        await send_bytes(op.send, 200, _JSON, json.dumps({"upload_id": upload_id, "credentials": credentials}).encode())

    async def _mpu_finish(self, op: _Op, abort: bool) -> None:
        data = parse_body(op.body or b"")
        path = _mpu_target(op.path, data)
        upload_id = str(data.get("upload_id") or data.get("uploadId") or "")
        if not upload_id:
            raise BadRequest("Missing value for required parameter 'upload_id'.")
        if abort:
            await op.store.mpu_abort(path, upload_id)
        else:
            try:
                parts = [(int(p.get("part_number") or p.get("partNumber") or 0), str(p.get("etag", "")))
                         for p in data.get("parts", []) if isinstance(p, dict)]
            except (TypeError, ValueError) as exc:
                raise BadRequest("Each part needs an integer part_number.") from exc
            if not parts:
                raise BadRequest("A multipart upload is completed with its parts.")
            await op.store.mpu_complete(path, upload_id, parts)
        await send_bytes(op.send, 200, _JSON, b"{}")

    async def _mpu_complete(self, op: _Op) -> None:
        await self._mpu_finish(op, abort=False)

    async def _mpu_abort(self, op: _Op) -> None:
        await self._mpu_finish(op, abort=True)

    async def _presigned(self, op: _Op) -> None:
        """A URL to download the object straight from the bucket (`storage.direct`), in MLflow's shape."""
        direct = op.store.presigned
        if direct is None:
            await send_bytes(op.send, 501, _JSON, json.dumps({
                "error_code": "NOT_IMPLEMENTED", "message": "Presigned downloads are not offered for this store "
                "(its team has no `storage.direct`); download through the gate."}).encode())
            return
        url, size = await direct.download_url(op.path)
        await send_bytes(op.send, 200, _JSON, json.dumps({"url": url, "headers": {}, "file_size": size}).encode())

    _ops: ClassVar[dict[str, Callable[[ArtifactServer, _Op], Awaitable[None]]]] = {
        "download": _download, "upload": _upload, "delete": _delete, "list": _list, "mpu_create": _mpu_create,
        "mpu_complete": _mpu_complete, "mpu_abort": _mpu_abort, "presigned": _presigned,
    }

    async def upload_part(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """PUT /_gate/artifact-part/<signed>: one part of a multipart upload the gate created."""
        try:
            claim = self._parts.loads(scope["path"][len(PART_PATH):])
        except BadSignature as exc:
            raise Unauthenticated("This multipart upload URL is not valid.") from exc
        if scope["method"] != "PUT":
            raise BadRequest("Upload a part with PUT.")
        if int(claim["x"]) < time.time():
            raise Unauthenticated("This multipart upload URL has expired; start the upload again.")
        path = str(claim["p"])
        try:
            store = await self.store_for(path, self.policy.current)
            if store is None:
                raise ArtifactNotFound("No artifact store serves this path.")
            body = _Counted(stream_body(receive))
            etag = await store.acting_for(claim.get("w")).mpu_part(path, str(claim["u"]), int(claim["n"]), body)
            self._count_as("in", store, await self.team_of(path, self.policy.current), body.size)
        except ArtifactMissing as exc:
            raise ArtifactNotFound("The multipart upload does not exist (aborted or completed).") from exc
        except StoreUnavailable as exc:
            raise UpstreamUnavailable(str(exc)) from exc
        await send_bytes(send, 200, [*_JSON, (b"etag", etag.encode())], b"{}")

    # --- the internal endpoint for the upstream mlflow server ------------------------------

    async def internal(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        try:
            self._check_internal(scope)
            rest = scope["path"][len(INTERNAL_PREFIX):]
            op, path = route_of(scope["method"], rest, scope.get("query_string", b""))
            if op is None:
                raise NotFound(f"{scope['method']} {rest} is not part of the artifact protocol.")
            body = await read_body(receive, SMALL_BODY) if op.startswith("mpu_") else None
            await self.handle(scope, receive, send, op, path, self.policy.current, body)
        except GateError as err:
            await send_error(send, err)

    def _check_internal(self, scope: dict[str, Any]) -> None:
        client = scope.get("client") or ("", 0)
        if not self.internal_from_anywhere and client[0] not in ("127.0.0.1", "::1"):
            raise PermissionDenied("The internal artifact endpoint answers loopback callers only.")
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        expected = "Bearer " + internal_token(self.secret_key)
        if not hmac.compare_digest(auth.encode(), expected.encode()):
            raise Unauthenticated("The internal artifact endpoint is for the upstream mlflow server only.")


class _Counted:
    """A body stream that counts the bytes it passes on (a multipart part, for the byte metrics)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks, self.size = chunks, 0

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.chunks.__anext__()
        self.size += len(chunk)
        return chunk


def _mpu_target(directory: str, data: dict[str, Any]) -> str:
    """Where a multipart upload lands: the URL names the folder, the body's `path` the local file,
    of which only the file name is kept (as MLflow's own artifact repositories do)."""
    local = str(data.get("path") or "")
    name = local.replace("\\", "/").rsplit("/", 1)[-1]
    if not name or name in (".", "..") or "\x00" in name:
        raise BadRequest("A multipart upload's body names the local file in 'path'.")
    return f"{directory.rstrip('/')}/{name}" if directory else name


def route_of(method: str, path: str, query: bytes) -> tuple[str | None, str]:
    """(operation, artifact path) of an `mlflow-artifacts` request, under /api or /ajax-api."""
    for prefix in ("/api/2.0/mlflow-artifacts/", "/ajax-api/2.0/mlflow-artifacts/"):
        if path.startswith(prefix):
            rest = path[len(prefix):]
            break
    else:
        return None, ""
    if rest == "artifacts" and method == "GET":
        values = [v for k, v in parse_query(query) if k == "path"]
        return "list", (values[0] if values else "").strip("/")
    for head, ops in (("artifacts/", {"GET": "download", "PUT": "upload", "DELETE": "delete"}),
                      ("mpu/create/", {"POST": "mpu_create"}), ("mpu/complete/", {"POST": "mpu_complete"}),
                      ("mpu/abort/", {"POST": "mpu_abort"}), ("presigned/", {"GET": "presigned"})):
        if rest.startswith(head) and method in ops:
            return ops[method], rest[len(head):]
    return None, ""


async def _stream_out(send: Send, path: str, size: int | None, chunks: AsyncIterator[bytes]) -> int:
    ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if ctype in _PLAIN_TYPES:
        ctype = "text/plain"
    headers = [(b"content-type", ctype.encode()), (b"x-content-type-options", b"nosniff")]
    if size is not None:
        headers.append((b"content-length", str(size).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    sent = 0
    async for chunk in chunks:
        sent += len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return sent


def _origin(scope: dict[str, Any]) -> str:
    host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}"

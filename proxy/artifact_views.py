"""Artifact requests the gate answers from its own stores instead of forwarding them.

Two kinds: MLflow's artifact protocol (`mlflow-artifacts/...`, for paths in a store the gate serves)
and the UI's artifact views (a run's files and listings, a logged model's files, a model version's
files), which MLflow would otherwise serve by reading the stores itself. Answering them here means
no round trip through the mlflow server, and no dependency on which replica it reads artifacts through.
Both run after the request was authorized; `False` means "not ours": the request is forwarded.
"""
from __future__ import annotations

import json

from .artifact_server import ArtifactServer, route_of
from .call import Call
from .edge import read_body
from .errors import BadRequest
from .forward import send_bytes
from .resources import Resolver
from .routes import View
from .uris import artifact_store_path

_JSON = [(b"content-type", b"application/json")]


async def serve_protocol(call: Call, artifacts: ArtifactServer) -> bool:
    """An `mlflow-artifacts` request for a path one of the gate's stores holds."""
    op, path = route_of(call.method, call.path, call.query)
    if op is None or not await artifacts.serves(path, call.rules):
        return False
    body = await read_body(call.receive) if op.startswith("mpu_") else call.body
    await artifacts.handle(call.scope, call.receive, call.send, op, path, call.rules, body, call.who.id)
    return True


async def serve_view(call: Call, artifacts: ArtifactServer, resolver: Resolver) -> bool:
    """One of the UI's artifact views, when the artifacts are in a store the gate serves."""
    view, params = call.route.view, call.params
    if view in (View.PRESIGNED_DOWNLOAD, View.PRESIGNED_UPLOAD):
        return await serve_presigned_url(call, artifacts, resolver)
    if view in (View.RUN_FILE, View.RUN_LIST):
        base = (await resolver.run(params.scalar("run_id") or params.scalar("run_uuid") or "")).artifact_uri
        rel = params.scalar("path") or ""
    elif view is View.LOGGED_MODEL_FILE:
        base = await resolver.logged_model_artifacts(call.path_params["model_id"])
        rel = params.scalar("artifact_file_path") or ""
    else:
        base = await resolver.model_version_artifacts(params.scalar("name") or "", params.scalar("version") or "")
        rel = params.scalar("path") or ""
    root = artifact_store_path(base)
    if root is None:
        return False
    rel = relative_artifact_path(rel)
    target = f"{root}/{rel}" if rel else root
    if not await artifacts.serves(target, call.rules):
        return False
    if view is View.RUN_LIST:
        files = await artifacts.listing(target, call.rules, call.who.id)
        listed = [{**f, "path": f"{rel}/{f['path']}" if rel else f["path"]} for f in files]
        answer = {"root_uri": base, **({"files": listed} if listed else {})}
        await send_bytes(call.send, 200, _JSON, json.dumps(answer).encode())
        return True
    if not rel:
        raise BadRequest("Name the artifact to download with 'path'.")
    await artifacts.handle(call.scope, call.receive, call.send, "download", target, call.rules, caller=call.who.id)
    return True


async def serve_presigned_url(call: Call, artifacts: ArtifactServer, resolver: Resolver) -> bool:
    """`artifacts/presigned-download-url` (a run's file) and `presigned-upload-url` (a run's or a logged model's),
    answered by the gate when a direct store holds the artifacts."""
    params, upload = call.params, call.route.view is View.PRESIGNED_UPLOAD
    run_id, model_id = params.scalar("run_id"), params.scalar("model_id") if upload else None
    if bool(run_id) == bool(model_id):
        raise BadRequest("Exactly one of run_id and model_id must be provided." if upload else
                         "Missing value for required parameter 'run_id'.")
    rel = relative_artifact_path(params.scalar("path") or "")
    if not rel:
        raise BadRequest("Missing value for required parameter 'path': the artifact's path in the run.")
    seconds = _expiration(params.scalar("expiration"), 900 if upload else 300)
    base = (await resolver.run(run_id)).artifact_uri if run_id else \
        await resolver.logged_model_artifacts(model_id or "")
    root = artifact_store_path(base)
    answer = await artifacts.presigned_url(f"{root}/{rel}", call.rules, call.who.id, upload=upload,
                                           seconds=seconds) if root else None
    if answer is None:
        return False
    await send_bytes(call.send, 200, _JSON, json.dumps(answer).encode())
    return True


def _expiration(value: str | None, default: int) -> int:
    """Seconds a presigned URL is asked to live (MLflow's defaults: 300 down, 900 up); the store caps it."""
    try:
        seconds = default if value is None else int(value)
    except ValueError:
        seconds = 0
    if not 1 <= seconds <= 604800:
        raise BadRequest(f"expiration must be between 1 and 604800 seconds (got {value}).")
    return seconds


def relative_artifact_path(path: str) -> str:
    """A path inside an artifact root, as given by a client: no way out of the root."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if path.startswith("/") or "\\" in path or any(p in (".", "..") for p in parts) or "\x00" in path:
        raise BadRequest(f"Invalid artifact path {path!r}: use a relative path without '.', '..' or backslashes.")
    return "/".join(parts)

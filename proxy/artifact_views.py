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
from .resources import Resolver, artifact_store_path
from .routes import View

_JSON = [(b"content-type", b"application/json")]


async def serve_protocol(call: Call, artifacts: ArtifactServer) -> bool:
    """An `mlflow-artifacts` request for a path one of the gate's stores holds."""
    op, path = route_of(call.method, call.path, call.query)
    if op is None or not await artifacts.serves(path, call.rules):
        return False
    body = await read_body(call.receive) if op.startswith("mpu_") else call.body
    await artifacts.handle(call.scope, call.receive, call.send, op, path, call.rules, body)
    return True


async def serve_view(call: Call, artifacts: ArtifactServer, resolver: Resolver) -> bool:
    """One of the UI's artifact views, when the artifacts are in a store the gate serves."""
    view, params = call.route.view, call.params
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
        files = await artifacts.listing(target, call.rules)
        listed = [{**f, "path": f"{rel}/{f['path']}" if rel else f["path"]} for f in files]
        answer = {"root_uri": base, **({"files": listed} if listed else {})}
        await send_bytes(call.send, 200, _JSON, json.dumps(answer).encode())
        return True
    if not rel:
        raise BadRequest("Name the artifact to download with 'path'.")
    await artifacts.handle(call.scope, call.receive, call.send, "download", target, call.rules)
    return True


def relative_artifact_path(path: str) -> str:
    """A path inside an artifact root, as given by a client: no way out of the root."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if path.startswith("/") or "\\" in path or any(p in (".", "..") for p in parts) or "\x00" in path:
        raise BadRequest(f"Invalid artifact path {path!r}: use a relative path without '.', '..' or backslashes.")
    return "/".join(parts)

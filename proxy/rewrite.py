"""Request rewrites applied before forwarding. Pure functions over the parsed JSON body.

- experiments/create: the client's `artifact_location` is dropped, so the upstream puts the
  experiment under its own store (`mlflow-artifacts:/<id>`); the owning team's tags are added.
- runs/create: tag `mlflow.user` (and `user_id`) become the authenticated id; team tags added.
- runs/set-tag and runs/log-batch: `mlflow.user` cannot be set to anyone else.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import PermissionDenied
from .identity import Identity
from .params import camel
from .policy import Team
from .routes import Rewrite

USER_TAG = "mlflow.user"
GATE_TAGS = "mlflow-gate."          # tags only the gate sets
STORE_TAG = "mlflow-gate.artifact-store"


def _pop(body: dict[str, Any], key: str) -> Any:
    value = body.pop(key, None)
    other = body.pop(camel(key), None)
    return value if value is not None else other


def _with_tags(tags: Any, forced: dict[str, str], defaults: dict[str, str]) -> list[dict[str, str]]:
    tags = [t for t in (tags if isinstance(tags, list) else []) if isinstance(t, dict)]
    present = {t.get("key") for t in tags}
    out = [t for t in tags if t.get("key") not in forced]
    out += [{"key": k, "value": v} for k, v in forced.items()]
    out += [{"key": k, "value": v} for k, v in defaults.items() if k not in present]
    return out


def experiment_create(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    _pop(body, "artifact_location")
    tags = [t for t in (_pop(body, "tags") or []) if not (isinstance(t, dict)
                                                          and str(t.get("key", "")).startswith(GATE_TAGS))]
    forced = {STORE_TAG: team.name} if team is not None and team.artifact_root else {}
    body["tags"] = _with_tags(tags, forced, dict(team.tags) if team else {})
    return body


def experiment_tag(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    if str(body.get("key", "")).startswith(GATE_TAGS):
        raise PermissionDenied(f"Permission denied: tags starting with {GATE_TAGS!r} are set by the gate only.")
    return body


def run_create(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    _pop(body, "user_id")
    body["user_id"] = ident.id
    tags = _pop(body, "tags")
    body["tags"] = _with_tags(tags, {USER_TAG: ident.id}, dict(team.tags) if team else {})
    return body


def run_set_tag(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    if body.get("key") == USER_TAG:
        body["value"] = ident.id
    return body


def run_log_batch(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    tags = body.get("tags")
    if isinstance(tags, list):
        for tag in tags:
            if isinstance(tag, dict) and tag.get("key") == USER_TAG:
                tag["value"] = ident.id
    return body


REWRITES: dict[Rewrite, Callable[[dict[str, Any], Identity, Team | None], dict[str, Any]]] = {
    Rewrite.EXPERIMENT_CREATE: experiment_create,
    Rewrite.RUN_CREATE: run_create,
    Rewrite.RUN_SET_TAG: run_set_tag,
    Rewrite.RUN_LOG_BATCH: run_log_batch,
    Rewrite.EXPERIMENT_TAG: experiment_tag,
}
_missing = set(Rewrite) - set(REWRITES)
if _missing:                                    # a route may only name a rewrite that exists
    raise ImportError(f"rewrites without an implementation: {sorted(r.value for r in _missing)}")

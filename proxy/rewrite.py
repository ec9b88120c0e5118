"""Request rewrites applied before forwarding. Pure functions over the parsed body.

- experiments/create: the client's `artifact_location` is dropped, so the upstream puts the
  experiment under its own store (`mlflow-artifacts:/<id>`); the owning team's tags are added.
- runs/create: tag `mlflow.user` (and `user_id`) become the authenticated id; team tags added.
  runs/create-promptlab-run: only `user_id` (MLflow's promptlab handler cannot take tags from JSON).
- Everything else a caller creates records the authenticated id as its creator where MLflow reads
  one: tag `mlflow.user` of logged models, registered models and versions (prompts too), traces
  (v3 metadata, v2 request metadata, OTLP root spans), evaluation datasets and their records,
  an issue's `created_by`, and the `source_id` of a person's (HUMAN) assessment. Whatever the
  client sent there is replaced.
- Tags set later (runs, traces, logged models, registry, datasets): `mlflow.user` cannot be set to
  anyone else.
- Tags MLflow's server reads as where (or how) a trace's data is stored (`mlflow.artifactLocation`: it serves the
  trace's data and attachments from there with its own access to every store) are MLflow's: refused in tag
  updates, trace starts and ends and OTLP span attributes.

A field a rewrite replaces or drops that MLflow's schema types is checked first (`check_types`, before any
id is resolved, as MLflow validates before it looks anything up): input MLflow refuses stays refused, with
MLflow's answer, instead of being made valid by the rewrite.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from . import otlp
from .edge import parse_json
from .errors import BadRequest, PermissionDenied
from .identity import Identity
from .params import Params, camel, invalid_value
from .policy import Team
from .routes import Rewrite

USER_TAG = "mlflow.user"
GATE_TAGS = "mlflow-gate."          # tags only the gate sets
STORE_TAG = "mlflow-gate.artifact-store"
_JSON_STRING_DEPTH = 64             # dataset records nest user data deeper than request bodies do
# What MLflow's client keeps immutable (mlflow.utils.mlflow_tags.IMMUTABLE_TAGS) and its server does not refuse.
STORAGE_TAGS = frozenset({"mlflow.artifactLocation", "mlflow.trace.spansLocation", "mlflow.trace.archiveLocation"})


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


def promptlab_run(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    """MLflow's promptlab handler reads `user_id` (not camelCase) and hands `tags` to the store as they are,
    where any JSON tag fails: the creator is `user_id` alone, the team's tags cannot be added."""
    _pop(body, "user_id")
    body["user_id"] = ident.id
    return body


def refuse_storage_tags(keys: Any) -> None:
    """Tags saying where MLflow keeps a trace's data are set by MLflow only."""
    for key in keys:
        if key in STORAGE_TAGS:
            raise PermissionDenied(f"Permission denied: tag {key!r} says where MLflow stores the trace's data; "
                                   "MLflow sets it, clients cannot.")


def _tag_keys(tags: Any) -> list[Any]:
    """The keys of a {key, value} list or of a key -> value object."""
    if isinstance(tags, dict):
        return list(tags)
    return [t.get("key") for t in tags if isinstance(t, dict)] if isinstance(tags, list) else []


def run_set_tag(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    """A key/value tag body (runs, traces, registered models, model versions)."""
    refuse_storage_tags([body.get("key")])
    if body.get("key") == USER_TAG:
        body["value"] = ident.id
    return body


def run_log_batch(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    """A `tags` list on an existing object (runs/log-batch, logged-model tags)."""
    _claim(_field(body, "tags"), ident)
    return body


def created_with_tags(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    """A creation with a `tags` list (logged models, registered models and versions)."""
    body["tags"] = _with_tags(_pop(body, "tags"), {USER_TAG: ident.id}, {})
    return body


def trace_start_v3(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    """`trace.trace_info`: metadata `mlflow.user` (where MLflow's client records who made a trace) and tag
    `mlflow.user` (what MLflow's UI shows, after the application's own `mlflow.trace.user`) are the caller;
    so is the person behind each HUMAN assessment it carries."""
    info = _object(_object(body, "trace", create=False), "trace_info", create=False)
    if info is not None:
        refuse_storage_tags(_tag_keys(_field(info, "tags")))
        assessments = _field(info, "assessments")
        for assessment in assessments if isinstance(assessments, list) else []:
            _claim_source(assessment, ident)
        for key in ("trace_metadata", "tags"):
            mapping = _object(info, key)
            if mapping is None:
                raise BadRequest(f"Field '{key}' of trace_info must be an object.")
            mapping[USER_TAG] = ident.id
    return body


def trace_start_v2(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    refuse_storage_tags(_tag_keys(_field(body, "tags")))
    for key in ("request_metadata", "tags"):
        body[key] = _with_tags(_pop(body, key), {USER_TAG: ident.id}, {})
    return body


def trace_end_v2(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    refuse_storage_tags(_tag_keys(_field(body, "tags")))
    _claim(_field(body, "request_metadata"), ident)
    _claim(_field(body, "tags"), ident)
    return body


def dataset_create(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    """Evaluation datasets: `tags` is a JSON string; MLflow takes its `mlflow.user` as the creator."""
    tags = _json_string(body, "tags", {})
    if isinstance(tags, dict):
        tags[USER_TAG] = ident.id
        body["tags"] = json.dumps(tags)
    return body


def dataset_tags(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    tags = _json_string(body, "tags", None)
    if isinstance(tags, dict) and USER_TAG in tags:
        tags[USER_TAG] = ident.id
        body["tags"] = json.dumps(tags)
    return body


def dataset_records(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    """`records` is a JSON string of records; each record's tag `mlflow.user` is its creator (or updater)."""
    records = _json_string(body, "records", None)
    if isinstance(records, list):
        for record in records:
            if not isinstance(record, dict) or not isinstance(record.setdefault("tags", {}), dict):
                raise BadRequest("Each dataset record must be a JSON object whose 'tags' is an object.")
            record["tags"][USER_TAG] = ident.id
        body["records"] = json.dumps(records)
    return body


def issue_create(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    _pop(body, "created_by")
    body["created_by"] = ident.id
    return body


def assessment_create(body: dict[str, Any], ident: Identity, team: Team | None) -> dict[str, Any]:
    _claim_source(_field(body, "assessment"), ident)
    return body


def _claim_source(assessment: Any, ident: Identity) -> None:
    """An assessment whose source is a person (HUMAN, MLflow's UI and `log_feedback`) names the caller as that
    person; a judge's or code's source names the judge."""
    source = _field(assessment, "source") if isinstance(assessment, dict) else None
    if isinstance(source, dict) and _field(source, "source_type") in ("HUMAN", 1):
        source.pop(camel("source_id"), None)
        source["source_id"] = ident.id


def otlp_spans(message: ExportTraceServiceRequest, ident: Identity) -> None:
    refuse_storage_tags(otlp.trace_tag_keys(message))
    otlp.set_creator(message, ident.id)


def _field(body: dict[str, Any], key: str) -> Any:
    return body[key] if key in body else body.get(camel(key))


def _object(body: dict[str, Any] | None, key: str, *, create: bool = True) -> dict[str, Any] | None:
    """The object under `key` (or its camelCase twin), created when absent if `create`; None when it is
    something else."""
    if body is None:
        return None
    value = _field(body, key)
    if value is None and create:
        value = body[key] = {}
    return value if isinstance(value, dict) else None


def _claim(tags: Any, ident: Identity) -> None:
    """In a list of {key, value}: `mlflow.user` becomes the caller."""
    for tag in tags if isinstance(tags, list) else []:
        if isinstance(tag, dict) and tag.get("key") == USER_TAG:
            tag["value"] = ident.id


def _json_string(body: dict[str, Any], key: str, default: Any) -> Any:
    """A field MLflow reads as a JSON string, parsed with the gate's bounds (`default` when absent); a value
    that is not a string is left for MLflow to refuse."""
    value = body.get(key)
    if value is None or value == "":
        return default
    return parse_json(value, f"field {key!r}", max_depth=_JSON_STRING_DEPTH) if isinstance(value, str) else None


REWRITES: dict[Rewrite, Callable[[dict[str, Any], Identity, Team | None], dict[str, Any]]] = {
    Rewrite.EXPERIMENT_CREATE: experiment_create,
    Rewrite.RUN_CREATE: run_create,
    Rewrite.PROMPTLAB_RUN: promptlab_run,
    Rewrite.RUN_SET_TAG: run_set_tag,
    Rewrite.RUN_LOG_BATCH: run_log_batch,
    Rewrite.EXPERIMENT_TAG: experiment_tag,
    Rewrite.TAG_VALUE: run_set_tag,
    Rewrite.TAG_LIST: run_log_batch,
    Rewrite.CREATED_WITH_TAGS: created_with_tags,
    Rewrite.TRACE_START_V3: trace_start_v3,
    Rewrite.TRACE_START_V2: trace_start_v2,
    Rewrite.TRACE_END_V2: trace_end_v2,
    Rewrite.DATASET_CREATE: dataset_create,
    Rewrite.DATASET_TAGS: dataset_tags,
    Rewrite.DATASET_RECORDS: dataset_records,
    Rewrite.ISSUE_CREATE: issue_create,
    Rewrite.ASSESSMENT_CREATE: assessment_create,
}
SPAN_REWRITES: dict[Rewrite, Callable[[ExportTraceServiceRequest, Identity], None]] = {
    Rewrite.OTLP_SPANS: otlp_spans,
}
_missing = set(Rewrite) - set(REWRITES) - set(SPAN_REWRITES)
if _missing or set(REWRITES) & set(SPAN_REWRITES):      # a route may only name a rewrite that exists, once
    raise ImportError(f"rewrites without an implementation: {sorted(r.value for r in _missing)}")


# Fields a rewrite replaces or drops, typed by MLflow's handler schemas (`_assert_string`, `_assert_array`,
# `_assert_map_key_present`). runs/create and issues do not type their `tags`, `user_id`, `created_by`: not here.
TYPED: dict[Rewrite, tuple[tuple[str, type], ...]] = {
    Rewrite.EXPERIMENT_CREATE: (("artifact_location", str), ("tags", list)),
    Rewrite.CREATED_WITH_TAGS: (("tags", list),),
    Rewrite.TRACE_START_V2: (("request_metadata", list), ("tags", list)),
}


def check_types(rewrite: Rewrite | None, params: Params) -> None:
    """A value of another type in a field `rewrite` would replace or drop: MLflow's 400 (`TYPED`)."""
    if rewrite is None or params.body is None:
        return
    for key, kind in TYPED.get(rewrite, ()):
        value = _field(params.body, key)
        if value is not None and not isinstance(value, kind):
            raise invalid_value(key, value)


def rewrite_body(rewrite: Rewrite, params: Params, ident: Identity, team: Team | None) -> tuple[bytes, bytes | None]:
    """The body to forward after `rewrite`, and its new Content-Type when the encoding changed (OTLP
    goes upstream as the protobuf the gate checked)."""
    if params.spans is not None:
        SPAN_REWRITES[rewrite](params.spans, ident)
        return otlp.encode(params.spans), otlp.CONTENT_TYPE
    assert params.body is not None, "a rewrite runs on a body the gate parsed"
    return json.dumps(REWRITES[rewrite](params.body, ident, team)).encode(), None

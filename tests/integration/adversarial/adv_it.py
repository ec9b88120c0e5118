"""The adversarial suite's tables: the kinds of objects a request can name, and how to build a request that names
one in a given place (path, query, body, header, OTLP export, artifact path, model-version source) of a given route.

The places come from the gate's own route table (`proxy.routes.ROUTES`): every `Need` of every checked row is one
way of naming an object, so a new MLflow route family is covered as soon as its row is in the table. A kind of
object is one row of `KINDS`.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy.routes import ROUTES, Access, Names, Need, Route, Source

MISSING_EXPERIMENT = "987654321"


def hex32() -> str:
    return uuid.uuid4().hex


@dataclass
class Objects:
    """One object of every kind for the caller (team alpha, "own") and for another team (beta, "foreign")."""

    own: dict[str, str] = field(default_factory=dict)
    foreign: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    """A kind of object as a request names it: its `Names`, and how its own / foreign / missing values look."""

    label: str
    names: tuple[Names, ...]
    key: str                            # the key into Objects.own / Objects.foreign
    missing: str                        # a value naming nothing (format strings see the missing hex id)

    def value(self, objects: Objects, which: str) -> str:
        if which == "missing":
            return self.missing.format(hex=MISSING_HEX, exp=MISSING_EXPERIMENT)
        return (objects.own if which == "own" else objects.foreign)[self.key]


MISSING_HEX = "0123456789abcdef0123456789abcdef"
KINDS: tuple[Kind, ...] = (
    Kind("experiment", (Names.EXPERIMENT,), "experiment", "{exp}"),
    Kind("experiment name", (Names.EXPERIMENT_NAME, Names.NEW_EXPERIMENT), "experiment_name", "beta/missing-{hex}"),
    Kind("run", (Names.RUN, Names.RUN_OWNED), "run", "{hex}"),
    Kind("trace", (Names.TRACE,), "trace", "tr-{hex}"),
    Kind("logged model", (Names.LOGGED_MODEL,), "logged_model", "m-{hex}"),
    Kind("dataset", (Names.DATASET,), "dataset", "d-{hex}"),
    Kind("model name", (Names.MODEL, Names.NEW_MODEL), "model", "beta-missing-{hex}"),
    Kind("prompt uri", (Names.PROMPT_URI,) if hasattr(Names, "PROMPT_URI") else (), "prompt_uri",
         "prompts:/beta-missing-{hex}/1"),
    Kind("artifact path", (Names.ARTIFACT_PATH,), "artifact_path", "{exp}/{hex}/artifacts/notes/readme.txt"),
    Kind("source runs:/", (Names.SOURCE_URI,), "source_run", "runs:/{hex}/model"),
    Kind("source models:/", (Names.SOURCE_URI,), "source_model", "models:/m-{hex}"),
    Kind("source models:/name/version", (Names.SOURCE_URI,), "source_version", "models:/beta-missing-{hex}/1"),
    Kind("source mlflow-artifacts:", (Names.SOURCE_URI,), "source_artifacts",
         "mlflow-artifacts:/{exp}/{hex}/artifacts/model"),
)
CHOSEN = {n for n in Names if n.value in ("new_trace", "assessment")}     # ids a client chooses: their own class


def kind_of(names: Names) -> Kind:
    return next(k for k in KINDS if names in k.names)


@dataclass(frozen=True)
class Way:
    """One way of naming an object: a route, one of its methods, one of its needs and that need's field."""

    route: Route
    method: str
    need: Need
    field: str
    kind: Kind

    @property
    def id(self) -> str:
        where = self.field if ":" in self.field else f"{'query' if self.in_query else 'body'}:{self.field}"
        return f"{self.method} {self.route.pattern} {where} [{self.kind.label}]"

    @property
    def in_query(self) -> bool:
        return self.route.source is Source.QUERY or (self.method == "GET" and self.route.source is Source.PROTO)


def ways() -> list[Way]:
    """Every place a checked route of the gate's table names an object of a kind in `KINDS`."""
    out = []
    for route in ROUTES:
        if route.access is not Access.CHECKED or route.graphql:
            continue
        for method in sorted(route.methods):
            for need in route.needs:
                if need.what in CHOSEN:
                    continue
                for kind in KINDS:
                    if need.what in kind.names:
                        out += [Way(route, method, need, f, kind) for f in need.fields]
    return out


@dataclass
class Request:
    method: str
    url: str
    params: list[tuple[str, str]] = field(default_factory=list)
    json: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None

    def send(self, http: Any) -> Any:
        kwargs: dict[str, Any] = {"params": self.params, "headers": self.headers}
        if self.content is not None:
            kwargs["content"] = self.content
        elif self.json is not None:
            kwargs["content"] = json.dumps(self.json)
            kwargs["headers"] = {"Content-Type": "application/json", **self.headers}
        return http.request(self.method, self.url, **kwargs)


# The fields besides ids that MLflow checks before any lookup (proxy/prechecks.py): without them a request is
# refused as malformed (400) whatever its ids name, before any decision.
WELL_FORMED: dict[str, dict[str, Any]] = {
    "2.0/mlflow/metrics/get-history-bulk": {"metric_key": "k"},
    "2.0/mlflow/metrics/get-history-bulk-interval": {"metric_key": "k"},
    "2.0/mlflow/runs/create-promptlab-run": {"prompt_template": "Say {{ x }}", "prompt_parameters": [
        {"key": "x", "value": "hi"}], "model_route": "chat", "model_input": "Say hi", "mlflow_version": "3.17.2"},
}


def build(way: Way, value: str, objects: Objects) -> Request:
    """A request of `way`'s route that names `value` where `way` says, and the caller's own objects in every
    other place the route requires."""
    route, path_params = way.route, {}
    req = Request(way.method, "")
    body: dict[str, Any] = {}
    for need in route.needs:
        if need is way.need:
            _place(req, body, path_params, way.field, value, way.in_query)
        elif not need.optional:         # a required chosen id gets a new one (it names nothing yet)
            own = f"tr-{hex32()}" if need.what in CHOSEN else kind_of(need.what).value(objects, "own")
            _place(req, body, path_params, need.fields[0], own, way.in_query)
        if need.alias:         # the alias a model need names beside the model (set, moved or deleted)
            _place(req, body, path_params, need.alias, "adv-alias", way.in_query)
    for key, filler in WELL_FORMED.get(route.pattern, {}).items():
        if way.in_query:
            req.params.append((key, str(filler)))
        else:
            body.setdefault(key, filler)
    path = route.pattern if route.pattern.startswith("/") else "/api/" + route.pattern
    for name in _path_names(path):
        path = path.replace("{" + name + "}", path_params.get(name.split(":")[0], "x"))
    req.url = path
    if route.pattern == "/v1/traces":
        req.content = otlp_export([hex32()])
        req.headers["Content-Type"] = "application/x-protobuf"
    elif not way.in_query and route.source is Source.PROTO:
        req.json = body
    return req


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.replace("}", "}/").split("/") if part.startswith("{") and part.endswith("}")]


def _place(req: Request, body: dict[str, Any], path_params: dict[str, str], where: str, value: str,
           in_query: bool) -> None:
    if where.startswith("path:"):
        path_params[where[5:]] = value
    elif where.startswith("header:"):
        req.headers[where[7:]] = value
    elif in_query:
        req.params.append((where, value))
    else:
        _set_dotted(body, where.split("."), value)


def _set_dotted(node: dict[str, Any], parts: list[str], value: str) -> None:
    part, rest = parts[0], parts[1:]
    if part.endswith("[]"):
        child: dict[str, Any] = {}
        node[part[:-2]] = [child]
        _set_dotted(child, rest, value)
    elif rest:
        _set_dotted(node.setdefault(part, {}), rest, value)
    else:
        node[part] = [value] if part.endswith("ids") else value


def otlp_export(trace_hex_ids: list[str], *, root: bool = True, attributes: dict[str, str] | None = None,
                name: str = "adv-span") -> bytes:
    """An OTLP export with one span per trace id (hex, 32 digits)."""
    message = ExportTraceServiceRequest()
    scope = message.resource_spans.add().scope_spans.add()
    now = 1_700_000_000_000_000_000
    for trace_hex in trace_hex_ids:
        span = scope.spans.add()
        span.trace_id = bytes.fromhex(trace_hex)
        span.span_id = os.urandom(8)
        if not root:
            span.parent_span_id = os.urandom(8)
        span.name = name
        span.start_time_unix_nano, span.end_time_unix_nano = now, now + 1_000_000
        for key, text in (attributes or {}).items():
            attribute = span.attributes.add()
            attribute.key = key
            attribute.value.string_value = text
    return message.SerializeToString()


def normalised(r: Any, value: str) -> tuple[int, str | None, str]:
    """An answer as status, error code and message with the named id taken out (so two ids compare)."""
    try:
        data = r.json()
    except ValueError:
        return r.status_code, None, r.text
    message = str(data.get("message", "")) if isinstance(data, dict) else str(data)
    return r.status_code, data.get("error_code") if isinstance(data, dict) else None, message.replace(value, "<ID>")

"""GraphQL documents authorized per requested object.

Each root field names what it reads in its `input`; the gate turns that into the same needs the
REST routes have. Fields that cross into the model registry (`modelVersions`) are filtered from
the answer by model name. Unknown root fields are refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
)
from graphql.utilities import value_from_ast_untyped

from .decide import decide
from .errors import BadRequest, PermissionDenied
from .forward import Upstream
from .params import Params, parse_body, parse_query
from .policy import Level
from .resources import Resolver, check
from .routes import Names

if TYPE_CHECKING:
    from .call import Call

# root field -> (what, input keys holding the ids)
ROOT_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mlflowGetExperiment": ("experiment", ("experimentId",)),
    "mlflowGetRun": ("run", ("runId", "runUuid")),
    "mlflowListArtifacts": ("run", ("runId", "runUuid")),
    "mlflowGetMetricHistoryBulkInterval": ("run", ("runIds",)),
    "mlflowSearchRuns": ("experiment", ("experimentIds",)),
    "mlflowSearchDatasets": ("experiment", ("experimentIds",)),
    "mlflowSearchModelVersions": ("model_versions", ()),
}
HARMLESS = {"__typename", "__schema", "__type", "test", "testMutation"}
REGISTRY_FIELD = "modelVersions"


@dataclass(frozen=True)
class GraphqlNeeds:
    ids: tuple[tuple[str, str], ...]    # (what, id): experiment | run, each needing READ
    filter_model_versions: bool


def analyse(query: str, variables: dict[str, Any] | None) -> GraphqlNeeds:
    try:
        doc = parse(query)
    except GraphQLError as exc:
        raise BadRequest(f"The GraphQL query does not parse: {exc.message}") from exc
    fragments = {d.name.value: d for d in doc.definitions if isinstance(d, FragmentDefinitionNode)}
    ids: list[tuple[str, str]] = []
    registry = False
    for op in doc.definitions:
        if not isinstance(op, OperationDefinitionNode):
            continue
        for field in _fields(op.selection_set, fragments, 0):
            name = field.name.value
            if name in HARMLESS:
                continue
            if name not in ROOT_FIELDS:
                raise PermissionDenied(f"Permission denied: GraphQL field {name!r} is not available through the gate.")
            what, keys = ROOT_FIELDS[name]
            if what == "model_versions":
                registry = True
                _require_registry_shape(field, fragments)
                continue
            inputs = _input(field, variables)
            found = [str(v) for k in keys for v in _as_list(inputs.get(k)) if v not in (None, "")]
            if not found and what == "run":
                raise BadRequest(f"GraphQL field {name!r} needs input.{keys[0]}.")
            if not found and name == "mlflowGetExperiment":
                raise BadRequest("GraphQL field 'mlflowGetExperiment' needs input.experimentId.")
            ids += [(what, i) for i in found]
            if _selects(field, REGISTRY_FIELD, fragments):
                registry = True
                _require_registry_shape(field, fragments)
    return GraphqlNeeds(tuple(ids), registry)


def _fields(sel: SelectionSetNode | None, fragments: dict[str, FragmentDefinitionNode], depth: int
            ) -> list[FieldNode]:
    if sel is None or depth > 20:
        return []
    out: list[FieldNode] = []
    for node in sel.selections:
        if isinstance(node, FieldNode):
            out.append(node)
        elif isinstance(node, InlineFragmentNode):
            out += _fields(node.selection_set, fragments, depth + 1)
        elif isinstance(node, FragmentSpreadNode):
            frag = fragments.get(node.name.value)
            if frag is None:
                raise BadRequest(f"GraphQL fragment {node.name.value!r} is not defined.")
            out += _fields(frag.selection_set, fragments, depth + 1)
    return out


def _selects(field: FieldNode, name: str, fragments: dict[str, FragmentDefinitionNode], depth: int = 0) -> bool:
    for sub in _fields(field.selection_set, fragments, depth):
        if sub.name.value == name or _selects(sub, name, fragments, depth + 1):
            return True
    return False


def _require_registry_shape(field: FieldNode, fragments: dict[str, FragmentDefinitionNode], depth: int = 0) -> None:
    """Model versions are filtered by their `name`: it must be selected, unaliased."""
    for sub in _fields(field.selection_set, fragments, depth):
        if sub.name.value == REGISTRY_FIELD:
            if sub.alias is not None:
                raise PermissionDenied("Permission denied: 'modelVersions' may not be aliased through the gate.")
            names = [s for s in _fields(sub.selection_set, fragments, depth + 1) if s.name.value == "name"]
            if not names or any(s.alias is not None for s in names):
                raise PermissionDenied("Permission denied: select 'name' (unaliased) with 'modelVersions' so the "
                                       "gate can show only readable models.")
        else:
            _require_registry_shape(sub, fragments, depth + 1)


def _input(field: FieldNode, variables: dict[str, Any] | None) -> dict[str, Any]:
    for arg in field.arguments:
        if arg.name.value == "input":
            value = value_from_ast_untyped(arg.value, variables or {})
            return value if isinstance(value, dict) else {}
    return {}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def filter_model_versions(data: Any, readable: set[str]) -> Any:
    """Drop model versions of models the caller may not read, wherever they appear."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if key == REGISTRY_FIELD and isinstance(value, list):
                out[key] = [v for v in value if isinstance(v, dict) and v.get("name") in readable]
            else:
                out[key] = filter_model_versions(value, readable)
        return out
    if isinstance(data, list):
        return [filter_model_versions(v, readable) for v in data]
    return data


def model_names(data: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            if key == REGISTRY_FIELD and isinstance(value, list):
                names |= {v["name"] for v in value if isinstance(v, dict) and isinstance(v.get("name"), str)}
            else:
                names |= model_names(value)
    elif isinstance(data, list):
        for v in data:
            names |= model_names(v)
    return names


def payload_of(call: Call) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """The GraphQL request as sent (GET query parameters or a POST body): payload, query text, variables."""
    if call.method == "GET":
        params = Params(query=parse_query(call.query))
        query_text, raw_vars = params.scalar("query") or "", params.scalar("variables")
        try:
            variables = json.loads(raw_vars) if raw_vars else None
        except ValueError as exc:
            raise BadRequest("GraphQL 'variables' is not valid JSON.") from exc
        payload: dict[str, Any] = {"query": query_text, "variables": variables}
    else:
        payload = parse_body(call.body or b"")
        query_text, variables = payload.get("query") or "", payload.get("variables")
    if not isinstance(query_text, str) or not query_text:
        raise BadRequest("A GraphQL request needs a 'query'.")
    if variables is not None and not isinstance(variables, dict):
        raise BadRequest("GraphQL 'variables' must be an object.")
    return payload, query_text, variables


@dataclass(frozen=True)
class Document:
    """A GraphQL request the gate has authorized: what to send upstream, and how to cut the answer."""
    payload: dict[str, Any]
    needs: GraphqlNeeds | None        # None for admins: nothing to cut


async def authorize(call: Call, resolver: Resolver) -> Document:
    """Every object the document reads, resolved and decided (read on each)."""
    payload, query_text, variables = payload_of(call)
    if call.admin:
        return Document(payload, None)
    needs = analyse(query_text, variables)
    for what, value in needs.ids:
        await check(call, resolver, Names(what), value, Level.READ)
    return Document(payload, needs)


async def answer(call: Call, upstream: Upstream, doc: Document) -> tuple[int, Any]:
    """The upstream's answer, with model versions of unreadable models cut out."""
    status, data = await upstream.get_json("/graphql", body=doc.payload, method="POST")
    if doc.needs is not None and doc.needs.filter_model_versions:
        readable = {n for n in model_names(data) if decide(call.rules, call.who, "model", n, Level.READ).allowed}
        data = filter_model_versions(data, readable)
    return status, data

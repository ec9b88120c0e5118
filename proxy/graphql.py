"""GraphQL documents authorized per requested object.

Each root field names what it reads in its `input`; the gate turns that into the same needs the
REST routes have. Fields that cross into the model registry (`modelVersions`) are filtered from
the answer by model name. Unknown root fields are refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

from .errors import BadRequest, PermissionDenied
from .policy import Level

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


READ = Level.READ

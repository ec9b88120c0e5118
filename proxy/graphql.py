"""GraphQL documents authorized the way MLflow's server will execute them.

MLflow's `/graphql` runs a document with graphql-core against its graphene schema. The gate takes
the same steps against a snapshot of that schema (`mlflow_schema.graphql`; a unit test compares it
with the installed MLflow's): it validates the document, selects the operation, coerces the
variables (their types and the document's defaults) and collects the fields (fragments, aliases,
directives) as graphql-core's executor does, then decides on the coerced arguments of
every root field. A root field without a rule here, or whose ids come out empty, is refused; so is
any field the snapshot does not know. Upstream gets the selected operation by name and every
coerced variable spelled out, so MLflow applies no default the gate has not seen.

Fields that cross into the model registry (`modelVersions`) are cut from the answer to models the
caller may read, at the response keys the document gave them (aliases, fragments).
"""
from __future__ import annotations

import asyncio
import enum
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphql import (
    FieldNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    GraphQLUnionType,
    IntValueNode,
    OperationType,
    OverlappingFieldsCanBeMergedRule,
    Source,
    TokenKind,
    ValueNode,
    build_schema,
    get_named_type,
    is_specified_directive,
    parse,
    specified_rules,
    validate,
)
from graphql.execution.collect_fields import collect_fields, collect_sub_fields
from graphql.execution.execute import ExecutionContext
from graphql.execution.values import get_argument_values
from graphql.language import DocumentNode, Lexer

from .decide import decide
from .denials import denial
from .errors import BadRequest, InBandRefusal, PermissionDenied
from .forward import Upstream
from .params import Params, parse_body, parse_query
from .policy import Level
from .resources import Resolver, check
from .routes import Names

if TYPE_CHECKING:
    from .call import Call

SCHEMA_FILE = Path(__file__).with_name("mlflow_schema.graphql")
MAX_TOKENS = 5_000        # the MLflow UI's largest document (GetRun) has 120
MAX_NESTING = 32          # braces, parentheses and brackets; the UI's documents nest 7 deep
KEPT_CHARS = 4_096        # documents up to this size are kept parsed and validated (GetRun: 1.6 kB)
# graphql-core's overlapping-fields rule is quadratic in fields sharing a response key (250 copies of one
# field: 1.2 s). The gate does not need it: it checks the arguments of every node a response key merges,
# and MLflow's own validation, which runs all rules, refuses what the rule would have.
RULES = tuple(rule for rule in specified_rules if rule is not OverlappingFieldsCanBeMergedRule)


@dataclass(frozen=True)
class RootRule:
    """What a root field reads: the `input` fields holding its ids and what they name (None: nothing of a team)."""
    what: Names | None = None
    keys: tuple[str, ...] = ()


_EXPERIMENTS = RootRule(Names.EXPERIMENT, ("experimentIds",))
_RUN = RootRule(Names.RUN, ("runId", "runUuid"))       # MLflow reads `run_id or run_uuid`: both are checked

ROOT_RULES: dict[tuple[str, str], RootRule] = {
    ("Query", "mlflowGetExperiment"): RootRule(Names.EXPERIMENT, ("experimentId",)),
    ("Query", "mlflowGetRun"): _RUN,
    ("Query", "mlflowListArtifacts"): _RUN,
    ("Query", "mlflowGetMetricHistoryBulkInterval"): RootRule(Names.RUN, ("runIds",)),
    ("Query", "mlflowSearchRuns"): _EXPERIMENTS,
    ("Query", "mlflowSearchModelVersions"): RootRule(),   # any model's versions: the answer is cut by model
    ("Query", "test"): RootRule(),                        # echoes its argument
    ("Mutation", "mlflowSearchRuns"): _EXPERIMENTS,
    ("Mutation", "mlflowSearchDatasets"): _EXPERIMENTS,
    ("Mutation", "testMutation"): RootRule(),
}


class Edge(enum.Enum):
    """A nested field MLflow resolves with a lookup of its own (graphene `resolve_*`), not from its parent's data."""
    OWN = "own"              # reads the parent's own data: decided with it
    REGISTRY = "registry"    # model versions of any model: cut from the answer (every MlflowModelVersion is)


# Every nested resolver of MLflow's schema, reviewed; tests/unit/test_graphql_schema.py fails on a new one.
EDGES: dict[tuple[str, str], Edge] = {
    ("MlflowRunExtension", "experiment"): Edge.OWN,          # the run's experiment, the one its read was decided on
    ("MlflowRunExtension", "modelVersions"): Edge.REGISTRY,  # versions whose source is the run, of any model
    ("MlflowMetricExtension", "value"): Edge.OWN,            # NaN -> null
}
REGISTRY_TYPE = "MlflowModelVersion"     # wherever it appears (also mlflowSearchModelVersions), cut by model


@functools.cache
def mlflow_schema() -> GraphQLSchema:
    """The snapshot of MLflow's schema as MLflow builds it: its own directives only (graphene's `directives=`
    replaces the built-in ones, so MLflow refuses `@skip` and `@include`), and `LongString` parsed as graphene's."""
    built = build_schema(SCHEMA_FILE.read_text())
    own = tuple(d for d in built.directives if not is_specified_directive(d))
    kwargs = built.to_kwargs()
    kwargs["directives"] = own
    schema = GraphQLSchema(**kwargs)
    long_string = schema.type_map["LongString"]
    long_string.parse_value = int      # type: ignore[attr-defined]
    long_string.parse_literal = _long_literal     # type: ignore[attr-defined]
    return schema


def _long_literal(node: ValueNode, _variables: dict[str, Any] | None = None) -> int | None:
    return int(node.value) if isinstance(node, IntValueNode) else None


# --- the analysis: what the document will read, decided before it runs --------------------------


@dataclass(frozen=True)
class Need:
    field: str          # the root field, for the denial
    what: Names
    id: str


@dataclass(frozen=True)
class Cut:
    """Model versions in the answer: the response keys from `data` to their list, and the key of their `name`."""
    path: tuple[str, ...]
    name_key: str


@dataclass(frozen=True)
class InBand:
    """Where a refusal of the document's one root field goes, as MLflow answers its own errors: in the
    field's `apiError` (status 200). Each selection is (response key, field name)."""
    root_type: str
    key: str
    field_type: str
    fields: tuple[tuple[str, str], ...]      # selected on the root field (null in the answer)
    error_key: str
    error_fields: tuple[tuple[str, str], ...]
    root_fields: tuple[str, ...] = ()        # `__typename` keys at the root

    def answer(self, message: str) -> dict[str, Any]:
        values = {"code": "PERMISSION_DENIED", "message": message, "__typename": "ApiError"}
        error = {key: values.get(name) for key, name in self.error_fields}
        field = {key: self.field_type if name == "__typename" else None for key, name in self.fields}
        data: dict[str, Any] = {key: self.root_type for key in self.root_fields}
        return {"data": {**data, self.key: {**field, self.error_key: error}}, "errors": None}


@dataclass(frozen=True)
class Analysis:
    operation_name: str | None
    variables: dict[str, Any]      # every variable of the operation, coerced (defaults applied)
    needs: tuple[Need, ...]        # each needs read
    cuts: tuple[Cut, ...]
    in_band: InBand | None = None  # the document reads one root field and selects its apiError


def analyse(query: str, variables: dict[str, Any] | None, operation_name: str | None = None) -> Analysis:
    """Validate, select the operation and coerce its variables as graphql-core does; then walk what it reads."""
    schema = mlflow_schema()
    ctx = ExecutionContext.build(schema, valid_document(query), raw_variable_values=variables,
                                 operation_name=operation_name)
    if isinstance(ctx, list):
        raise BadRequest(_messages("The GraphQL request cannot run", ctx))
    root = {OperationType.QUERY: schema.query_type,
            OperationType.MUTATION: schema.mutation_type}.get(ctx.operation.operation)
    if root is None:
        raise BadRequest("MLflow's GraphQL schema has no subscriptions.")
    walk = _Walk(schema, ctx)
    needs: list[Need] = []
    try:
        fields = collect_fields(schema, ctx.fragments, ctx.variable_values, root, ctx.operation.selection_set)
        for key, nodes in fields.items():
            needs += walk.root_field(root, key, nodes)
    except GraphQLError as exc:
        raise BadRequest(_messages("The GraphQL request cannot run", [exc])) from exc
    name = ctx.operation.name.value if ctx.operation.name else None
    return Analysis(name, dict(ctx.variable_values), tuple(needs), tuple(walk.cuts), walk.in_band(root, fields))


class _Walk:
    """Every field the executor will resolve, collected with the coerced variables."""

    def __init__(self, schema: GraphQLSchema, ctx: ExecutionContext) -> None:
        self.schema, self.fragments, self.variables = schema, ctx.fragments, ctx.variable_values
        self.cuts: list[Cut] = []

    def root_field(self, root: GraphQLObjectType, key: str, nodes: list[FieldNode]) -> list[Need]:
        name = _one_field(key, nodes)
        if name.startswith("__"):          # __typename, __schema, __type: the schema, no team's data
            return []
        rule = ROOT_RULES.get((root.name, name))
        if rule is None:
            raise PermissionDenied(f"Permission denied: GraphQL field {name!r} is not available through the gate.")
        field = root.fields[name]
        ids = _ids(name, rule, [get_argument_values(field, node, self.variables) for node in nodes])
        self.sub_fields(field.type, nodes, (key,))
        return [Need(name, rule.what, i) for i in ids if rule.what is not None]

    def sub_fields(self, type_: GraphQLOutputType, nodes: list[FieldNode], path: tuple[str, ...]) -> None:
        for obj in self.runtime_types(get_named_type(type_)):
            for key, subs in self.collect(obj, nodes).items():
                self.field(obj, key, subs, (*path, key))

    def runtime_types(self, named: GraphQLNamedType) -> list[GraphQLObjectType]:
        """The object types a field's value can be (none of MLflow's fields is abstract today)."""
        if isinstance(named, (GraphQLInterfaceType, GraphQLUnionType)):
            return list(self.schema.get_possible_types(named))
        return [named] if isinstance(named, GraphQLObjectType) else []

    def field(self, parent: GraphQLObjectType, key: str, nodes: list[FieldNode], path: tuple[str, ...]) -> None:
        name = _one_field(key, nodes)
        if name.startswith("__"):
            return
        field = parent.fields[name]
        if field.args:                    # none in MLflow's schema: a new one needs a rule first
            raise PermissionDenied(f"Permission denied: GraphQL field {parent.name}.{name} takes arguments the gate "
                                   "does not check.")
        if get_named_type(field.type).name == REGISTRY_TYPE:
            self.cuts.append(Cut(path, self.name_key(field.type, nodes)))
        self.sub_fields(field.type, nodes, path)

    def name_key(self, type_: GraphQLOutputType, nodes: list[FieldNode]) -> str:
        """The response key of the versions' `name` (any alias): the answer is cut by it."""
        version = get_named_type(type_)
        assert isinstance(version, GraphQLObjectType)
        for key, subs in self.collect(version, nodes).items():
            if subs[0].name.value == "name":
                return key
        raise PermissionDenied("Permission denied: select 'name' with 'modelVersions' so the gate can show only "
                               "the versions of models you may read.")

    def collect(self, obj: GraphQLObjectType, nodes: list[FieldNode]) -> dict[str, list[FieldNode]]:
        return collect_sub_fields(self.schema, self.fragments, self.variables, obj, nodes)

    def in_band(self, root: GraphQLObjectType, fields: dict[str, list[FieldNode]]) -> InBand | None:
        """Where the refusal of a one-field document goes, when that field's answer has an `apiError` it selects."""
        keys = [key for key, nodes in fields.items() if nodes[0].name.value != "__typename"]
        if len(keys) != 1 or fields[keys[0]][0].name.value not in root.fields:      # (or __schema, __type)
            return None
        nodes = fields[keys[0]]
        typed = get_named_type(root.fields[nodes[0].name.value].type)
        if not isinstance(typed, GraphQLObjectType) or "apiError" not in typed.fields:
            return None
        subs = self.collect(typed, nodes)
        error_key = next((key for key, sub in subs.items() if sub[0].name.value == "apiError"), None)
        error_type = get_named_type(typed.fields["apiError"].type)
        if error_key is None or not isinstance(error_type, GraphQLObjectType):
            return None
        selected = tuple((key, sub[0].name.value) for key, sub in subs.items() if key != error_key)
        errors = tuple((key, sub[0].name.value) for key, sub in self.collect(error_type, subs[error_key]).items())
        return InBand(root.name, keys[0], typed.name, selected, error_key, errors,
                      tuple(key for key in fields if key not in keys))


def _one_field(key: str, nodes: list[FieldNode]) -> str:
    """The field a response key stands for; one key naming two fields is refused (MLflow's validation would)."""
    names = {node.name.value for node in nodes}
    if len(names) > 1:
        raise BadRequest(f"GraphQL response key {key!r} names different fields: {', '.join(sorted(names))}.")
    return nodes[0].name.value


def _ids(field: str, rule: RootRule, arguments: list[dict[str, Any]]) -> list[str]:
    """The ids a root field's coerced `input` names: at least one, none empty."""
    if rule.what is None:
        return []
    found: list[str] = []
    for args in arguments:
        given = args.get("input")
        if not isinstance(given, dict):
            continue
        for key in rule.keys:
            value = given.get(key)
            for item in value if isinstance(value, list) else ([] if value is None else [value]):
                if not isinstance(item, str) or not item:
                    raise BadRequest(f"GraphQL field {field!r}: input.{key} holds an empty id.")
                if item not in found:
                    found.append(item)
    if not found:
        raise BadRequest(f"GraphQL field {field!r} needs input.{rule.keys[0]}.")
    return found


def valid_document(query: str) -> DocumentNode:
    """The parsed document, valid against MLflow's schema. Small ones are kept: the UI sends a few, often."""
    return _kept_document(query) if len(query) <= KEPT_CHARS else _validated(query)


@functools.lru_cache(maxsize=64)     # <= 64 x ~0.4 MB of syntax tree
def _kept_document(query: str) -> DocumentNode:
    return _validated(query)


def _validated(query: str) -> DocumentNode:
    doc = parse_document(query)
    errors = validate(mlflow_schema(), doc, RULES)
    if errors:
        raise BadRequest(_messages("The GraphQL document does not match MLflow's schema", errors))
    return doc


def parse_document(query: str) -> DocumentNode:
    """The document, refused with 400 when it does not parse or is larger or deeper than any real one."""
    try:
        lexer, depth, count = Lexer(Source(query)), 0, 0
        while (token := lexer.advance()).kind is not TokenKind.EOF:
            count += 1
            depth += 1 if token.kind in _OPEN else -1 if token.kind in _CLOSE else 0
            if count > MAX_TOKENS or depth > MAX_NESTING:
                raise BadRequest(f"The GraphQL document is too large (at most {MAX_TOKENS} tokens, "
                                 f"nested {MAX_NESTING} deep).")
        return parse(Source(query), no_location=True)
    except GraphQLError as exc:
        raise BadRequest(f"The GraphQL query does not parse: {exc.message}") from exc


_OPEN = frozenset({TokenKind.BRACE_L, TokenKind.PAREN_L, TokenKind.BRACKET_L})
_CLOSE = frozenset({TokenKind.BRACE_R, TokenKind.PAREN_R, TokenKind.BRACKET_R})


def _messages(what: str, errors: list[GraphQLError]) -> str:
    shown = "; ".join(e.message for e in errors[:3])
    return f"{what}: {shown}" + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")


# --- the answer: model versions of unreadable models cut out ------------------------------------


def cut_model_versions(answer: Any, cuts: tuple[Cut, ...], readable: Callable[[str], bool]) -> Any:
    """The upstream's answer with every model-version list at `cuts` holding only versions of readable models."""
    if not cuts or not isinstance(answer, dict):
        return answer
    data = answer.get("data")
    for cut in cuts:
        data = _cut(data, cut.path, cut.name_key, readable)
    return {**answer, "data": data}


def _cut(node: Any, path: tuple[str, ...], name_key: str, readable: Callable[[str], bool]) -> Any:
    if isinstance(node, list):
        return [_cut(item, path, name_key, readable) for item in node]
    if not isinstance(node, dict) or path[0] not in node:
        return node
    key, value = path[0], node[path[0]]
    if len(path) > 1:
        return {**node, key: _cut(value, path[1:], name_key, readable)}
    if value is not None and not isinstance(value, list):
        value = None                      # not the list the schema promises: show nothing
    kept = None if value is None else [v for v in value if isinstance(v, dict) and isinstance(v.get(name_key), str)
                                       and readable(v[name_key])]
    return {**node, key: kept}


# --- the request --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphqlRequest:
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None

    def payload(self) -> dict[str, Any]:
        return {"query": self.query, "variables": self.variables, "operationName": self.operation_name}


def request_of(call: Call) -> GraphqlRequest:
    """The GraphQL request as sent: GET query parameters or a POST body (`query`, `variables`, `operationName`)."""
    if call.method == "GET":
        params = Params(query=parse_query(call.query))
        query, name, raw_vars = params.scalar("query"), params.scalar("operationName"), params.scalar("variables")
        try:
            variables = json.loads(raw_vars) if raw_vars else None
        except (ValueError, RecursionError) as exc:
            raise BadRequest("GraphQL 'variables' is not valid JSON.") from exc
    else:
        body = parse_body(call.body or b"")
        query, variables, name = body.get("query"), body.get("variables"), body.get("operationName")
    if not isinstance(query, str) or not query:
        raise BadRequest("A GraphQL request needs a 'query'.")
    if variables is not None and not isinstance(variables, dict):
        raise BadRequest("GraphQL 'variables' must be an object.")
    if name is not None and not isinstance(name, str):
        raise BadRequest("GraphQL 'operationName' must be a string.")
    return GraphqlRequest(query, variables, name)


@dataclass(frozen=True)
class Document:
    """A GraphQL request the gate has authorized: what to send upstream, and where to cut the answer."""
    payload: dict[str, Any]
    cuts: tuple[Cut, ...] = ()


async def authorize(call: Call, resolver: Resolver) -> Document:
    """Every object the selected operation reads, resolved and decided (read on each)."""
    request = request_of(call)
    if call.admin:
        return Document(request.payload())
    # a thread: a large new document costs up to ~0.3 s of graphql-core, other requests keep being served
    found = await asyncio.to_thread(analyse, request.query, request.variables, request.operation_name)
    for need in found.needs:
        try:
            await check(call, resolver, need.what, need.id, Level.READ)
        except PermissionDenied as err:    # another team's, or nothing at all: the same answer
            message = denial(Level.READ, need.what, need.id, call.rules, call.who, f" (GraphQL field {need.field!r})")
            if found.in_band is not None:  # the MLflow UI shows it at once (a 403 it retries, then shows its status)
                raise InBandRefusal(message, found.in_band.answer(message), err.decision, detail=err.detail) from err
            raise PermissionDenied(message, err.decision, detail=err.detail) from err
    sent = GraphqlRequest(request.query, found.variables, found.operation_name)
    return Document(sent.payload(), found.cuts)


async def answer(call: Call, upstream: Upstream, doc: Document) -> tuple[int, Any]:
    """The upstream's answer, with model versions of unreadable models cut out."""
    status, data = await upstream.get_json("/graphql", body=doc.payload, method="POST")

    @functools.cache
    def readable(name: str) -> bool:
        return decide(call.rules, call.who, "model", name, Level.READ).allowed

    return status, cut_model_versions(data, doc.cuts, readable)

"""Every root field of MLflow's GraphQL schema that names an object, and every way a document can pass it an id.

Shared by the analysis tests (tests/unit/test_graphql.py), the comparison with the installed MLflow's own schema
(tests/unit/test_graphql_schema.py) and the gate end to end (tests/integration/test_graphql_attacks.py). A way
builds a request from a root field and an id; the executed operation reads that id and never the decoys.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.routes import Names


@dataclass(frozen=True)
class Root:
    op: str            # query | mutation
    root: str          # Query | Mutation
    field: str
    input_type: str
    key: str           # the input field holding the id
    many: bool         # a list of ids
    what: Names
    selection: str

    @property
    def id(self) -> str:
        return "7" if self.what is Names.EXPERIMENT else "r-" + self.field[:12]

    def literal(self, value: str) -> str:
        return f'["{value}"]' if self.many else f'"{value}"'

    def value(self, value: str) -> Any:
        return [value] if self.many else value

    def call(self, inp: str, alias: str = "", directive: str = "") -> str:
        return f"{alias}{self.field}(input: {inp}){directive} {self.selection}"

    def lit_input(self, value: str) -> str:
        return f"{{{self.key}: {self.literal(value)}}}"

    def __str__(self) -> str:
        return f"{self.root}.{self.field}.{self.key}"


ROOTS = [
    Root("query", "Query", "mlflowGetExperiment", "MlflowGetExperimentInput", "experimentId", False,
         Names.EXPERIMENT, "{ experiment { name } }"),
    Root("query", "Query", "mlflowGetRun", "MlflowGetRunInput", "runId", False, Names.RUN,
         "{ run { info { runId } data { params { key value } } } }"),
    Root("query", "Query", "mlflowGetRun", "MlflowGetRunInput", "runUuid", False, Names.RUN,
         "{ run { info { runId } } }"),
    Root("query", "Query", "mlflowListArtifacts", "MlflowListArtifactsInput", "runId", False, Names.RUN,
         "{ files { path } }"),
    Root("query", "Query", "mlflowListArtifacts", "MlflowListArtifactsInput", "runUuid", False, Names.RUN,
         "{ files { path } }"),
    Root("query", "Query", "mlflowGetMetricHistoryBulkInterval", "MlflowGetMetricHistoryBulkIntervalInput", "runIds",
         True, Names.RUN, "{ metrics { key value } }"),
    Root("query", "Query", "mlflowSearchRuns", "MlflowSearchRunsInput", "experimentIds", True, Names.EXPERIMENT,
         "{ runs { info { runName } data { params { key value } } experiment { name } } }"),
    Root("mutation", "Mutation", "mlflowSearchRuns", "MlflowSearchRunsInput", "experimentIds", True,
         Names.EXPERIMENT, "{ runs { info { runName } } }"),
    Root("mutation", "Mutation", "mlflowSearchDatasets", "MlflowSearchDatasetsInput", "experimentIds", True,
         Names.EXPERIMENT, "{ datasetSummaries { name experimentId } }"),
]
ON_BOTH_ROOTS = {"mlflowSearchRuns"}
DECOY = "999"      # an id some ways mention where the executed operation never reads it

Request = tuple[str, dict[str, Any] | None, str | None]      # query, variables, operationName


@dataclass(frozen=True)
class Way:
    name: str
    build: Callable[[Root, str], Request]

    def __str__(self) -> str:
        return self.name


def _op(r: Root, body: str, head: str = "", tail: str = "") -> str:
    return f"{r.op} {head}{{ {body} }}{tail}"


WAYS = [
    Way("literal", lambda r, v: (_op(r, r.call(r.lit_input(v))), None, None)),
    Way("input variable", lambda r, v: (_op(r, r.call("$in"), f"Q($in: {r.input_type}) "), {"in": {r.key: r.value(v)}},
                                        None)),
    Way("non-null input variable (the UI's way)", lambda r, v: (
        _op(r, r.call("$data"), f"Q($data: {r.input_type}!) "), {"data": {r.key: r.value(v)}}, None)),
    Way("id variable", lambda r, v: (
        _op(r, r.call(f"{{{r.key}: {'[$id]' if r.many else '$id'}}}"), "Q($id: String) "), {"id": v}, None)),
    Way("list coerced from one string", lambda r, v: (
        _op(r, r.call("$in"), f"Q($in: {r.input_type}) "), {"in": {r.key: v}}, None)),
    Way("defaulted input variable, not sent", lambda r, v: (
        _op(r, r.call("$in"), f"Q($in: {r.input_type} = {r.lit_input(v)}) "), None, None)),
    Way("defaulted input variable, unrelated variables sent", lambda r, v: (
        _op(r, r.call("$in"), f"Q($in: {r.input_type} = {r.lit_input(v)}) "), {"unrelated": 1, "In": {}}, None)),
    Way("defaulted input variable, empty variables", lambda r, v: (
        _op(r, r.call("$in"), f"Q($in: {r.input_type} = {r.lit_input(v)}) "), {}, None)),
    Way("defaulted input variable, sent", lambda r, v: (
        _op(r, r.call("$in"), f"Q($in: {r.input_type} = {r.lit_input(DECOY)}) "), {"in": {r.key: r.value(v)}}, None)),
    Way("defaulted id variable, not sent", lambda r, v: (
        _op(r, r.call(f"{{{r.key}: {'[$id]' if r.many else '$id'}}}"), f'Q($id: String = "{v}") '), None, None)),
    Way("fragment spread", lambda r, v: (
        _op(r, "...F", tail=f" fragment F on {r.root} {{ {r.call(r.lit_input(v))} }}"), None, None)),
    Way("fragment spread with a defaulted variable", lambda r, v: (
        _op(r, "...F", f"Q($in: {r.input_type} = {r.lit_input(v)}) ",
            f" fragment F on {r.root} {{ {r.call('$in')} }}"), None, None)),
    Way("nested fragments", lambda r, v: (
        _op(r, "...A", tail=f" fragment A on {r.root} {{ ...B }} fragment B on {r.root} {{ ... on {r.root} "
                            f"{{ {r.call(r.lit_input(v))} }} }}"), None, None)),
    Way("inline fragment", lambda r, v: (_op(r, f"... on {r.root} {{ {r.call(r.lit_input(v))} }}"), None, None)),
    Way("inline fragment without a type", lambda r, v: (_op(r, f"... {{ {r.call(r.lit_input(v))} }}"), None, None)),
    Way("alias", lambda r, v: (_op(r, r.call(r.lit_input(v), alias="mine: ")), None, None)),
    Way("alias named like another root field", lambda r, v: (
        _op(r, r.call(r.lit_input(v), alias="test: ")), None, None)),
    Way("the same field twice under one key", lambda r, v: (
        _op(r, r.call(r.lit_input(v)) + " " + r.call(r.lit_input(v))), None, None)),
    Way("several operations, operationName picks the one", lambda r, v: (
        _op(r, r.call(r.lit_input(DECOY)), "A ") + " " + _op(r, r.call(r.lit_input(v)), "B "), None, "B")),
    Way("several operations, the one picked has the default", lambda r, v: (
        _op(r, r.call("$in"), f"A($in: {r.input_type} = {r.lit_input(v)}) ") + " "
        + _op(r, r.call(r.lit_input(DECOY)), "B "), {"unrelated": True}, "A")),
    Way("operationName with one operation", lambda r, v: (_op(r, r.call(r.lit_input(v)), "Q "), None, "Q")),
    Way("@component directive (the UI's)", lambda r, v: (
        _op(r, r.call("$data"), f'Q($data: {r.input_type}!) @component(name: "MLflow.ExperimentRunTracking") '),
        {"data": {r.key: r.value(v)}}, None)),
]


# MLflow builds its schema with `directives=[component]`, which drops graphql's built-in @skip and @include:
# MLflow refuses every document using them, and so does the gate (the walk would honour them if they came back).
DIRECTIVE_WAYS = [
    Way("@include(if: true)", lambda r, v: (_op(r, r.call(r.lit_input(v), directive=" @include(if: true)")), None,
                                            None)),
    Way("@skip(if: false)", lambda r, v: (_op(r, r.call(r.lit_input(v), directive=" @skip(if: false)")), None, None)),
    Way("@include with a defaulted variable", lambda r, v: (
        _op(r, r.call(r.lit_input(v), directive=" @include(if: $on)"), "Q($on: Boolean = true) "), None, None)),
    Way("@skip with a sent variable", lambda r, v: (
        _op(r, r.call(r.lit_input(v), directive=" @skip(if: $off)"), "Q($off: Boolean = true) "), {"off": False},
        None)),
    Way("@include on an inline fragment", lambda r, v: (
        _op(r, f"... @include(if: true) {{ {r.call(r.lit_input(v))} }}"), None, None)),
    Way("@skip(if: true)", lambda r, v: (_op(r, r.call(r.lit_input(v), directive=" @skip(if: true)")), None, None)),
    Way("@include with a variable sent false", lambda r, v: (
        _op(r, r.call(r.lit_input(v), directive=" @include(if: $on)"), "Q($on: Boolean = true) "), {"on": False},
        None)),
]


def refusals(r: Root, v: str | None = None) -> list[tuple[str, Request]]:
    """Requests that must be refused with 400 (nothing for the gate to decide on, or not a runnable document)."""
    v = r.id if v is None else v
    other = "query" if r.op == "mutation" else "mutation"
    wrong_type = [] if r.field in ON_BOTH_ROOTS else [
        ("in the wrong operation type", (f"{other} {{ {r.call(r.lit_input(v))} }}", None, None))]
    return wrong_type + [
        ("no input", (_op(r, f"{r.field} {r.selection}"), None, None)),
        ("null input", (_op(r, r.call("null")), None, None)),
        ("empty input", (_op(r, r.call("{}")), None, None)),
        ("null id", (_op(r, r.call(f"{{{r.key}: null}}")), None, None)),
        ("empty id", (_op(r, r.call(r.lit_input(""))), None, None)),
        ("input variable not sent", (_op(r, r.call("$in"), f"Q($in: {r.input_type}) "), None, None)),
        ("input variable sent null", (_op(r, r.call("$in"), f"Q($in: {r.input_type}) "), {"in": None}, None)),
        ("default null", (_op(r, r.call("$in"), f"Q($in: {r.input_type} = null) "), None, None)),
        ("default without the id", (_op(r, r.call("$in"), f"Q($in: {r.input_type} = {{}}) "), {"x": 1}, None)),
        ("id variable not sent", (_op(r, r.call(f"{{{r.key}: {'[$id]' if r.many else '$id'}}}"), "Q($id: String) "),
                                  None, None)),
        ("id as a number", (_op(r, r.call(f"{{{r.key}: 7}}")), None, None)),
        ("id variable as a number", (_op(r, r.call("$in"), f"Q($in: {r.input_type}) "), {"in": {r.key: 7}}, None)),
        ("unknown input field", (_op(r, r.call(f"{{{r.key}: {r.literal(v)}, evil: \"x\"}}")), None, None)),
        ("unknown input field in a variable", (_op(r, r.call("$in"), f"Q($in: {r.input_type}) "),
                                               {"in": {r.key: r.value(v), "evil": 1}}, None)),
        ("several operations, no operationName", (
            _op(r, r.call(r.lit_input(v)), "A ") + " " + _op(r, r.call(r.lit_input(DECOY)), "B "), None, None)),
        ("unknown operationName", (_op(r, r.call(r.lit_input(v)), "A "), None, "B")),
        ("anonymous operation with a name asked", (_op(r, r.call(r.lit_input(v))), None, "A")),
        ("undefined fragment", (_op(r, "...Nope"), None, None)),
        ("fragment on the wrong type", (
            _op(r, "...F", tail=" fragment F on MlflowExperiment { name }"), None, None)),
        ("undefined variable", (_op(r, r.call("$nope")), None, None)),
        ("subscription", (f"subscription {{ {r.call(r.lit_input(v))} }}", None, None)),
        *((f"directive: {way}", way.build(r, v)) for way in DIRECTIVE_WAYS),
        ("one key, two fields", (_op(r, r.call(r.lit_input(v), alias="x: ") + " x: test { output }"), None, None)),
    ]

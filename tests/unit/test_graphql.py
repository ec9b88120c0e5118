"""GraphQL documents analysed as graphql-core executes them against MLflow's schema (proxy/graphql.py).

Every root field that names an object x every way to pass it an id (graphql_cases.py), through GET and POST; the
requests that leave nothing to decide on; the model-version cut under aliases and fragments; the uniform denial.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

import proxy.graphql as gql
from proxy.call import Call
from proxy.errors import BadRequest, InBandRefusal, PermissionDenied
from proxy.graphql import ROOT_RULES, Analysis, Cut, analyse, authorize, cut_model_versions, request_of
from proxy.identity import Identity
from proxy.policy import Level, load_policy_text
from proxy.resources import Target, Unresolvable
from proxy.routes import Names
from tests.support.graphql_cases import ROOTS, WAYS, Request, Root, Way, refusals

METHODS = ["GET", "POST"]


async def _nothing(*_: Any) -> Any:
    return None


def call_for(method: str, request: Request, extra: dict[str, Any] | None = None) -> Call:
    """The request as a client sends it: GET query parameters, or a POST JSON body."""
    query, variables, name = request
    if method == "GET":
        params = {"query": query}
        if variables is not None:
            params["variables"] = json.dumps(variables)
        if name is not None:
            params["operationName"] = name
        scope = {"method": "GET", "path": "/graphql", "query_string": urlencode(params).encode()}
        return Call(scope, _nothing, _nothing)
    body = {"query": query, "variables": variables, "operationName": name, **(extra or {})}
    return Call({"method": "POST", "path": "/graphql", "query_string": b""}, _nothing, _nothing,
                body=json.dumps(body).encode())


def analysed(method: str, request: Request) -> Analysis:
    sent = request_of(call_for(method, request))
    return analyse(sent.query, sent.variables, sent.operation_name)


def test_the_cases_cover_every_root_field_that_names_objects() -> None:
    wanted = {(root, field, key) for (root, field), rule in ROOT_RULES.items() if rule.what for key in rule.keys}
    assert {(r.root, r.field, r.key) for r in ROOTS} == wanted


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("way", WAYS, ids=str)
@pytest.mark.parametrize("root", ROOTS, ids=str)
def test_every_way_to_name_an_object_reaches_the_decision(root: Root, way: Way, method: str) -> None:
    found = analysed(method, way.build(root, root.id))
    assert [(n.field, n.what, n.id) for n in found.needs] == [(root.field, root.what, root.id)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("root", "case", "request_"), [(r, name, req) for r in ROOTS for name, req in refusals(r)],
                         ids=[f"{r}-{name}" for r in ROOTS for name, _ in refusals(r)])
def test_nothing_to_decide_on_or_not_runnable_is_400(root: Root, case: str, request_: Request, method: str) -> None:
    with pytest.raises(BadRequest):
        analysed(method, request_)


def test_a_defaulted_variable_is_sent_upstream_spelled_out() -> None:
    query = ('query Q($in: MlflowSearchRunsInput = {experimentIds: "7"}) '
             "{ mlflowSearchRuns(input: $in) { runs { info { runName } } } }")
    found = analyse(query, {"unrelated": 1})
    assert found.variables == {"in": {"experimentIds": ["7"], "runViewType": None}}
    assert found.operation_name == "Q"


def test_several_root_fields_are_each_decided() -> None:
    query = """query { a: mlflowGetExperiment(input: {experimentId: "3"}) { experiment { name } }
      ...F mlflowGetRun(input: {runId: "r1", runUuid: "r2"}) { run { info { runId } } } }
      fragment F on Query { mlflowSearchRuns(input: {experimentIds: ["4", "5"]}) { runs { info { runId } } } }"""
    assert [(n.what, n.id) for n in analyse(query, None).needs] == [
        (Names.EXPERIMENT, "3"), (Names.EXPERIMENT, "4"), (Names.EXPERIMENT, "5"), (Names.RUN, "r1"), (Names.RUN, "r2")]


@pytest.mark.parametrize("query", [
    "{ __typename }", "{ __schema { types { name } } }", '{ __type(name: "Query") { name fields { name } } }',
    'query { test(inputString: "x") { output } }', 'mutation { testMutation(inputString: "x") { output } }',
    "query { mlflowSearchModelVersions(input: {}) { nextPageToken } }",
])
def test_fields_that_read_no_team_object_need_nothing(query: str) -> None:
    assert analyse(query, None).needs == ()


@pytest.mark.parametrize("query", [
    "query { mlflowDeleteEverything { ok } }", "mutation { somethingNew(input: {}) }",
    'query { mlflowGetRun(input: {runId: "r"}) { run { info { runId secret } } } }',
    'query { mlflowGetRun(input: {runId: "r"}) { run { experiment { runs { info { runId } } } } } }',
    "query {", "", "{ " * 40 + "}" * 40, "{ " + "__typename " * 6000 + "}",
])
def test_fields_unknown_to_mlflow_s_schema_and_bad_documents_are_400(query: str) -> None:
    with pytest.raises(BadRequest):
        analyse(query, None)


def test_a_root_field_without_a_rule_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(ROOT_RULES, ("Query", "mlflowGetRun"))
    with pytest.raises(PermissionDenied, match="not available through the gate"):
        analyse('query { mlflowGetRun(input: {runId: "r"}) { run { info { runId } } } }', None)


@pytest.fixture
def extended_schema(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    """MLflow's schema as a later MLflow might extend it: a nested field with arguments, versions elsewhere."""
    sdl = gql.SCHEMA_FILE.read_text() + """
extend type MlflowExperiment { runs(filter: String): [MlflowRunExtension!] latest: [MlflowModelVersion!] }
"""
    (tmp_path / "schema.graphql").write_text(sdl)
    monkeypatch.setattr(gql, "SCHEMA_FILE", tmp_path / "schema.graphql")
    gql.mlflow_schema.cache_clear()
    gql._kept_document.cache_clear()
    yield
    gql.mlflow_schema.cache_clear()
    gql._kept_document.cache_clear()


def test_a_nested_field_with_arguments_is_refused(extended_schema: None) -> None:
    with pytest.raises(PermissionDenied, match="takes arguments"):
        analyse('{ mlflowGetExperiment(input: {experimentId: "1"}) { experiment { runs(filter: "") '
                "{ info { runId } } } } }", None)


def test_model_versions_are_cut_wherever_they_appear(extended_schema: None) -> None:
    found = analyse('{ mlflowGetExperiment(input: {experimentId: "1"}) { experiment { latest { name } } } }', None)
    assert found.cuts == (Cut(("mlflowGetExperiment", "experiment", "latest"), "name"),)


# --- the model-version cut ----------------------------------------------------------------------


@pytest.mark.parametrize(("query", "cuts"), [
    ("{ mlflowSearchModelVersions(input: {}) { modelVersions { name version } } }",
     [(("mlflowSearchModelVersions", "modelVersions"), "name")]),
    ('{ s: mlflowSearchModelVersions(input: {filter: "x"}) { mv: modelVersions { n: name version } } }',
     [(("s", "mv"), "n")]),
    ("{ mlflowSearchModelVersions(input: {}) { modelVersions { name: version n: name } } }",
     [(("mlflowSearchModelVersions", "modelVersions"), "n")]),
    ("{ mlflowSearchModelVersions(input: {}) { modelVersions { ...V } } } fragment V on MlflowModelVersion { name }",
     [(("mlflowSearchModelVersions", "modelVersions"), "name")]),
    ("{ mlflowSearchModelVersions(input: {}) { modelVersions { version } ... { modelVersions { n: name } } } }",
     [(("mlflowSearchModelVersions", "modelVersions"), "n")]),
    ('{ mlflowGetRun(input: {runId: "r"}) { run { ... on MlflowRunExtension { v: modelVersions { x: name } } } } }',
     [(("mlflowGetRun", "run", "v"), "x")]),
    (('{ runs: mlflowSearchRuns(input: {experimentIds: ["1"]}) { runs { a: modelVersions { name } b: modelVersions '
      '{ k: name } } } }'),
     [(("runs", "runs", "a"), "name"), (("runs", "runs", "b"), "k")]),
    ('{ mlflowGetRun(input: {runId: "r"}) { run { info { runId } } } }', []),
])
def test_model_versions_are_cut_at_the_keys_the_document_gives_them(query: str, cuts: list) -> None:
    assert [(c.path, c.name_key) for c in analyse(query, None).cuts] == cuts


@pytest.mark.parametrize("query", [
    "{ mlflowSearchModelVersions(input: {}) { modelVersions { version } } }",
    "{ mlflowSearchModelVersions(input: {}) { modelVersions { n: version } } }",
    '{ mlflowGetRun(input: {runId: "r"}) { run { modelVersions { __typename } } } }',
    ('{ mlflowGetRun(input: {runId: "r"}) { run { modelVersions { ...V } } } } '
     "fragment V on MlflowModelVersion { source }"),
])
def test_model_versions_without_their_name_are_refused(query: str) -> None:
    with pytest.raises(PermissionDenied, match="select 'name'"):
        analyse(query, None)


def test_the_cut_keeps_versions_of_readable_models_only() -> None:
    answer = {"data": {"runs": {"runs": [
        {"a": [{"name": "alpha-1", "n": "beta-1"}, {"k": "x", "n": "alpha-2"}], "info": {"runId": "r"}},
        {"a": None}, {"info": {}}, {"a": {"n": "beta-1"}}]}}, "errors": None}
    out = cut_model_versions(answer, (Cut(("runs", "runs", "a"), "n"),), lambda name: name.startswith("alpha-"))
    assert out == {"data": {"runs": {"runs": [
        {"a": [{"k": "x", "n": "alpha-2"}], "info": {"runId": "r"}}, {"a": None}, {"info": {}}, {"a": None}]}},
        "errors": None}
    assert cut_model_versions({"data": None, "errors": ["x"]}, (Cut(("a", "b"), "n"),), bool) == \
        {"data": None, "errors": ["x"]}


# --- the request --------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "call"), [
    ("GET", Call({"method": "GET", "path": "/graphql", "query_string": b"query=%7B__typename%7D&variables=%7B"},
                 _nothing, _nothing)),
    ("GET", Call({"method": "GET", "path": "/graphql", "query_string": b"query=%7B__typename%7D&variables=%5B%5D"},
                 _nothing, _nothing)),
    ("GET", Call({"method": "GET", "path": "/graphql", "query_string": b"query=a&query=b"}, _nothing, _nothing)),
    ("GET", Call({"method": "GET", "path": "/graphql", "query_string": b""}, _nothing, _nothing)),
    ("POST", call_for("POST", ("{ __typename }", None, None), {"operationName": 3})),
    ("POST", call_for("POST", ("{ __typename }", None, None), {"query": ["{ __typename }"]})),
    ("POST", Call({"method": "POST", "path": "/graphql", "query_string": b""}, _nothing, _nothing, body=b"[1]")),
    ("POST", Call({"method": "POST", "path": "/graphql", "query_string": b""}, _nothing, _nothing,
                  body=b'{"query": "{ __typename }", "variables": "{}"}')),
])
def test_malformed_requests_are_400(method: str, call: Call) -> None:
    with pytest.raises(BadRequest):
        request_of(call)


POLICY = load_policy_text("""
admins: [root@corp.test]
teams:
  alpha: {members: [alice@corp.test], experiments: ["alpha/"], models: ["alpha-"]}
  beta: {members: [bob@corp.test], experiments: ["beta/"], models: ["beta-"]}
""")


class FakeResolver:
    """Experiment and run ids -> experiment names, as the upstream would answer; anything else is unresolvable."""

    def __init__(self, experiments: dict[str, str]) -> None:
        self.experiments = experiments

    async def targets(self, what: Names, value: str, ident: Identity, level: Level) -> list[Target]:
        name = self.experiments.get(value)
        if name is None:
            raise Unresolvable(f"{what.value} {value}", "the server answered 404")
        return [Target("experiment", name, level)]


def authorized(request: Request, experiments: dict[str, str], user: str = "alice@corp.test",
               extra: dict[str, Any] | None = None) -> gql.Document:
    call = call_for("POST", request, extra)
    call.policy, call.ident = POLICY, Identity(user)
    call.admin = user == "root@corp.test"
    return asyncio.run(authorize(call, FakeResolver(experiments)))  # type: ignore[arg-type]


EXAMPLE = ('query Q($in: MlflowSearchRunsInput = {experimentIds: ["7"]}) { mlflowSearchRuns(input: $in) '
           "{ runs { info { runName } data { params { key value } } } } }")


def test_another_team_s_object_and_a_missing_one_get_the_same_denial() -> None:
    with pytest.raises(PermissionDenied) as foreign:
        authorized((EXAMPLE, {"unrelated": 1}, None), {"7": "beta/base"})
    with pytest.raises(PermissionDenied) as missing:
        authorized((EXAMPLE, {"unrelated": 1}, None), {})
    assert foreign.value.message == missing.value.message == \
        "Permission denied: read on experiment 7 is needed (GraphQL field 'mlflowSearchRuns'); you have no access " \
        "to it, or it does not exist. You can read experiments whose names start with 'alpha/'."
    assert foreign.value.decision is not None and not foreign.value.decision.allowed


def test_an_allowed_document_is_sent_with_its_operation_and_every_variable_spelled_out() -> None:
    doc = authorized((EXAMPLE, {"unrelated": 1}, None), {"7": "alpha/base"}, extra={"extensions": {"x": 1}})
    assert doc.payload == {"query": EXAMPLE, "operationName": "Q",
                           "variables": {"in": {"experimentIds": ["7"], "runViewType": None}}}


def test_admins_send_their_document_as_it_is() -> None:
    doc = authorized(("{ anything }", {"a": 1}, "X"), {}, user="root@corp.test")
    assert doc.payload == {"query": "{ anything }", "variables": {"a": 1}, "operationName": "X"} and doc.cuts == ()


# The MLflow UI's own document for an experiment page (3.17.2, as Apollo sends it: with __typename everywhere).
UI_GET_EXPERIMENT = """query MlflowGetExperimentQuery($input: MlflowGetExperimentInput!) @component(name: "MLflow.ExperimentRunTracking") {
  mlflowGetExperiment(input: $input) {
    apiError { code message __typename }
    experiment { artifactLocation creationTime experimentId lastUpdateTime lifecycleStage name
                 tags { key value __typename } __typename }
    __typename
  }
}"""


def test_the_ui_s_refused_document_is_answered_in_band_like_mlflow_s_own_errors() -> None:
    """200 with the message in the field's apiError: the UI shows it at once (a 403 it retries for 5 s, then shows
    "Received status code 403"). Another team's experiment and a missing one get the same bytes."""
    request = (UI_GET_EXPERIMENT, {"input": {"experimentId": "7"}}, "MlflowGetExperimentQuery")
    with pytest.raises(InBandRefusal) as foreign:
        authorized(request, {"7": "beta/base"})
    with pytest.raises(InBandRefusal) as missing:
        authorized(request, {})
    assert foreign.value.status == 200 and foreign.value.body() == missing.value.body()
    message = foreign.value.message
    assert json.loads(foreign.value.body()) == {"data": {"mlflowGetExperiment": {
        "apiError": {"code": "PERMISSION_DENIED", "message": message, "__typename": "ApiError"},
        "experiment": None, "__typename": "MlflowGetExperimentResponse"}}, "errors": None}
    assert "beta/base" not in message and "You can read experiments whose names start with 'alpha/'" in message


def test_in_band_answers_follow_aliases_and_other_documents_stay_403() -> None:
    aliased = ('query { __typename e: mlflowGetExperiment(input: {experimentId: "7"}) '
               "{ err: apiError { m: message } experiment { name } } }")
    with pytest.raises(InBandRefusal) as refused:
        authorized((aliased, None, None), {"7": "beta/base"})
    assert json.loads(refused.value.body()) == {
        "data": {"__typename": "Query", "e": {"err": {"m": refused.value.message}, "experiment": None}}, "errors": None}
    for query in ('query { mlflowGetExperiment(input: {experimentId: "7"}) { experiment { name } } }',   # no apiError
                  ('query { a: mlflowGetExperiment(input: {experimentId: "7"}) { apiError { message } } '
                   'b: mlflowGetExperiment(input: {experimentId: "1"}) { apiError { message } } }')):   # two fields
        with pytest.raises(PermissionDenied) as plain:
            authorized((query, None, None), {"7": "beta/base", "1": "alpha/base"})
        assert not isinstance(plain.value, InBandRefusal) and plain.value.status == 403

"""GraphQL through the gate as an attacker with a team member's token sends it (issue 8, item 1).

MLflow's `/graphql` executes a document with graphql-core against its own schema. Every way a document can name an
object (a literal, a variable, a variable's default, a fragment, an alias, one of several operations, a GET query
string; the ways of tests/support/graphql_cases.py) must reach the gate's decision: another team's object is refused,
a missing one is refused with the same status and message, and the caller's own objects keep working, including the
MLflow UI's own documents. What MLflow would not run (@skip/@include, unknown fields) or what names nothing is a 400.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import mlflow
import pytest
from gate_it import ALICE, BOB, World, uid

from proxy.routes import Names
from tests.support.graphql_cases import DIRECTIVE_WAYS, ROOTS, WAYS, Request, Root, refusals

pytestmark = pytest.mark.integration

EXAMPLE = ('query Q($in: MlflowSearchRunsInput = {experimentIds: ["EXP"]}) { mlflowSearchRuns(input: $in) '
           '{ runs { info { runName } data { params { key value } } experiment { name } } } }')
BETA_SECRETS = ("beta-secret", "beta/base")


def refused(r: httpx.Response) -> None:
    """A 403 PERMISSION_DENIED that shows nothing of the other team's objects."""
    assert r.status_code == 403, r.text
    assert r.json()["error_code"] == "PERMISSION_DENIED", r.text
    for secret in BETA_SECRETS:
        assert secret not in r.text, r.text


def refused_in_band(r: httpx.Response) -> None:
    """The refusal of a document that reads one root field and selects its apiError, as MLflow answers its own
    errors there (so the UI shows it at once): 200, the field's data null, apiError PERMISSION_DENIED; nothing of
    the other team's objects."""
    assert r.status_code == 200 and r.json()["errors"] is None, r.text
    [answer] = r.json()["data"].values()
    [error] = [v for v in answer.values() if isinstance(v, dict)]
    assert error["code"] == "PERMISSION_DENIED" and "is needed" in error["message"], r.text
    assert all(v is None or v is error or isinstance(v, str) for v in answer.values()), r.text
    for secret in BETA_SECRETS:
        assert secret not in r.text, r.text


def example_requests(exp_id: str) -> list[tuple[str, dict]]:
    """The issue's document: POST, POST with unrelated variables, GET, and as a mutation (POST and GET)."""
    query = EXAMPLE.replace("EXP", exp_id)
    mutation = query.replace("query Q", "mutation Q", 1)
    return [
        ("POST", {"json": {"query": query}}),
        ("POST", {"json": {"query": query, "variables": {"unrelated": 1}}}),
        ("POST", {"json": {"query": query, "variables": {}, "operationName": "Q"}}),
        ("GET", {"params": {"query": query}}),
        ("GET", {"params": {"query": query, "variables": json.dumps({"unrelated": 1})}}),
        ("POST", {"json": {"query": mutation}}),
        ("GET", {"params": {"query": mutation}}),
    ]


def test_the_issue_example_is_refused(gate, world: World):
    with gate.http(ALICE) as h:
        for path in ("/graphql", "/ajax-api/graphql"):
            for method, kwargs in example_requests(world.beta_exp):
                refused(h.request(method, path, **kwargs))


def test_the_issue_example_works_on_own_experiments(gate, world: World):
    with gate.http(BOB) as h:
        for method, kwargs in example_requests(world.beta_exp):
            r = h.request(method, "/graphql", **kwargs)
            assert r.status_code == 200, r.text
            runs = r.json()["data"]["mlflowSearchRuns"]["runs"]
            assert {p["value"] for run in runs for p in run["data"]["params"]} == {"beta-secret"}, r.text
            assert {run["experiment"]["name"] for run in runs} == {"beta/base"}, r.text


# ------------------------------------------------------------------------------------- every root field x every way


MISSING = {Names.EXPERIMENT: "987654321", Names.RUN: "0123456789abcdef0123456789abcdef"}


def ids(world: World, root: Root) -> tuple[str, str]:
    """(own, another team's) id of the kind the root field names, for alice."""
    if root.what is Names.EXPERIMENT:
        return world.alpha_exp, world.beta_exp
    return world.alpha_run, world.beta_run


def send(h: httpx.Client, method: str, request: Request, path: str = "/graphql") -> httpx.Response:
    query, variables, name = request
    if method == "GET":
        params = {"query": query, **({"variables": json.dumps(variables)} if variables is not None else {}),
                  **({"operationName": name} if name is not None else {})}
        return h.get(path, params=params)
    return h.post(path, json={"query": query, "variables": variables, "operationName": name})


@pytest.mark.parametrize("root", ROOTS, ids=str)
def test_another_team_s_object_is_refused_like_a_missing_one_every_way(gate, world: World, root: Root):
    _, foreign = ids(world, root)
    missing = MISSING[root.what]
    with gate.http(ALICE) as h:
        for way in WAYS:
            for method in ("POST", "GET"):
                denied_, absent = send(h, method, way.build(root, foreign)), send(h, method, way.build(root, missing))
                refused(denied_)
                assert absent.status_code == denied_.status_code, f"{way} {method}: {absent.text}"
                assert absent.json()["message"].replace(missing, "ID") == \
                    denied_.json()["message"].replace(foreign, "ID"), f"{way} {method}"


@pytest.mark.parametrize("root", ROOTS, ids=str)
def test_own_objects_are_answered_every_way(gate, world: World, root: Root):
    own, _ = ids(world, root)
    with gate.http(ALICE) as h:
        for way in WAYS:
            for method in ("POST", "GET"):
                r = send(h, method, way.build(root, own))
                assert r.status_code == 200, f"{way} {method}: {r.text}"
                body = r.json()
                assert body["errors"] is None and body["data"], f"{way} {method}: {r.text}"
                assert all(v is not None and not v.get("apiError") for v in body["data"].values()), f"{way}: {r.text}"


@pytest.mark.parametrize("root", ROOTS, ids=str)
def test_nothing_to_decide_on_is_400(gate, world: World, root: Root):
    _, foreign = ids(world, root)
    with gate.http(ALICE) as h:
        for case, request in refusals(root, foreign) + [(f"directive: {w}", w.build(root, foreign))
                                                         for w in DIRECTIVE_WAYS]:
            r = send(h, "POST", request)
            assert r.status_code == 400, f"{case}: {r.text}"
            assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE", f"{case}: {r.text}"
            for secret in BETA_SECRETS:
                assert secret not in r.text, f"{case}: {r.text}"


def test_fields_unknown_to_the_gate_are_refused(gate, world: World):
    with gate.http(ALICE) as h:
        for query in ["query { mlflowSearchExperiments(input: {}) { experiments { name } } }",
                      f'query {{ mlflowGetRun(input: {{runId: "{world.alpha_run}"}}) {{ run {{ secretField }} }} }}',
                      "subscription { mlflowRunUpdates { runId } }"]:
            r = h.post("/graphql", json={"query": query})
            assert r.status_code == 400, r.text
            assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE", r.text


# ------------------------------------------------------------------------------------------- the MLflow UI's documents


def ui_documents() -> dict[str, str]:
    """The GraphQL documents the installed MLflow UI sends (template literals of its JS bundle), with the
    `__typename` Apollo adds to every selection set below the operation's."""
    docs: dict[str, str] = {}
    for path in (Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js").glob("*.js"):
        for m in re.finditer(r"`(\s*(?:query|mutation) (\w+)[^`]*)`", path.read_text(errors="replace")):
            if "mlflow" in m.group(1):
                head, _, rest = m.group(1).replace("\\n", "\n").partition("{")
                docs[m.group(2)] = head + "{" + rest.replace("{", "{ __typename")
    return docs


UI_VARIABLES = {
    "GetRun": lambda run, exp: {"data": {"runId": run}},
    "SearchRuns": lambda run, exp: {"data": {"filter": "", "experimentIds": [exp]}},
    "GetMetricHistoryBulkInterval": lambda run, exp: {"data": {"runIds": [run], "metricKey": "loss", "startStep": None,
                                                               "endStep": None, "maxResults": 320}},
    "MlflowGetExperimentQuery": lambda run, exp: {"input": {"experimentId": exp}},
}


def test_the_ui_s_documents_answer_as_mlflow_does_and_refuse_other_teams(gate, world: World):
    docs = ui_documents()
    assert set(docs) == set(UI_VARIABLES), "the MLflow UI sends other GraphQL documents now: add them here"
    with gate.http(ALICE) as h, httpx.Client(base_url=gate.upstream, timeout=60) as direct:
        for name, doc in docs.items():
            own = {"operationName": name, "query": doc, "variables": UI_VARIABLES[name](world.alpha_run,
                                                                                         world.alpha_exp)}
            r = h.post("/graphql", json=own)
            assert r.status_code == 200 and r.json()["errors"] is None, f"{name}: {r.text}"
            assert r.json() == direct.post("/graphql", json=own).json(), name
            assert world.alpha_run in r.text or world.alpha_exp in r.text, f"{name}: {r.text}"
            foreign = own | {"variables": UI_VARIABLES[name](world.beta_run, world.beta_exp)}
            refused_in_band(h.post("/graphql", json=foreign))
            refused(h.post("/ajax-api/graphql", json=foreign))           # not a route of MLflow: admins only


# ---------------------------------------------------------------------------------- model versions of other teams


def test_model_versions_of_unreadable_models_are_cut_under_aliases_and_fragments(gate, world: World):
    alice, bob, n = gate.client(ALICE), gate.client(BOB), uid()
    run = alice.create_run(world.public_exp).info.run_id          # team beta may read alpha/public/
    alice.log_text(run, "weights", "model/weights.txt")
    source = f"{alice.get_run(run).info.artifact_uri}/model"
    seen, hidden = f"alpha-gql-{n}", f"beta-gql-{n}"
    alice.create_registered_model(seen)
    alice.create_model_version(seen, source, run_id=run)
    bob.create_registered_model(hidden)
    bob.create_model_version(hidden, source, run_id=run)
    like = f"name LIKE '%-gql-{n}'"
    documents = [
        (f'{{ mlflowGetRun(input: {{runId: "{run}"}}) {{ run {{ modelVersions {{ name version }} }} }} }}', "name"),
        ((f'{{ x: mlflowGetRun(input: {{runId: "{run}"}}) {{ run {{ mv: modelVersions {{ name: version n: name }} '
         "} } }"), "n"),
        ((f'query Q($in: MlflowSearchRunsInput = {{experimentIds: ["{world.public_exp}"], filter: "attributes.run_id = '
         f"'{run}'\"}}) {{ mlflowSearchRuns(input: $in) {{ runs {{ ...R }} }} }} fragment R on MlflowRunExtension "
         "{ ... { modelVersions { ...V } } } fragment V on MlflowModelVersion { k: name }"), "k"),
        (f'{{ mlflowSearchModelVersions(input: {{filter: "{like}"}}) {{ modelVersions {{ name }} }} }}', "name"),
        ((f'query Q($f: String = "{like}") {{ s: mlflowSearchModelVersions(input: {{filter: $f}}) '
         "{ modelVersions { n: name } } }"), "n"),
    ]
    with gate.http(ALICE) as a, gate.http(BOB) as b, httpx.Client(base_url=gate.upstream, timeout=60) as direct:
        for query, key in documents:
            assert version_names(direct.post("/graphql", json={"query": query}), key) == {seen, hidden}, query
            assert version_names(a.post("/graphql", json={"query": query}), key) == {seen}, query
            assert version_names(b.post("/graphql", json={"query": query}), key) == {hidden}, query
        nameless = f'{{ mlflowGetRun(input: {{runId: "{run}"}}) {{ run {{ modelVersions {{ n: version }} }} }} }}'
        r = a.post("/graphql", json={"query": nameless})
        assert r.status_code == 403 and "select 'name'" in r.json()["message"], r.text


def version_names(r: httpx.Response, key: str) -> set[str]:
    assert r.status_code == 200 and r.json()["errors"] is None, r.text
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if key in node and isinstance(node[key], str) and "-gql-" in node[key]:
                found.add(node[key])
            for value in node.values():
                walk(value)

    walk(r.json()["data"])
    return found

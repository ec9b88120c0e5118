"""GraphQL through the gate as an attacker with a team member's token sends it (issue 8, item 1).

MLflow's `/graphql` executes a document with graphql-core against its own schema. Every way a document can name an
object (a literal, a variable, a variable's default, a fragment, an alias, a directive, one of several operations, a
GET query string) must reach the gate's decision: another team's object is refused, a missing one is refused with
the same status and message, and the caller's own objects keep working, including the MLflow UI's own queries.
"""
from __future__ import annotations

import json

import httpx
import pytest
from gate_it import ALICE, BOB, World

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

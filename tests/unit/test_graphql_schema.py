"""The gate's snapshot of MLflow's GraphQL schema (proxy/mlflow_schema.graphql) against the installed MLflow.

The snapshot must be the installed MLflow's schema; every root field needs a rule and every field MLflow resolves
with a lookup of its own a classification (proxy/graphql.py: ROOT_RULES, EDGES); and for every case of
graphql_cases.py, the ids the gate decides on are the ids MLflow's own resolvers would receive, also when MLflow runs
the request the gate sends on (variables spelled out).

After an MLflow upgrade that changes the schema, regenerate the snapshot and review the rules:

    PYTHONPATH=. python tests/unit/test_graphql_schema.py
"""
from __future__ import annotations

import functools
import re
import warnings
from typing import Any

import pytest
from graphql import GraphQLObjectType, GraphQLSchema, OperationType, build_schema, get_named_type, parse, validate
from graphql.execution.collect_fields import collect_fields
from graphql.execution.execute import ExecutionContext
from graphql.execution.values import get_argument_values
from graphql.utilities import print_schema

from proxy.errors import BadRequest
from proxy.graphql import EDGES, REGISTRY_TYPE, ROOT_RULES, SCHEMA_FILE, Edge, analyse, mlflow_schema
from tests.support.graphql_cases import DIRECTIVE_WAYS, ROOTS, WAYS, Request, Root, Way

HEADER = """\
# MLflow {version}'s GraphQL schema: graphql.print_schema of mlflow.server.graphql.graphql_schema_extensions.schema.
# The gate validates and coerces documents against it (proxy/graphql.py); tests/unit/test_graphql_schema.py fails
# when the installed MLflow's schema differs, and regenerates this file when run as a script.
# MLflow 2.22, 3.1 and 3.10 have subsets of it (fewer output fields; 2.22: mlflowSearchRuns on Mutation only),
# with the same root fields' inputs; a field this file lacks is refused.

"""


@functools.cache
def installed() -> GraphQLSchema:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.server.graphql.graphql_schema_extensions import schema
    return schema.graphql_schema


def render() -> str:
    import mlflow

    return HEADER.format(version=mlflow.__version__) + print_schema(installed()) + "\n"


def test_the_snapshot_is_the_installed_mlflow_s_schema() -> None:
    assert print_schema(build_schema(SCHEMA_FILE.read_text())) == print_schema(installed()), (
        "MLflow's GraphQL schema changed: regenerate proxy/mlflow_schema.graphql "
        "(PYTHONPATH=. python tests/unit/test_graphql_schema.py) and review ROOT_RULES and EDGES in proxy/graphql.py")


def test_the_gate_knows_the_directives_mlflow_knows() -> None:
    """print_schema leaves out graphql's built-in directives; MLflow's schema has none of them (no @skip, @include)."""
    assert [d.name for d in mlflow_schema().directives] == [d.name for d in installed().directives] == ["component"]


def test_every_root_field_has_a_rule() -> None:
    schema = installed()
    roots = [t for t in (schema.query_type, schema.mutation_type, schema.subscription_type) if t is not None]
    assert {(root.name, name) for root in roots for name in root.fields} == set(ROOT_RULES)


def _resolves_itself(field: Any) -> bool:
    from graphene.types.resolver import get_default_resolver

    resolve = field.resolve
    return resolve is not None and getattr(resolve, "func", None) is not get_default_resolver()


def test_every_field_mlflow_resolves_with_its_own_lookup_is_classified() -> None:
    schema = installed()
    roots = {schema.query_type, schema.mutation_type}
    own = {(t.name, name) for t in schema.type_map.values()
           if isinstance(t, GraphQLObjectType) and t not in roots and not t.name.startswith("__")
           for name, field in t.fields.items() if _resolves_itself(field)}
    assert own == set(EDGES), "classify each in EDGES (proxy/graphql.py): what does its resolver read?"
    for (type_name, name), edge in EDGES.items():
        returns_versions = get_named_type(schema.type_map[type_name].fields[name].type).name == REGISTRY_TYPE
        assert returns_versions == (edge is Edge.REGISTRY), (type_name, name)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def mlflow_reads(request: Request) -> list[tuple[str, str]]:
    """(root field, id) for each id MLflow's own resolvers receive when its schema executes the request."""
    query, variables, operation_name = request
    schema = installed()
    doc = parse(query)
    assert validate(schema, doc) == []
    ctx = ExecutionContext.build(schema, doc, raw_variable_values=variables, operation_name=operation_name)
    assert not isinstance(ctx, list), ctx
    root = schema.query_type if ctx.operation.operation is OperationType.QUERY else schema.mutation_type
    assert root is not None
    reads: list[tuple[str, str]] = []
    for nodes in collect_fields(schema, ctx.fragments, ctx.variable_values, root, ctx.operation.selection_set).values():
        name = nodes[0].name.value
        given = get_argument_values(root.fields[name], nodes[0], ctx.variable_values).get("input") or {}
        for key in ROOT_RULES[(root.name, name)].keys:
            value = given.get(_snake(key))
            for item in value if isinstance(value, list) else [value]:
                if item and (name, item) not in reads:
                    reads.append((name, item))
    return reads


@pytest.mark.parametrize("way", WAYS, ids=str)
@pytest.mark.parametrize("root", ROOTS, ids=str)
def test_the_gate_decides_on_what_mlflow_s_resolvers_receive(root: Root, way: Way) -> None:
    request = way.build(root, root.id)
    found = analyse(*request)
    gate_reads = [(n.field, n.id) for n in found.needs]
    assert gate_reads == mlflow_reads(request)
    assert mlflow_reads((request[0], found.variables, found.operation_name)) == gate_reads   # what is sent on


@pytest.mark.parametrize("way", DIRECTIVE_WAYS, ids=str)
@pytest.mark.parametrize("root", ROOTS, ids=str)
def test_documents_mlflow_refuses_to_run_are_refused(root: Root, way: Way) -> None:
    request = way.build(root, root.id)
    assert validate(installed(), parse(request[0])), "MLflow runs this document: make it a way in graphql_cases.py"
    with pytest.raises(BadRequest):
        analyse(*request)


if __name__ == "__main__":
    SCHEMA_FILE.write_text(render())
    print(f"wrote {SCHEMA_FILE}")

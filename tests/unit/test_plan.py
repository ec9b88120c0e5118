"""Search plans and orders, table-driven: which upstream searches answer a caller, and how MLflow orders them."""
from __future__ import annotations

import pytest

from proxy.plan import (
    MAX_STREAMS,
    SCAN,
    Stream,
    excluded,
    like_clause,
    name_constraints,
    outermost,
    plan,
    upstream_filter,
)
from proxy.routes import Search
from proxy.searches import SEARCHES, name_first, order_of, parse_clause, sort_key

EXPERIMENTS, MODELS, VERSIONS = (SEARCHES[s] for s in (Search.EXPERIMENTS, Search.REGISTERED_MODELS,
                                                        Search.MODEL_VERSIONS))


@pytest.mark.parametrize(("prefixes", "expected"), [
    (["b/", "a/", "a/x/", "a/"], ["a/", "b/"]),
    (["users/u/", "users/"], ["users/"]),
    (["ab/", "a"], ["a"]),
    (["a-", "a/"], ["a-", "a/"]),
])
def test_nested_prefixes_are_searched_once(prefixes: list[str], expected: list[str]) -> None:
    assert outermost(prefixes) == expected


@pytest.mark.parametrize(("prefix", "clause"), [
    ("alpha/", "name LIKE 'alpha/%'"),
    ("a_b%/", "name LIKE 'a_b%/%'"),              # wildcards only widen the match
    ("o'brien/", "name LIKE \"o'brien/%\""),       # MLflow takes a double-quoted value as it is
    ('say"x/', "name LIKE 'say\"x/%'"),
    ("o'b\"x/", "name LIKE 'o%'"),                # both quotes: stop before the first
    ("back\\slash/", "name LIKE 'back%'"),        # a backslash escapes on PostgreSQL, not on SQLite
    ("\\x", None),
    ("'\"", None),
])
def test_like_clauses(prefix: str, clause: str | None) -> None:
    assert like_clause(prefix) == clause


@pytest.mark.parametrize(("flt", "constraints"), [
    (None, []),
    ("name LIKE 'alpha/%'", [("LIKE", "alpha/%")]),
    ("tags.x = 'name' AND attribute.name = \"a/b\"", [("=", "a/b")]),
    ("`name` ILIKE '%x%' AND name != 'y'", [("ILIKE", "%x%")]),
    ("tags.note = \"name = 'x'\"", []),
    ("name = 'it''s'", []),                        # doubled quotes: read nothing
    ("name LIKE 'a\\_b%'", []),
    ("name IN ('a', 'b')", []),
])
def test_name_constraints_of_a_caller_filter(flt: str | None, constraints: list[tuple[str, str]]) -> None:
    assert name_constraints(flt) == constraints


@pytest.mark.parametrize(("prefix", "flt", "out"), [
    ("alpha/", "name LIKE 'alpha/sub%'", False),
    ("alpha/sub/", "name LIKE 'alpha/%'", False),
    ("beta/", "name LIKE 'alpha/%'", True),
    ("alpha/", "name LIKE 'ALPHA/%'", False),      # SQLite's LIKE ignores case
    ("alpha/", "name = 'ALPHA/x'", True),
    ("alpha/", "name = 'alpha/x'", False),
    ("alpha/", "name LIKE '%/x'", False),
    ("a_b/", "name LIKE 'aXb/%'", True),
    ("a_b/", "name LIKE 'a_b/%'", False),
    ("ü/", "name LIKE 'Ü/%'", False),              # non-ASCII case folding: never skipped
])
def test_a_filter_excludes_a_prefix_only_when_no_name_can_match(prefix: str, flt: str, out: bool) -> None:
    assert excluded(prefix, name_constraints(flt)) is out


def test_plans() -> None:
    assert plan(None, None) == [SCAN]
    assert plan([], None) == []
    assert plan(["b/", "a/", "a/x/"], "name LIKE 'b/%'") == [Stream("b/", "name LIKE 'b/%'")]
    assert plan([f"p{i:02d}/" for i in range(MAX_STREAMS + 1)], None) == [SCAN]
    assert plan(["\\x/", "a/"], None) == [SCAN]
    assert plan(["", "a/"], None) == [SCAN]
    assert upstream_filter(Stream("a/", "name LIKE 'a/%'"), " tags.x = 'y' ") == "name LIKE 'a/%' AND tags.x = 'y'"
    assert upstream_filter(SCAN, "") is None


@pytest.mark.parametrize(("kind", "clause", "parsed"), [
    (EXPERIMENTS, "name", ("name", True)),
    (EXPERIMENTS, "name DESC", ("name", False)),
    (EXPERIMENTS, "`creation_time` asc", ("creation_time", True)),
    (EXPERIMENTS, "attribute.last_update_time DESC", ("last_update_time", False)),
    (EXPERIMENTS, "tags.x DESC", None),
    (EXPERIMENTS, "name sideways", None),
    (EXPERIMENTS, "NAME", None),
    (MODELS, "timestamp DESC", ("timestamp", False)),
    (MODELS, "attribute.name", None),
    (VERSIONS, "version_number", ("version_number", True)),
])
def test_order_by_clauses(kind, clause: str, parsed: tuple[str, bool] | None) -> None:  # type: ignore[no-untyped-def]
    assert parse_clause(kind, clause) == parsed


@pytest.mark.parametrize(("kind", "order_by", "order"), [
    (EXPERIMENTS, [], [("creation_time", False), ("experiment_id", True)]),
    (EXPERIMENTS, ["name"], [("name", True), ("experiment_id", False)]),           # MLflow's tie-breaker: id DESC
    (EXPERIMENTS, ["experiment_id DESC"], [("experiment_id", False)]),
    (MODELS, [], [("name", True)]),
    (MODELS, ["timestamp DESC"], [("timestamp", False), ("name", True)]),
    (MODELS, ["timestamp", "last_updated_timestamp"], None),                         # one field twice: MLflow refuses
    (VERSIONS, [], [("last_updated_timestamp", False), ("name", True), ("version_number", False)]),
    (VERSIONS, ["name DESC"], [("name", False), ("version_number", False)]),
])
def test_orders_with_mlflows_defaults_and_tie_breakers(kind, order_by: list[str],  # type: ignore[no-untyped-def]
                                                         order: list[tuple[str, bool]] | None) -> None:
    assert order_of(kind, order_by) == order


def test_sort_keys_compare_like_the_database() -> None:
    key = sort_key(EXPERIMENTS, ["last_update_time DESC"])
    assert key is not None
    items = [{"experiment_id": "10", "name": "b", "last_update_time": "5"},
             {"experiment_id": "9", "name": "a", "last_update_time": 5},
             {"experiment_id": "2", "name": "c"},
             {"experiment_id": "3", "name": "d", "last_update_time": 7}]
    assert [i["experiment_id"] for i in sorted(items, key=key)] == ["3", "10", "9", "2"]   # NULL last, ids DESC
    versions = sort_key(VERSIONS, [])
    assert versions is not None
    mvs = [{"name": "m", "version": "9", "last_updated_timestamp": 1}, {"name": "m", "version": "10",
                                                                        "last_updated_timestamp": 1}]
    assert [v["version"] for v in sorted(mvs, key=versions)] == ["10", "9"]               # versions as numbers
    assert name_first(MODELS, []) is True and name_first(EXPERIMENTS, ["name DESC"]) is False
    assert name_first(EXPERIMENTS, []) is None

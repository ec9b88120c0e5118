"""Protected aliases, table-driven through the route table and `resources.authorize`: setting, moving or deleting
an alias the owning team protects needs manage on the model; every other route that drops or moves an alias
needs manage already; the refusal says why."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from proxy.call import Call
from proxy.errors import BadRequest, PermissionDenied
from proxy.identity import Identity
from proxy.params import read_params
from proxy.policy import Level, load_policy_text
from proxy.resources import Resolver, authorize
from proxy.routes import Names, Need, RouteTable
from tests.support.policies import team

POLICY = load_policy_text("""
admins: [root@corp.test]
default: edit
teams:
""" + team("vision", "bob@corp.test", "group:vision", maintainers=["carol@corp.test"], models=["vision-"],
           protected_aliases=["champion", "Production"])
    + team("nlp", "nina@corp.test", models=["nlp-"]) + """grants:
  - {to: [dana@corp.test], models: ["vision-"], permission: edit}
  - {to: [erin@corp.test], models: ["vision-"], permission: manage}
denies:
  - {to: [carol@corp.test], models: ["vision-frozen-"], keep: edit}
""", "p.yaml")
TABLE = RouteTable()
ALIAS_PATH = "/api/2.0/mlflow/registered-models/alias"


def call_of(user: str, method: str, path: str, body: dict[str, Any] | None = None, query: bytes = b"") -> Call:
    scope = {"method": method, "path": path, "query_string": query, "headers": []}
    call = Call(scope, None, None)  # type: ignore[arg-type]
    call.policy, call.ident = POLICY, Identity(user, frozenset())
    call.route, call.path_params = TABLE.lookup(method, path)
    call.params = read_params(method, call.route.source, query, json.dumps(body).encode() if body else None)
    return call


def decide_alias(user: str, method: str, model: str, alias: Any, path: str = ALIAS_PATH) -> Call:
    body = {"name": model, "alias": alias, **({"version": "1"} if method == "POST" else {})}
    call = call_of(user, method, path, body)
    asyncio.run(authorize(call, Resolver(None)))  # type: ignore[arg-type]   # model names need no lookups
    return call


def refusal(user: str, model: str, alias: str) -> PermissionDenied:
    """The refusal of `user` setting `alias` on `model` (the call must be refused)."""
    with pytest.raises(PermissionDenied) as refused:
        decide_alias(user, "POST", model, alias)
    return refused.value


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize(("user", "model", "alias", "allowed"), [
    ("bob@corp.test", "vision-clf", "champion", False),          # a member: not a protected alias
    ("bob@corp.test", "vision-clf", "production", False),        # listed as Production
    ("bob@corp.test", "vision-clf", "CHAMPION", False),          # some databases compare aliases without case
    ("bob@corp.test", "vision-clf", "Champion", False),
    ("bob@corp.test", "vision-clf", "chámpion", False),          # ... or accents (MySQL's default collation)
    ("bob@corp.test", "vision-clf", "champion\n", False),        # MLflow's alias check lets a trailing newline pass
    ("bob@corp.test", "vision-clf", ["staging", "champion"], False),   # a list: refused (a body's is not a string)
    ("bob@corp.test", "vision-clf", "staging", True),            # other aliases: edit is enough
    ("bob@corp.test", "vision-clf", "champion-2", True),
    ("dana@corp.test", "vision-clf", "champion", False),         # a grant of edit is edit
    ("erin@corp.test", "vision-clf", "champion", True),          # a grant of manage is manage
    ("carol@corp.test", "vision-clf", "champion", True),         # a maintainer
    ("carol@corp.test", "vision-frozen-clf", "champion", False),  # a maintainer capped to edit by a deny
    ("carol@corp.test", "vision-frozen-clf", "staging", True),
    ("root@corp.test", "vision-clf", "champion", True),          # an admin
    ("bob@corp.test", "nlp-bert", "champion", False),            # not bob's model at all
    ("nina@corp.test", "nlp-bert", "champion", True),            # nlp protects nothing
    ("bob@corp.test", "misc-model", "champion", True),           # no team owns it: default edit, nothing protected
])
def test_a_protected_alias_needs_manage(user: str, model: str, alias: Any, allowed: bool, method: str) -> None:
    if allowed:
        call = decide_alias(user, method, model, alias)
        assert [d.allowed for d in call.decisions] == [True]
    else:      # a list in a body is not a string: MLflow's 400, read before anything is decided (issue 11 item 6)
        with pytest.raises(BadRequest if isinstance(alias, list) else PermissionDenied):
            decide_alias(user, method, model, alias)


def test_the_refusal_says_the_alias_is_protected_and_manage_is_needed() -> None:
    refused = refusal("bob@corp.test", "vision-clf", "champion")
    assert refused.message == ("Permission denied: alias 'champion' (team vision) of model 'vision-clf' is "
                               "protected: setting, moving or deleting it needs manage on the model; "
                               "you have edit.")
    decision = refused.decision
    assert decision is not None and (decision.needed, decision.have) == (Level.MANAGE, Level.EDIT)


def test_a_caller_without_edit_is_refused_as_before_and_learns_nothing_of_the_protection() -> None:
    refused = refusal("nina@corp.test", "vision-clf", "champion")
    assert refused.message == ("Permission denied: edit on model 'vision-clf' is needed; you have no access "
                               "to that name. You can create and edit registered models and prompts whose "
                               "names start with 'nlp-', and names no team owns.")
    assert "alias" not in refused.message and "protected" not in refused.message


def test_reading_an_alias_needs_read_only() -> None:
    call = call_of("bob@corp.test", "GET", ALIAS_PATH, query=b"name=vision-clf&alias=champion")
    asyncio.run(authorize(call, Resolver(None)))  # type: ignore[arg-type]
    assert [(d.needed, d.allowed) for d in call.decisions] == [(Level.READ, True)]


@pytest.mark.parametrize("path", [ALIAS_PATH, "/ajax-api/2.0/mlflow/registered-models/alias"])
def test_the_ui_route_is_the_same(path: str) -> None:
    with pytest.raises(PermissionDenied):
        decide_alias("bob@corp.test", "DELETE", "vision-clf", "champion", path)


@pytest.mark.parametrize("alias", [None, ""])
def test_an_alias_change_without_an_alias_is_refused(alias: Any) -> None:
    with pytest.raises(BadRequest, match="'alias'"):
        decide_alias("bob@corp.test", "POST", "vision-clf", alias)


# Every other way an alias is dropped or moved, with why it needs nothing more (MLflow 3.17's handlers and
# SqlAlchemyStore): the version an alias points to is deleted (delete_model_version drops its aliases), the model
# is deleted (aliases cascade), the model is renamed (aliases follow the name): each needs manage already.
@pytest.mark.parametrize(("method", "path"), [
    ("DELETE", "/api/2.0/mlflow/model-versions/delete"),
    ("DELETE", "/api/2.0/mlflow/registered-models/delete"),
    ("POST", "/api/2.0/mlflow/registered-models/rename"),
])
def test_routes_that_drop_or_move_aliases_need_manage(method: str, path: str) -> None:
    route, _ = TABLE.lookup(method, path)
    model_needs = [n for n in route.needs if n.what is Names.MODEL]
    assert model_needs and all(n.level is Level.MANAGE for n in model_needs)


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/2.0/mlflow/model-versions/create"), ("PATCH", "/api/2.0/mlflow/model-versions/update"),
    ("POST", "/api/2.0/mlflow/model-versions/transition-stage"), ("PATCH", "/api/2.0/mlflow/registered-models/update"),
    ("POST", "/api/2.0/mlflow/registered-models/set-tag"), ("POST", "/api/2.0/mlflow/model-versions/set-tag"),
])
def test_edits_that_touch_no_alias_stay_at_edit(method: str, path: str) -> None:
    route, _ = TABLE.lookup(method, path)
    assert [n.level for n in route.needs if n.what is Names.MODEL] == [Level.EDIT]
    assert all(n.alias is None for n in route.needs)


def test_only_the_alias_routes_name_an_alias() -> None:
    rows = {(m, r.pattern) for r in TABLE.fixed.values() for m in r.methods if any(n.alias for n in r.needs)}
    assert rows == {("POST", "2.0/mlflow/registered-models/alias"), ("DELETE", "2.0/mlflow/registered-models/alias")}


def test_only_a_model_has_aliases() -> None:
    with pytest.raises(ValueError, match="only a model"):
        Need(Names.EXPERIMENT, ("experiment_id",), Level.EDIT, alias="alias")

"""The gate's own answers to the MLflow UI (proxy/ui.py): who is signed in, their roles and permissions made of
the policy, the assistant off, the UI's sign-out recognised, and refusals in a form the UI shows."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from proxy import ui
from proxy.call import Call
from proxy.errors import PermissionDenied, RateLimited, Redirect, RefusedAsMissing, SignInRequired
from proxy.identity import Identity
from proxy.params import Params, parse_query
from proxy.policy import load_policy_text
from proxy.routes import RouteTable

POLICY = load_policy_text("""
admins: [root@x.test]
teams:
  vision: {members: [group:vision], experiments: ["vision/"], models: ["vision-"]}
grants:
  - {to: [everyone], experiments: ["shared/"], permission: edit}
""")
DAVE = Identity("dave@x.test", frozenset({"vision"}), via="session", account="stamp")
TABLE = RouteTable()


async def _nothing(*_: Any) -> Any:
    return None


def call(method: str, path: str, headers: dict[bytes, bytes] | None = None, ident: Identity = DAVE,
         query: bytes = b"") -> Call:
    c = Call({"method": method, "path": path, "query_string": query}, _nothing, _nothing,
             headers=headers or {}, policy=POLICY, ident=ident)
    c.route, c.path_params = TABLE.lookup(method, path)
    c.admin = ident.id == "root@x.test"
    c.params = Params(query=parse_query(query))
    return c


def answered(c: Call) -> tuple[int, dict[bytes, bytes], Any]:
    status, headers, body = ui.answer(c)
    return status, dict(headers), json.loads(body)


JSON = {b"content-type": b"application/json; charset=utf-8"}       # what every UI call sends (fetch helper)


@pytest.mark.parametrize("prefix", ["/api", "/ajax-api"])
def test_users_current_is_the_caller(prefix: str) -> None:
    status, _, body = answered(call("GET", f"{prefix}/2.0/mlflow/users/current", JSON))
    assert status == 200
    assert body == {"user": {"id": "dave@x.test", "username": "dave@x.test", "is_admin": False}, "is_basic_auth": True}
    _, _, root = answered(call("GET", f"{prefix}/2.0/mlflow/users/current", JSON, Identity("root@x.test")))
    assert root["user"]["is_admin"] is True


def test_roles_and_permissions_are_the_policy_s_rows() -> None:
    _, _, roles = answered(call("GET", "/ajax-api/3.0/mlflow/users/roles/list", JSON, query=b"username=dave%40x.test"))
    assert [(r["name"], [(p["resource_type"], p["resource_pattern"], p["permission"]) for p in r["permissions"]])
            for r in roles["roles"]] == [
        ("team vision (member)", [("experiment", "vision/*", "EDIT"), ("registered_model", "vision-*", "EDIT")]),
        ("grant (<text>: grants[0])", [("experiment", "shared/*", "EDIT")])]
    _, _, mine = answered(call("GET", "/ajax-api/3.0/mlflow/users/current/permissions", JSON))
    assert mine["is_admin"] is False and len(mine["permissions"]) == 3
    assert mine["permissions"][0] == {"role_id": 1, "role_name": "team vision (member)", "workspace": "default",
                                      "resource_type": "experiment", "resource_pattern": "vision/*",
                                      "permission": "EDIT"}
    with pytest.raises(PermissionDenied, match="only your own roles"):
        ui.answer(call("GET", "/ajax-api/3.0/mlflow/users/roles/list", JSON, query=b"username=bob%40x.test"))


def test_the_assistant_is_off_and_passwords_are_the_policy_s() -> None:
    assert answered(call("GET", "/ajax-api/3.0/mlflow/assistant/config", JSON))[2] == \
        {"providers": {}, "projects": {}, "remote_access_allowed": False}
    assert answered(call("GET", "/ajax-api/3.0/mlflow/assistant/providers", JSON))[2] == {"providers": []}
    assert TABLE.lookup("PUT", "/ajax-api/3.0/mlflow/assistant/config")[0].answer is None       # still refused
    with pytest.raises(PermissionDenied, match=r"policy \(users:\).*mlflow-gate hash-password"):
        ui.answer(call("PATCH", "/ajax-api/2.0/mlflow/users/update-password", JSON))


def basic(user: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{user}".encode())


def test_the_ui_s_sign_out_is_recognised() -> None:
    path = "/ajax-api/2.0/mlflow/users/current"
    assert ui.signing_out(call("GET", path, {b"authorization": basic("mlflow-logged-out-k3x9")}))
    assert not ui.signing_out(call("GET", path, {b"authorization": basic("dave@x.test")}))
    assert not ui.signing_out(call("GET", path, {b"authorization": b"Basic !!"}))
    assert not ui.signing_out(call("GET", "/ajax-api/2.0/mlflow/experiments/search",
                                   {b"authorization": basic("mlflow-logged-out-k3x9")}))


def test_only_the_sign_out_xhr_is_challenged() -> None:
    """The XHR sends its credentials only after a Basic challenge (Chromium); the account menu's own call (JSON
    Content-Type), token callers and page loads are answered."""
    path = "/ajax-api/2.0/mlflow/users/current"
    status, headers, _ = answered(call("GET", path, {b"cookie": b"mlflow_gate_session=x"}))
    assert status == 401 and headers[b"www-authenticate"] == b'Basic realm="mlflow-gate"'
    for c in (call("GET", path, {**JSON, b"cookie": b"mlflow_gate_session=x"}),
              call("GET", path, {b"sec-fetch-mode": b"navigate"}),
              call("GET", path, {b"authorization": b"Bearer mgt_x"}, Identity("dave@x.test", via="token"))):
        assert answered(c)[0] == 200


def test_a_page_load_right_after_the_ui_s_sign_out_shows_the_signed_out_page() -> None:
    after = ui.page_without_session(call("GET", "/", {b"cookie": b"mlflow_gate_signed_out=1"}, query=b""))
    assert isinstance(after, Redirect) and after.location == "/_gate/logout"
    first = ui.page_without_session(call("GET", "/", {}, query=b"a=1"))
    assert isinstance(first, SignInRequired) and first.location == "/_gate/login?next=%2F%3Fa%3D1"


def test_the_create_dialog_s_name_check_reads_a_refusal_as_missing() -> None:
    refused = PermissionDenied("Permission denied: read on experiment 'nlp/x' is needed; ...")
    ajax = ui.as_shown(call("GET", "/ajax-api/2.0/mlflow/experiments/get-by-name"), refused)
    assert isinstance(ajax, RefusedAsMissing) and ajax.status == 404 and ajax.code == "RESOURCE_DOES_NOT_EXIST"
    assert ajax.message == refused.message
    assert ui.as_shown(call("GET", "/api/2.0/mlflow/experiments/get-by-name"), refused) is refused     # clients: 403
    assert ui.as_shown(call("GET", "/ajax-api/2.0/mlflow/experiments/get"), refused) is refused
    limited = RateLimited("slow down", 3)
    assert ui.as_shown(call("GET", "/ajax-api/2.0/mlflow/experiments/get-by-name"), limited) is limited

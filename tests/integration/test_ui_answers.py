"""What the MLflow UI and a newcomer's client see (issue 12, items 3 and 4), over HTTP against the real gate and a
real mlflow server: `users/current` for every signed-in caller, the UI's sign-out ending a session, the assistant's
settings answered while the assistant stays refused, and refusals that name the names the caller may use, the same
for another team's object and a missing one (REST, GraphQL in-band, the create dialog's name check).
The browser's view of the same: test_browser_accounts.py."""
from __future__ import annotations

import base64
import json
import uuid

import httpx
import mlflow
import pytest
from gate_it import ALICE, BOB, ROOT, World
from mlflow.exceptions import MlflowException

from tests.integration.conftest import ACCOUNT_PASSWORD
from tests.support.gate import Gate

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("mlflow_server", ["sqlite"], indirect=True)]

CURRENT = "/ajax-api/2.0/mlflow/users/current"
JSON = {"Content-Type": "application/json; charset=utf-8"}          # what the UI's fetch helper sends on every call
UI_EXPERIMENT = ("query MlflowGetExperimentQuery($input: MlflowGetExperimentInput!) { mlflowGetExperiment(input: "
                 "$input) { apiError { code message __typename } experiment { experimentId name __typename } "
                 "__typename } }")


def sign_in(gate: Gate, user: str = ALICE) -> str:
    r = httpx.post(gate.url + "/_gate/login", data={"username": user, "password": ACCOUNT_PASSWORD, "next": "/"},
                   headers={"Origin": gate.url}, timeout=30)
    assert r.status_code == 303, r.text
    return str(r.cookies["mlflow_gate_session"])


def cookie(value: str, **more: str) -> dict[str, str]:
    return {"Cookie": "; ".join([f"mlflow_gate_session={value}", *(f"{k}={v}" for k, v in more.items())])}


def logged_out_basic() -> dict[str, str]:
    user = f"mlflow-logged-out-{uuid.uuid4().hex[:12]}"
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{user}".encode()).decode()}


def test_users_current_answers_every_signed_in_caller(accounts_gate: Gate) -> None:
    for prefix in ("/api", "/ajax-api"):
        for user, admin in ((ALICE, False), (ROOT, True)):
            r = httpx.get(accounts_gate.url + prefix + "/2.0/mlflow/users/current",
                          headers={"Authorization": f"Bearer {accounts_gate.token(user)}"}, timeout=30)
            assert r.status_code == 200 and r.json()["user"] == {"id": user, "username": user, "is_admin": admin}
    r = httpx.get(accounts_gate.url + CURRENT, headers={**JSON, **cookie(sign_in(accounts_gate, BOB))}, timeout=30)
    assert r.status_code == 200 and r.json() == {"user": {"id": BOB, "username": BOB, "is_admin": False},
                                                 "is_basic_auth": True}
    assert httpx.get(accounts_gate.url + CURRENT, timeout=30).status_code == 401


def test_the_ui_s_sign_out_ends_the_gate_session(accounts_gate: Gate) -> None:
    """The XHR of the UI's Logout: first without credentials (challenged), then with its logged-out ones."""
    url, value = accounts_gate.url, sign_in(accounts_gate)
    probe = httpx.get(url + CURRENT, headers=cookie(value), timeout=30)
    assert probe.status_code == 401 and probe.headers["www-authenticate"] == 'Basic realm="mlflow-gate"'
    assert httpx.get(url + "/_gate/me", headers={"Accept": "application/json", **cookie(value)},
                     timeout=30).status_code == 200                       # the challenge alone ends nothing
    out = httpx.get(url + CURRENT, headers={**cookie(value), **logged_out_basic()}, timeout=30)
    assert out.status_code == 401 and "www-authenticate" not in out.headers   # no browser prompt, nothing kept
    set_cookies = out.headers.get_list("set-cookie")
    assert any(c.startswith("mlflow_gate_session=;") and "Max-Age=0" in c for c in set_cookies), set_cookies
    assert any(c.startswith("mlflow_gate_signed_out=1;") for c in set_cookies), set_cookies
    # the copied cookie is refused from now on, and the reload lands on the signed-out page
    assert httpx.get(url + "/_gate/me", headers={"Accept": "application/json", **cookie(value)},
                     timeout=30).status_code == 401
    page = httpx.get(url + "/", headers={"Accept": "text/html", **cookie(value, mlflow_gate_signed_out="1")},
                     timeout=30)
    assert page.status_code == 302 and page.headers["location"] == "/_gate/logout"
    fresh = httpx.get(url + "/", headers={"Accept": "text/html"}, timeout=30)
    assert fresh.status_code == 302 and fresh.headers["location"].startswith("/_gate/login?next=")
    # the logged-out credentials are never a password guess: no throttling however often they come
    for _ in range(25):
        assert httpx.get(url + CURRENT, headers=logged_out_basic(), timeout=30).status_code == 401


def test_the_ui_s_account_routes_and_the_assistant(accounts_gate: Gate) -> None:
    with accounts_gate.http(ALICE) as h:
        roles = h.get("/ajax-api/3.0/mlflow/users/roles/list", params={"username": ALICE}).json()["roles"]
        assert [r["name"] for r in roles] == ["team alpha (member)", "grant (policy.yaml: grants[0])"]
        assert {p["resource_pattern"] for p in roles[0]["permissions"]} == {"alpha/*", "alpha-*"}
        other = h.get("/ajax-api/3.0/mlflow/users/roles/list", params={"username": BOB})
        assert other.status_code == 403 and "only your own roles" in other.json()["message"]
        mine = h.get("/ajax-api/3.0/mlflow/users/current/permissions").json()
        assert mine["is_admin"] is False and {p["permission"] for p in mine["permissions"]} == {"EDIT"}
        password = h.patch("/ajax-api/2.0/mlflow/users/update-password", json={"username": ALICE, "password": "x"})
        assert password.status_code == 403 and "users:" in password.json()["message"]
        assert h.get("/ajax-api/3.0/mlflow/assistant/config").json() == \
            {"providers": {}, "projects": {}, "remote_access_allowed": False}
        assert h.get("/ajax-api/3.0/mlflow/assistant/providers").json() == {"providers": []}
        for method, path in (("PUT", "/ajax-api/3.0/mlflow/assistant/config"),
                             ("POST", "/ajax-api/3.0/mlflow/assistant/chat")):
            refused = h.request(method, path, json={})
            assert refused.status_code == 403 and "disabled by the gate" in refused.json()["message"], path


def test_the_client_s_refusals_name_the_usable_prefixes(gate: Gate) -> None:
    with gate.as_user(ALICE):
        with pytest.raises(MlflowException) as named:
            mlflow.set_experiment("iris-test")
        assert "read on experiment 'iris-test' is needed" in str(named.value)
        assert "You can read experiments whose names start with 'alpha/' or 'shared/'." in str(named.value)
        with pytest.raises(MlflowException) as default:
            mlflow.start_run()                           # no experiment set: the Default one
        text = str(default.value)
        assert "edit on the Default experiment (id 0) is needed" in text and "mlflow.set_experiment" in text
        mlflow.set_experiment("shared/first-hour")       # the fix the message gives works
        with mlflow.start_run():
            mlflow.log_metric("x", 1)
        with pytest.raises(MlflowException) as model:
            mlflow.MlflowClient().create_registered_model("beta-stolen")
        assert "create and edit registered models and prompts whose names start with 'alpha-' or 'shared-'" in \
            str(model.value)


def test_another_team_s_objects_and_missing_ones_are_refused_alike(gate: Gate, world: World) -> None:
    missing_run, missing_exp = uuid.uuid4().hex, "987654321"
    with gate.http(ALICE) as h:
        runs = [h.get("/api/2.0/mlflow/runs/get", params={"run_id": r}) for r in (world.beta_run, missing_run)]
        assert [r.status_code for r in runs] == [403, 403]
        assert runs[0].json()["message"].replace(world.beta_run, "ID") == \
            runs[1].json()["message"].replace(missing_run, "ID")
        assert "You can read experiments whose names start with" in runs[0].json()["message"]
        # The UI's experiment document: answered in-band (200) like MLflow's own errors, identical for both.
        answers = [h.post("/graphql", json={"query": UI_EXPERIMENT, "variables": {"input": {"experimentId": e}},
                                            "operationName": "MlflowGetExperimentQuery"})
                   for e in (world.beta_exp, missing_exp)]
        assert [a.status_code for a in answers] == [200, 200]
        errors = [a.json()["data"]["mlflowGetExperiment"] for a in answers]
        assert errors[0]["experiment"] is None and errors[0]["apiError"]["code"] == "PERMISSION_DENIED"
        assert json.dumps(errors[0]).replace(world.beta_exp, "ID") == json.dumps(errors[1]).replace(missing_exp, "ID")
        assert "beta/base" not in answers[0].text
        own = h.post("/graphql", json={"query": UI_EXPERIMENT, "variables": {"input": {"experimentId": world.alpha_exp}}})
        assert own.json()["data"]["mlflowGetExperiment"]["experiment"]["name"] == "alpha/base"


def test_the_create_dialog_s_name_check_reads_a_refusal_as_missing(gate: Gate) -> None:
    with gate.http(ALICE) as h:
        def lookup(prefix: str, name: str) -> httpx.Response:
            return h.get(prefix + "/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name})

        taken, free = lookup("/ajax-api", "beta/base"), lookup("/ajax-api", f"beta/free-{uuid.uuid4().hex[:6]}")
        assert taken.status_code == free.status_code == 404
        assert taken.json()["error_code"] == free.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        assert taken.json()["message"].split("'")[2:] == free.json()["message"].split("'")[2:]   # all but the name
        assert lookup("/api", "beta/base").status_code == 403                # clients keep the plain refusal
        assert lookup("/ajax-api", "alpha/base").status_code == 200          # own names: MLflow's own answers
        assert lookup("/ajax-api", f"alpha/free-{uuid.uuid4().hex[:6]}").json()["error_code"] == \
            "RESOURCE_DOES_NOT_EXIST"
        created = h.post("/ajax-api/2.0/mlflow/experiments/create", json={"name": "iris-test"})
        assert created.status_code == 403 and "You can create and edit experiments whose names start with" in \
            created.json()["message"]

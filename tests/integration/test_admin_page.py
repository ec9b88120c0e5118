"""/_gate/admin in Chromium (Debian's, via Playwright): an admin signs in with a local account, sees the teams with
their protected aliases, the grants, denies and limits, asks who can reach a name with the GET form, and finds a
refusal the real mlflow client just met; a member who is no admin gets the 403 every admin-only route gives. Only the gate's own script file loads on the page
and the browser reports no content-security-policy violation."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.passwords import hash_password
from tests.integration.gate_it import denied, uid
from tests.support.browser import ARGS, CHROMIUM, TIMEOUT_MS, require_chromium
from tests.support.gate import Gate, start_gate

# The page reads the policy and the gate's memory only: one backend is enough.
pytestmark = [pytest.mark.integration, pytest.mark.parametrize("mlflow_server", ["sqlite"], indirect=True)]

ADMIN_PASSWORD, BOB_PASSWORD = "admin-pass-1", "bob-pass-1"


def admin_policy() -> str:
    return f"""\
admins: [admin@corp.test]
users:
  admin@corp.test: {{password: "{hash_password(ADMIN_PASSWORD)}"}}
  bob@corp.test: {{password: "{hash_password(BOB_PASSWORD)}", groups: [vision]}}
teams:
  vision:
    members: [group:vision]
    maintainers: [carol@corp.test]
    experiments: ["vision/"]
    models: ["vision-"]
    protected_aliases: [champion, production]
  nlp:
    members: [nina@corp.test]
    experiments: ["nlp/"]
grants:
  - {{to: [team:nlp], experiments: ["vision/benchmarks/"], permission: read}}
denies:
  - {{to: [group:contractors], experiments: ["vision/secret/"], keep: read}}
limits: {{requests_per_minute: 6000}}
"""


@pytest.fixture(scope="module")
def admin_gate(mlflow_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:  # type: ignore[no-untyped-def]
    gate = start_gate(tmp_path_factory.mktemp("admin-gate"), mlflow_server.url, admin_policy(),
                      backend=mlflow_server.backend)
    try:
        yield gate
    finally:
        gate.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[Any, list[str]]]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            context = chromium.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(TIMEOUT_MS)
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                "http://127.0.0.1") else (problems.append(route.request.url), route.abort()))
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            yield page, problems
        finally:
            chromium.close()


def sign_in(page: Any, gate: Gate, user: str, password: str) -> None:
    page.goto(gate.url + "/_gate/admin")
    page.wait_for_selector("input[name=username]")
    assert "/_gate/login" in page.url, page.url
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(gate.url + "/_gate/admin**")


def test_the_admin_page_in_chromium(admin_gate: Gate, browser: tuple[Any, list[str]], tmp_path: Path) -> None:
    page, problems = browser
    gate = admin_gate
    refused = f"vision/from-nina-{uid()}"
    with denied():
        gate.client("nina@corp.test").create_experiment(refused)           # a refusal for the page to show

    sign_in(page, gate, "admin@corp.test", ADMIN_PASSWORD)
    response = page.goto(gate.url + "/_gate/admin")
    assert response is not None and response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    teams = page.locator("table[aria-label=teams]")
    assert "vision" in teams.inner_text() and "champion" in teams.inner_text() and "production" in teams.inner_text()
    assert "group:vision" in teams.inner_text() and "user:carol@corp.test" in teams.inner_text()
    assert "vision/benchmarks/" in page.locator("table[aria-label=grants]").inner_text()
    assert "group:contractors" in page.locator("table[aria-label=denies]").inner_text()
    assert "6000 per caller on each gate replica" in page.inner_text("body")
    refusals = page.locator("table[aria-label=refusals]").inner_text()
    assert "nina@corp.test" in refusals and f"edit on experiment '{refused}' is needed" in refusals
    page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)

    # the who-can form is a plain GET form
    page.fill("input[name=name]", "vision/benchmarks/imagenet")
    page.select_option("select[name=kind]", "experiment")
    page.click("form[action='/_gate/admin'] button[type=submit]")
    page.wait_for_url("**/_gate/admin?name=vision%2Fbenchmarks%2Fimagenet&kind=experiment")
    holders = page.locator("table[aria-label='who can']").inner_text()
    assert "user:carol@corp.test" in holders and "maintainer of team vision" in holders
    assert "team:nlp" in holders and "grant" in holders and "user:admin@corp.test" in holders
    assert page.input_value("input[name=name]") == "vision/benchmarks/imagenet"
    page.screenshot(path=str(tmp_path / "who-can.png"), full_page=True)
    assert page.evaluate("[...document.scripts].map(s => s.getAttribute('src'))") == ["/_gate/static/gate.js"]
    assert problems == [], problems

    # a member who is no admin: the refusal every admin-only route gives (MLflow's JSON), nothing of the policy
    page.goto(gate.url + "/_gate/logout")
    sign_in(page, gate, "bob@corp.test", BOB_PASSWORD)
    response = page.goto(gate.url + "/_gate/admin")
    assert response is not None and response.status == 403
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error_code": "PERMISSION_DENIED",
                               "message": "Permission denied: /_gate/admin is for admins only."}
    assert "champion" not in page.inner_text("body")


ADMIN_ONLY = {"/_gate/admin": "/_gate/admin is for admins only",
              "/_gate/metrics": "/_gate/metrics is for admins",
              "/api/2.0/mlflow/webhooks": "/api/2.0/mlflow/webhooks is for admins only"}


def test_non_admins_get_the_answer_of_every_admin_only_route(admin_gate: Gate) -> None:
    """Over HTTP, with a personal token and with the browser's Accept: /_gate/admin refuses as /_gate/metrics and
    MLflow's admin routes through the gate do (status, headers' type, body keys, error code)."""
    gate = admin_gate
    for accept in ("application/json", "text/html,application/xhtml+xml,*/*;q=0.8"):
        with gate.http("nina@corp.test") as nina:
            for path, says in ADMIN_ONLY.items():
                r = nina.get(path, headers={"accept": accept})
                assert r.status_code == 403, (path, r.text)
                assert r.headers["content-type"].startswith("application/json"), (path, r.headers)
                body = r.json()
                assert set(body) == {"error_code", "message"} and body["error_code"] == "PERMISSION_DENIED", body
                assert says in body["message"], (path, body)
        with gate.http("admin@corp.test") as root:
            r = root.get("/_gate/admin", headers={"accept": accept})
            assert r.status_code == 200, r.text
    with httpx.Client(base_url=gate.url) as anonymous:
        for path in ADMIN_ONLY:
            r = anonymous.get(path, headers={"accept": "application/json"})
            assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED", (path, r.text)

"""A newcomer's first hour in a real browser (Debian's Chromium through Playwright), signed in with a LOCAL account
on a gate without an identity provider (issue 12, items 2-5):

- a deep link into the MLflow UI (`/#/experiments/N/runs/R`) opened signed out lands there after signing in;
- MLflow's own account menu shows who is signed in, and its Logout ends the gate's session;
- MLflow's assistant panel does not open by itself (the gate refuses the assistant);
- refusals reach the person: another team's experiment shows the gate's reason at once (not a 403 retried for
  5 s), the same as a missing experiment, and the create dialog shows which names may be used;
- the gate's own pages (sign-in, signed in, your access, personal tokens, signed out) in MLflow's look, under a
  Content-Security-Policy with no inline code.

Screenshots go to test-output/browser/accounts/ (tests/support/browser.py).
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import mlflow
import pytest

from tests.integration.conftest import ACCOUNT_PASSWORD
from tests.integration.gate_it import ALICE, BOB, uid
from tests.support.browser import ARGS, LOOPBACK_ONLY, TIMEOUT_MS, Shots, body_text, require_chromium, wait_for_text
from tests.support.gate import Gate

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("mlflow_server", ["sqlite"], indirect=True)]


@dataclass
class Seeded:
    exp_id: str
    exp: str
    run_id: str
    run: str
    other_exp_id: str


@pytest.fixture(scope="module")
def seeded(accounts_gate: Gate) -> Seeded:
    tag = uid()
    with accounts_gate.as_user(ALICE):
        exp_id = mlflow.create_experiment(f"alpha/first-hour-{tag}")
        with mlflow.start_run(experiment_id=exp_id, run_name=f"first-run-{tag}") as run:
            mlflow.log_param("learning_rate", 0.01)
            mlflow.log_metric("loss", 0.5)
    with accounts_gate.as_user(BOB):
        other = mlflow.create_experiment(f"beta/secret-{tag}")
    return Seeded(exp_id, f"alpha/first-hour-{tag}", run.info.run_id, f"first-run-{tag}", other)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shots]:
    taken = Shots(tmp_path_factory.mktemp("accounts-screenshots"), "accounts")
    yield taken
    print(f"\nscreenshots: {taken.publish()}")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[*ARGS, LOOPBACK_ONLY])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser profile (no cookies, no local storage) and its page; `page.console_messages` collects the
    console."""
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    tab.console_messages = []
    tab.on("console", lambda m: tab.console_messages.append(m.text))
    try:
        yield tab
    finally:
        context.close()


def sign_in(page: Any, user: str = ALICE) -> None:
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", ACCOUNT_PASSWORD)
    page.click("button[type=submit]")


def test_a_deep_link_survives_a_local_account_sign_in(accounts_gate: Gate, seeded: Seeded, page: Any,
                                                       shots: Shots) -> None:
    run_url = f"{accounts_gate.url}/#/experiments/{seeded.exp_id}/runs/{seeded.run_id}"
    page.goto(run_url)
    page.wait_for_selector("input[name=username]")
    assert page.url.startswith(accounts_gate.url + "/_gate/login?next=")
    assert "Sign in to MLflow" in body_text(page) and page.locator(".brand").inner_text().split() == ["mlflow", "gate"]
    shots.take(page, "sign-in")
    sign_in(page)
    page.wait_for_url(run_url)
    wait_for_text(page, seeded.run)
    assert page.url == run_url and "learning_rate" in body_text(page)
    shots.take(page, "deep-link-after-local-sign-in")


def test_mlflow_s_account_menu_shows_the_user_and_its_logout_ends_the_session(accounts_gate: Gate, page: Any,
                                                                           shots: Shots) -> None:
    page.goto(accounts_gate.url + "/")
    sign_in(page)
    page.wait_for_url(accounts_gate.url + "/")
    wait_for_text(page, "Welcome to MLflow")
    account = page.get_by_text(ALICE, exact=True).first
    account.wait_for(state="visible")
    page.wait_for_timeout(1500)                       # the assistant would have opened by now
    assert not page.get_by_text("Welcome to MLflow Assistant").is_visible(), "the assistant panel opened"
    shots.take(page, "mlflow-home-signed-in")
    [session] = [c["value"] for c in page.context.cookies() if c["name"] == "mlflow_gate_session"]
    account.click()
    page.get_by_role("menuitem", name="Logout").click()
    page.wait_for_url(accounts_gate.url + "/_gate/signed-out")
    assert "You are signed out" in body_text(page)
    shots.take(page, "signed-out-from-mlflow-s-menu")
    assert not [c for c in page.context.cookies() if c["name"].startswith("mlflow_gate_s")]
    copied = httpx.get(accounts_gate.url + "/_gate/me", headers={"Accept": "application/json",
                                                                  "Cookie": f"mlflow_gate_session={session}"}, timeout=30)
    assert copied.status_code == 401, "the session signed out in MLflow's menu still works"
    page.goto(accounts_gate.url + "/")
    page.wait_for_selector("input[name=username]")


def test_refusals_reach_the_person_in_the_ui(accounts_gate: Gate, seeded: Seeded, page: Any, shots: Shots) -> None:
    page.goto(accounts_gate.url + "/_gate/login")
    sign_in(page)
    page.wait_for_url(accounts_gate.url + "/")

    shown = {}
    for what, exp_id in (("another-team-s", seeded.other_exp_id), ("missing", "987654321")):
        started = time.monotonic()
        page.goto(f"{accounts_gate.url}/#/experiments/{exp_id}")
        wait_for_text(page, "You can read experiments whose names start with 'alpha/' or 'shared/'.", timeout=8000)
        took = time.monotonic() - started
        text = body_text(page)
        assert took < 4, f"the refusal took {took:.1f} s to show (a retried 403?)"
        assert "Received status code" not in text and f"read on experiment {exp_id} is needed" in text
        assert "beta/secret" not in text
        shown[what] = re.search(r"Permission denied: [^\n]*", text).group(0).replace(exp_id, "ID")  # type: ignore[union-attr]
        shots.take(page, f"{what}-experiment-refused")
    assert shown["another-team-s"] == shown["missing"]

    page.goto(accounts_gate.url + "/#/experiments")
    wait_for_text(page, seeded.exp)
    page.get_by_role("button", name="Create").first.click()
    page.get_by_placeholder("Input an experiment name").fill("iris-test")
    page.wait_for_timeout(1000)                       # the dialog's debounced name check
    assert "Could not validate experiment name" not in body_text(page)
    page.get_by_role("dialog").get_by_role("button", name="Create").click()
    wait_for_text(page, "You can create and edit experiments whose names start with 'alpha/' or 'shared/'.")
    assert "edit on experiment 'iris-test' is needed" in body_text(page)
    shots.take(page, "create-dialog-refused")


def test_the_gate_s_pages(accounts_gate: Gate, page: Any, shots: Shots) -> None:
    answer = page.goto(accounts_gate.url + "/_gate/login")
    csp = answer.headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp and "script-src 'self'" in csp and "default-src 'none'" in csp
    sign_in(page)
    page.wait_for_url(accounts_gate.url + "/")
    page.goto(accounts_gate.url + "/_gate/login")
    wait_for_text(page, "You are signed in")
    assert f"Signed in as {ALICE}" in body_text(page)
    shots.take(page, "login-while-signed-in")

    page.get_by_role("link", name="Your access").click()
    page.wait_for_url("**/_gate/me")
    table = body_text(page)
    for expected in ("team alpha (member)", "alpha/", "alpha-", "shared/", "edit"):
        assert expected in table, expected
    assert re.search(r"Admin\s+no", table), table
    assert '"' not in page.locator("main").inner_text(), "raw JSON on the page"
    shots.take(page, "your-access", full_page=True)

    page.get_by_role("link", name="Personal tokens").first.click()
    page.wait_for_url("**/_gate/tokens")
    assert f"Signed in as {ALICE}" in body_text(page)
    page.fill("input[name=name]", "laptop")
    page.click("button[type=submit]")
    token = page.locator("#token").inner_text()
    assert token.startswith("mgt_")
    me = httpx.get(accounts_gate.url + "/_gate/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert me.status_code == 200 and me.json()["id"] == ALICE
    shots.take(page, "personal-tokens", full_page=True)

    page.get_by_role("link", name="MLflow", exact=True).click()
    page.wait_for_url(accounts_gate.url + "/")
    wait_for_text(page, "Welcome to MLflow")
    page.goto(accounts_gate.url + "/_gate/logout")
    page.wait_for_url("**/_gate/signed-out")
    shots.take(page, "signed-out")
    violations = [m for m in page.console_messages if "Content Security Policy" in m]
    assert not violations, violations

"""A real browser (Debian's Chromium via Playwright) signs in to the MLflow UI through mlflow-gate and the test OP.

The browser may reach 127.0.0.1 only: every other request is aborted (the OP's dev pages and MLflow's UI would
otherwise reach for fonts and telemetry). Screenshots of each step are saved under the test's tmp directory and copied
to `test-output/browser/oidc/` in the repository (gitignored) so that a person can look at them. Chromium and the
screenshots: tests/support/browser.py.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pytest

from tests.integration.gate_it import uid
from tests.oidc.provider import OidcProvider
from tests.support.browser import ARGS, CHROMIUM, TIMEOUT_MS, Shots, body_text, require_chromium, wait_for_text
from tests.support.client import UserClient
from tests.support.gate import Gate

# One mlflow server is enough (sign-in does not touch the store): reuse the session's sqlite one.
pytestmark = [pytest.mark.integration, pytest.mark.parametrize("mlflow_server", ["sqlite"], indirect=True)]

ALICE, BOB = "alice@corp.test", "bob@corp.test"


@dataclass
class Seeded:
    alice_exp_id: str
    alice_exp: str
    alice_run_id: str
    alice_run: str
    bob_exp_id: str
    bob_exp: str
    bob_run: str


@pytest.fixture(scope="module")
def seeded(oidc_gate: Gate, oidc_provider: OidcProvider) -> Seeded:
    """alice's experiment with a run (a metric over 10 steps, an image artifact) and bob's experiment with a run,
    created with the mlflow client and each user's provider JWT."""
    tag = uid()
    alice = UserClient(oidc_gate.url, ALICE, oidc_provider.mint_jwt_access_token(ALICE))
    bob = UserClient(oidc_gate.url, BOB, oidc_provider.mint_jwt_access_token(BOB))
    alice_exp, bob_exp = f"alpha/browser-{tag}", f"beta/browser-secret-{tag}"
    alice_run, bob_run = f"alice-run-{tag}", f"bob-secret-run-{tag}"

    with alice.acting():
        alice_exp_id = mlflow.create_experiment(alice_exp)
        with mlflow.start_run(experiment_id=alice_exp_id, run_name=alice_run) as run:
            mlflow.log_param("learning_rate", 0.01)
            for step in range(10):
                mlflow.log_metric("loss", round(1.0 / (step + 1), 4), step=step)
                mlflow.log_metric("accuracy", round(0.5 + step * 0.05, 4), step=step)
            y, x = np.mgrid[0:64, 0:64]
            image = np.stack([x * 4, y * 4, np.full_like(x, 160)], axis=-1).astype(np.uint8)   # a colour gradient
            mlflow.log_image(image, artifact_file="images/gradient.png")
            alice_run_id = run.info.run_id
    with bob.acting():
        bob_exp_id = mlflow.create_experiment(bob_exp)
        with mlflow.start_run(experiment_id=bob_exp_id, run_name=bob_run):
            mlflow.log_metric("bob_secret_metric", 42.0)
    return Seeded(alice_exp_id, alice_exp, alice_run_id, alice_run, bob_exp_id, bob_exp, bob_run)


@pytest.fixture
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[str], Shots]]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    shots = Shots(tmp_path_factory.mktemp("browser-screenshots"), "oidc")
    blocked: list[str] = []

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.set_default_timeout(TIMEOUT_MS)
            context.route("**/*", only_loopback)
            yield context, blocked, shots
        finally:
            browser.close()
            out = shots.publish()
            print(f"\nscreenshots: {shots.root} (copied to {out})")


def settle(page: Any) -> None:
    """The page loaded and had a moment to render (the MLflow UI keeps polling, so "networkidle" never comes)."""
    page.wait_for_load_state("load")
    page.wait_for_timeout(800)


def test_sign_in_browse_and_sign_out_in_chromium(oidc_gate: Gate, oidc_provider: OidcProvider, seeded: Seeded,
                                                 browser_context: tuple[Any, list[str], Shots]) -> None:
    context, _, shots = browser_context
    page = context.new_page()
    try:
        browse(page, oidc_gate, oidc_provider, seeded, browser_context)
    except BaseException:
        shots.take(page, "failure")
        print(f"\nfailed at {page.url}; page text:\n{body_text(page)[:3000]}")
        raise


def browse(page: Any, oidc_gate: Gate, oidc_provider: OidcProvider, seeded: Seeded,
           browser_context: tuple[Any, list[str], Shots]) -> None:
    context, blocked, shots = browser_context
    gate = oidc_gate.url
    answers: list[tuple[int, str]] = []
    page.on("response", lambda r: answers.append((r.status, r.url + " " + (r.request.post_data or ""))))

    # 1. The MLflow UI without a session: the gate sends the browser to the OP's login page.
    page.goto(gate + "/")
    page.wait_for_selector("input[name=login]")
    assert page.url.startswith(oidc_provider.issuer + "/"), page.url
    shots.take(page, "op-login")

    # 2. Sign in as alice: back on the gate, in the MLflow UI.
    page.fill("input[name=login]", ALICE)
    page.fill("input[name=password]", "alice-password")
    page.click("button[type=submit]")
    page.wait_for_url(gate + "/**")
    settle(page)
    wait_for_text(page, "Experiments")
    assert page.url.startswith(gate + "/") and "/_gate/" not in page.url, page.url
    assert "mlflow_gate_session" not in page.evaluate("document.cookie")      # HttpOnly: not for scripts
    assert any(c["name"] == "mlflow_gate_session" and c["httpOnly"] for c in context.cookies(gate))
    shots.take(page, "mlflow-home")

    # 3. The experiment list shows alice's experiment and not bob's.
    page.goto(gate + "/#/experiments")
    wait_for_text(page, seeded.alice_exp)
    settle(page)
    text = body_text(page)
    assert seeded.alice_exp in text
    assert seeded.bob_exp not in text and "beta/" not in text
    shots.take(page, "experiment-list")

    # 4. The run page: overview, the model metrics charts, the artifacts with the image.
    run_url = f"{gate}/#/experiments/{seeded.alice_exp_id}/runs/{seeded.alice_run_id}"
    page.goto(run_url)
    wait_for_text(page, seeded.alice_run)
    settle(page)
    text = body_text(page)
    assert "learning_rate" in text and "loss" in text, text[:2000]
    shots.take(page, "run-overview")

    page.get_by_role("tab", name="Model metrics").first.click()
    settle(page)
    charts = page.locator(".js-plotly-plot")                      # one plotly chart per metric
    charts.first.wait_for(state="visible")
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot svg.main-svg path.js-line').length >= 2")
    page.wait_for_timeout(500)                                    # let the charts finish drawing
    assert charts.count() == 2
    text = body_text(page)
    assert "accuracy" in text and "loss" in text
    shots.take(page, "run-model-metrics")

    page.get_by_role("tab", name="Artifacts").first.click()
    page.get_by_text("images", exact=True).first.click()
    page.get_by_text("gradient.png", exact=True).first.click()
    # The preview is the 64x64 PNG itself, fetched through the gate and decoded by the browser.
    page.wait_for_function("() => [...document.images].some(i => i.complete && i.naturalWidth === 64 "
                           "&& i.naturalHeight === 64)")
    fetched = [(status, url) for status, url in answers if "gradient.png" in url]
    assert fetched and all(status == 200 for status, _ in fetched), fetched
    shots.take(page, "run-artifact-image")

    # 5. Bob's experiment by its URL: MLflow shows the gate's refusal; none of bob's data appears.
    answers.clear()
    page.goto(f"{gate}/#/experiments/{seeded.bob_exp_id}")

    def about_bob() -> list[tuple[int, str]]:
        bob = (f'"experimentId":"{seeded.bob_exp_id}"', f'"experiment_ids":["{seeded.bob_exp_id}"]',
               f"experiment_id={seeded.bob_exp_id}&", f"experiment_id={seeded.bob_exp_id} ")
        return [(status, what) for status, what in answers if any(b in what for b in bob)]

    # MLflow renders the gate's refusal as its own error (the gate's words: "Permission denied: ... is needed").
    page.wait_for_function("() => /load error|permission denied|status code 403/i.test(document.body.innerText)")
    page.wait_for_timeout(300)
    text = body_text(page)
    shots.take(page, "bob-experiment-refused")
    # Each request about bob's experiment is refused: a 403, or for a GraphQL document that selects its field's
    # apiError, MLflow's own in-band form (200, data null, apiError PERMISSION_DENIED), which the UI shows at once.
    assert about_bob(), answers
    for status, what in about_bob():
        url, _, document = what.partition(" ")
        if status != 403:
            assert status == 200 and url == f"{gate}/graphql", (status, what)
            replayed = page.evaluate("""async (body) => (await fetch('/graphql', {method: 'POST', body,
                headers: {'Content-Type': 'application/json'}})).json()""", document)
            [answer] = replayed["data"].values()
            [error] = [v for v in answer.values() if isinstance(v, dict)]
            assert error["code"] == "PERMISSION_DENIED" and "is needed" in error["message"], replayed
            assert not [v for v in answer.values() if v not in (None, error) and not isinstance(v, str)], replayed
    assert seeded.bob_exp not in text and seeded.bob_run not in text and "bob_secret_metric" not in text
    assert not [what for status, what in answers if status == 200 and (seeded.bob_exp in what or "bob-secret" in what)]
    # The same refusal for a write from the UI's own origin (a same-origin fetch with the session cookie).
    status = page.evaluate("""async (id) => (await fetch('/ajax-api/2.0/mlflow/runs/create', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify({experiment_id: id})})).status""",
                           seeded.bob_exp_id)
    assert status == 403
    status = page.evaluate("""async (name) => (await fetch('/ajax-api/2.0/mlflow/experiments/create', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify({name})})).status""",
                           f"alpha/from-ui-{uid()}")
    assert status == 200, "a same-origin write of alice's own must pass the gate's Origin check"

    # 6. Sign out: the gate sends the browser to the OP, which asks for confirmation; then back to the gate.
    page.goto(gate + "/_gate/logout")
    page.wait_for_selector("button[name=logout]")
    assert page.url.startswith(oidc_provider.issuer + "/"), page.url
    shots.take(page, "op-sign-out-confirm")
    page.click("button[name=logout]")
    page.wait_for_url(gate + "/_gate/signed-out**")
    assert "signed out" in body_text(page).lower()
    assert not any(c["name"] == "mlflow_gate_session" for c in context.cookies(gate))
    shots.take(page, "signed-out")

    # 7. The UI again: the OP's login page, not MLflow.
    page.goto(gate + "/")
    page.wait_for_selector("input[name=login]")
    assert page.url.startswith(oidc_provider.issuer + "/"), page.url
    shots.take(page, "op-login-again")

    print(f"\nrequests off loopback aborted by the test: {len(blocked)} ({sorted({u.split('/')[2] for u in blocked})})")


def test_a_deep_link_survives_sign_in(oidc_gate: Gate, oidc_provider: OidcProvider, seeded: Seeded,
                                      browser_context: tuple[Any, list[str], Shots]) -> None:
    """The MLflow UI routes in the URL fragment, which the server never sees: after signing in at the
    provider the browser comes back to the run it was asked for, not to the home page."""
    context, _, shots = browser_context
    page = context.new_page()
    run_url = f"{oidc_gate.url}/#/experiments/{seeded.alice_exp_id}/runs/{seeded.alice_run_id}"
    page.goto(run_url)
    page.wait_for_selector("input[name=login]")
    page.fill("input[name=login]", ALICE)
    page.fill("input[name=password]", "alice-password")
    page.click("button[type=submit]")
    page.wait_for_url(oidc_gate.url + "/**")
    wait_for_text(page, seeded.alice_run)
    assert page.url == run_url, page.url
    shots.take(page, "deep-link-after-sign-in")

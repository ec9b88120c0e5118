"""The MLflow UI in a real browser (Debian's Chromium via Playwright) through the gate with compression on: the bundle
comes as brotli, API answers as zstd, the UI works, and a second visit costs one request (the index, revalidated).

The browser sends alice's personal token on every request (no sign-in: tests/integration/oidc covers that). It may
resolve 127.0.0.1 only (`--host-resolver-rules`): no request routing, because Playwright's routing turns the HTTP
cache off, and the cache is what the second visit is about. Never run `playwright install`: /usr/bin/chromium is
what `.ci/run` installs with apt.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from gate_it import ALICE, World, uid

from tests.support.browser import ARGS, CHROMIUM, LOOPBACK_ONLY, require_chromium

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("mlflow_server", ["sqlite"], indirect=True)]


@pytest.fixture
def browser(gate) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[*ARGS, LOOPBACK_ONLY])
        try:
            context = chromium.new_context(viewport={"width": 1400, "height": 900},
                                           extra_http_headers={"Authorization": f"Bearer {gate.token(ALICE)}"})
            context.set_default_timeout(30_000)
            yield context
        finally:
            chromium.close()


def requests_seen(gate, offset: int) -> list[str]:  # type: ignore[no-untyped-def]
    """The paths the gate was asked for since `offset` of its log (one audit line per request)."""
    out = []
    for line in gate.log_since(offset).splitlines():
        try:
            out.append(json.loads(line)["path"])
        except (ValueError, KeyError):
            continue
    return out


def test_mlflow_ui_loads_compressed_in_chromium(gate, world: World, browser: Any) -> None:  # type: ignore[no-untyped-def]
    tag = uid()
    alice = gate.client(ALICE)
    names = [f"alpha/ui-{tag}-{i:02d}-with-a-longer-name-for-a-bigger-page" for i in range(40)]
    for name in names:
        alice.create_experiment(name)
    page = browser.new_page()
    answers: list[tuple[str, int, str | None]] = []
    page.on("response", lambda r: answers.append((r.url, r.status, r.header_value("content-encoding"))))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(gate.url + "/#/experiments")
    page.get_by_text(names[-1], exact=False).first.wait_for(state="visible")
    page.wait_for_timeout(500)
    text = page.inner_text("body")
    assert names[-1] in text and "beta/" not in text
    assert not errors, errors

    bundle = [(s, e) for u, s, e in answers if "/static-files/static/js/main." in u]
    assert bundle == [(200, "br")], bundle
    api = [(u, e) for u, s, e in answers if "/ajax-api/2.0/mlflow/experiments/search" in u and s == 200]
    assert api and all(e == "zstd" for _, e in api), api

    # A second visit: the index is revalidated (MLflow sends it with no-cache), the bundle comes from the cache.
    offset = gate.log_size()
    again = browser.new_page()
    again.goto(gate.url + "/#/experiments")
    again.get_by_text(names[-1], exact=False).first.wait_for(state="visible")
    seen = requests_seen(gate, offset)
    assert "/" in seen, seen
    assert not [p for p in seen if p.startswith("/static-files/static/js/main.")], seen

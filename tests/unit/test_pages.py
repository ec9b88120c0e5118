"""Where sign-in may send the browser afterwards: only paths on the gate's own origin."""
from __future__ import annotations

import pytest

from proxy.pages import safe_next

OPEN_REDIRECTS = [
    "https://evil.test", "http://evil.test/", "//evil.test", "///evil.test", "////evil.test/x", "/\\evil.test",
    "\\\\evil.test", "https:evil.test", "javascript:alert(1)", "data:text/html,x", " //evil.test", "\t//evil.test",
    "/%0d%0aLocation: http://evil.test", "/\r\nLocation: http://evil.test", "evil.test", "@evil.test",
    "http://127.0.0.1:5000@evil.test", "/_gate/login?next=//evil.test", "/_gate/logout", "",
]


@pytest.mark.parametrize("target", OPEN_REDIRECTS)
def test_open_redirect_payloads_land_home(target: str) -> None:
    assert safe_next(target) == "/"


@pytest.mark.parametrize("target", ["/", "/#/experiments/1", "/_gate/me", "/?a=1&b=2#/models/x"])
def test_own_paths_are_kept(target: str) -> None:
    assert safe_next(target) == target

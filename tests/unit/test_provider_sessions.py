"""Provider sessions checked with the identity provider (httpx.MockTransport stands in for the provider)."""
from __future__ import annotations

import asyncio
from typing import Any

import httpx

from proxy.oidc_config import OidcSettings
from proxy.provider_sessions import ProviderSessions

SETTINGS = OidcSettings(issuer="https://idp.test", client_id="mlflow-gate", client_secret="s", audience=None)


class Doc:
    async def get(self) -> dict[str, Any]:
        return {"introspection_endpoint": "https://idp.test/introspect", "revocation_endpoint": "https://idp.test/revoke"}


def sessions(handler, every: float = 60) -> tuple[ProviderSessions, list[httpx.Request]]:  # type: ignore[no-untyped-def]
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(record))
    return ProviderSessions(SETTINGS, Doc(), http, every), seen  # type: ignore[arg-type]


def test_the_providers_answer_is_kept_for_the_interval_and_revocation_is_at_once() -> None:
    revoked: set[str] = set()

    def provider(request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        if request.url.path == "/revoke":
            revoked.add(form["token"])
            return httpx.Response(200)
        return httpx.Response(200, json={"active": form["token"] not in revoked})

    async def go() -> None:
        checker, seen = sessions(provider)
        assert await asyncio.gather(*(checker.active("sid-1", "rt-1") for _ in range(5))) == [True] * 5
        assert len(seen) == 1 and seen[0].headers["authorization"].startswith("Basic ")   # one check, shared
        await checker.revoke("sid-1", "rt-1")
        assert await checker.active("sid-1", "rt-1") is False            # this replica knows at once
        other, _ = sessions(provider, every=0)                           # another replica asks the provider
        assert await other.active("sid-1", "rt-1") is False
        assert await other.active("sid-2", "rt-2") is True
        await checker.http.aclose()
        await other.http.aclose()

    asyncio.run(go())


def test_an_unreachable_provider_keeps_sessions_working_without_a_call_per_request() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def go() -> None:
        checker, seen = sessions(down)
        assert [await checker.active("sid", "rt") for _ in range(3)] == [True, True, True]
        assert len(seen) == 1
        await checker.http.aclose()

    asyncio.run(go())

"""Fixtures for tests that need a real OpenID provider (tests/oidc/op.mjs, driven by tests/oidc/provider.py).

`oidc_provider` (session) is configured for a gate at `oidc_gate_url`, a loopback URL reserved for it: JWT access
tokens have aud = oidc_gate_url, the mlflow-gate client may redirect to <oidc_gate_url>/_gate/callback and, after
sign-out, to /_gate/signed-out, /_gate/login or /. Start the gate there with
MLFLOW_GATE_OIDC_ISSUER=oidc_provider.issuer, MLFLOW_GATE_OIDC_CLIENT_ID=mlflow-gate,
MLFLOW_GATE_OIDC_CLIENT_SECRET=gate-secret and MLFLOW_GATE_OIDC_AUDIENCE=oidc_gate_url.

Without node or without tests/oidc/node_modules (`npm ci` in tests/oidc), every test here is skipped with the reason.
"""
from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.oidc.provider import OidcProvider, unavailable_reason

# Groups the OP puts in ID tokens and access tokens (login or client id -> groups).
OIDC_GROUPS: dict[str, list[str]] = {
    "alice@corp.test": ["alpha"],
    "bob@corp.test": ["beta"],
    "carol@corp.test": ["beta-team"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_oidc() -> None:
    """Skip (with what to do about it) when the test OP cannot run here."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def oidc_gate_url() -> str:
    """The URL a gate that uses `oidc_provider` must listen on (the OP's resource and redirect target)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def oidc_groups() -> dict[str, list[str]]:
    """The groups `oidc_provider` gives each login (or client id), unless a test changes them with set_users."""
    return {k: list(v) for k, v in OIDC_GROUPS.items()}


@pytest.fixture(scope="session")
def oidc_provider(oidc_gate_url: str, oidc_groups: dict[str, list[str]]) -> Iterator[OidcProvider]:
    """One OP for the whole session. Tests that change it (keys, users) restore it, or use `fresh_oidc_provider`."""
    require_oidc()
    op = OidcProvider().start(
        resource=oidc_gate_url, redirects=[f"{oidc_gate_url}/_gate/callback"],
        post_logout=[f"{oidc_gate_url}/_gate/signed-out", f"{oidc_gate_url}/_gate/login", f"{oidc_gate_url}/"],
        groups=oidc_groups)
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def fresh_oidc_provider() -> Iterator[OidcProvider]:
    """A private OP for one test (about 1 s to start), for tests that rotate keys or restart it. Not started:
    call `.start(...)` with the configuration the test needs; it is stopped afterwards."""
    require_oidc()
    op = OidcProvider()
    try:
        yield op
    finally:
        op.stop()

"""Personal tokens, local-account passwords and the session cookie, with the credential chain."""
from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from itsdangerous import URLSafeSerializer

from proxy.authn import Authenticator
from proxy.errors import Unauthenticated
from proxy.identity import Identity
from proxy.passwords import hash_password, verify_password
from proxy.policy import load_policy_text
from proxy.sessions import COOKIE, make_session, new_session, read_session
from proxy.settings import DurationError, parse_duration
from proxy.tokens import mint_token, read_token

KEY = "unit-test-secret-key-0123456789"
PW = hash_password("s3cret-pass")
POLICY = load_policy_text(f'users:\n  dave@x.test: {{password: "{PW}", groups: [vision]}}\n')


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def identify(headers: dict[bytes, bytes], policy=POLICY) -> Identity | None:  # type: ignore[no-untyped-def]
    return run(Authenticator(KEY).identify(headers, policy))


def bearer(token: str) -> dict[bytes, bytes]:
    return {b"authorization": f"Bearer {token}".encode()}


def basic(user: str, password: str) -> dict[bytes, bytes]:
    return {b"authorization": b"Basic " + base64.b64encode(f"{user}:{password}".encode())}


@pytest.mark.parametrize(("text", "seconds"), [("30d", 2592000), ("12h", 43200), ("90m", 5400), ("45s", 45),
                                              ("1w", 604800), (" 7 d ", 604800)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0d", "-1d", "3y", "soon", "30", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


def test_a_bare_number_is_refused_with_the_units_to_use() -> None:
    with pytest.raises(DurationError, match=r"'30' has no unit: .*\(30s, 30m, 30h or 30d\)"):
        parse_duration("30")


def test_token_round_trip() -> None:
    token = mint_token(KEY, "bob@x.test", ("vision",), 60, "laptop")
    claims = read_token(KEY, token)
    assert (claims.user, claims.groups, claims.name) == ("bob@x.test", ("vision",), "laptop")
    ident = identify(bearer(token))
    assert ident is not None and ident.id == "bob@x.test" and ident.groups == frozenset({"vision"})


def test_tampered_token_is_refused() -> None:
    token = mint_token(KEY, "bob@x.test")
    i = len(token) // 2
    tampered = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
    with pytest.raises(Unauthenticated):
        identify(bearer(tampered))


def test_token_signed_with_another_key_is_refused() -> None:
    with pytest.raises(Unauthenticated, match="signature"):
        identify(bearer(mint_token("another-key-0123456789abcdef", "root@x.test")))


def test_expired_token_is_refused() -> None:
    token = mint_token(KEY, "bob@x.test", expires_in=1)
    time.sleep(1.1)
    with pytest.raises(Unauthenticated, match="expired"):
        identify(bearer(token))


def test_revoked_token_is_refused_even_when_cached() -> None:
    token = mint_token(KEY, "bob@x.test")
    authn = Authenticator(KEY)
    assert run(authn.identify(bearer(token), POLICY)) is not None
    revoked = load_policy_text(f"revoked_tokens: [{read_token(KEY, token).id}]\n")
    with pytest.raises(Unauthenticated, match="revoked"):
        run(authn.identify(bearer(token), revoked))


def test_basic_with_a_token_as_password() -> None:
    ident = identify(basic("anything", mint_token(KEY, "bob@x.test")))
    assert ident is not None and ident.id == "bob@x.test" and ident.via == "basic"


def test_basic_with_a_local_account() -> None:
    ident = identify(basic("dave@x.test", "s3cret-pass"))
    assert ident is not None and ident.id == "dave@x.test" and ident.groups == frozenset({"vision"})
    with pytest.raises(Unauthenticated):
        identify(basic("dave@x.test", "wrong"))
    with pytest.raises(Unauthenticated):
        identify(basic("eve@x.test", "s3cret-pass"))


@pytest.mark.parametrize("header", [b"Bearer", b"Bearer notatoken", b"Bearer a.b.c", b"Basic !!!", b"Digest x",
                                    b"Basic " + base64.b64encode(b"nocolon")])
def test_present_but_invalid_credentials_are_401_never_anonymous(header: bytes) -> None:
    with pytest.raises(Unauthenticated):
        identify({b"authorization": header})


def test_no_credential_is_anonymous() -> None:
    assert identify({}) is None
    assert identify({b"cookie": b"other=1"}) is None


def session_cookie(ident: Identity, lifetime: float = 60, **kw) -> dict[bytes, bytes]:  # type: ignore[no-untyped-def]
    return {b"cookie": f"a=1; {COOKIE}={make_session(KEY, new_session(ident, lifetime, **kw))}".encode()}


def test_session_cookie() -> None:
    value = make_session(KEY, new_session(Identity("carol@x.test", frozenset({"vision"})), 60))
    ident = identify({b"cookie": f"a=1; {COOKIE}={value}".encode()})
    assert ident is not None and ident.id == "carol@x.test" and ident.via == "session"
    assert ident.groups == frozenset({"vision"})
    with pytest.raises(Unauthenticated):
        identify({b"cookie": f"{COOKIE}={value[:-2]}xx".encode()})
    with pytest.raises(Unauthenticated):
        identify({b"cookie": f"{COOKIE}=garbage".encode()})
    with pytest.raises(Unauthenticated, match="expired"):
        identify(session_cookie(Identity("carol@x.test"), -1))


def test_the_provider_refresh_token_is_kept_encrypted_in_the_cookie() -> None:
    value = make_session(KEY, new_session(Identity("carol@x.test"), 60, refresh_token="rt-secret-value"))
    payload = URLSafeSerializer(KEY, salt="mlflow-gate.session").loads(value)   # what the cookie's holder can read
    assert "rt-secret-value" not in json.dumps(payload)
    assert read_session(KEY, value).refresh_token == "rt-secret-value"


def test_password_hashes() -> None:
    assert verify_password("s3cret-pass", PW)
    assert not verify_password("s3cret-pasS", PW)
    assert not verify_password("x", "scrypt$bad")
    assert hash_password("a") != hash_password("a")


def test_a_changed_password_in_the_policy_is_not_served_from_the_cache() -> None:
    authn = Authenticator(KEY)
    assert run(authn.identify(basic("dave@x.test", "s3cret-pass"), POLICY)) is not None
    changed = load_policy_text(f'users:\n  dave@x.test: {{password: "{hash_password("new-pass")}"}}\n')
    with pytest.raises(Unauthenticated):
        run(authn.identify(basic("dave@x.test", "s3cret-pass"), changed))
    removed = load_policy_text("users: {}\n")
    with pytest.raises(Unauthenticated):
        run(authn.identify(basic("dave@x.test", "s3cret-pass"), removed))

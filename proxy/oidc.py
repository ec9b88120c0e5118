"""Browser sign-in with the identity provider: authorization code + PKCE (S256) with authlib's
Starlette client. authlib keeps state, nonce and the code verifier in a short-lived signed cookie
(Starlette's SessionMiddleware) and validates the ID token; the gate then sets its own session.
"""
from __future__ import annotations

from typing import Any

import httpx
from authlib.integrations.starlette_client import OAuth, OAuthError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .identity import Identity
from .oidc_config import OidcSettings

NEXT_KEY = "mlflow_gate_next"


class SignInError(Exception):
    """Why a sign-in could not complete, in words for the person in front of the browser."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class OidcLogin:
    def __init__(self, settings: OidcSettings, public_url: str | None) -> None:
        self.settings = settings
        self.public_url = public_url.rstrip("/") if public_url else None
        self.oauth = OAuth()
        self.client: Any = self.oauth.register(
            "idp", client_id=settings.client_id, client_secret=settings.client_secret,
            server_metadata_url=settings.discovery_url,
            client_kwargs={"scope": settings.scopes, "code_challenge_method": "S256", "timeout": 10},
        )

    def _url(self, request: Request, path: str) -> str:
        base = self.public_url or str(request.base_url).rstrip("/")
        return base + path

    async def start(self, request: Request, next_path: str) -> Response:
        request.session[NEXT_KEY] = next_path
        try:
            response: Response = await self.client.authorize_redirect(request, self._url(request, "/_gate/callback"))
            return response
        except (httpx.HTTPError, OAuthError, ValueError, RuntimeError) as exc:
            raise SignInError(f"The identity provider cannot be reached ({exc.__class__.__name__}); try again "
                              "shortly.", 503) from exc

    async def finish(self, request: Request) -> tuple[Identity, str, str | None]:
        """The signed-in identity, where to go next, and the provider's refresh token (if it gave one)."""
        next_path = str(request.session.pop(NEXT_KEY, "/") or "/")
        try:
            token = await self.client.authorize_access_token(request)
        except OAuthError as exc:
            words = {"access_denied": "Sign-in was cancelled or refused at the identity provider.",
                     "mismatching_state": "The sign-in answer does not match a sign-in started here (stale or "
                                          "forged state). Start again."}
            raise SignInError(words.get(exc.error, f"Sign-in failed: {exc.error}"
                                        + (f" ({exc.description})" if exc.description else ""))) from exc
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise SignInError(f"Sign-in could not be completed with the identity provider ({exc.__class__.__name__})."
                              , 502) from exc
        claims = dict(token.get("userinfo") or {})
        uid = claims.get(self.settings.user_claim)
        if not isinstance(uid, str) or not uid:
            raise SignInError(f"The identity provider did not send the '{self.settings.user_claim}' claim; ask "
                              "an admin to set MLFLOW_GATE_OIDC_USER_CLAIM or the provider's scopes.")
        if self.settings.user_claim == "email" and claims.get("email_verified") is False:
            raise SignInError("Your e-mail address is not verified at the identity provider.", 403)
        groups = claims.get(self.settings.groups_claim) or []
        if not isinstance(groups, list):
            groups = [groups]
        refresh = token.get("refresh_token")
        return (Identity(uid, frozenset(str(g) for g in groups), via="session"), next_path,
                refresh if isinstance(refresh, str) and refresh else None)

    async def logout_url(self, request: Request) -> str | None:
        """The provider's end_session_endpoint with client_id and where to come back to, if it has one."""
        try:
            result = await self.client.create_logout_url(
                post_logout_redirect_uri=self._url(request, "/_gate/signed-out"), client_id=self.settings.client_id)
        except (RuntimeError, httpx.HTTPError, OAuthError):
            return None
        return str(result["url"])


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=302, headers={"cache-control": "no-store"})

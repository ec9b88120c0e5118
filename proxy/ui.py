"""What the gate answers the MLflow UI itself (the route rows with an `answer`), never forwarded: who is
signed in (`users/current`, which MLflow's account menu reads), what they may do (`users/current/permissions`
and `users/roles/list`, made of the policy's rows: `access.py`), the assistant's settings (no provider, no
remote access: the assistant stays off), and the refusals the UI can show.

The UI's own sign-out ends the gate's session. MLflow sends `GET ajax-api/2.0/mlflow/users/current` from an
XMLHttpRequest opened with user and password `mlflow-logged-out-<random>`, then reloads the page. Chromium
sends such credentials only after a 401 with a Basic challenge, so the gate challenges that one request (a
cookie-signed-in GET of `users/current` without the Content-Type that every other UI call sends). The retry
carries the credentials: the gate ends the session and answers 401 without a challenge (the browser keeps no
credentials answered 401), and the reload lands on `/_gate/logout` (also at the identity provider).
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import access
from .authn import read_cookie
from .errors import GateError, Headers, PermissionDenied, Redirect, RefusedAsMissing, SignInRequired, Unauthenticated
from .forward import send_bytes
from .routes import Answer
from .sessions import COOKIE, clear_cookie_header

if TYPE_CHECKING:
    from .call import Call
    from .services import Services

LOGGED_OUT = "mlflow-logged-out-"          # the user name of the MLflow UI's sign-out credentials
SIGNED_OUT_COOKIE = "mlflow_gate_signed_out"   # set by that sign-out: the reload that follows goes to /_gate/logout
_JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
_RESOURCE_TYPES = {"experiment": "experiment", "model": "registered_model"}
PASSWORDS = ("Permission denied: the gate's accounts are not MLflow's. A local account's password is the hash in "
             "the gate's policy (users:), set by an admin with `mlflow-gate hash-password`; an account of the "
             "identity provider changes its password there.")


def signing_out(call: Call) -> bool:
    """The MLflow UI's sign-out: `users/current` with its `mlflow-logged-out-...` Basic credentials."""
    if call.route.answer is not Answer.CURRENT_USER:
        return False
    scheme, _, cred = call.headers.get(b"authorization", b"").partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        user = base64.b64decode(cred.strip(), validate=True).decode("utf-8").partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return False
    return user.startswith(LOGGED_OUT)


async def sign_out(call: Call, s: Services) -> None:
    """End the session the request carries; the page reload that follows shows the signed-out page."""
    cookie = call.headers.get(b"cookie", b"").decode("latin-1")
    value = read_cookie(cookie, COOKIE) if cookie else None
    who = None
    if value:
        try:
            who = await s.authn.session(value)
        except Unauthenticated:
            pass
        await s.authn.sign_out(value)
    s.audit.record(who, call.method, call.path, True, "signed out (the MLflow UI's sign-out)",
                   request_id=call.request_id)
    marker = f"{SIGNED_OUT_COOKIE}=1; Path=/; Max-Age=300; HttpOnly; SameSite=Lax".encode()
    headers = [*_JSON, (b"set-cookie", clear_cookie_header(s.secure_cookies)), (b"set-cookie", marker)]
    await send_bytes(call.send, 401, headers, _error("UNAUTHENTICATED", "Signed out."))


def answer(call: Call) -> tuple[int, Headers, bytes]:
    """The gate's own answer (status, headers, body) for a route row with an `answer`; refusals are raised."""
    if call.route.answer is Answer.CURRENT_USER and _sign_out_probe(call):
        challenge = [*_JSON, (b"www-authenticate", b'Basic realm="mlflow-gate"')]
        return 401, challenge, _error("UNAUTHENTICATED", "Send the sign-out credentials.")
    assert call.route.answer is not None
    return 200, _JSON, json.dumps(_ANSWERS[call.route.answer](call)).encode()


def _sign_out_probe(call: Call) -> bool:
    """The first request of the UI's sign-out in a browser that waits for a challenge before sending the
    credentials it was given: by cookie, no Authorization, and not the JSON call the account menu makes."""
    h = call.headers
    return (call.who.via == "session" and b"authorization" not in h and b"content-type" not in h
            and h.get(b"sec-fetch-mode") != b"navigate")


def page_without_session(call: Call) -> GateError:
    """A browser page load without a credential: sign in; right after the UI's sign-out, the signed-out page."""
    if read_cookie(call.headers.get(b"cookie", b"").decode("latin-1"), SIGNED_OUT_COOKIE):
        return Redirect("/_gate/logout", "Signed out.")
    query = call.query.decode("latin-1")
    return SignInRequired(call.path + ("?" + query if query else ""))


def as_shown(call: Call, err: GateError) -> GateError:
    """A refusal the UI can show. Its create-experiment dialog first checks that the name is free (GET
    ajax-api/.../get-by-name) and, for anything but "does not exist", says only "Could not validate experiment
    name": a refused lookup there is answered as a missing one, with the gate's words, so the dialog goes on
    to the create, whose refusal it shows. Refused and missing names get the same answer."""
    if call.route.ui_name_check and isinstance(err, PermissionDenied) and call.path.startswith("/ajax-api/"):
        return RefusedAsMissing(err.message)
    return err


# --- the answers ------------------------------------------------------------------------------------


def current_user(call: Call) -> dict[str, Any]:
    """MLflow's `users/current`: `is_basic_auth` makes the UI offer its sign-out (which ends the gate's session)."""
    return {"user": {"id": call.who.id, "username": call.who.id, "is_admin": call.admin}, "is_basic_auth": True}


def _roles(call: Call) -> list[dict[str, Any]]:
    """The caller's teams and grants as MLflow's roles: one role per source, its prefixes as `prefix*` patterns."""
    by_source: dict[str, list[access.Row]] = {}
    for row in access.rows(call.rules, call.who):
        if not row.cap and not row.unowned and row.source != "admin":
            by_source.setdefault(row.source, []).append(row)
    return [{"id": n, "name": source, "workspace": "default", "description": f"from the gate's policy: {source}",
             "permissions": [{"id": n * 1000 + i, "role_id": n, "resource_type": _RESOURCE_TYPES[r.kind],
                              "resource_pattern": r.prefix + "*", "permission": str(r.level).upper()}
                             for i, r in enumerate(rows)]}
            for n, (source, rows) in enumerate(by_source.items(), start=1)]


def my_permissions(call: Call) -> dict[str, Any]:
    rows = [{"role_id": role["id"], "role_name": role["name"], "workspace": role["workspace"],
             **{k: p[k] for k in ("resource_type", "resource_pattern", "permission")}}
            for role in _roles(call) for p in role["permissions"]]
    return {"is_admin": call.admin, "permissions": rows}


def my_roles(call: Call) -> dict[str, Any]:
    asked = call.params.scalar("username")
    if asked is not None and asked != call.who.id:
        raise PermissionDenied("Permission denied: the gate lists only your own roles; admins see who can reach a "
                               "name with `mlflow-gate policy who-can`.")
    return {"roles": _roles(call)}


def refuse_password(call: Call) -> dict[str, Any]:
    raise PermissionDenied(PASSWORDS)


_ANSWERS: dict[Answer, Callable[[Call], dict[str, Any]]] = {
    Answer.CURRENT_USER: current_user,
    Answer.MY_PERMISSIONS: my_permissions,
    Answer.MY_ROLES: my_roles,
    Answer.PASSWORD: refuse_password,
    Answer.ASSISTANT_CONFIG: lambda call: {"providers": {}, "projects": {}, "remote_access_allowed": False},
    Answer.ASSISTANT_PROVIDERS: lambda call: {"providers": []},
}
if set(_ANSWERS) != set(Answer):
    raise ImportError(f"answers without a handler: {sorted(a.value for a in set(Answer) - set(_ANSWERS))}")


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "message": message}).encode()

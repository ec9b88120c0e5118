"""The gate's exception family, and the one place that turns it into an HTTP answer.

Every step raises a `GateError`; `answer` renders it as MLflow's JSON error shape (or, for a
browser page load without a credential, as the redirect to sign in). The raw-ASGI gate sends
it with `send_error`, the Starlette pages return `error_response`.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.responses import Response

from .limits import retry_after

if TYPE_CHECKING:
    from .decide import Decision

Headers = list[tuple[bytes, bytes]]


class GateError(Exception):
    """An answer the gate gives instead of forwarding; `status` and `code` follow MLflow's error shape."""

    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        return json.dumps({"error_code": self.code, "message": self.message}).encode()

    def headers(self) -> Headers:
        return []


class Unauthenticated(GateError):
    status = 401
    code = "UNAUTHENTICATED"

    def headers(self) -> Headers:
        return [(b"www-authenticate", b'Bearer realm="mlflow-gate", Basic realm="mlflow-gate"')]


class PermissionDenied(GateError):
    status = 403
    code = "PERMISSION_DENIED"

    def __init__(self, message: str, decision: Decision | None = None, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.decision = decision
        self.detail = detail        # for the audit log only (what the upstream said), never for the caller


class InBandRefusal(PermissionDenied):
    """A refusal given inside a GraphQL answer, the way MLflow gives its own errors there (status 200, the root
    field's `apiError`): the MLflow UI shows that message instead of retrying a 403 and showing a status code."""

    status = 200

    def __init__(self, message: str, answer: dict[str, Any], decision: Decision | None = None, *,
                 detail: str | None = None) -> None:
        super().__init__(message, decision, detail=detail)
        self.answer = answer

    def body(self) -> bytes:
        return json.dumps(self.answer).encode()


class NotFound(GateError):
    status = 404
    code = "ENDPOINT_NOT_FOUND"


class RefusedAsMissing(GateError):
    """A refused name lookup answered as MLflow answers a missing name, for a caller that can only show that
    (the MLflow UI's "is this name free?" check); missing names get the very same answer."""

    status = 404
    code = "RESOURCE_DOES_NOT_EXIST"


class BadRequest(GateError):
    status = 400
    code = "INVALID_PARAMETER_VALUE"


class PayloadTooLarge(GateError):
    status = 413
    code = "INVALID_PARAMETER_VALUE"


class RateLimited(GateError):
    status = 429
    code = "REQUEST_LIMIT_EXCEEDED"

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after(seconds)      # whole seconds, rounded up: a retry then fits

    def headers(self) -> Headers:
        return [(b"retry-after", self.retry_after.encode())]


class NotAcceptable(GateError):
    """Accept-Encoding refuses every coding the gate can answer with (identity included)."""

    status = 406
    code = "INVALID_PARAMETER_VALUE"


class UnsupportedMediaType(GateError):
    """A request body in a content coding the gate does not decode: the answer names those it does."""

    status = 415
    code = "INVALID_PARAMETER_VALUE"

    def __init__(self, message: str, accepted: str) -> None:
        super().__init__(message)
        self.accepted = accepted

    def headers(self) -> Headers:
        return [(b"accept-encoding", self.accepted.encode())]


class UpstreamUnavailable(GateError):
    status = 503
    code = "TEMPORARILY_UNAVAILABLE"


class Internal(GateError):
    """Something the gate did not expect: logged with its traceback under the request id the message names."""


class UpstreamAnswer(GateError):
    """An upstream error met while the gate made calls of its own (search pages): passed on as MLflow gave it."""

    def __init__(self, status: int, data: Any) -> None:
        super().__init__(str(data))
        self.status = status
        self.data = data

    def body(self) -> bytes:
        return json.dumps(self.data).encode()


class Redirect(GateError):
    """A browser page load answered with a redirect to one of the gate's pages."""

    status = 302

    def __init__(self, location: str, message: str = "See the gate's page.") -> None:
        super().__init__(message)
        self.location = location

    def body(self) -> bytes:
        return b""

    def headers(self) -> Headers:
        return [(b"location", self.location.encode())]


class SignInRequired(Redirect):
    """A browser page load without a credential: answered with the redirect to the sign-in page."""

    def __init__(self, target: str) -> None:
        super().__init__("/_gate/login?next=" + quote(target, safe=""), "Sign in first.")


def answer(err: GateError) -> tuple[int, Headers, bytes]:
    """The HTTP answer for an error: status, headers, body."""
    body = err.body()
    ctype = [] if isinstance(err, Redirect) else [(b"content-type", b"application/json")]
    headers = [*ctype, (b"cache-control", b"no-store"), *err.headers(), (b"content-length", str(len(body)).encode())]
    return err.status, headers, body


async def send_error(send: Callable[[dict[str, Any]], Awaitable[None]], err: GateError) -> None:
    status, headers, body = answer(err)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def error_response(err: GateError) -> Response:
    status, headers, body = answer(err)
    response = Response(body, status_code=status)
    response.raw_headers = [h for h in headers]
    return response

"""The gate's exception family and the one place that turns it into an HTTP answer."""
from __future__ import annotations

import json


class GateError(Exception):
    """An answer the gate gives instead of forwarding; `status` and `code` follow MLflow's error shape."""

    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        return json.dumps({"error_code": self.code, "message": self.message}).encode()


class Unauthenticated(GateError):
    status = 401
    code = "UNAUTHENTICATED"


class PermissionDenied(GateError):
    status = 403
    code = "PERMISSION_DENIED"


class BadRequest(GateError):
    status = 400
    code = "INVALID_PARAMETER_VALUE"


class PayloadTooLarge(GateError):
    status = 413
    code = "INVALID_PARAMETER_VALUE"


class NotAcceptable(GateError):
    """Accept-Encoding refuses every coding the gate can answer with (identity included)."""

    status = 406
    code = "INVALID_PARAMETER_VALUE"


class UnsupportedMediaType(GateError):
    """A request body in a content coding the gate does not decode."""

    status = 415
    code = "INVALID_PARAMETER_VALUE"


class UpstreamUnavailable(GateError):
    status = 503
    code = "TEMPORARILY_UNAVAILABLE"


class NotFound(GateError):
    status = 404
    code = "ENDPOINT_NOT_FOUND"


def error_headers(err: GateError) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if isinstance(err, Unauthenticated):
        headers.append((b"www-authenticate", b'Bearer realm="mlflow-gate", Basic realm="mlflow-gate"'))
    return headers

"""Edge hygiene: what is checked about a request before anything else reads it.

Paths that could mean one thing to the gate and another to MLflow, headers given twice, the
request body (read once, bounded), and the origin of cookie-authenticated writes.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from .errors import BadRequest, PayloadTooLarge, PermissionDenied
from .forward import Receive

MAX_BODY = 64 * 1024 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BAD_RAW = re.compile(rb"%(2[eEfF]|5[cC]|00)")
_DOUBLE_ENCODED = re.compile(r"%(2[eEfF]|5[cC]|00)")     # what would become '.', '/', '\' or NUL if decoded again
_SINGLE = (b"authorization", b"content-length", b"host", b"x-mlflow-experiment-id")


def check_path(path: str, raw_path: bytes) -> str:
    """Refuse paths that could mean one thing to the gate and another to MLflow."""
    if _BAD_RAW.search(raw_path) or _DOUBLE_ENCODED.search(path) or "\\" in path or "\x00" in path:
        raise BadRequest("The path holds an encoded '.', '/', '\\' or NUL; request the plain path.")
    segments = path.split("/")
    if "." in segments or ".." in segments or "//" in path:
        raise BadRequest("The path holds '.' or '..' segments or an empty segment; request the normalised path.")
    return path


def header_map(scope: dict[str, Any]) -> dict[bytes, bytes]:
    """The request's headers by lower-case name; cookies joined, identity-bearing headers given once only."""
    out: dict[bytes, bytes] = {}
    for key, value in scope["headers"]:
        key = key.lower()
        if key in out:
            if key == b"cookie":
                out[key] += b"; " + value
                continue
            if key in _SINGLE:
                raise BadRequest(f"The {key.decode()} header is given twice.")
        out[key] = value
    return out


def is_page_load(method: str, path: str, headers: dict[bytes, bytes]) -> bool:
    """A browser navigating to a page (sent to sign in rather than answered with JSON)."""
    return (method == "GET" and b"text/html" in headers.get(b"accept", b"")
            and not path.startswith(("/api/", "/ajax-api/", "/graphql")))


def check_origin(scope: dict[str, Any], headers: dict[bytes, bytes], public_origin: str | None) -> None:
    """A state-changing request signed in by cookie must come from this gate's own pages."""
    if scope["method"] in SAFE_METHODS:
        return
    expected = public_origin or f"{scope.get('scheme', 'http')}://{headers.get(b'host', b'').decode('latin-1')}"
    sent = headers.get(b"origin") or headers.get(b"referer")
    if not sent:
        raise PermissionDenied("Permission denied: a state-changing request signed in by cookie must carry an "
                               "Origin or Referer header of this site.")
    parts = urlsplit(sent.decode("latin-1"))
    if f"{parts.scheme}://{parts.netloc}" != expected:
        raise PermissionDenied("Permission denied: cross-site request refused (Origin does not match this gate).")


async def read_body(receive: Receive, limit: int = MAX_BODY) -> bytes:
    """The whole request body, refused beyond `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("The client went away while sending the body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is over {limit // (1024 * 1024)} MiB.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)

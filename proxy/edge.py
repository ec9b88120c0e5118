"""Edge hygiene: what is checked about a request before anything else reads it.

Paths that could mean one thing to the gate and another to MLflow, headers given twice, the
request body (read once, bounded), and the origin of cookie-authenticated writes.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

from .errors import BadRequest, PayloadTooLarge, PermissionDenied
from .forward import Receive

MAX_BODY = 64 * 1024 * 1024
MAX_JSON_DEPTH = 32                # objects and lists nested in a request body
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")
_BAD_RAW = re.compile(rb"%(2[eEfF]|5[cC]|00)")
_DOUBLE_ENCODED = re.compile(r"%(2[eEfF]|5[cC]|00)")     # what would become '.', '/', '\' or NUL if decoded again
# Headers the gate or MLflow read as one value: given twice, the two could read different ones.
_SINGLE = (b"authorization", b"content-length", b"content-type", b"content-encoding", b"host", b"x-request-id",
           b"x-mlflow-experiment-id", b"x-mlflow-run-id", b"x-mlflow-workspace")


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


def request_id(scope: dict[str, Any]) -> str:
    """The client's X-Request-ID when it is one well-formed value, else a new one."""
    sent = [v for k, v in scope["headers"] if k.lower() == b"x-request-id"]
    return sent[0].decode() if len(sent) == 1 and _REQUEST_ID.match(sent[0]) else uuid.uuid4().hex


def set_headers(scope: dict[str, Any], values: dict[bytes, bytes | None]) -> None:
    """Replace (or, for None, drop) request headers before the request is forwarded."""
    kept = [(k, v) for k, v in scope["headers"] if k.lower() not in values]
    scope["headers"] = kept + [(k, v) for k, v in values.items() if v is not None]


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


async def body_chunks(receive: Receive, limit: int, over: Callable[[], Exception]) -> AsyncIterator[bytes]:
    """The request body's chunks as they arrive; `over()` is raised once they pass `limit` bytes in all."""
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("The client went away while sending the body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise over()
        yield chunk
        more = message.get("more_body", False)


async def read_body(receive: Receive, limit: int = MAX_BODY) -> bytes:
    """The whole request body, refused beyond `limit` bytes."""
    def over() -> Exception:
        return PayloadTooLarge(f"The request body is over {limit // (1024 * 1024)} MiB.")
    return b"".join([chunk async for chunk in body_chunks(receive, limit, over)])


def parse_json(raw: bytes | str, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON document a client sent, nested at most `max_depth` deep: 400, never a crash, when it is not.

    The parser stops at the interpreter's recursion limit (a RecursionError, caught here); what it
    returns is then walked without recursion and refused beyond `max_depth`."""
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise BadRequest(f"The {what} is nested too deeply: at most {max_depth} levels of objects and lists.") from exc
    except ValueError as exc:          # also UnicodeDecodeError and over-long integers
        raise BadRequest(f"The {what} is not valid JSON: {exc}") from exc
    if json_depth(data) > max_depth:
        raise BadRequest(f"The {what} is nested too deeply: at most {max_depth} levels of objects and lists.")
    return data


def json_depth(data: Any) -> int:
    """How deeply objects and lists nest in parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node if isinstance(child, (dict, list)))
    return deepest

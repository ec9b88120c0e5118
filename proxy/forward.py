"""Forwarding to the upstream mlflow server: streaming both ways, with header hygiene.

aiohttp carries this one path because it is what meets the latency budget here
(reference/proxy-overhead.md: 1.3 ms CPU per forwarded request, against 3.9-4.6 ms with httpx).
"""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .errors import UpstreamUnavailable
from .metrics import Metrics

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

# Never forwarded upstream: hop-by-hop headers, the caller's credentials, and anything an
# upstream (or a plugin in it) could take as an identity or as the caller's address.
DROP_REQUEST = frozenset({
    "host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
    "proxy-authorization", "proxy-authenticate", "authorization", "cookie", "origin",
    "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
    "x-forwarded-prefix", "x-real-ip", "via", "x-forwarded-user", "x-forwarded-email", "x-forwarded-groups",
    "x-forwarded-preferred-username", "x-forwarded-access-token", "x-auth-request-user", "x-auth-request-email",
    "x-auth-request-groups", "x-auth-request-access-token", "remote-user", "x-remote-user", "x-user",
    "x-email", "x-mlflow-authorization", "x-mlflow-assistant-delegation", "x-mlflow-user",
})
DROP_RESPONSE = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
    "proxy-authenticate", "content-length",
    "date", "server",           # uvicorn sends its own; passing MLflow's on gave every answer both twice
})
CHUNK = 256 * 1024


KEEPALIVE_SECONDS = 1.5       # below the upstream's own idle timeout (uvicorn 5 s, gunicorn 2 s)


def _dropped(exc: BaseException) -> bool:
    """A connection that was open and closed under the request (not a server that cannot be reached)."""
    return isinstance(exc, aiohttp.ServerDisconnectedError) or (
        isinstance(exc, aiohttp.ClientOSError) and not isinstance(exc, aiohttp.ClientConnectorError))


class Upstream:
    """The upstream mlflow server: one aiohttp session, created in the app's lifespan."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.calls = 0
        self.metrics: Metrics | None = None

    @classmethod
    def open(cls, base_url: str) -> Upstream:
        """An http(s) URL, or `unix:///path/to.sock` for a server on a Unix domain socket (the embedded one)."""
        parts = urlsplit(base_url)
        connector: aiohttp.BaseConnector
        # Idle pooled connections are dropped before the upstream drops them (uvicorn closes idle keep-alive
        # connections after 5 s, gunicorn after 2 s): reusing one the server is closing fails a forwarded POST,
        # which cannot be sent again safely. A busy gate keeps reusing its connections; an idle one reconnects.
        idle = KEEPALIVE_SECONDS
        if parts.scheme == "unix" and parts.path.startswith("/") and not parts.netloc:
            connector = aiohttp.UnixConnector(path=parts.path, limit=256, keepalive_timeout=idle)
            base_url = "http://localhost"        # the Host mlflow's DNS-rebinding check accepts
        elif parts.scheme in ("http", "https") and parts.hostname:
            connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=idle, ttl_dns_cache=300)
        else:
            raise ValueError(f"upstream {base_url!r} is neither an http(s) URL nor unix:///path/to/socket")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
        session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                        skip_auto_headers=("User-Agent", "Accept-Encoding"))
        return cls(base_url, session)

    async def close(self) -> None:
        await self.session.close()

    async def get_json(self, path: str, params: dict[str, Any] | None = None,
                       body: dict[str, Any] | None = None, method: str = "GET", *,
                       reads: bool = False) -> tuple[int, Any]:
        """A call of the gate's own (resolution, search pages): status and parsed JSON.

        aiohttp sends an idempotent request (GET) once more when the pooled connection it used drops before an
        answer (a connection the upstream closed as the pool reused it); a
        POST that only reads (`reads=True`: searches) gets the same second try here."""
        attempts = 2 if reads and method not in ("GET", "HEAD") else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._get_json(path, params, body, method)
            except (aiohttp.ClientError, OSError) as exc:
                if attempt < attempts and _dropped(exc):
                    continue
                self._failed()
                raise UpstreamUnavailable(f"The MLflow server is unreachable: {exc.__class__.__name__}. "
                                          "Try again shortly.") from exc
        raise AssertionError("unreachable")

    def _failed(self) -> None:
        if self.metrics is not None:
            self.metrics.upstream_errors.inc()

    async def _get_json(self, path: str, params: dict[str, Any] | None, body: dict[str, Any] | None,
                        method: str) -> tuple[int, Any]:
        self.calls += 1
        headers = {"X-Forwarded-For": "127.0.0.1", "Accept-Encoding": "identity"}
        start = time.perf_counter()
        async with self.session.request(method, self.base_url + path, params=params, json=body,
                                        headers=headers) as resp:
            if self.metrics is not None:
                self.metrics.upstream.labels("lookup").observe(time.perf_counter() - start)
            raw = await resp.read()
            status = resp.status
        try:
            return status, json.loads(raw) if raw else {}
        except ValueError:
            return status, {"raw": raw[:200].decode("utf-8", "replace")}

    def _headers(self, scope: dict[str, Any], content_length: int | None) -> list[tuple[str, str]]:
        named = _connection_tokens(scope["headers"])   # headers the client marked hop-by-hop in `Connection`
        out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
               if (name := k.decode("latin-1").lower()) not in DROP_REQUEST and name != "content-length"
               and name not in named]
        client = scope.get("client")
        out.append(("X-Forwarded-For", client[0] if client else "unknown"))
        out.append(("X-Forwarded-Proto", scope.get("scheme", "http")))
        if content_length is not None:
            out.append(("Content-Length", str(content_length)))
        return out

    async def open_request(self, scope: dict[str, Any], receive: Receive, *, body: bytes | None,
                           raw_path: str, query: bytes, strip: frozenset[str] = frozenset()
                           ) -> aiohttp.ClientResponse:
        """Send the request upstream; the body is `body` when the gate read it, else streamed."""
        url = self.base_url + raw_path + ("?" + query.decode("latin-1") if query else "")
        data: Any
        length: int | None
        if body is not None:
            data, length = body, len(body)
        else:
            length = _content_length(scope)
            chunked = any(k.lower() == b"transfer-encoding" for k, _ in scope["headers"])
            data = stream_body(receive) if (length or chunked) else None
        headers = self._headers(scope, length if (body is not None or length is not None) else None)
        if strip:
            headers = [(k, v) for k, v in headers if k.lower() not in strip]
        self.calls += 1
        start = time.perf_counter()
        try:
            resp = await self.session.request(scope["method"], url, data=data, headers=headers,
                                              allow_redirects=False, compress=None)
            if self.metrics is not None:
                self.metrics.upstream.labels("forward").observe(time.perf_counter() - start)
            return resp
        except (aiohttp.ClientError, OSError) as exc:
            if self.metrics is not None:
                self.metrics.upstream_errors.inc()
            raise UpstreamUnavailable(f"The MLflow server is unreachable ({exc.__class__.__name__}); "
                                      "the gate will reconnect when it is back. Try again shortly.") from exc


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[str]:
    return frozenset(t.strip().lower() for k, v in headers if k.lower() == b"connection"
                     for t in v.decode("latin-1").split(",") if t.strip())


def _content_length(scope: dict[str, Any]) -> int | None:
    for k, v in scope["headers"]:
        if k.lower() == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


async def stream_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("the client went away during the upload")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def response_headers(resp: aiohttp.ClientResponse, *, keep_length: bool) -> list[tuple[bytes, bytes]]:
    named = _connection_tokens(list(resp.raw_headers))
    out = [(k.lower(), v) for k, v in resp.raw_headers
           if (name := k.decode("latin-1").lower()) not in DROP_RESPONSE and name not in named]
    if keep_length and resp.content_length is not None:
        out.append((b"content-length", str(resp.content_length).encode()))
    return out


async def relay(resp: aiohttp.ClientResponse, send: Send) -> int:
    """Stream an upstream response to the client as it arrives; returns bytes sent."""
    sent = 0
    try:
        headers = response_headers(resp, keep_length=True)
        if resp.content_length is not None and resp.content_length <= CHUNK:   # small answers: one message
            body = await resp.read()
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return len(body)
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        async for chunk in resp.content.iter_chunked(CHUNK):
            sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        resp.release()
    return sent


async def send_bytes(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [h for h in headers if h[0] != b"content-length"] + [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})

"""The upstream URL forms `forward.Upstream.open` accepts: http(s), and a Unix socket (the embedded server's)."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from proxy.errors import UpstreamUnavailable
from proxy.forward import Upstream


def opened(url: str) -> tuple[str, type]:
    async def go() -> tuple[str, type]:
        upstream = Upstream.open(url)
        try:
            return upstream.base_url, type(upstream.session.connector)
        finally:
            await upstream.close()
    return asyncio.run(go())


def test_http_and_unix_socket_upstreams() -> None:
    assert opened("http://127.0.0.1:5001/") == ("http://127.0.0.1:5001", aiohttp.TCPConnector)
    assert opened("unix:///run/mlflow/mlflow.sock") == ("http://localhost", aiohttp.UnixConnector)


@pytest.mark.parametrize("url", ["unix://run/mlflow.sock", "unix:relative.sock", "ftp://x", "127.0.0.1:5000", ""])
def test_other_upstream_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="unix:///path/to/socket"):
        opened(url)


class DroppingServer:
    """An HTTP server that closes the first `drops` connections after reading a request, without an answer (as
    uvicorn closes a keep-alive connection the client's pool still holds), then answers `{"ok": true}`."""

    def __init__(self, drops: int) -> None:
        self.drops, self.requests = drops, 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        self.requests += 1
        if self.requests <= self.drops:
            writer.close()
            return
        body = b'{"ok": true}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()


def call(drops: int, method: str, reads: bool = False) -> tuple[Any, int]:
    async def go() -> tuple[Any, int]:
        server = DroppingServer(drops)
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        upstream = Upstream.open(f"http://127.0.0.1:{port}")
        try:
            return await upstream.get_json("/x", body={} if method == "POST" else None, method=method,
                                           reads=reads), server.requests
        except UpstreamUnavailable as exc:
            return exc, server.requests
        finally:
            await upstream.close()
            listening.close()
    return asyncio.run(go())


def test_a_read_is_sent_again_once_when_the_connection_drops_before_an_answer() -> None:
    assert call(1, "POST", reads=True) == ((200, {"ok": True}), 2)
    assert call(1, "GET") == ((200, {"ok": True}), 2)          # aiohttp's own second try of idempotent methods
    for method, reads in (("POST", True), ("GET", False)):
        failed, requests = call(2, method, reads)
        assert isinstance(failed, UpstreamUnavailable) and requests == 2, (method, failed)


def test_a_call_that_may_write_is_sent_once() -> None:
    failed, requests = call(1, "POST")
    assert isinstance(failed, UpstreamUnavailable) and requests == 1


def test_an_unreachable_upstream_is_not_asked_again() -> None:
    async def go() -> BaseException:
        upstream = Upstream.open("http://127.0.0.1:9")      # discard port: nothing listens on it here
        try:
            await upstream.get_json("/x")
        except UpstreamUnavailable as exc:
            return exc
        finally:
            await upstream.close()
        raise AssertionError("answered")
    failed = asyncio.run(go())
    assert isinstance(failed.__cause__, aiohttp.ClientConnectorError)


class ClosingWhenIdle:
    """A keep-alive HTTP server that, like uvicorn and gunicorn, gives up a connection idle for `idle` seconds; the
    request that arrives on it just then is dropped unanswered (the race a pooled connection loses)."""

    def __init__(self, idle: float) -> None:
        self.idle, self.dropped = idle, 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            if loop.time() - last >= self.idle:
                self.dropped += 1
                break
            body = b'{"ok": true}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
            last = loop.time()
        writer.close()


def test_a_forwarded_post_after_a_pause_gets_a_fresh_connection() -> None:
    """The pool lets idle connections go before the upstream does (gunicorn: 2 s), so a POST after a pause, which
    cannot be sent twice, never rides a connection the server is giving up."""
    async def go() -> tuple[list[int], int]:
        server = ClosingWhenIdle(idle=2.0)
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        upstream = Upstream.open(f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}")
        statuses = []
        try:
            for pause in (0, 0.2, 2.3):
                await asyncio.sleep(pause)
                statuses.append((await upstream.get_json("/x", body={}, method="POST"))[0])
            return statuses, server.dropped
        finally:
            await upstream.close()
            listening.close()
    assert asyncio.run(go()) == ([200, 200, 200], 0)

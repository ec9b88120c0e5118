"""The upstream URL forms `forward.Upstream.open` accepts: http(s), and a Unix socket (the embedded server's)."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

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

"""The compression wrapper on its own, around a small ASGI app that answers like MLflow (compression.py, codings.py,
static_cache.py). The real gate, mlflow client and browser are in tests/integration/test_compression*.py."""
from __future__ import annotations

import asyncio
import gzip
import json
import os
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import brotli
import pytest

from proxy import codings
from proxy.codings import zstd
from proxy.compression import Compression
from proxy.edge import read_body
from proxy.static_cache import StaticCache

JSON_BODY = json.dumps({"metrics": [{"key": "loss", "value": i / 7, "step": i} for i in range(2000)]}, indent=2).encode()
DECODE: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress, "br": brotli.decompress, "zstd": zstd.decompress, "identity": lambda b: b}


# --- negotiation (RFC 9110 12.5.3) ------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "dynamic", "static"), [
    (None, "identity", "identity"),                          # no header: the client did not ask
    ("", "identity", "identity"),                            # empty: no coding wanted
    ("gzip", "gzip", "gzip"),
    ("x-gzip", "gzip", "gzip"),
    ("br", "br", "br"),
    ("zstd", "zstd", "zstd"),
    ("gzip, deflate, br, zstd", "zstd", "br"),               # Chromium: fastest for answers, smallest for files
    ("gzip;q=1.0, br;q=0.5", "gzip", "gzip"),                # q-values win over the gate's preference
    ("br;q=0.2, zstd;q=0.1, gzip;q=0.3", "gzip", "gzip"),
    ("GZIP;Q=0.5, Zstd;q=0.6", "zstd", "zstd"),
    ("gzip;q=0, br", "br", "br"),                            # q=0: not acceptable
    ("deflate, compress", "identity", "identity"),           # nothing the gate has: identity
    ("*", "zstd", "br"),
    ("*;q=0.5, gzip;q=0.9", "gzip", "gzip"),
    ("gzip;q=0.5, identity", "identity", "identity"),        # identity asked for above gzip
    ("*;q=0, identity", "identity", "identity"),
    ("gzip;q=bogus", "identity", "identity"),                # a malformed weight counts as 0
    ("gzip, identity;q=0", "gzip", "gzip"),
])
def test_negotiation(header: str | None, dynamic: str, static: str) -> None:
    assert codings.negotiate(header) == dynamic
    assert codings.negotiate(header, codings.STATIC_PREFERENCE) == static


@pytest.mark.parametrize("header", ["identity;q=0", "*;q=0", "gzip;q=0, identity;q=0", "deflate, identity;q=0"])
def test_nothing_acceptable(header: str) -> None:
    with pytest.raises(codings.NotAcceptable):
        codings.negotiate(header)


# --- a fake upstream app ----------------------------------------------------------------------------------------

class App:
    """Answers every request with `status`, `headers` and `chunks`; records the scope and the body it read."""

    def __init__(self, chunks: list[bytes] | None = None, status: int = 200,
                 headers: list[tuple[bytes, bytes]] | None = None, length: bool = True) -> None:
        self.chunks = [JSON_BODY] if chunks is None else chunks
        self.status = status
        self.headers = headers if headers is not None else [(b"content-type", b"application/json")]
        self.length = length
        self.scopes: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        body = await read_body(receive)
        self.bodies.append(body)
        headers = list(self.headers)
        if self.length:
            headers.append((b"content-length", str(sum(map(len, self.chunks))).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        for i, chunk in enumerate(self.chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(self.chunks) - 1})
        if not self.chunks:
            await send({"type": "http.response.body", "body": b""})


def call(wrapper: Compression, path: str = "/api/2.0/mlflow/metrics/get-history", method: str = "GET",
         headers: dict[str, str] | None = None, body: bytes = b"", body_chunks: list[bytes] | None = None
         ) -> tuple[int, dict[str, str], bytes, list[dict[str, Any]]]:
    """One request through the wrapper: status, headers (lower-case names; repeated ones joined), body, messages."""
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    pieces = body_chunks if body_chunks is not None else [body]
    incoming = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await wrapper(scope, receive, send)
        await wrapper.cache.idle()      # the copy of a static file being kept

    asyncio.run(run())
    start = sent[0]
    out: dict[str, str] = {}
    for k, v in start["headers"]:
        key = k.decode().lower()
        out[key] = f"{out[key]}, {v.decode()}" if key in out else v.decode()
    return start["status"], out, b"".join(m.get("body", b"") for m in sent[1:]), sent


# --- answers ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("streamed", [False, True])
def test_each_coding_round_trips(coding: str, streamed: bool) -> None:
    chunks = [JSON_BODY[i:i + 8192] for i in range(0, len(JSON_BODY), 8192)] if streamed else [JSON_BODY]
    status, headers, body, _ = call(Compression(App(chunks)), headers={"accept-encoding": coding})
    assert status == 200 and headers["content-encoding"] == coding
    assert headers["vary"] == "Accept-Encoding"
    assert DECODE[coding](body) == JSON_BODY
    assert len(body) < len(JSON_BODY) / 4
    if streamed:        # coded as it streams: no length, the server chunks it
        assert "content-length" not in headers
    else:
        assert headers["content-length"] == str(len(body))


def test_no_accept_encoding_is_identity_with_vary() -> None:
    status, headers, body, _ = call(Compression(App()))
    assert status == 200 and "content-encoding" not in headers and body == JSON_BODY
    assert headers["content-length"] == str(len(JSON_BODY)) and headers["vary"] == "Accept-Encoding"


def test_identity_refused_is_406_before_the_request_goes_on() -> None:
    app = App()
    status, _headers, body, _ = call(Compression(app), headers={"accept-encoding": "identity;q=0"})
    assert status == 406 and json.loads(body)["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "identity" in json.loads(body)["message"] and app.scopes == []


def test_identity_refused_codes_even_small_answers() -> None:
    _status, headers, body, _ = call(Compression(App([b'{"a": 1}'])), headers={"accept-encoding": "gzip, identity;q=0"})
    assert headers["content-encoding"] == "gzip" and gzip.decompress(body) == b'{"a": 1}'


@pytest.mark.parametrize(("path", "method", "headers", "answer_headers", "chunks"), [
    ("/api/2.0/mlflow/runs/get", "GET", {}, [(b"content-type", b"application/json")], [b'{"run": {}}']),  # small
    ("/get-artifact", "GET", {}, [(b"content-type", b"text/plain")], [JSON_BODY]),                  # artifact file
    ("/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/a.json", "GET", {},
     [(b"content-type", b"application/json")], [JSON_BODY]),
    ("/ajax-api/2.0/mlflow/logged-models/m-1/artifacts/files", "GET", {},
     [(b"content-type", b"application/json")], [JSON_BODY]),
    ("/static-files/x.png", "GET", {}, [(b"content-type", b"image/png")], [os.urandom(5000)]),      # not text
    ("/api/2.0/mlflow/metrics/get-history", "HEAD", {}, [(b"content-type", b"application/json")], [b""]),
    ("/static-files/a.js", "GET", {"range": "bytes=0-99"}, [(b"content-type", b"text/javascript")], [JSON_BODY]),
    ("/api/x", "GET", {}, [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")], [b"x" * 5000]),
    ("/api/x", "GET", {}, [(b"content-type", b"application/json"), (b"cache-control", b"no-transform")],
     [JSON_BODY]),
    ("/api/x", "GET", {}, [(b"content-type", b"text/event-stream")], [JSON_BODY]),                  # streams live
    ("/_gate/tokens", "GET", {}, [(b"content-type", b"text/html")], [JSON_BODY]),                   # the gate's own
])
def test_answers_left_as_they_are(path: str, method: str, headers: dict[str, str],
                                  answer_headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> None:
    app = App(chunks, headers=answer_headers)
    _status, out, body, _ = call(Compression(app), path=path, method=method,
                                headers={"accept-encoding": "gzip, br, zstd", **headers})
    given = dict(answer_headers).get(b"content-encoding")
    assert out.get("content-encoding") == (given.decode() if given else None)
    assert body == b"".join(chunks)


def test_streaming_a_large_answer_keeps_memory_bounded() -> None:
    """200 MiB of JSON-like text through the wrapper in 256 KiB chunks: memory stays a few MiB."""
    piece = (b'{"key": "loss", "value": 0.123456789, "timestamp": 1700000000000, "step": 1}, ' * 3400)[:256 * 1024]
    total, seen = 800, {"in": 0, "out": 0}
    decoder = zstd.ZstdDecompressor()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        for i in range(total):
            await send({"type": "http.response.body", "body": piece, "more_body": i < total - 1})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            seen["in"] += len(message["body"])
            seen["out"] += len(decoder.decompress(message["body"]))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/api/x", "headers": [(b"accept-encoding", b"zstd")]}
    tracemalloc.start()
    try:
        asyncio.run(Compression(app)(scope, receive, send))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen["out"] == total * len(piece)
    assert seen["in"] < seen["out"] / 20
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while streaming {seen['out'] / 2**20:.0f} MiB"


def test_unknown_length_small_answer_stays_identity() -> None:
    _status, headers, body, _ = call(Compression(App([b'{"a":', b' 1}'], length=False)), headers={"accept-encoding": "br"})
    assert "content-encoding" not in headers and body == b'{"a": 1}'


# --- validators and the static cache ----------------------------------------------------------------------------

TAG = b'"1796158842.55-4443475-2010391092"'
JS = (b"function f(a){return a*2}\n" * 20000)


class StaticApp(App):
    """A static file with MLflow's validators: 304 when If-None-Match names its ETag."""

    def __init__(self) -> None:
        super().__init__([JS], headers=[(b"content-type", b"text/javascript; charset=utf-8"), (b"etag", TAG),
                                        (b"cache-control", b"public, max-age=2419200"), (b"vary", b"Origin"),
                                        (b"accept-ranges", b"bytes")])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        inm = dict(scope["headers"]).get(b"if-none-match")     # compared weakly, as werkzeug does
        if inm is not None and TAG in [t.strip().removeprefix(b"W/") for t in inm.split(b",")]:
            self.scopes.append(scope)
            await send({"type": "http.response.start", "status": 304,
                        "headers": [(b"etag", TAG), (b"cache-control", b"public, max-age=2419200")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await super().__call__(scope, receive, send)


def test_static_file_compressed_once_then_validated_upstream() -> None:
    app, cache = StaticApp(), StaticCache()
    wrapper = Compression(app, cache)
    path, browser = "/static-files/static/js/main.js", {"accept-encoding": "gzip, deflate, br, zstd"}
    s1, h1, b1, _ = call(wrapper, path, headers=browser)
    s2, h2, b2, _ = call(wrapper, path, headers=browser)
    assert s1 == s2 == 200 and brotli.decompress(b1) == brotli.decompress(b2) == JS
    # the first answer was coded fast as it streamed (weak ETag); the kept copy is smaller
    assert h1["etag"] == 'W/"1796158842.55-4443475-2010391092-br"' and len(b2) < len(b1)
    assert h2["content-encoding"] == "br" and h2["etag"] == '"1796158842.55-4443475-2010391092-br"'
    assert h2["vary"] == "Origin, Accept-Encoding" and "accept-ranges" not in h2
    assert h2["cache-control"] == "public, max-age=2419200" and h2["content-length"] == str(len(b2))
    assert cache.compressions == 1
    # the second request went upstream (authorization) with the cached ETag, and MLflow answered 304
    assert dict(app.scopes[1]["headers"])[b"if-none-match"] == TAG
    # gzip is its own entry
    _s3, h3, b3, _ = call(wrapper, path, headers={"accept-encoding": "gzip"})
    assert h3["etag"].endswith('-gzip"') and gzip.decompress(b3) == JS and cache.compressions == 2


def test_simultaneous_first_requests_compress_once() -> None:
    app, cache = StaticApp(), StaticCache()
    wrapper = Compression(app, cache)
    bodies: list[bytes] = []

    async def one() -> None:
        scope = {"type": "http", "method": "GET", "path": "/static-files/a.js", "headers": [(b"accept-encoding", b"br")]}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                bodies.append(message["body"])

        await wrapper(scope, receive, send)

    async def both() -> None:
        await asyncio.gather(one(), one(), one())
        await cache.idle()

    asyncio.run(both())
    assert cache.compressions == 1 and len(bodies) == 3 and len(set(bodies)) == 1
    assert brotli.decompress(bodies[0]) == JS


def test_revalidation_304_keeps_the_coded_etag() -> None:
    app = StaticApp()
    wrapper = Compression(app, StaticCache())
    path = "/static-files/static/js/main.js"
    for _ in range(2):      # the first answer's weak tag, then the kept copy's strong one
        _, h1, _, _ = call(wrapper, path, headers={"accept-encoding": "br"})
        status, h2, body, _ = call(wrapper, path, headers={"accept-encoding": "br", "if-none-match": h1["etag"]})
        assert status == 304 and body == b"" and h2["etag"] == h1["etag"] and "accept-ranges" not in h2
        assert dict(app.scopes[-1]["headers"])[b"if-none-match"].removeprefix(b"W/") == TAG   # MLflow's own ETag


def test_a_new_upstream_version_replaces_the_cached_file() -> None:
    cache = StaticCache()
    app = StaticApp()
    call(Compression(app, cache), "/static-files/a.js", headers={"accept-encoding": "br"})
    newer = App([JS + b"//v2\n"], headers=[(b"content-type", b"text/javascript"), (b"etag", b'"v2"')])
    _, h, body, _ = call(Compression(newer, cache), "/static-files/a.js", headers={"accept-encoding": "br"})
    assert brotli.decompress(body) == JS + b"//v2\n" and h["etag"] == 'W/"v2-br"'     # first answer: coded fast
    assert cache.etag_for("/static-files/a.js", "br") == b'"v2"' and len(cache.entries) == 1


def test_cache_is_bounded() -> None:
    cache = StaticCache(max_bytes=4000)
    for i in range(20):
        body = os.urandom(600).hex().encode()    # ~1200 bytes coded
        app = App([body], headers=[(b"content-type", b"text/css"), (b"etag", f'"{i}"'.encode())])
        call(Compression(app, cache), f"/static-files/{i}.css", headers={"accept-encoding": "br"})
    assert cache.size <= 4000 and 1 <= len(cache.entries) < 20
    assert cache.etag_for("/static-files/0.css", "br") is None and cache.etag_for("/static-files/19.css", "br")


def test_a_refusal_is_never_answered_from_the_cache() -> None:
    cache = StaticCache()
    call(Compression(StaticApp(), cache), "/static-files/a.js", headers={"accept-encoding": "br"})
    denied = App([b'{"error_code": "UNAUTHENTICATED", "message": "Authentication required"}'], status=401)
    status, _, body, _ = call(Compression(denied, cache), "/static-files/a.js", headers={"accept-encoding": "br"})
    assert status == 401 and b"UNAUTHENTICATED" in body


# --- request bodies ---------------------------------------------------------------------------------------------

ENCODE: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress, "x-gzip": gzip.compress, "br": brotli.compress, "zstd": zstd.compress,
    "deflate": zlib.compress}


@pytest.mark.parametrize("coding", sorted(ENCODE))
def test_request_body_decoded_before_the_gate(coding: str) -> None:
    payload = json.dumps({"experiment_id": "7", "tags": [{"key": "k", "value": "v" * 3000}]}).encode()
    coded = ENCODE[coding](payload)
    app = App([b"{}"])
    status, _, _, _ = call(Compression(app), "/api/2.0/mlflow/runs/create", "POST",
                           {"content-encoding": coding, "content-type": "application/json",
                            "content-length": str(len(coded))},
                           body_chunks=[coded[:100], coded[100:]])
    headers = dict(app.scopes[0]["headers"])
    assert status == 200 and app.bodies[0] == payload
    assert b"content-encoding" not in headers and headers[b"content-length"] == str(len(payload)).encode()


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_zip_bomb_is_413(coding: str) -> None:
    bomb = codings.compress(coding, b"\0" * (80 * 1024 * 1024), 9)
    app = App([b"{}"])
    tracemalloc.start()
    try:
        status, _, body, _ = call(Compression(app, max_decoded=8 * 1024 * 1024), "/api/2.0/mlflow/runs/log-batch",
                                  "POST", {"content-encoding": coding},
                                  body_chunks=[bomb[i:i + 4096] for i in range(0, len(bomb), 4096)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 413 and json.loads(body)["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "8 MiB" in json.loads(body)["message"] and app.scopes == []
    assert peak < 24 * 1024 * 1024


@pytest.mark.parametrize(("coding", "body", "status"), [
    ("gzip", b"not gzip at all", 400),
    ("gzip", gzip.compress(b'{"a": 1}')[:-6], 400),            # truncated
    ("br", b"\xff\xff\xff\xff", 400),
    ("zstd", zstd.compress(b'{"a": 1}') + b"junk", 400),       # data after the end
    ("compress", b"x", 415),
    ("gzip, br", b"x", 415),
])
def test_bad_request_bodies(coding: str, body: bytes, status: int) -> None:
    app = App([b"{}"])
    got, headers, out, _ = call(Compression(app), "/api/2.0/mlflow/runs/create", "POST",
                                {"content-encoding": coding}, body=body)
    assert got == status and json.loads(out)["error_code"] == "INVALID_PARAMETER_VALUE" and app.scopes == []
    if status == 415:
        assert headers["accept-encoding"] == "zstd, br, gzip"


def test_artifact_uploads_keep_their_bytes() -> None:
    coded = gzip.compress(b"a file that happens to be gzip")
    app = App([b"{}"])
    call(Compression(app), "/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/a.gz", "PUT",
         {"content-encoding": "gzip"}, body=coded)
    assert app.bodies[0] == coded and dict(app.scopes[0]["headers"])[b"content-encoding"] == b"gzip"

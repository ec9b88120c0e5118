"""Compression on the wire: an ASGI wrapper around the whole gate (create_app puts it outermost).

Answers: coded as `Accept-Encoding` asks (codings.negotiate), while they stream (one encoder per answer, so memory
stays bounded), only for compressible types over MIN_SIZE, never for artifact files, ranges, HEAD, answers that are
already coded or marked `no-transform`, nor when the client did not ask. `Vary: Accept-Encoding` goes on every
answer whose type could be coded; a coded answer's ETag gets the coding appended (`"abc-br"`), and a client's
`If-None-Match` is translated back before it reaches the gate, so MLflow's 304s keep working.

The UI's static files (`/static-files/...`, which MLflow serves with an ETag) are compressed once per upstream ETag
at a high level and kept (static_cache.py); the first answer for one is coded fast as it streams, with a weak ETag,
while the copy to keep is made in the background. A request for one that the cache holds is sent upstream, through the
gate's authentication as always, with the cached ETag in `If-None-Match`; MLflow's 304 is then answered with the
cached bytes, without moving the file over loopback again.

Requests: a body with `Content-Encoding: gzip | br | zstd | deflate` is decoded here, up to MAX_DECODED, before the
gate reads any parameter from it (413 past the cap, 400 when corrupt, 415 for another coding). Artifact uploads keep
their bytes as sent.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from . import codings
from .edge import body_chunks
from .errors import BadRequest, GateError, NotAcceptable, PayloadTooLarge, UnsupportedMediaType, send_error
from .forward import Receive, Send
from .static_cache import Entry, StaticCache

Headers = list[tuple[bytes, bytes]]

MIN_SIZE = 1400                   # about one TCP segment: a smaller answer takes one packet either way
MAX_DECODED = 64 * 1024 * 1024    # a decoded request body, like the gate's own cap on bodies it reads
STATIC_PREFIX = "/static-files/"
_COMPRESSIBLE = re.compile(rb"^(text/(?!event-stream)|application/(json|javascript|x-javascript|ecmascript|xml|"
                           rb"graphql-response\+json|x-ndjson|manifest\+json)|[a-z]+/[-.\w]+\+(json|xml)|image/svg\+xml)")
# Artifact files are users' bytes (often already compressed, often large): passed as they are.
_ARTIFACT_FILES = re.compile(r"^/(ajax-)?api/2\.0/mlflow-artifacts/|^/(get-artifact|model-versions/get-artifact)$"
                             r"|^/ajax-api/2\.0/mlflow/(logged-models/[^/]+/artifacts/files|upload-artifact)$")
_READ = frozenset({b"accept-encoding", b"content-encoding", b"range", b"if-none-match", b"if-modified-since"})
_ANSWER = frozenset({b"content-type", b"content-encoding", b"cache-control", b"etag", b"content-length"})
_CODED_TAG = re.compile(rb'^(W/)?"(.*)-(gzip|br|zstd)"$')


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def pick(headers: Iterable[tuple[bytes, bytes]], names: frozenset[bytes]) -> dict[bytes, bytes]:
    """The headers named, in one pass (lower-case names; a repeated one joined as a list)."""
    seen: dict[bytes, bytes] = {}
    for key, value in headers:
        if (key := key.lower()) in names:
            seen[key] = seen[key] + b", " + value if key in seen else value
    return seen


def length_of(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def without(headers: Iterable[tuple[bytes, bytes]], *names: bytes) -> Headers:
    return [(k, v) for k, v in headers if k.lower() not in names]


def coded_tag(tag: bytes, coding: str) -> bytes:
    """`"abc"` -> `"abc-br"` (W/ kept): each coding of a representation has its own validator."""
    weak, _, opaque = tag.rpartition(b'"')[0].partition(b'"')
    return weak + b'"' + opaque + b"-" + coding.encode() + b'"'


def with_vary(headers: Headers) -> Headers:
    """The headers with Accept-Encoding in Vary (merged into MLflow's own `Vary: Origin`)."""
    out, found = [], False
    for key, value in headers:
        if key.lower() == b"vary":
            found = True
            if b"accept-encoding" not in value.lower() and value.strip() != b"*":
                value += b", Accept-Encoding"
        out.append((key, value))
    if not found:
        out.append((b"vary", b"Accept-Encoding"))
    return out


def coded_headers(headers: Headers, coding: str, length: int | None) -> Headers:
    out = without(headers, b"content-length", b"accept-ranges", b"etag")
    tag = header(headers, b"etag")
    if tag is not None:
        out.append((b"etag", coded_tag(tag, coding)))
    out.append((b"content-encoding", coding.encode()))
    if length is not None:
        out.append((b"content-length", str(length).encode()))
    return with_vary(out)


class Request:
    """What the answer's coding depends on, read once from the request."""

    def __init__(self, scope: dict[str, Any]) -> None:
        seen = pick(scope["headers"], _READ)
        self.path: str = scope["path"]
        accept = seen[b"accept-encoding"].decode("latin-1") if b"accept-encoding" in seen else None
        choice = codings.choose(accept)
        if choice is None:
            raise NotAcceptable(f"Accept-Encoding {accept!r} refuses every coding the gate can send; accept "
                                f"one of {', '.join(codings.SUPPORTED)} or identity.")
        self.coding, self.static_coding, self.must_code = choice.dynamic, choice.static, choice.must_code
        self.body_coding = seen.get(b"content-encoding")
        self.eligible = (scope["method"] != "HEAD" and b"range" not in seen and not _ARTIFACT_FILES.match(self.path))
        self.static = (self.eligible and scope["method"] == "GET" and self.path.startswith(STATIC_PREFIX)
                       and self.static_coding != codings.IDENTITY)
        self.if_none_match = seen.get(b"if-none-match")
        self.conditional = self.if_none_match is not None or b"if-modified-since" in seen
        self.client_tags: dict[bytes, bytes] = {}    # upstream tag (without W/) -> the coded tag the client sent
        self.injected: bytes | None = None           # the cached ETag the gate asked MLflow to validate

    def translate_validators(self, scope: dict[str, Any], cache: StaticCache) -> dict[str, Any]:
        """The scope the gate sees: coded ETags in If-None-Match turned back into MLflow's, or the cached ETag
        put there when the client has no validator of its own and the cache holds the file."""
        headers, inm = scope["headers"], self.if_none_match
        if inm is not None:
            tags = []
            for tag in (t.strip() for t in inm.split(b",")):
                m = _CODED_TAG.match(tag)
                if m:
                    plain = (m.group(1) or b"") + b'"' + m.group(2) + b'"'
                    self.client_tags[plain.removeprefix(b"W/")] = tag
                    tag = plain
                tags.append(tag)
            return dict(scope, headers=[*without(headers, b"if-none-match"), (b"if-none-match", b", ".join(tags))])
        if self.static and not self.conditional:
            self.injected = cache.etag_for(self.path, self.static_coding)
            if self.injected is not None:
                return dict(scope, headers=[*headers, (b"if-none-match", self.injected)])
        return scope


class Compression:
    """The ASGI wrapper."""

    def __init__(self, app: Any, cache: StaticCache | None = None, *, min_size: int = MIN_SIZE,
                 max_decoded: int = MAX_DECODED) -> None:
        self.app = app
        self.cache = cache if cache is not None else StaticCache()
        self.min_size = min_size
        self.max_decoded = max_decoded

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_gate/"):
            await self.app(scope, receive, send)     # the gate's own pages and endpoints are left alone
            return
        try:
            request = Request(scope)
            if request.body_coding is not None and not _ARTIFACT_FILES.match(scope["path"]):
                scope, receive = await self.decoded(scope, receive)
        except GateError as err:
            await send_error(send, err)
            return
        scope = request.translate_validators(scope, self.cache)
        answer = Answer(request, send, self.cache, self.min_size)
        await self.app(scope, receive, answer.send)

    async def decoded(self, scope: dict[str, Any], receive: Receive) -> tuple[dict[str, Any], Receive]:
        """The request with its body decoded (bounded by max_decoded) and its headers saying so."""
        value = (header(scope["headers"], b"content-encoding") or b"").decode("latin-1").strip().lower()
        coding = codings.ALIASES.get(value, value)
        if coding == codings.IDENTITY:
            return scope, receive
        if coding not in codings.DECODABLE:
            raise UnsupportedMediaType(f"Content-Encoding {value!r} is not supported for request bodies; send the body "
                                       f"as {', '.join(codings.DECODABLE)} (one coding) or uncompressed.",
                                       ", ".join(codings.SUPPORTED))
        decoder = codings.Decoder(coding, self.max_decoded)
        pieces: list[bytes] = []
        over_cap = lambda: codings.TooLarge("compressed body over the cap")
        try:
            async for chunk in body_chunks(receive, self.max_decoded, over_cap):
                pieces += decoder.feed(chunk)
            decoder.finish()
        except codings.TooLarge as exc:
            raise PayloadTooLarge(f"The request body is over {self.max_decoded // (1024 * 1024)} MiB once decoded "
                                  f"({value}); send less per request.") from exc
        except codings.DecodeError as exc:
            raise BadRequest(f"The request body is not valid {value} data ({exc}); fix its encoding or send it "
                             "uncompressed.") from exc
        body = b"".join(pieces)
        headers = [*without(scope["headers"], b"content-encoding", b"content-length", b"transfer-encoding"),
                   (b"content-length", str(len(body)).encode())]
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return await receive()      # after the body: the client's disconnect, as before
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return dict(scope, headers=headers), replay


class Answer:
    """The `send` the gate writes its answer to: decides at the start line, then codes the body as it streams."""

    def __init__(self, request: Request, send: Send, cache: StaticCache, min_size: int) -> None:
        self.request = request
        self.inner = send
        self.cache = cache
        self.min_size = min_size
        self.mode = "pass"
        self.start: dict[str, Any] = {}
        self.held: list[bytes] = []
        self.held_size = 0
        self.coding = codings.IDENTITY
        self.encoder: codings.Encoder | None = None
        self.keep: tuple[bytes, list[bytes]] | None = None     # a static file's ETag and bytes, to be kept

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            await self.begin(message)
        elif message["type"] != "http.response.body" or self.mode == "pass":
            await self.inner(message)
        elif self.mode == "drop":
            pass        # MLflow's copy of a file answered from the cache
        else:
            await self.coded_body(message)

    async def begin(self, message: dict[str, Any]) -> None:
        status, headers = message["status"], list(message.get("headers", []))
        req = self.request
        if status == 304:
            await self.not_modified(message, headers)
            return
        got = pick(headers, _ANSWER)
        typed = bool(_COMPRESSIBLE.match(got.get(b"content-type", b"").lower())) or req.must_code
        if (not req.eligible or not typed or status in (204, 206) or status < 200 or b"content-encoding" in got
                or b"no-transform" in got.get(b"cache-control", b"").lower()):
            self.mode = "pass"
            await self.inner(dict(message, headers=with_vary(headers) if typed and req.eligible else headers))
            return
        tag, length = got.get(b"etag"), length_of(got)
        if req.static and status == 200 and tag is not None and length is not None and self.cache.fits(length):
            entry = self.cache.get(req.path, tag, req.static_coding)
            if entry is not None:
                self.mode = "drop"
                await self.replay(entry, headers)
                return
            # The first time: coded fast as it streams (so a weak ETag: the kept copy will have other bytes),
            # while the copy to keep is made at the high level in the background.
            self.keep, headers = (tag, []), [(k, v if k.lower() != b"etag" or v.startswith(b"W/") else b"W/" + v)
                                              for k, v in headers]
            self.start, self.mode, self.coding = dict(message, headers=headers), "code", req.static_coding
            return
        coding = req.coding if req.coding != codings.IDENTITY else None
        if coding is None or (length is not None and length < self.min_size and not req.must_code):
            self.mode = "pass"
            await self.inner(dict(message, headers=with_vary(headers)))
            return
        self.start, self.mode, self.coding = dict(message, headers=headers), "code", coding

    async def not_modified(self, message: dict[str, Any], headers: Headers) -> None:
        """A 304 from MLflow: for the gate's own validation, the cached file; else the client's tag back."""
        req = self.request
        tag = header(headers, b"etag") or req.injected
        if req.injected is not None and tag == req.injected:
            entry = self.cache.get(req.path, req.injected, req.static_coding)
            if entry is not None:
                self.mode = "drop"
                await self.replay(entry, headers, status=200)
                return
        coded = req.client_tags.get(tag.removeprefix(b"W/")) if tag is not None else None
        if coded is not None:     # the client holds a coded copy: its tag, no ranges
            headers = [*without(headers, b"etag", b"accept-ranges"), (b"etag", coded)]
        self.mode = "pass"
        await self.inner(dict(message, headers=with_vary(headers) if req.eligible else headers))

    async def replay(self, entry: Entry, live: Headers, status: int = 200) -> None:
        """A cached file, with the freshness headers of MLflow's latest answer (a 304's, RFC 9111 4.3.4)."""
        fresh = without(live, b"content-length", b"content-type", b"etag", b"vary", b"accept-ranges",
                        b"content-encoding", b"last-modified")
        names = {k.lower() for k, _ in fresh}
        headers = [*fresh, *((k, v) for k, v in entry.headers if k.lower() not in names)]
        await self.inner({"type": "http.response.start", "status": status, "headers": headers})
        await self.inner({"type": "http.response.body", "body": entry.body, "more_body": False})

    def keep_file(self, body: bytes) -> None:
        assert self.keep is not None
        req, tag, headers = self.request, self.keep[0], without(self.start["headers"], b"etag")
        headers.append((b"etag", tag))
        self.cache.prepare(req.path, tag, req.static_coding, body, lambda n: coded_headers(headers, req.static_coding, n))
        self.keep = None

    async def coded_body(self, message: dict[str, Any]) -> None:
        body, more = message.get("body", b""), message.get("more_body", False)
        if self.keep is not None:
            self.keep[1].append(body)
            if not more:
                self.keep_file(b"".join(self.keep[1]))
        if self.encoder is None:
            if more and self.held_size + len(body) < self.min_size:
                self.held.append(body)          # no length given: wait until it is clear the answer is big
                self.held_size += len(body)
                return
            body = b"".join([*self.held, body])
            self.held = []
            headers = self.start["headers"]
            if not more and len(body) < self.min_size and not self.request.must_code:
                await self.inner(dict(self.start, headers=with_vary(headers)))
                await self.inner({"type": "http.response.body", "body": body, "more_body": False})
                self.mode = "pass"
                return
            self.encoder = codings.encoder(self.coding)
            if not more:                         # the whole answer at once: coded with a Content-Length
                data = self.encoder.compress(body) + self.encoder.finish()
                await self.inner(dict(self.start, headers=coded_headers(headers, self.coding, len(data))))
                await self.inner({"type": "http.response.body", "body": data, "more_body": False})
                return
            await self.inner(dict(self.start, headers=coded_headers(headers, self.coding, None)))
        data = self.encoder.compress(body) if body else b""
        if not more:
            data += self.encoder.finish()
        if data or not more:
            await self.inner({"type": "http.response.body", "body": data, "more_body": more})

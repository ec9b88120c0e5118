"""Content codings on the wire: gzip, br (brotli) and zstd. Negotiation from `Accept-Encoding` (RFC 9110
section 12.5.3), streaming encoders, and decoders whose output is bounded whatever the input (zip bombs).

Pure functions and small objects: no ASGI here (compression.py is the wrapper that uses them).
"""
from __future__ import annotations

import functools
import sys
import zlib
from dataclasses import dataclass
from typing import Protocol

import brotli

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

IDENTITY = "identity"
SUPPORTED = ("zstd", "br", "gzip")
DECODABLE = (*SUPPORTED, "deflate")     # request bodies: also zlib-wrapped deflate (never offered in answers)
ALIASES = {"x-gzip": "gzip"}            # RFC 9110 8.4.1.3: a recipient SHOULD treat x-gzip as gzip

# Levels measured on MLflow's answers (README, "Compression on the wire"): CPU per MB of input vs. size.
# Answers are compressed as they stream, so the fast end of each coder: zstd 1 and brotli 1 cost 1.3-3 ms/MB
# for a 9-29x smaller 500-run search or metric history; gzip 1 costs 3.5-8 ms/MB for 7-18x.
DYNAMIC_LEVELS = {"zstd": 1, "br": 1, "gzip": 1}
# The UI's static files are compressed once per upstream version and kept: a level that takes well under
# a second for MLflow's 4.4 MB main bundle (br 9: 1.04 MB in 0.4-0.5 s; br 11 saves 9% more for 20x the CPU).
STATIC_LEVELS = {"br": 9, "zstd": 12, "gzip": 9}
DYNAMIC_PREFERENCE = ("zstd", "br", "gzip")    # fastest for a given ratio first, among codings of equal q
STATIC_PREFERENCE = ("br", "zstd", "gzip")     # smallest first: the work is done once


class NotAcceptable(Exception):
    """Accept-Encoding refuses identity and every coding the gate has."""


def parse_accept_encoding(value: str) -> dict[str, float]:
    """`gzip;q=0.8, br, *;q=0` -> {"gzip": 0.8, "br": 1.0, "*": 0.0}; a malformed q-value makes its entry q=0."""
    out: dict[str, float] = {}
    for item in value.split(","):
        name, _, params = item.partition(";")
        name = ALIASES.get(name.strip().lower(), name.strip().lower())
        if not name:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, val = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val.strip())
                except ValueError:
                    q = 0.0
                q = q if 0.0 <= q <= 1.0 else 0.0
        out[name] = max(q, out.get(name, 0.0)) if name in out else q
    return out


def negotiate(header: str | None, preference: tuple[str, ...] = DYNAMIC_PREFERENCE) -> str:
    """The coding to answer with: one of SUPPORTED, or IDENTITY. No header: identity (the client did not ask).

    Raises NotAcceptable when `identity;q=0` (or `*;q=0` without identity) leaves nothing the gate can send.
    """
    if header is None:
        return IDENTITY
    weights = parse_accept_encoding(header)
    star = weights.get("*")
    best, best_q = IDENTITY, 0.0
    for coding in preference:
        q = weights.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    explicit = weights.get(IDENTITY, star)       # identity's own weight, when the client gave one
    if best != IDENTITY and (explicit is None or best_q >= explicit):
        return best
    if explicit is not None and explicit <= 0.0:
        raise NotAcceptable(header)
    return IDENTITY


@dataclass(frozen=True)
class Choice:
    """What one Accept-Encoding value allows: the coding for answers, the one for static files, and whether identity
    is refused. None of them when nothing is acceptable."""

    dynamic: str
    static: str
    must_code: bool


@functools.lru_cache(maxsize=512)
def choose(header: str | None) -> Choice | None:
    """negotiate() for both preferences, once per distinct header value (clients send a handful of them)."""
    try:
        return Choice(negotiate(header), negotiate(header, STATIC_PREFERENCE), identity_refused(header))
    except NotAcceptable:
        return None


def identity_refused(header: str | None) -> bool:
    """Whether the client said it cannot take an uncoded answer (then even small answers are coded)."""
    if header is None:
        return False
    weights = parse_accept_encoding(header)
    return weights.get(IDENTITY, weights.get("*", 1.0)) <= 0.0


# --- encoders ---------------------------------------------------------------------------------------------------


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class _Gzip:
    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31, 8)    # wbits 31: a gzip header and trailer

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def finish(self) -> bytes:
        return self._z.flush()


class _Brotli:
    def __init__(self, level: int) -> None:
        self._b = brotli.Compressor(quality=level, lgwin=22)

    def compress(self, data: bytes) -> bytes:
        return bytes(self._b.process(data))

    def finish(self) -> bytes:
        return bytes(self._b.finish())


class _Zstd:
    def __init__(self, level: int) -> None:
        self._z = zstd.ZstdCompressor(level=level)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def finish(self) -> bytes:
        return self._z.flush()


_ENCODERS: dict[str, type[_Gzip | _Brotli | _Zstd]] = {"gzip": _Gzip, "br": _Brotli, "zstd": _Zstd}


def encoder(coding: str, level: int | None = None) -> Encoder:
    return _ENCODERS[coding](DYNAMIC_LEVELS[coding] if level is None else level)


def compress(coding: str, data: bytes, level: int) -> bytes:
    enc = encoder(coding, level)
    return enc.compress(data) + enc.finish()


# --- decoders (request bodies) -----------------------------------------------------------------------------------


STEP = 256 * 1024     # decoded bytes per decoder call: brotli's limit is approximate (its buffer grows in steps)


class DecodeError(ValueError):
    """The body is not valid data of its declared coding."""


class TooLarge(ValueError):
    """The decoded body would be larger than the cap."""


@dataclass
class Decoder:
    """Decodes one coded body fed piece by piece; never holds or returns more than `cap` decoded bytes."""

    coding: str
    cap: int
    produced: int = 0

    def __post_init__(self) -> None:
        if self.coding == "gzip":
            self._z = zlib.decompressobj(47)     # gzip or zlib header, auto-detected
        elif self.coding == "deflate":           # accepted because MLflow's OTLP endpoint accepts it
            self.coding, self._z = "gzip", zlib.decompressobj(47)
        elif self.coding == "br":
            self._b = brotli.Decompressor()
        else:
            self._s = zstd.ZstdDecompressor()
        self._done = False

    def feed(self, data: bytes) -> list[bytes]:
        """Decoded pieces of `data`; raises TooLarge past the cap, DecodeError on corrupt input."""
        out: list[bytes] = []
        try:
            while data or not self._drained():
                piece = self._step(data, min(self.cap - self.produced + 1, STEP))
                data = b""
                if not piece:
                    break
                self.produced += len(piece)
                if self.produced > self.cap:
                    raise TooLarge(f"over {self.cap} bytes once decoded")
                out.append(piece)
        except (zlib.error, brotli.error, zstd.ZstdError) as exc:
            raise DecodeError(str(exc)) from exc
        return out

    def _step(self, data: bytes, limit: int) -> bytes:
        """At most `limit` decoded bytes from `data` plus what the decoder still holds."""
        if self.coding == "gzip":
            if self._z.eof:
                self._trailing(self._z.unused_data + data)
                return b""
            piece = self._z.decompress(self._z.unconsumed_tail + data, limit)
            if self._z.eof:
                self._trailing(self._z.unused_data)
            return piece
        if self.coding == "br":
            if self._b.is_finished():
                self._trailing(data)
                return b""
            return bytes(self._b.process(data, output_buffer_limit=limit))
        if self._s.eof:
            self._trailing(self._s.unused_data + data)
            return b""
        piece = self._s.decompress(data, limit)
        if self._s.eof:
            self._trailing(self._s.unused_data)
        return piece

    def _drained(self) -> bool:
        if self.coding == "gzip":
            return not self._z.unconsumed_tail
        if self.coding == "br":
            return self._b.is_finished() or self._b.can_accept_more_data()
        return self._s.eof or self._s.needs_input

    @staticmethod
    def _trailing(rest: bytes) -> None:
        if rest:
            raise DecodeError("data after the end of the compressed stream")

    def finish(self) -> None:
        """The body ended: the compressed stream must have ended too."""
        ended = self._z.eof if self.coding == "gzip" else (
            self._b.is_finished() if self.coding == "br" else self._s.eof)
        if not ended:
            raise DecodeError("the compressed stream is truncated")

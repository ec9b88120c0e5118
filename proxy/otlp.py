"""OTLP trace exports (`POST /v1/traces`) read as MLflow's server reads them, within bounds.

MLflow (`server/otel_api.py`) takes `application/x-protobuf` or `application/json` (ids in hex), plain,
gzip or deflate, and stores every span under the trace its trace id names: an existing trace gets the
spans appended wherever it lives. The gate parses the same way, hands the trace ids to the route's
needs, and forwards its own protobuf encoding of the message it checked, so nothing MLflow parses
can differ from what was authorized.
"""
from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .edge import parse_json
from .errors import BadRequest, PayloadTooLarge

MAX_DECODED = 64 * 1024 * 1024     # a decompressed body
MAX_SPANS = 100_000
MAX_TRACES = 1_000                  # distinct trace ids in one export: each is looked up
CONTENT_TYPE = b"application/x-protobuf"
MAX_JSON_DEPTH = 100                # protobuf's own limit for nested messages
TRACE_TAG_PREFIX = "mlflow.traceTag."
CREATOR_ATTRIBUTE = TRACE_TAG_PREFIX + "mlflow.user"    # MLflow makes this root-span attribute the trace's tag
_HEX_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def read(body: bytes, headers: dict[bytes, bytes]) -> ExportTraceServiceRequest:
    """The export request in `body`, decoded per its Content-Encoding and Content-Type; 400 when it does not parse."""
    media = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip()
    if media not in ("application/x-protobuf", "application/json"):
        raise BadRequest(f"Invalid Content-Type {media!r} for an OTLP export: send application/x-protobuf or "
                         "application/json.")
    encoding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
    raw = _decompress(body, encoding) if encoding else body
    message = ExportTraceServiceRequest()
    try:
        if media == "application/json":
            json_format.ParseDict(_hex_ids_to_base64(raw), message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(raw)
    except (DecodeError, json_format.ParseError, ValueError, TypeError) as exc:
        raise BadRequest(f"Invalid OpenTelemetry export: {exc}") from exc
    _check_size(message)
    return message


def _decompress(body: bytes, encoding: str) -> bytes:
    """gzip (every member) or deflate (zlib-wrapped or raw), never more than MAX_DECODED bytes."""
    if encoding == "gzip":
        return _inflate(body, 16 + zlib.MAX_WBITS, members=True)
    if encoding == "deflate":
        try:
            return _inflate(body, zlib.MAX_WBITS)
        except BadRequest:
            return _inflate(body, -zlib.MAX_WBITS)
    raise BadRequest(f"Unsupported Content-Encoding {encoding!r} for an OTLP export: send gzip, deflate or none.")


def _inflate(data: bytes, wbits: int, *, members: bool = False) -> bytes:
    out: list[bytes] = []
    size = 0
    while data:
        inflater = zlib.decompressobj(wbits)
        try:
            chunk = inflater.decompress(data, MAX_DECODED - size + 1)
        except zlib.error as exc:
            raise BadRequest(f"The OTLP body does not decompress: {exc}") from exc
        size += len(chunk)
        if size > MAX_DECODED or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"The OTLP export is over {MAX_DECODED // (1024 * 1024)} MiB decompressed; "
                                  "send smaller batches.")
        if not inflater.eof:
            raise BadRequest("The OTLP body is truncated.")
        out.append(chunk)
        data = inflater.unused_data if members else b""
    return b"".join(out)


def _hex_ids_to_base64(raw: bytes) -> dict[str, Any]:
    """OTLP JSON spells ids in hex, protobuf's JSON mapping in base64: converted where MLflow converts them."""
    data = parse_json(raw, "OTLP export", max_depth=MAX_JSON_DEPTH)
    if not isinstance(data, dict):
        raise BadRequest("An OTLP JSON export must be a JSON object.")
    for resource_span in _list(data.get("resourceSpans")):
        for scope_span in _list(resource_span.get("scopeSpans")):
            for span in _list(scope_span.get("spans")):
                for field in _HEX_ID_FIELDS:
                    if hex_value := span.get(field):
                        try:
                            span[field] = base64.b64encode(bytes.fromhex(hex_value)).decode("ascii")
                        except (ValueError, TypeError, binascii.Error) as exc:
                            raise BadRequest(f"OTLP span field {field!r} is not hex.") from exc
    return data


def _list(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise BadRequest("resourceSpans, scopeSpans and spans of an OTLP export must be lists of objects.")
    return value


def _check_size(message: ExportTraceServiceRequest) -> None:
    spans = sum(len(scope.spans) for resource in message.resource_spans for scope in resource.scope_spans)
    if spans > MAX_SPANS:
        raise PayloadTooLarge(f"The OTLP export holds {spans} spans; send at most {MAX_SPANS} per request.")
    traces = trace_ids(message)
    if len(traces) > MAX_TRACES:
        raise PayloadTooLarge(f"The OTLP export names {len(traces)} traces; send at most {MAX_TRACES} per request.")


def _spans(message: ExportTraceServiceRequest) -> Any:
    return (span for resource in message.resource_spans for scope in resource.scope_spans for span in scope.spans)


def trace_ids(message: ExportTraceServiceRequest) -> list[str]:
    """The MLflow trace id of every span, once each: `tr-` and the OTLP trace id in hex, as MLflow derives it."""
    out: dict[str, None] = {}
    for span in _spans(message):
        if not span.trace_id or not span.span_id:
            raise BadRequest("Every OTLP span needs a trace_id and a span_id.")
        out["tr-" + format(int.from_bytes(span.trace_id, "big"), "032x")] = None
    return list(out)


def trace_tag_keys(message: ExportTraceServiceRequest) -> list[str]:
    """The trace tags the spans set (MLflow makes a span attribute `mlflow.traceTag.<key>` the trace's tag)."""
    return [a.key[len(TRACE_TAG_PREFIX):] for span in _spans(message) for a in span.attributes
            if a.key.startswith(TRACE_TAG_PREFIX)]


def set_creator(message: ExportTraceServiceRequest, user: str) -> None:
    """Every root span names `user` as the trace's creator (tag `mlflow.user`); no other span names one."""
    for span in _spans(message):
        kept = [a for a in span.attributes if a.key != CREATOR_ATTRIBUTE]
        if len(kept) != len(span.attributes):
            del span.attributes[:]
            span.attributes.extend(kept)
        if not span.parent_span_id:
            attribute = span.attributes.add()
            attribute.key = CREATOR_ATTRIBUTE
            attribute.value.string_value = user


def encode(message: ExportTraceServiceRequest) -> bytes:
    return message.SerializeToString()

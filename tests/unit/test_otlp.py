"""OTLP exports read as MLflow reads them (encodings, compression, ids), within bounds; the creator rewrite."""
from __future__ import annotations

import base64
import gzip
import json
import zlib

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy import otlp
from proxy.errors import BadRequest, PayloadTooLarge

PROTO = {b"content-type": b"application/x-protobuf"}
TRACE_A, TRACE_B = bytes(range(16)), bytes([0] * 15 + [7])


def export(*trace_ids: bytes, parent: bytes = b"", attributes: dict[str, str] | None = None) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    scope = message.resource_spans.add().scope_spans.add()
    for i, trace_id in enumerate(trace_ids):
        span = scope.spans.add(trace_id=trace_id, span_id=(i + 1).to_bytes(8, "big"), parent_span_id=parent, name=f"s{i}")
        for key, value in (attributes or {}).items():
            span.attributes.add(key=key).value.string_value = value
    return message


def test_trace_ids_are_derived_as_mlflow_derives_them() -> None:
    message = otlp.read(export(TRACE_A, TRACE_B, TRACE_A).SerializeToString(), PROTO)
    assert otlp.trace_ids(message) == ["tr-000102030405060708090a0b0c0d0e0f", "tr-" + "0" * 31 + "7"]


def hex_json(message: ExportTraceServiceRequest) -> bytes:
    data = json_format.MessageToDict(message)
    for span in data["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(data).encode()


@pytest.mark.parametrize("encoding", ["json", "gzip", "deflate", "raw-deflate", "two-gzip-members"])
def test_every_encoding_mlflow_accepts_reads_the_same(encoding: str) -> None:
    raw = export(TRACE_A).SerializeToString()
    headers = dict(PROTO)
    if encoding == "json":
        body, headers = hex_json(export(TRACE_A)), {b"content-type": b"application/json; charset=utf-8"}
    elif encoding == "gzip":
        body, headers[b"content-encoding"] = gzip.compress(raw), b"gzip"
    elif encoding == "two-gzip-members":
        half = len(raw) // 2
        body, headers[b"content-encoding"] = gzip.compress(raw[:half]) + gzip.compress(raw[half:]), b"GZIP"
    elif encoding == "deflate":
        body, headers[b"content-encoding"] = zlib.compress(raw), b"deflate"
    else:
        squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body, headers[b"content-encoding"] = squeeze.compress(raw) + squeeze.flush(), b"deflate"
    assert otlp.trace_ids(otlp.read(body, headers)) == ["tr-000102030405060708090a0b0c0d0e0f"]


@pytest.mark.parametrize(("body", "headers", "error"), [
    (b"x", {b"content-type": b"text/plain"}, BadRequest),
    (b"\xff\xff\xff", PROTO, BadRequest),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', {b"content-type": b"application/json"},
     BadRequest),
    (b'{"resourceSpans": 3}', {b"content-type": b"application/json"}, BadRequest),
    (b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", {b"content-type": b"application/json"}, BadRequest),
    (gzip.compress(b"\0" * (otlp.MAX_DECODED + 1)), {**PROTO, b"content-encoding": b"gzip"}, PayloadTooLarge),
    (gzip.compress(b"abc")[:-4], {**PROTO, b"content-encoding": b"gzip"}, BadRequest),
    (b"abc", {**PROTO, b"content-encoding": b"br"}, BadRequest),
    (export(b"").SerializeToString(), PROTO, BadRequest),
    (export(*[i.to_bytes(16, "big") for i in range(1, otlp.MAX_TRACES + 2)]).SerializeToString(), PROTO,
     PayloadTooLarge),
])
def test_what_does_not_parse_or_is_too_big_is_refused(body: bytes, headers: dict[bytes, bytes], error: type) -> None:
    with pytest.raises(error):
        otlp.read(body, headers)


def test_root_spans_carry_the_caller_as_creator_and_no_span_another() -> None:
    message = export(TRACE_A, attributes={otlp.CREATOR_ATTRIBUTE: "mallory", "keep": "me"})
    child = export(TRACE_A, parent=b"\x01" * 8, attributes={otlp.CREATOR_ATTRIBUTE: "mallory"})
    message.resource_spans[0].scope_spans[0].spans.extend(child.resource_spans[0].scope_spans[0].spans)
    otlp.set_creator(message, "alice@corp.test")
    root, kid = message.resource_spans[0].scope_spans[0].spans
    assert {(a.key, a.value.string_value) for a in root.attributes} == {
        ("keep", "me"), (otlp.CREATOR_ATTRIBUTE, "alice@corp.test")}
    assert list(kid.attributes) == []
    again = otlp.read(otlp.encode(message), PROTO)
    assert again == message

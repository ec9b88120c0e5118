"""Request parameters read exactly as MLflow's server reads them.

MLflow (`handlers._get_request_message`): a GET with a non-empty query string is read from the
query (snake_case names only, a scalar takes the first value); any other request is read from the
JSON body, which may be double-encoded, and whose fields may be spelled snake_case or lowerCamelCase.
The gate reads the same way and is stricter where MLflow is ambiguous: a field given under both
spellings, or a scalar given twice, is refused.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from . import otlp
from .edge import parse_json
from .errors import BadRequest
from .routes import Source

MAX_INT64 = 2**63 - 1           # MLflow's stores keep ids and version numbers in 64-bit integer columns


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class Params:
    """Parameters of one request: `query` pairs, a `body` JSON object, or an OTLP export (`spans`)."""

    def __init__(self, query: list[tuple[str, str]] | None = None, body: dict[str, Any] | None = None,
                 spans: ExportTraceServiceRequest | None = None) -> None:
        self.query = query
        self.body = body
        self.spans = spans

    @property
    def from_query(self) -> bool:
        return self.query is not None

    def values(self, field: str) -> list[str]:
        """Every id a field names (a scalar, a list, or a dotted path with `[]` into the body)."""
        if self.query is not None:
            return [v for k, v in self.query if k == field]
        if self.spans is not None:
            return otlp.trace_ids(self.spans) if field == "trace_ids" else []
        if self.body is None:
            return []
        return [str(v) for v in _walk(self.body, field.split(".")) if v is not None and v != ""]

    def scalar(self, field: str) -> str | None:
        values = self.values(field)
        if len(values) > 1 and self.query is not None:
            raise BadRequest(f"Parameter '{field}' is given {len(values)} times; give it once.")
        return values[0] if values else None


def _walk(node: Any, parts: list[str]) -> list[Any]:
    if not parts:
        return node if isinstance(node, list) else [node]
    part, rest = parts[0], parts[1:]
    many = part.endswith("[]")
    key = part[:-2] if many else part
    if not isinstance(node, dict):
        return []
    value = _field(node, key)
    if value is None:
        return []
    if many:
        if not isinstance(value, list):
            raise BadRequest(f"Field '{key}' must be a list.")
        return [v for item in value for v in _walk(item, rest)]
    return _walk(value, rest)


def _field(obj: dict[str, Any], key: str) -> Any:
    alias = camel(key)
    if alias != key and key in obj and alias in obj:
        raise BadRequest(f"Request specifies both '{key}' and '{alias}'; provide only one of them.")
    return obj[key] if key in obj else obj.get(alias)


def parse_query(query_string: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(query_string.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise BadRequest("The query string is not valid UTF-8.") from exc


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON body as MLflow reads it (empty -> {}, double-encoded string decoded again)."""
    if not body.strip():
        return {}
    data = parse_json(body, "request body")
    if isinstance(data, str):
        data = parse_json(data, "request body")
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    _reject_twins(data)
    return data


def _reject_twins(obj: Any) -> None:
    """Refuse any object, at any depth, that spells one field both snake_case and camelCase
    (`parse_json` has bounded the depth)."""
    if isinstance(obj, dict):
        keys = set(obj)
        for key in keys:
            if "_" in key and camel(key) in keys and camel(key) != key:
                raise BadRequest(f"Request specifies both '{key}' and '{camel(key)}'; provide only one of them.")
        for value in obj.values():
            _reject_twins(value)
    elif isinstance(obj, list):
        for item in obj:
            _reject_twins(item)


def read_params(method: str, source: Source | str, query_string: bytes, body: bytes | None,
                headers: dict[bytes, bytes] | None = None) -> Params:
    source = Source(source)
    if source is Source.NONE:
        return Params(query=[])
    if source is Source.OTLP:
        return Params(spans=otlp.read(body or b"", headers or {}))
    query = parse_query(query_string)
    if source is Source.QUERY or (method == "GET" and query):
        return Params(query=query)
    return Params(body=parse_body(body or b""))


def check_version(params: Params) -> None:
    """A model version number is an integer MLflow's store compares as 64 bits: past that its lookup fails
    with a 500 (sqlite: "Python int too large"), so it is a 400 here. Anything not an integer MLflow refuses."""
    for value in params.values("version"):
        try:
            number = int(value)
        except ValueError:
            continue
        if not -MAX_INT64 - 1 <= number <= MAX_INT64:
            raise BadRequest(f"Parameter 'version' is {value[:40]!r}: a model version number is at most {MAX_INT64}.")


def ids_of(fields: tuple[str, ...], params: Params, path_params: dict[str, str], headers: dict[bytes, bytes],
           *, repeatable: bool = False) -> list[str]:
    """Every id the given fields name, once each: parameters, `path:NAME` URL parameters, `header:NAME`.

    A scalar field given twice in a query is refused (MLflow would read only the first); fields named
    in the plural, or `repeatable` ones, may repeat."""
    out: list[str] = []
    for field in fields:
        if field.startswith("path:"):
            value = path_params.get(field[5:])
            values = [value] if value else []
        elif field.startswith("header:"):
            value_b = headers.get(field[7:].encode())
            values = [value_b.decode("latin-1")] if value_b else []
        else:
            values = params.values(field)
            if params.query is not None and len(values) > 1 and not field.endswith("s") and not repeatable:
                raise BadRequest(f"Parameter '{field}' is given {len(values)} times; give it once.")
        out += [_printable(field, v) for v in values if v not in out]
    return out


def _printable(field: str, value: str) -> str:
    """An id the gate looks up must be text it can send on (no lone surrogates from a JSON escape)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest(f"Parameter '{field.split(':')[-1]}' is not valid UTF-8 text.") from exc
    return value

"""Request parameters read exactly as MLflow's server reads them.

MLflow (`handlers._get_request_message`): a GET with a non-empty query string is read from the
query (snake_case names only, a scalar takes the first value); any other request is read from the
JSON body, which may be double-encoded, and whose fields may be spelled snake_case or lowerCamelCase.
The gate reads the same way and is stricter where MLflow is ambiguous: a field given under both
spellings, or a scalar given twice, is refused.

Ids are typed as MLflow's messages type them (every id field is a string, `..._ids` a list of strings), and checked
before they are resolved: an id of another JSON type gets MLflow's own 400 (`invalid_value`), never a lookup, so
the gate and MLflow never read one value two ways. Missing ids get MLflow's message too (`missing_value`).
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from . import otlp
from .edge import parse_json
from .errors import BadRequest
from .routes import Source

MAX_INT64 = 2**63 - 1           # MLflow's stores keep ids and version numbers in 64-bit integer columns

_API_DOCS = " See the API docs for more information about request parameters."


def schema_refusal(message: str) -> BadRequest:
    """MLflow's answer when a parameter fails the schema its handler checks it against: the message, then a
    pointer to the API docs."""
    return BadRequest(message + _API_DOCS)


def missing_value(field: str) -> BadRequest:
    """MLflow's answer to a required parameter that is absent (or null, or empty)."""
    return schema_refusal(f"Missing value for required parameter '{field}'.")


def invalid_value(field: str, value: Any) -> BadRequest:
    """MLflow's answer to a parameter of the wrong JSON type (`handlers._validate_param_against_schema`),
    spaces included."""
    shown = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return BadRequest(f"Invalid value {shown} for parameter '{field}' supplied:  Hint: Value was of type "
                      f"'{type(value).__name__}'.{_API_DOCS}")


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

    def ids(self, field: str) -> list[str]:
        """The ids a field names, typed as MLflow's messages type them (`_typed`); from a query, as `values`."""
        if self.body is None:
            return self.values(field)
        return [i for value in _walk(self.body, field.split("."), terminal_lists=False) for i in _typed(field, value)]

    def scalar(self, field: str) -> str | None:
        values = self.values(field)
        if len(values) > 1 and self.query is not None:
            raise BadRequest(f"Parameter '{field}' is given {len(values)} times; give it once.")
        return values[0] if values else None


def _walk(node: Any, parts: list[str], *, terminal_lists: bool = True) -> list[Any]:
    """The values at a dotted path (`[]` walks a list); a list at the end is flattened unless told not to."""
    if not parts:
        return node if isinstance(node, list) and terminal_lists else [node]
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
            raise invalid_value(key, value)
        return [v for item in value for v in _walk(item, rest, terminal_lists=terminal_lists)]
    return _walk(value, rest, terminal_lists=terminal_lists)


def _typed(field: str, value: Any) -> list[str]:
    """An id field's JSON value: a string, or for a `..._ids` field a list of strings; null and "" are absent.
    Any other value is refused as MLflow refuses it."""
    if value is None or value == "":
        return []
    if field.endswith("_ids") and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v for v in value if v]
    if not field.endswith("_ids") and isinstance(value, str):
        return [value]
    raise invalid_value(field.replace("[]", ""), value)


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
            values = params.ids(field)
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

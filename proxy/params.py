"""Request parameters read exactly as MLflow's server reads them.

MLflow (`handlers._get_request_message`): a GET with a non-empty query string is read from the
query (snake_case names only, a scalar takes the first value); any other request is read from the
JSON body, which may be double-encoded, and whose fields may be spelled snake_case or lowerCamelCase.
The gate reads the same way and is stricter where MLflow is ambiguous: a field given under both
spellings, or a scalar given twice, is refused.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from .errors import BadRequest
from .routes import Source


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class Params:
    """Parameters of one request: `query` pairs, or a `body` JSON object."""

    def __init__(self, query: list[tuple[str, str]] | None = None, body: dict[str, Any] | None = None) -> None:
        self.query = query
        self.body = body

    @property
    def from_query(self) -> bool:
        return self.query is not None

    def values(self, field: str) -> list[str]:
        """Every id a field names (a scalar, a list, or a dotted path with `[]` into the body)."""
        if self.query is not None:
            return [v for k, v in self.query if k == field]
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
    try:
        data = json.loads(body)
        if isinstance(data, str):
            data = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    _reject_twins(data)
    return data


def _reject_twins(obj: Any, depth: int = 0) -> None:
    """Refuse any object, at any depth, that spells one field both snake_case and camelCase."""
    if depth > 32:
        raise BadRequest("The request body is nested too deeply.")
    if isinstance(obj, dict):
        keys = set(obj)
        for key in keys:
            if "_" in key and camel(key) in keys and camel(key) != key:
                raise BadRequest(f"Request specifies both '{key}' and '{camel(key)}'; provide only one of them.")
        for value in obj.values():
            _reject_twins(value, depth + 1)
    elif isinstance(obj, list):
        for item in obj:
            _reject_twins(item, depth + 1)


def read_params(method: str, source: Source | str, query_string: bytes, body: bytes | None) -> Params:
    source = Source(source)
    if source is Source.NONE:
        return Params(query=[])
    query = parse_query(query_string)
    if source is Source.QUERY or (method == "GET" and query):
        return Params(query=query)
    return Params(body=parse_body(body or b""))


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
        out += [v for v in values if v not in out]
    return out

"""Search results cut to what the caller may read, with pages refilled to `max_results`.

The gate pages through the upstream itself and hands the client its own page token, which
records where in which upstream page the next gate page starts, so tokens keep working and no
readable item is skipped or repeated. Pure functions, one loop over an injected fetcher, and
`search`, which runs that loop against the upstream for one request.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .decide import decide, readable_prefixes
from .errors import BadRequest, UpstreamAnswer
from .forward import Upstream
from .policy import Level
from .routes import Search

if TYPE_CHECKING:
    from .call import Call

_TOKEN_PREFIX = "gate1."


@dataclass(frozen=True)
class SearchKind:
    list_key: str            # the list in the answer
    name_kind: str           # experiment | model (what the policy decides on)
    name_field: str          # the name of each item
    default_max: int
    upstream_max: int


SEARCHES = {
    Search.EXPERIMENTS: SearchKind("experiments", "experiment", "name", 1000, 50_000),
    Search.REGISTERED_MODELS: SearchKind("registered_models", "model", "name", 100, 1000),
    Search.MODEL_VERSIONS: SearchKind("model_versions", "model", "name", 10_000, 200_000),
}
_PUSHED = (Search.EXPERIMENTS, Search.REGISTERED_MODELS)     # searches whose filter can narrow to a prefix


@dataclass(frozen=True)
class Cursor:
    upstream_token: str | None
    offset: int
    page_size: int


def encode_token(cursor: Cursor) -> str:
    raw = json.dumps({"t": cursor.upstream_token, "o": cursor.offset, "n": cursor.page_size}).encode()
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> Cursor:
    if not token.startswith(_TOKEN_PREFIX):
        raise BadRequest("Invalid page_token: pass back the next_page_token the gate returned.")
    try:
        body = token[len(_TOKEN_PREFIX):]
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        cursor = Cursor(data["t"], int(data["o"]), int(data["n"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRequest("Invalid page_token: pass back the next_page_token the gate returned.") from exc
    if cursor.offset < 0 or cursor.page_size <= 0 or not (cursor.upstream_token is None
                                                          or isinstance(cursor.upstream_token, str)):
        raise BadRequest("Invalid page_token: pass back the next_page_token the gate returned.")
    return cursor


def single_prefix_filter(prefixes: list[str] | None, user_filter: str | None) -> str | None:
    """`name LIKE 'prefix%'` (AND the caller's filter) when one prefix covers all the caller may read.

    MLflow's search filters have no OR, so only a single prefix can be pushed down. The answer is
    still filtered item by item; `_` and `%` in a prefix only make the upstream match more.
    """
    if prefixes is None or len(prefixes) != 1 or "'" in prefixes[0] or "\\" in prefixes[0]:
        return None
    clause = f"name LIKE '{prefixes[0]}%'"
    return f"{clause} AND {user_filter}" if user_filter and user_filter.strip() else clause


def parse_max_results(value: str | int | None, kind: SearchKind) -> int:
    if value in (None, ""):
        return kind.default_max
    try:
        n = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"max_results must be an integer, got {value!r}.") from exc
    if n <= 0 or n > kind.upstream_max:
        raise BadRequest(f"max_results must be between 1 and {kind.upstream_max}, got {n}.")
    return n


Fetch = Callable[[str | None, int], Awaitable[dict[str, Any]]]   # (upstream token, page size) -> answer


async def filtered_page(fetch: Fetch, keep: Callable[[dict[str, Any]], bool], kind: SearchKind,
                        max_results: int, page_token: str | None, *, prefiltered: bool = False) -> dict[str, Any]:
    """One gate page: up to `max_results` readable items, and a token for the next.

    Upstream pages are large (most items may be unreadable) unless the upstream already narrowed
    the search to what the caller may read (`prefiltered`), when a page of `max_results` will do.
    """
    if page_token:
        cursor = decode_token(page_token)
    else:
        size = max_results if prefiltered else max(max_results, 1000)
        cursor = Cursor(None, 0, min(kind.upstream_max, size))
    out: list[dict[str, Any]] = []
    next_cursor: Cursor | None = None
    while True:
        answer = await fetch(cursor.upstream_token, cursor.page_size)
        items = answer.get(kind.list_key, [])
        i = cursor.offset
        while i < len(items) and len(out) < max_results:
            if keep(items[i]):
                out.append(items[i])
            i += 1
        upstream_next = answer.get("next_page_token") or None
        if len(out) >= max_results:
            if i < len(items):
                next_cursor = Cursor(cursor.upstream_token, i, cursor.page_size)
            elif upstream_next:
                next_cursor = Cursor(upstream_next, 0, cursor.page_size)
            break
        if not upstream_next:
            break
        cursor = Cursor(upstream_next, 0, cursor.page_size)
    result: dict[str, Any] = {kind.list_key: out} if out else {}
    if next_cursor is not None:
        result["next_page_token"] = encode_token(next_cursor)
    return result


async def search(call: Call, upstream: Upstream) -> dict[str, Any]:
    """One page of the caller's search: only what it may read, refilled to `max_results`."""
    assert call.route.search is not None
    which, params, policy, ident = call.route.search, call.params, call.rules, call.who
    kind = SEARCHES[which]
    max_results = parse_max_results(params.scalar("max_results"), kind)
    pushed = None
    if which in _PUSHED:
        pushed = single_prefix_filter(readable_prefixes(policy, ident, kind.name_kind), params.scalar("filter"))

    async def fetch(token: str | None, size: int) -> dict[str, Any]:
        if params.query is not None:
            query = [(k, v) for k, v in params.query if k not in ("max_results", "page_token")
                     and not (pushed and k == "filter")]
            query += [("max_results", str(size))] + ([("filter", pushed)] if pushed else []) \
                + ([("page_token", token)] if token else [])
            status, data = await upstream.get_json(call.path, query)  # type: ignore[arg-type]
        else:
            body = {k: v for k, v in (params.body or {}).items()
                    if k not in ("max_results", "maxResults", "page_token", "pageToken")}
            body["max_results"] = size
            if pushed:
                body["filter"] = pushed
            if token:
                body["page_token"] = token
            status, data = await upstream.get_json(call.path, body=body, method=call.method)
        if status != 200:
            raise UpstreamAnswer(status, data)
        return data

    def keep(item: dict[str, Any]) -> bool:
        return decide(policy, ident, kind.name_kind, str(item.get(kind.name_field, "")), Level.READ).allowed

    return await filtered_page(fetch, keep, kind, max_results, params.scalar("page_token"),
                               prefiltered=pushed is not None)

"""Pages of a search cut item by item from one upstream search (`scoped_search.py`): the gate's page holds up to
`max_results` kept items, and its token says where the next begins (the upstream's token, an offset into that
upstream page, the page size).

The token carries nothing but the caller's own upstream position: every page is cut again as it is read, so a
token made up by hand shows no more than the search itself. (The searches of `filters.py` merge several
upstream searches and sign their tokens; these read one.)
"""
from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest
from .searches import SearchKind

_TOKEN_PREFIX = "gate1."
_BAD_TOKEN = "Invalid page_token: pass back the next_page_token the gate returned."
Fetch = Callable[[str | None, int], Awaitable[dict[str, Any]]]   # (upstream token, page size) -> answer


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
        raise BadRequest(_BAD_TOKEN)
    try:
        body = token[len(_TOKEN_PREFIX):]
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        cursor = Cursor(data["t"], int(data["o"]), int(data["n"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRequest(_BAD_TOKEN) from exc
    if cursor.offset < 0 or cursor.page_size <= 0 or not (cursor.upstream_token is None
                                                          or isinstance(cursor.upstream_token, str)):
        raise BadRequest(_BAD_TOKEN)
    return cursor


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


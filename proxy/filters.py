"""Search results cut to what the caller may read, with pages refilled to `max_results`.

A search becomes one upstream search per readable prefix (`plan.py`), merged in MLflow's order (`merge.py`), so it
costs what the caller can read, not what the server holds. The caller gets the gate's own page token: signed with
the gate's secret key, bound to the search (filter, order_by, view_type), holding where each prefix's search stands.
A token cannot widen what a caller reads: its positions only apply to the searches the policy gives the caller now,
and every item is decided again before it is returned.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from itsdangerous import BadSignature, URLSafeSerializer

from .decide import decide, readable_prefixes
from .errors import BadRequest, UpstreamAnswer
from .forward import Upstream
from .merge import Merge, ReadAhead, dump_state, lanes_for, load_cursors
from .plan import SCAN, Stream, plan, upstream_filter
from .policy import Level
from .searches import SEARCHES, SearchKind, name_first, sort_key

if TYPE_CHECKING:
    from .call import Call

TOKEN_PREFIX = "gate2."
_SALT = "mlflow-gate.page-token"
_BAD_TOKEN = "Invalid page_token: pass back the next_page_token the gate returned for this same search."
_PAGING = {"max_results", "maxResults", "page_token", "pageToken", "filter"}


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


def fingerprint(call: Call) -> str:
    """What a page token is bound to: the search and everything that changes its answer but the page."""
    assert call.route.search is not None
    params = call.params
    shape = [call.route.search.value, params.scalar("filter"), params.values("order_by"), params.scalar("view_type")]
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:16]


def _valid_state(state: Any) -> bool:
    if not (isinstance(state, dict) and isinstance(state.get("f"), str) and isinstance(state.get("o"), bool)
            and isinstance(state.get("r"), (str, type(None))) and isinstance(state.get("s"), list)):
        return False
    return all(isinstance(c, list) and len(c) == 6 and isinstance(c[0], str) and isinstance(c[1], (str, type(None)))
               and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (c[2], c[4], c[5]))
               and isinstance(c[3], bool) for c in state["s"])


class Searches:
    """The gate's searches: page tokens signed with the secret key, and the items read ahead between pages."""

    def __init__(self, upstream: Upstream, secret_key: str, read_ahead: ReadAhead | None = None) -> None:
        self.upstream = upstream
        self.signer = URLSafeSerializer(secret_key, salt=_SALT)
        self.read_ahead = read_ahead or ReadAhead()

    def token(self, state: dict[str, Any]) -> str:
        return TOKEN_PREFIX + self.signer.dumps(state)

    def state(self, token: str | None, bound_to: str) -> dict[str, Any] | None:
        if not token:
            return None
        try:
            state = self.signer.loads(token[len(TOKEN_PREFIX):]) if token.startswith(TOKEN_PREFIX) else None
        except BadSignature as exc:
            raise BadRequest(_BAD_TOKEN) from exc
        if not _valid_state(state):
            raise BadRequest(_BAD_TOKEN)
        assert isinstance(state, dict)
        if state["f"] != bound_to:
            raise BadRequest("Invalid page_token: it belongs to a search with another filter, order_by or "
                             "view_type; pass the same ones on every page, or start again without a page_token.")
        return state

    async def page(self, call: Call) -> dict[str, Any]:
        """One page of the caller's search: only what it may read, refilled to `max_results`."""
        assert call.route.search is not None
        kind = SEARCHES[call.route.search]
        max_results = parse_max_results(call.params.scalar("max_results"), kind)
        bound_to = fingerprint(call)
        state = self.state(call.params.scalar("page_token"), bound_to)
        order_by = call.params.values("order_by")
        streams = self.streams(call, kind)
        by_name = name_first(kind, order_by) if len(streams) > 1 else None
        if by_name is not None:
            streams.sort(key=lambda s: s.prefix, reverse=not by_name)
        owner = (call.who.id, call.who.groups, bound_to)
        offsets = bool(state and state["o"])
        lanes = lanes_for(streams, load_cursors(state) if state else None,
                          self.read_ahead.take(state["r"], owner) if state else {}, offsets)
        merge = Merge(lanes, lambda s, t, n: self.fetch(call, s, t, n), self.wanted(call, kind),
                      sort_key(kind, order_by) if len(streams) > 1 else None,
                      kind.list_key, kind.upstream_max, max_results, offsets, ranges=by_name is not None)
        items = await merge.page()
        result: dict[str, Any] = {kind.list_key: items} if items else {}
        if await merge.more():
            result["next_page_token"] = self.token(dump_state(merge, bound_to, self.read_ahead.put(owner, merge)))
        return result

    def streams(self, call: Call, kind: SearchKind) -> list[Stream]:
        streams = plan(readable_prefixes(call.rules, call.who, kind.name_kind), call.params.scalar("filter"))
        if len(streams) > 1 and sort_key(kind, call.params.values("order_by")) is None:
            return [SCAN]          # an order the gate cannot merge: MLflow orders (or refuses) one scan
        return streams

    def wanted(self, call: Call, kind: SearchKind) -> Callable[[Stream, dict[str, Any]], bool]:
        policy, ident = call.rules, call.who

        def check(stream: Stream, item: dict[str, Any]) -> bool:
            name = item.get(kind.name_field)
            return (isinstance(name, str) and name.startswith(stream.prefix)
                    and decide(policy, ident, kind.name_kind, name, Level.READ).allowed)
        return check

    async def fetch(self, call: Call, stream: Stream, token: str | None, size: int) -> dict[str, Any]:
        """One upstream page of one stream: the caller's request with the stream's filter, size and token."""
        params, flt = call.params, upstream_filter(stream, call.params.scalar("filter"))
        if params.query is not None:
            query = [(k, v) for k, v in params.query if k not in _PAGING]
            query += [("max_results", str(size))] + ([("filter", flt)] if flt else []) \
                + ([("page_token", token)] if token else [])
            status, data = await self.upstream.get_json(call.path, query)  # type: ignore[arg-type]
        else:
            body = {k: v for k, v in (params.body or {}).items() if k not in _PAGING}
            body["max_results"] = size
            if flt:
                body["filter"] = flt
            if token:
                body["page_token"] = token
            status, data = await self.upstream.get_json(call.path, body=body, method=call.method, reads=True)
        if status != 200:
            raise UpstreamAnswer(status, data)
        return data if isinstance(data, dict) else {}

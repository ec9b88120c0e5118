"""Searches whose items are decided through the experiments they belong to: evaluation datasets, issues and
scorers.

MLflow searches them in every experiment when the request names none. The gate keeps an item when the caller
could read it by its own route (a dataset: read on each of its experiments; an issue: read on its experiment),
so a search shows no more than a lookup would; an item that cannot be resolved is left out. Paging, page
tokens and refilled pages are `scoped_paging.filtered_page`'s; each upstream page's items are resolved (through the
resolver's caches, a few lookups at a time) before the page is cut. The scorer list has no pages: it is cut
as MLflow answers it.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .decide import decide
from .errors import BadRequest, UpstreamAnswer
from .filters import parse_max_results
from .policy import Level
from .resources import Resolver, Unresolvable
from .routes import Names, Search
from .scoped_paging import filtered_page
from .searches import SearchKind

if TYPE_CHECKING:
    from .call import Call


@dataclass(frozen=True)
class Scoped:
    kind: SearchKind       # the answer's list, MLflow's default and largest page
    field: str             # the field of each item that is resolved
    names: Names           # what that field names
    narrowed_by: str       # the request's field that limits the search to experiments (decided by the route)
    paged: bool = True     # MLflow answers in pages (max_results, page_token)


def _kind(list_key: str, default_max: int, upstream_max: int) -> SearchKind:
    """The answer's list and MLflow's default and largest page (no order of the gate's own: MLflow's is kept)."""
    return SearchKind(list_key, "experiment", "name", default_max, upstream_max, {}, (), ())


KINDS = {
    Search.DATASETS: Scoped(_kind("datasets", 1000, 50_000), "dataset_id", Names.DATASET,
                            "experiment_ids"),
    Search.ISSUES: Scoped(_kind("issues", 100, 50_000), "experiment_id", Names.EXPERIMENT,
                          "experiment_id"),
    Search.SCORERS: Scoped(_kind("scorers", 0, 0), "experiment_id", Names.EXPERIMENT,
                           "experiment_id", paged=False),
}
_PAGING = frozenset({"max_results", "maxResults", "page_token", "pageToken"})
_LOOKUPS = 8               # lookups in flight for one page (the upstream's caches do the rest)


async def search(call: Call, resolver: Resolver) -> dict[str, Any]:
    """One page of the caller's search: the items it may read, refilled to `max_results`."""
    assert call.route.search is not None
    scoped = KINDS[call.route.search]
    readable: dict[str, bool] = {}          # the resolved field's value -> whether the caller may read the item
    narrowed = bool(call.params.ids(scoped.narrowed_by))     # to readable experiments: most items are kept

    async def fetch(token: str | None, size: int | None) -> dict[str, Any]:
        data = await _upstream_page(call, resolver, token, size)
        values = {str(item.get(scoped.field) or "") for item in data.get(scoped.kind.list_key) or []}
        gate = asyncio.Semaphore(_LOOKUPS)

        async def one(value: str) -> None:
            async with gate:
                readable[value] = await _may_read(call, resolver, scoped.names, value)
        await asyncio.gather(*(one(v) for v in values - set(readable)))
        return data

    def keep(item: dict[str, Any]) -> bool:
        return readable.get(str(item.get(scoped.field) or ""), False)

    if not scoped.paged:
        kept = [i for i in (await fetch(None, None)).get(scoped.kind.list_key) or [] if keep(i)]
        return {scoped.kind.list_key: kept} if kept else {}
    max_results = parse_max_results(call.params.scalar("max_results"), scoped.kind)
    return await filtered_page(fetch, keep, scoped.kind, max_results, call.params.scalar("page_token"),
                               prefiltered=narrowed)


async def _may_read(call: Call, resolver: Resolver, names: Names, value: str) -> bool:
    """Whether the item the value names is readable: every name it resolves to allows read."""
    if not value:
        return False
    try:
        targets = await resolver.targets(names, value, call.who, Level.READ)
    except (Unresolvable, BadRequest):
        return False
    return bool(targets) and all(decide(call.rules, call.who, t.kind, t.name, t.level).allowed for t in targets)


async def _upstream_page(call: Call, resolver: Resolver, token: str | None, size: int | None) -> dict[str, Any]:
    """The upstream's page of `size` items from `token`, for the caller's own query or body (size None: the
    answer has no pages, the request goes as the client sent it)."""
    params = call.params
    paging: dict[str, Any] = {} if size is None else {"max_results": size, **({"page_token": token} if token else {})}
    if params.query is not None:
        query = [(k, v) for k, v in params.query if k not in _PAGING or size is None]
        query += [(k, str(v)) for k, v in paging.items()]
        status, data = await resolver.upstream.get_json(call.path, query)  # type: ignore[arg-type]
    else:
        body = {k: v for k, v in (params.body or {}).items() if k not in _PAGING or size is None} | paging
        status, data = await resolver.upstream.get_json(call.path, body=body, method=call.method)
    if status != 200:
        raise UpstreamAnswer(status, data)
    return data if isinstance(data, dict) else {}

"""Filtered search pages: refilled to max_results, tokens that neither skip nor repeat."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.errors import BadRequest
from proxy.filters import SEARCHES, decode_token, filtered_page, parse_max_results
from proxy.routes import Search

KIND = SEARCHES[Search.EXPERIMENTS]


class FakeUpstream:
    """An upstream with `items`, paged like MLflow (its own opaque tokens)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.calls = 0

    async def fetch(self, token: str | None, size: int) -> dict[str, Any]:
        self.calls += 1
        start = int(token or 0)
        page = self.items[start:start + size]
        out: dict[str, Any] = {"experiments": page}
        if start + size < len(self.items):
            out["next_page_token"] = str(start + size)
        return out


def readable(item: dict[str, Any]) -> bool:
    return item["name"].startswith("mine/")


def pages(up: FakeUpstream, max_results: int) -> list[list[str]]:
    out, token = [], None
    for _ in range(1000):
        page = asyncio.run(filtered_page(up.fetch, readable, KIND, max_results, token))
        out.append([e["name"] for e in page.get("experiments", [])])
        token = page.get("next_page_token")
        if not token:
            return out
    raise AssertionError("paging did not end")


@pytest.mark.parametrize(("total", "every", "max_results"), [(2000, 20, 100), (2000, 20, 7), (50, 3, 5), (3, 1, 10),
                                                             (0, 1, 10), (2500, 2, 1000)])
def test_pages_fill_up_and_cover_everything_once(total: int, every: int, max_results: int) -> None:
    items = [{"name": f"{'mine' if i % every == 0 else 'theirs'}/{i:05d}"} for i in range(total)]
    up = FakeUpstream(items)
    got = pages(up, max_results)
    flat = [n for page in got for n in page]
    assert flat == [i["name"] for i in items if readable(i)]
    assert all(len(p) == max_results for p in got[:-1])


def test_one_team_of_twenty_costs_at_most_three_upstream_calls_per_page() -> None:
    items = [{"name": f"{'mine' if i % 20 == 0 else 'theirs'}/{i:05d}"} for i in range(2000)]
    up = FakeUpstream(items)
    page = asyncio.run(filtered_page(up.fetch, readable, KIND, 100, None))
    assert len(page["experiments"]) == 100
    assert up.calls <= 3


@pytest.mark.parametrize("token", ["abc", "gate1.!!!", "gate1.e30", "gate1." + "eyJ0IjpudWxsLCJvIjotMSwibiI6MTB9"])
def test_foreign_or_forged_tokens_are_refused(token: str) -> None:
    with pytest.raises(BadRequest):
        decode_token(token)


@pytest.mark.parametrize(("value", "expected"), [(None, 1000), ("", 1000), ("5", 5), (7, 7)])
def test_max_results(value: Any, expected: int) -> None:
    assert parse_max_results(value, KIND) == expected


@pytest.mark.parametrize("value", ["0", "-1", "x", "50001"])
def test_bad_max_results(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_max_results(value, KIND)


@pytest.mark.parametrize(("prefixes", "user_filter", "expected"), [
    (["t00/"], None, "name LIKE 't00/%'"),
    (["t00/"], "tags.a = 'b'", "name LIKE 't00/%' AND tags.a = 'b'"),
    (["a/", "b/"], None, None),
    (None, None, None),
    ([], None, None),
    (["o'brien/"], None, None),
])
def test_single_prefix_push_down(prefixes: list[str] | None, user_filter: str | None, expected: str | None) -> None:
    from proxy.filters import single_prefix_filter

    assert single_prefix_filter(prefixes, user_filter) == expected


def test_prefiltered_search_asks_for_pages_of_max_results() -> None:
    items = [{"name": f"mine/{i:04d}"} for i in range(30)]
    up = FakeUpstream(items)
    sizes: list[int] = []

    async def fetch(token: str | None, size: int) -> dict[str, Any]:
        sizes.append(size)
        return await up.fetch(token, size)

    page = asyncio.run(filtered_page(fetch, readable, KIND, 10, None, prefiltered=True))
    assert len(page["experiments"]) == 10 and sizes == [10]

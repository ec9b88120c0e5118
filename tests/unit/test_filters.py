"""Filtered searches against a fake MLflow: exact merged listings, full pages, calls per page, page tokens."""
from __future__ import annotations

import asyncio
import base64
import functools
import json
import random
import re
from typing import Any

import pytest

from proxy.call import Call
from proxy.errors import BadRequest
from proxy.filters import Searches, parse_max_results
from proxy.identity import Identity
from proxy.merge import ReadAhead
from proxy.params import Params
from proxy.policy import load_policy_text
from proxy.routes import RouteTable, Search
from proxy.searches import SEARCHES

PATH = "/api/2.0/mlflow/experiments/search"
POLICY = """
default: none
teams:
  alpha: {members: [alice@corp.test], experiments: ["alpha/"], models: ["alpha-"]}
  beta: {members: [bob@corp.test], experiments: ["beta/"], models: ["beta-"]}
  gamma: {members: [gina@corp.test], experiments: ["gamma/"]}
grants:
  - {to: [alice@corp.test], experiments: ["shared/", "users/{user}/", "beta/public/", "alpha/sub/"], permission: read}
"""


class FakeMlflow:
    """Experiments paged, filtered and ordered as MLflow's SQL store does it (SQLite's case-insensitive LIKE),
    with offset page tokens, or opaque ones."""

    def __init__(self, names: list[str], *, opaque: bool = False, seed: int = 0) -> None:
        rnd = random.Random(seed)
        self.items = [{"experiment_id": str(i + 1), "name": n, "creation_time": rnd.randrange(5),
                       "last_update_time": rnd.randrange(1000)} for i, n in enumerate(names)]
        self.opaque, self.calls, self.sizes, self.tokens = opaque, 0, [], {}  # type: ignore[var-annotated]

    async def get_json(self, path: str, params: Any = None, body: dict[str, Any] | None = None,
                       method: str = "GET", **_: Any) -> tuple[int, Any]:
        self.calls += 1
        assert body is not None
        size, token = body["max_results"], body.get("page_token")
        self.sizes.append(size)
        start = self.tokens[token] if self.opaque and token else (
            json.loads(base64.b64decode(token))["offset"] if token else 0)
        found = self.found(body.get("filter"), tuple(body.get("order_by") or ()))
        out: dict[str, Any] = {"experiments": found[start:start + size]}
        if start + size < len(found):
            out["next_page_token"] = self.token(start + size)
        return 200, out

    @functools.lru_cache(maxsize=64)  # noqa: B019 - the fake lives for one test
    def found(self, flt: str | None, order_by: tuple[str, ...]) -> list[dict[str, Any]]:
        return sorted((i for i in self.items if matches(i["name"], flt)),
                      key=functools.cmp_to_key(lambda a, b: compare(a, b, list(order_by))))

    def token(self, offset: int) -> str:
        if not self.opaque:
            return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()
        key = f"opaque-{len(self.tokens)}"
        self.tokens[key] = offset
        return key


def like(name: str, pattern: str) -> bool:
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.IGNORECASE | re.ASCII | re.DOTALL) is not None


def matches(name: str, flt: str | None) -> bool:
    for op, value in re.findall(r"name (LIKE|=) ('[^']*'|\"[^\"]*\")", flt or ""):
        if not (like(name, value[1:-1]) if op == "LIKE" else name == value[1:-1]):
            return False
    return True


def compare(a: dict[str, Any], b: dict[str, Any], order_by: list[str]) -> int:
    clauses = [c.split() for c in (order_by or ["creation_time DESC", "experiment_id ASC"])]
    if not any(c[0] == "experiment_id" for c in clauses):
        clauses.append(["experiment_id", "DESC"])
    for clause in clauses:
        field, desc = clause[0], len(clause) > 1 and clause[1].upper() == "DESC"
        x, y = a[field], b[field]
        if field == "experiment_id":
            x, y = int(x), int(y)
        if x != y:
            return (1 if x > y else -1) * (-1 if desc else 1)
    return 0


ROUTE, _ = RouteTable().lookup("POST", PATH)


def make_call(user: str, body: dict[str, Any], policy: Any) -> Call:
    call = Call({"method": "POST", "path": PATH}, None, None)  # type: ignore[arg-type]
    call.route = ROUTE
    call.params, call.policy, call.ident = Params(body=body), policy, Identity(user)
    return call


def listing(searches: Searches, user: str, size: int, policy: Any, **extra: Any) -> list[list[str]]:
    pages, token = [], None
    for _ in range(10_000):
        body = {"max_results": size, **extra} | ({"page_token": token} if token else {})
        page = asyncio.run(searches.page(make_call(user, body, policy)))
        pages.append([e["name"] for e in page.get("experiments", [])])
        token = page.get("next_page_token")
        if not token:
            return pages
    raise AssertionError("page tokens never end")


def admin_view(up: FakeMlflow, order_by: list[str] | None = None, flt: str | None = None) -> list[str]:
    found = [i for i in up.items if matches(i["name"], flt)]
    return [i["name"] for i in sorted(found, key=functools.cmp_to_key(lambda a, b: compare(a, b, order_by or [])))]


def readable_by_alice(name: str) -> bool:
    return name.startswith(("alpha/", "shared/", "users/alice@corp.test/", "beta/public/"))


NAMES = [f"{p}{i:03d}" for i in range(40) for p in ("alpha/", "beta/", "beta/public/", "shared/", "gamma/",
                                                     "users/alice@corp.test/", "users/bob@corp.test/", "ALPHA/",
                                                     "alpha/sub/", "alphabet/", "sharedx/")]


@pytest.mark.parametrize("opaque", [False, True])
@pytest.mark.parametrize("order_by", [None, ["name ASC"], ["name DESC"], ["last_update_time DESC"],
                                      ["creation_time ASC", "name DESC"], ["experiment_id DESC"]])
@pytest.mark.parametrize("size", [2, 7, 100, 1000])
def test_merged_listing_is_the_admins_cut_to_readable_names(opaque: bool, order_by: list[str] | None,
                                                           size: int) -> None:
    policy, up = load_policy_text(POLICY), FakeMlflow(NAMES, opaque=opaque, seed=size)
    searches = Searches(up, "k" * 32)  # type: ignore[arg-type]
    pages = listing(searches, "alice@corp.test", size, policy, **({"order_by": order_by} if order_by else {}))
    flat = [n for p in pages for n in p]
    assert flat == [n for n in admin_view(up, order_by) if readable_by_alice(n)]
    assert all(len(p) == size for p in pages[:-1]) and pages[-1]


def test_random_prefixes_orders_and_page_sizes() -> None:
    rnd = random.Random(7)
    for round_ in range(60):
        heads = ["a/", "a/b/", "ab/", "a_b/", "a%/", "o'b/", "q\"r/", "x\\y/", "A/", "b-", "b-c-", "c"]
        names = [f"{rnd.choice(heads)}{rnd.choice(['', 'b/', 'x', '%', '_'])}{i}" for i in range(rnd.randrange(300))]
        readable = rnd.sample(heads, rnd.randrange(1, 6))
        grants = ", ".join(json.dumps(p) for p in readable)
        policy = load_policy_text(f'default: none\ngrants:\n  - {{to: [u@corp.test], experiments: [{grants}], '
                                  'permission: read}\n')
        up = FakeMlflow(names, opaque=round_ % 3 == 0, seed=round_)
        order = rnd.choice([None, ["name ASC"], ["last_update_time DESC"], ["creation_time ASC", "name DESC"]])
        size = rnd.choice([1, 2, 5, 17, 50, 1000])
        pages = listing(Searches(up, "k" * 32), "u@corp.test", size, policy,  # type: ignore[arg-type]
                        **({"order_by": order} if order else {}))
        flat = [n for p in pages for n in p]
        assert flat == [n for n in admin_view(up, order) if n.startswith(tuple(readable))], (readable, order, size)
        assert all(len(p) == size for p in pages[:-1])


def test_calls_per_page_stay_within_the_readable_prefixes() -> None:
    names = [f"{p}{i:04d}" for i in range(300) for p in ("alpha/", "shared/", "users/alice@corp.test/", "beta/",
                                                         "gamma/")]
    policy, up = load_policy_text(POLICY), FakeMlflow(names)
    searches = Searches(up, "k" * 32)  # type: ignore[arg-type]
    asyncio.run(searches.page(make_call("alice@corp.test", {"max_results": 100}, policy)))
    assert up.calls <= 4 and sum(up.sizes) <= 250        # 4 prefixes (beta/public/ holds nothing), ~1.5 pages
    up.calls, up.sizes = 0, []
    pages = listing(searches, "alice@corp.test", 100, policy)
    assert sum(len(p) for p in pages) == 900
    assert up.calls <= len(pages) * 4 and sum(up.sizes) <= 1.5 * 900, (up.calls, sum(up.sizes), len(pages))


def test_a_long_listing_costs_about_the_direct_per_prefix_listings() -> None:
    names = [f"{p}{i:04d}" for i in range(2000) for p in ("alpha/", "shared/", "users/alice@corp.test/")]
    policy, up = load_policy_text(POLICY), FakeMlflow(names)
    pages = listing(Searches(up, "k" * 32), "alice@corp.test", 100, policy)  # type: ignore[arg-type]
    assert len(pages) == 60
    direct = 3 * 20                                   # each prefix listed alone in pages of 100
    assert up.calls <= 1.5 * direct and sum(up.sizes) <= 1.2 * 6000, (up.calls, sum(up.sizes))


def test_without_read_ahead_the_tokens_still_resume_exactly() -> None:
    policy, up = load_policy_text(POLICY), FakeMlflow(NAMES, opaque=True)
    searches = Searches(up, "k" * 32, ReadAhead(items=0))  # type: ignore[arg-type]
    flat = [n for p in listing(searches, "alice@corp.test", 9, policy) for n in p]
    assert flat == [n for n in admin_view(up) if readable_by_alice(n)]


def test_one_prefix_costs_one_call_of_the_page_size() -> None:
    policy, up = load_policy_text(POLICY), FakeMlflow(NAMES)
    page = asyncio.run(Searches(up, "k" * 32).page(  # type: ignore[arg-type]
        make_call("gina@corp.test", {"max_results": 10}, policy)))
    assert [e["name"] for e in page["experiments"]] == [n for n in admin_view(up) if n.startswith("gamma/")][:10]
    assert up.calls == 1 and up.sizes == [11]                       # MLflow itself reads one more


def test_a_caller_filter_naming_a_prefix_skips_the_others() -> None:
    policy, up = load_policy_text(POLICY), FakeMlflow(NAMES)
    flt = "name LIKE 'shared/%'"
    pages = listing(Searches(up, "k" * 32), "alice@corp.test", 1000, policy, filter=flt)  # type: ignore[arg-type]
    assert pages[0] == [n for n in admin_view(up, flt=flt) if readable_by_alice(n)] and up.calls == 1


def test_nothing_readable_costs_no_call() -> None:
    policy, up = load_policy_text(POLICY), FakeMlflow(NAMES)
    page = asyncio.run(Searches(up, "k" * 32).page(  # type: ignore[arg-type]
        make_call("nobody@corp.test", {"max_results": 10}, policy)))
    assert page == {} and up.calls == 0


def test_default_read_scans_and_cuts_item_by_item() -> None:
    policy = load_policy_text(POLICY.replace("default: none", "default: read"))
    up = FakeMlflow(NAMES)
    flat = [n for p in listing(Searches(up, "k" * 32), "bob@corp.test", 50, policy) for n in p]  # type: ignore[arg-type]
    assert flat == [n for n in admin_view(up) if not n.startswith(("alpha/", "gamma/"))]


def page_token(searches: Searches, user: str, policy: Any, **extra: Any) -> str:
    page = asyncio.run(searches.page(make_call(user, {"max_results": 3, **extra}, policy)))
    return str(page["next_page_token"])


@pytest.mark.parametrize("mangle", [lambda t: "abc", lambda t: "gate1.e30", lambda t: t[:-3] + "AAA",
                                    lambda t: t.replace("gate2.", "gate2.x")])
def test_foreign_or_forged_tokens_are_refused(mangle: Any) -> None:
    policy, up = load_policy_text(POLICY), FakeMlflow(NAMES)
    searches = Searches(up, "k" * 32)  # type: ignore[arg-type]
    token = mangle(page_token(searches, "alice@corp.test", policy))
    with pytest.raises(BadRequest):
        asyncio.run(searches.page(make_call("alice@corp.test", {"max_results": 3, "page_token": token}, policy)))


def test_a_token_belongs_to_its_search() -> None:
    policy, up = load_policy_text(POLICY), FakeMlflow(NAMES)
    searches = Searches(up, "k" * 32)  # type: ignore[arg-type]
    token = page_token(searches, "alice@corp.test", policy, order_by=["name ASC"])
    with pytest.raises(BadRequest, match="another filter"):
        asyncio.run(searches.page(make_call("alice@corp.test", {"max_results": 3, "page_token": token}, policy)))


def test_a_signed_cursor_for_a_prefix_not_readable_reads_nothing_of_it() -> None:
    policy, up = load_policy_text(POLICY), FakeMlflow(NAMES)
    searches = Searches(up, "k" * 32)  # type: ignore[arg-type]
    token = page_token(searches, "bob@corp.test", policy)            # bob's token: a cursor on beta/
    state = searches.signer.loads(token[len("gate2."):])
    stolen = searches.token(state)
    page = asyncio.run(searches.page(make_call("alice@corp.test", {"max_results": 50, "page_token": stolen}, policy)))
    assert all(readable_by_alice(e["name"]) for e in page.get("experiments", []))
    assert not any(e["name"].startswith("beta/") and not e["name"].startswith("beta/public/")
                   for e in page.get("experiments", []))


@pytest.mark.parametrize(("value", "expected"), [(None, 1000), ("", 1000), ("5", 5), (7, 7), ("50000", 50000)])
def test_max_results(value: Any, expected: int) -> None:
    assert parse_max_results(value, SEARCHES[Search.EXPERIMENTS]) == expected


@pytest.mark.parametrize("value", ["0", "-1", "x", "50001"])
def test_bad_max_results(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_max_results(value, SEARCHES[Search.EXPERIMENTS])


def test_read_ahead_is_single_use_bound_to_its_owner_and_bounded() -> None:
    from collections import deque

    from proxy.merge import Cursor, Lane, Merge
    from proxy.plan import Stream

    def merge_with(n: int) -> Merge:
        lane = Lane(Stream("a/", "name LIKE 'a/%'"), Cursor(), deque({"name": f"a/{i}"} for i in range(n)))
        return Merge([lane], None, None, None, "experiments", 1000, 10)  # type: ignore[arg-type]

    store = ReadAhead(items=10, ttl=30.0)
    nonce = store.put(("alice", frozenset()), merge_with(4))
    assert store.take(nonce, ("bob", frozenset())) == {}                   # another caller: nothing, and it is gone
    assert store.take(nonce, ("alice", frozenset())) == {}
    nonce = store.put(("alice", frozenset()), merge_with(4))
    assert len(store.take(nonce, ("alice", frozenset()))["a/"][1]) == 4
    assert store.take(nonce, ("alice", frozenset())) == {}                 # used once
    assert store.put(("alice", frozenset()), merge_with(11)) is None       # larger than the whole store
    first = store.put(("alice", frozenset()), merge_with(6))
    second = store.put(("alice", frozenset()), merge_with(6))
    assert store.take(first, ("alice", frozenset())) == {} and store.count == 6   # the oldest made room
    assert store.take(second, ("alice", frozenset()))
    expired = ReadAhead(ttl=-1.0)
    assert expired.take(expired.put(("a",), merge_with(2)), ("a",)) == {}


@pytest.mark.parametrize(("user", "names", "default"), [
    ("gina@corp.test", ["gamma/1", "gamma/2", "GAMMA/3"], "none"),      # SQLite's LIKE 'gamma/%' finds GAMMA/ too
    ("gina@corp.test", ["gamma/1", "gamma/2"], "none"),                 # the readable items end on the boundary
    ("bob@corp.test", ["b/1", "b/2", "gamma/3", "gamma/4"], "read"),     # a scan: only another team's items follow
])
def test_a_full_page_carries_a_token_only_when_a_readable_item_follows(user: str, names: list[str],
                                                                       default: str) -> None:
    policy = load_policy_text(POLICY.replace("default: none", f"default: {default}"))
    up = FakeMlflow(names)
    page = asyncio.run(Searches(up, "k" * 32).page(  # type: ignore[arg-type]
        make_call(user, {"max_results": 2, "order_by": ["name DESC" if default == "none" else "name ASC"]}, policy)))
    assert [e["name"] for e in page["experiments"]] == sorted(names[:2], reverse=default == "none")
    assert "next_page_token" not in page, page


def test_a_first_page_of_ten_interleaved_prefixes_asks_each_once() -> None:
    """Each of 10 streams is asked for its share with room for chance, so none runs dry before the page is full
    (at 1.5 times the share, 16 of 100, 7 of these 40 first pages asked one stream twice)."""
    heads = [f"p{i}/" for i in range(10)]
    grants = ", ".join(json.dumps(h) for h in heads)
    policy = load_policy_text(f"default: none\ngrants:\n  - {{to: [u@corp.test], experiments: [{grants}], "
                              "permission: read}\n")
    over = 0
    for seed in range(40):
        names = [f"{h}{i:03d}" for h in heads for i in range(60)]
        random.Random(seed).shuffle(names)
        up = FakeMlflow(names, seed=seed)
        page = asyncio.run(Searches(up, "k" * 32).page(  # type: ignore[arg-type]
            make_call("u@corp.test", {"max_results": 100}, policy)))
        assert [e["name"] for e in page["experiments"]] == admin_view(up)[:100]
        over += up.calls > 10
    assert over <= 1, f"{over} of 40 first pages asked a stream twice"

"""One gate page merged from several upstream searches, where each of them stands, and what was read ahead.

Each stream (`plan.Stream`) is read in MLflow's order through MLflow's own page tokens. A page takes the smallest
head of all streams until it holds `max_results` items the caller may read, so the merged listing is the admin's
listing cut to readable names, in order. Where a stream stands is a `Position`: the upstream token of the page its
next item is in, and how many items of that page are consumed. MLflow's SQL and file stores page by offset
(`{"offset": n}`, base64); once the upstream's tokens are seen to be offsets, positions are written as offsets, so
resuming costs nothing; otherwise the page is fetched again and the consumed items skipped.

Upstream page sizes follow what each stream gave so far: a fresh search asks each of k streams for its share of the
page with room for chance (`share_of`: 1.5 times the share, or three standard deviations over it when that is more,
as for 10 streams: 20 items each for a page of 100, so one stream rarely runs dry and is asked twice); a stream
asked again in the same search asks for twice as much as the last time, up to the caller's page size, so a long
listing costs about the upstream pages a direct listing of each prefix would. Items fetched beyond a page are kept
for a short while (`ReadAhead`), bound to the caller and the search, so the next page usually needs no upstream call
at all; when they are gone (another replica, expired), the positions in the page token still resume
exactly. Every item is checked again (`wanted`) when it is handed out.
"""
from __future__ import annotations

import asyncio
import base64
import heapq
import json
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .plan import Stream
from .searches import SortKey

Item = dict[str, Any]
Fetch = Callable[[Stream, str | None, int], Awaitable[dict[str, Any]]]   # (stream, upstream token, size) -> answer
SCAN_PAGE = 1000          # upstream page size of a scan: most items may be unreadable


def share_of(need: int, share: float) -> int:
    """The items to ask a stream for when it gave `share` of the items so far (or each of the streams gets an equal
    share): the larger of 1.5 times its share and its share plus three standard deviations of a binomial draw."""
    mean = share * need
    return math.ceil(max(1.5 * mean, mean + 3 * math.sqrt(need * share * (1 - share))))


@dataclass(frozen=True)
class Position:
    token: str | None = None     # the upstream page token of the page the next item is in (None: the first page)
    skip: int = 0                # items of that page already consumed
    end: bool = False            # nothing is left


END = Position(end=True)


def upstream_offset(token: str | None) -> int | None:
    """The offset in one of MLflow's page tokens, None when the token is something else."""
    if token is None:
        return 0
    try:
        data = json.loads(base64.b64decode(token, validate=True))
        offset = data["offset"] if isinstance(data, dict) and len(data) == 1 else None
    except (ValueError, KeyError):
        return None
    return offset if isinstance(offset, int) and not isinstance(offset, bool) and offset > 0 else None


def offset_token(offset: int) -> str | None:
    return base64.b64encode(json.dumps({"offset": offset}).encode()).decode() if offset else None


def canonical(pos: Position, offsets: bool) -> Position:
    """The same position with nothing to skip, when the upstream's tokens are offsets."""
    if pos.end or not offsets or pos.skip == 0:
        return pos
    start = upstream_offset(pos.token)
    return pos if start is None else Position(offset_token(start + pos.skip))


@dataclass
class Cursor:
    """What a page token keeps of one stream."""
    pos: Position = Position()
    size: int = 0                # the last upstream page size asked of it (0: never asked)
    taken: int = 0               # items it gave the caller so far


@dataclass
class Lane:
    """One stream during one page: its cursor, the items fetched and not yet consumed, and what follows them."""
    stream: Stream
    cursor: Cursor
    window: deque[Item] = field(default_factory=deque)
    after: Position = END
    asked: bool = False          # asked upstream during this request
    primed: bool = False         # the window was read ahead by the previous page

    def pop(self) -> Item:
        item = self.window.popleft()
        pos = self.cursor.pos
        self.cursor.pos = Position(pos.token, pos.skip + 1) if self.window else self.after
        return item


@dataclass
class Merge:
    """One gate page over `lanes`: the upstream fetcher, the check every item passes, the order, the limits."""
    lanes: list[Lane]
    fetch: Fetch
    wanted: Callable[[Stream, Item], bool]
    key: SortKey | None           # None only with a single lane
    list_key: str
    upstream_max: int
    page_size: int
    offsets: bool = False         # the upstream's page tokens were seen to be offsets
    ranges: bool = False          # the lanes are in the order of their names (the order starts with the name)

    async def page(self) -> list[Item]:
        return await (self.concatenated() if self.ranges else self.merged())

    async def concatenated(self) -> list[Item]:
        """Lane after lane: each asked only when the page reaches it, for what the page still needs."""
        out: list[Item] = []
        for lane in self.lanes:
            while len(out) < self.page_size:
                await self.settle(lane, self.page_size - len(out))
                if not lane.window:
                    break
                out.append(lane.pop())
                lane.cursor.taken += 1
        return out

    async def merged(self) -> list[Item]:
        """The smallest head of all lanes, item after item; the lanes are fetched together."""
        out: list[Item] = []
        await asyncio.gather(*(self.settle(lane, self.page_size) for lane in self.lanes))
        heap = [(self.head_key(lane), i) for i, lane in enumerate(self.lanes) if lane.window]
        heapq.heapify(heap)
        while heap and len(out) < self.page_size:
            _, i = heapq.heappop(heap)
            lane = self.lanes[i]
            out.append(lane.pop())
            lane.cursor.taken += 1
            if len(out) < self.page_size:
                await self.settle(lane, self.page_size - len(out))
                if lane.window:
                    heapq.heappush(heap, (self.head_key(lane), i))
        return out

    def head_key(self, lane: Lane) -> tuple[Any, ...]:
        return self.key(lane.window[0]) if self.key is not None else ()

    async def settle(self, lane: Lane, need: int) -> None:
        """Drop heads the caller may not read; fetch while the window is empty and the stream goes on."""
        while True:
            while lane.window and not self.wanted(lane.stream, lane.window[0]):
                lane.pop()
            if lane.window or lane.cursor.pos.end:
                return
            await self.fill(lane, self.size_for(lane, need))

    def size_for(self, lane: Lane, need: int) -> int:
        if not lane.stream.dense:
            return min(self.upstream_max, max(need, SCAN_PAGE))
        if self.ranges and not (lane.asked or lane.primed):
            size = need + 1
        elif lane.asked or lane.primed:
            size = max(2 * lane.cursor.size, 1)          # asked again: the stream is worth a bigger page
        else:
            taken = sum(other.cursor.taken for other in self.lanes)
            live = sum(1 for other in self.lanes if not other.cursor.pos.end or other.window)
            share = lane.cursor.taken / taken if taken else 1 / max(live, 1)
            size = share_of(need, share) + 1
        return max(1, min(size, self.page_size + 1, self.upstream_max))   # one more: is there a next page?

    async def fill(self, lane: Lane, size: int) -> None:
        pos = lane.cursor.pos
        ask = min(self.upstream_max, pos.skip + size)
        answer = await self.fetch(lane.stream, pos.token, ask)
        items = answer.get(self.list_key) or []
        following = answer.get("next_page_token") or None
        start = upstream_offset(pos.token)
        if following and start is not None and upstream_offset(following) == start + ask:
            self.offsets = True
        lane.window = deque(items[pos.skip:])
        lane.after = Position(following) if following else END
        lane.cursor.size, lane.asked = size, True
        if not lane.window:
            lane.cursor.pos = lane.after

    async def more(self) -> bool:
        """Whether a next page holds anything: a stream whose window ran out with the page is read ahead (the
        next page would fetch it anyway), so no page token leads to an empty page."""
        if self.ranges:
            for lane in self.lanes:
                await self.settle(lane, self.page_size)
                if lane.window:
                    return True
            return False
        await asyncio.gather(*(self.settle(lane, self.page_size) for lane in self.lanes))
        return any(lane.window for lane in self.lanes)


# --- the page token's payload (signed by filters.py) -------------------------------------------------------------


def dump_state(merge: Merge, fingerprint: str, read_ahead: str | None) -> dict[str, Any]:
    cursors = []
    for lane in merge.lanes:
        pos = canonical(lane.cursor.pos, merge.offsets)
        cursors.append([lane.stream.prefix, pos.token, pos.skip, pos.end, lane.cursor.size, lane.cursor.taken])
    return {"f": fingerprint, "o": merge.offsets, "r": read_ahead, "s": cursors}


def load_cursors(state: dict[str, Any]) -> dict[str, Cursor]:
    """prefix -> cursor, from a payload `dump_state` wrote (the signature is checked already)."""
    out = {}
    for prefix, token, skip, end, size, taken in state["s"]:
        out[prefix] = Cursor(Position(token, skip, end), size, taken)
    return out


# --- items read ahead -----------------------------------------------------------------------------------------


@dataclass
class Saved:
    owner: tuple[Any, ...]
    windows: dict[str, tuple[Position, list[Item], Position]]     # prefix -> (position, items, after)
    count: int
    expires: float


class ReadAhead:
    """Items fetched beyond a page, kept for the next page of the same caller's same search (at most `items` in
    all, each entry for `ttl` seconds, used once)."""

    def __init__(self, items: int = 50_000, ttl: float = 30.0, per_entry: int = 20_000) -> None:
        self.items, self.ttl, self.per_entry = items, ttl, per_entry
        self.entries: OrderedDict[str, Saved] = OrderedDict()
        self.count = 0

    def put(self, owner: tuple[Any, ...], merge: Merge) -> str | None:
        windows = {lane.stream.prefix: (canonical(lane.cursor.pos, merge.offsets), list(lane.window),
                                        canonical(lane.after, merge.offsets))
                   for lane in merge.lanes if lane.window}
        count = sum(len(w[1]) for w in windows.values())
        if not count or count > min(self.per_entry, self.items):
            return None
        now = time.monotonic()
        nonce = secrets.token_urlsafe(12)
        self.entries[nonce] = Saved(owner, windows, count, now + self.ttl)
        self.count += count
        while self.entries and (self.count > self.items or next(iter(self.entries.values())).expires < now):
            self.count -= self.entries.popitem(last=False)[1].count      # the oldest first: full or expired
        return nonce

    def take(self, nonce: str | None, owner: tuple[Any, ...]) -> dict[str, tuple[Position, list[Item], Position]]:
        saved = self.entries.pop(nonce, None) if nonce else None
        if saved is None:
            return {}
        self.count -= saved.count
        if saved.owner != owner or saved.expires < time.monotonic():
            return {}
        return saved.windows


def lanes_for(streams: list[Stream], cursors: dict[str, Cursor] | None,
              saved: dict[str, tuple[Position, list[Item], Position]], offsets: bool) -> list[Lane]:
    """The lanes of a page: fresh for a first page; from the token's cursors (and what was read ahead) after.
    A stream the token does not know (the caller's access grew while paging) is left out until the next search."""
    lanes = []
    for stream in streams:
        if cursors is None:
            lanes.append(Lane(stream, Cursor()))
            continue
        cursor = cursors.get(stream.prefix, Cursor(END))
        lane = Lane(stream, cursor)
        kept = saved.get(stream.prefix)
        if kept is not None and kept[0] == canonical(cursor.pos, offsets) and kept[1]:
            lane.window, lane.after, lane.primed = deque(kept[1]), kept[2], True
        lanes.append(lane)
    return lanes

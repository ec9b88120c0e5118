"""The UI's static files, compressed once per upstream ETag and kept in memory (bounded, least recently used out).

MLflow names its bundles by content hash and serves them with an ETag (mtime, size and a checksum of the name), so a
file's ETag changes with every upstream MLflow version: the cache is keyed by path, ETag and coding, and an upgrade
simply misses. The first answer for a file is coded fast as it streams (compression.py); the copy kept is made
meanwhile in a worker thread (the coders release the GIL), once per key even when several browsers ask at once.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from . import codings

Headers = list[tuple[bytes, bytes]]

MAX_BYTES = 64 * 1024 * 1024       # all entries together (MLflow 3.17's whole UI is 27 MB uncoded, about 7 MB as br)
MAX_FILE = 16 * 1024 * 1024        # larger answers are coded as they stream instead


@dataclass(frozen=True)
class Entry:
    body: bytes          # the coded file
    headers: Headers     # MLflow's headers for it, with the coding's Content-Encoding, Content-Length and ETag


class StaticCache:
    def __init__(self, max_bytes: int = MAX_BYTES, max_file: int = MAX_FILE) -> None:
        self.max_bytes = max_bytes
        self.max_file = max_file
        self.size = 0
        self.entries: OrderedDict[tuple[str, bytes, str], Entry] = OrderedDict()
        self.tags: dict[tuple[str, str], bytes] = {}       # (path, coding) -> the ETag last cached
        self.pending: dict[tuple[str, bytes, str], asyncio.Task[Entry]] = {}
        self.compressions = 0

    def fits(self, length: int) -> bool:
        return length <= self.max_file

    def etag_for(self, path: str, coding: str) -> bytes | None:
        tag = self.tags.get((path, coding))
        return tag if tag is not None and (path, tag, coding) in self.entries else None

    def get(self, path: str, tag: bytes, coding: str) -> Entry | None:
        entry = self.entries.get((path, tag, coding))
        if entry is not None:
            self.entries.move_to_end((path, tag, coding))
        return entry

    def prepare(self, path: str, tag: bytes, coding: str, body: bytes, headers_for: Callable[[int], Headers]) -> None:
        """Start making the entry for this file and coding in the background, unless it exists or is being made.
        `headers_for(coded_length)` gives the coded answer's headers."""
        key = (path, tag, coding)
        if key in self.entries or key in self.pending:
            return
        task = asyncio.create_task(self._compress(key, body, headers_for))
        self.pending[key] = task
        task.add_done_callback(lambda t: (self.pending.pop(key, None), t.cancelled() or t.exception()))

    async def idle(self) -> None:
        """Until the entries being made are made (tests; a shutdown does not need to wait)."""
        while self.pending:
            await asyncio.gather(*self.pending.values(), return_exceptions=True)

    async def _compress(self, key: tuple[str, bytes, str], body: bytes, headers_for: Callable[[int], Headers]) -> Entry:
        coding = key[2]
        data = await asyncio.to_thread(codings.compress, coding, body, codings.STATIC_LEVELS[coding])
        self.compressions += 1
        entry = Entry(data, headers_for(len(data)))
        self._keep(key, entry)
        return entry

    def _keep(self, key: tuple[str, bytes, str], entry: Entry) -> None:
        size = len(entry.body)
        if size > self.max_bytes:
            return
        path, tag, coding = key
        old = self.tags.get((path, coding))
        if old is not None and old != tag:       # a new upstream version of the file: the old one is dead
            dropped = self.entries.pop((path, old, coding), None)
            self.size -= len(dropped.body) if dropped else 0
        self.entries[key] = entry
        self.tags[(path, coding)] = tag
        self.size += size
        while self.size > self.max_bytes:
            (p, t, c), gone = self.entries.popitem(last=False)
            self.size -= len(gone.body)
            if self.tags.get((p, c)) == t:
                del self.tags[(p, c)]

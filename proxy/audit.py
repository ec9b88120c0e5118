"""One JSON line per decision, as its own stream so operators can ship it apart; and one per personal
token minted through the gate (`"event": "token.minted"`): the record `mlflow-gate token list` reads,
so the gate needs no database to tell admins which tokens exist.

The lines go to a writer thread through a queue (`AuditWriter`), not through `logging`: the
logging machinery cost a third of the gate's own CPU per request. Without a writer (library use,
tests) they go to the `mlflow_gate.audit` logger. The writer is made by `logs.configure` and handed
to the app, never kept in a module global.
"""
from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from .decide import Decision
from .identity import Identity
from .metrics import Metrics
from .tokens import TokenClaims

log = logging.getLogger("mlflow_gate.audit")
MINTED = "token.minted"
FLUSH_SECONDS = 0.05         # how long an audit line may wait for the others of its batch


class AuditWriter:
    """Writes queued lines to a stream from a background thread; `close()` drains the queue."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self.thread.start()

    def __call__(self, line: str) -> None:
        self.lines.put(line)

    def _run(self) -> None:
        """Every 50 ms, whatever is queued goes out in one write. The thread sleeps rather than waits on the
        queue, so queuing a line never wakes it (a wake per request cost the event loop a GIL handoff)."""
        while True:
            time.sleep(FLUSH_SECONDS)
            batch: list[str] = []
            done = False
            while not done:
                try:
                    line = self.lines.get_nowait()
                except queue.Empty:
                    break
                if line is None:
                    done = True
                else:
                    batch.append(line + "\n")
            if batch:
                self.stream.write("".join(batch))
                self.stream.flush()
            if done:
                return

    def close(self) -> None:
        self.lines.put(None)
        self.thread.join(5)


@dataclass(frozen=True)
class Denial:
    """One refused request, as the audit recorded it (no credential, no query string, no body)."""
    ts: float
    who: str | None
    via: str | None
    method: str
    path: str
    reason: str
    status: int
    resources: tuple[Decision, ...]
    request_id: str | None = None


class Denials:
    """The last refusals this replica recorded, newest last: a bounded ring in memory, no database."""

    def __init__(self, size: int = 200) -> None:
        self.ring: collections.deque[Denial] = collections.deque(maxlen=size)

    def add(self, denial: Denial) -> None:
        self.ring.append(denial)   # a deque append is atomic: audit records come from the event loop only anyway

    @property
    def size(self) -> int:
        return self.ring.maxlen or 0

    def latest(self, n: int | None = None) -> list[Denial]:
        """Newest first."""
        items = list(self.ring)[::-1]
        return items if n is None else items[:n]


class Audit:
    """Writes the audit line of each decision (to `sink`, else the `mlflow_gate.audit` logger) and counts it;
    refusals also go to `denials`, the in-memory ring the admin page shows."""

    def __init__(self, metrics: Metrics | None = None, sink: Callable[[str], None] | None = None,
                 denials: Denials | None = None) -> None:
        self.metrics = metrics
        self.sink = sink
        self.denials = denials if denials is not None else Denials()

    def record(self, ident: Identity | None, method: str, path: str, allowed: bool, reason: str,
               decisions: list[Decision] | None = None, status: int | None = None, *,
               request_id: str | None = None) -> None:
        if self.metrics is not None:
            kind = reason.split(";")[0] if allowed else ("unauthenticated" if status == 401 else "denied")
            self.metrics.decision(allowed, kind)
        if not allowed:
            self.denials.add(Denial(time.time(), ident.id if ident else None, ident.via if ident else None, method,
                                    path, reason, status or 403, tuple(decisions or ()), request_id))
        if self.sink is None and not log.isEnabledFor(logging.INFO):
            return
        entry: dict[str, Any] = {
            "ts": round(time.time(), 3), "who": ident.id if ident else None, "via": ident.via if ident else None,
            "method": method, "path": path, "allowed": allowed, "reason": reason,
        }
        if ident is not None and ident.issuer is not None:
            entry["issuer"] = ident.issuer
        if decisions:
            entry["resources"] = [{"kind": d.kind, "name": d.name, "needed": str(d.needed), "have": str(d.have),
                                   "rule": d.reason} for d in decisions]
        if status is not None:
            entry["status"] = status
        if request_id:
            entry["request_id"] = request_id
        self._write(entry)

    def minted(self, ident: Identity, token: TokenClaims) -> None:
        """The record of a personal token minted through the gate (`mlflow-gate token list` reads these)."""
        if self.sink is None and not log.isEnabledFor(logging.INFO):
            return
        self._write({"ts": round(time.time(), 3), "event": MINTED, "who": ident.id, "via": ident.via,
                     "token": {**token.as_json(), "local_account": token.account is not None}})

    def _write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"))
        if self.sink is not None:
            self.sink(line)
        else:
            log.info(line)

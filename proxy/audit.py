"""One JSON line per decision on its own logger (`mlflow_gate.audit`), so operators can ship it apart."""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from .decide import Decision
from .identity import Identity
from .metrics import Metrics

log = logging.getLogger("mlflow_gate.audit")


class Audit:
    """Writes the audit line and counts the decision."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics

    def record(self, ident: Identity | None, method: str, path: str, allowed: bool, reason: str,
               decisions: list[Decision] | None = None, status: int | None = None) -> None:
        if self.metrics is not None:
            kind = reason.split(";")[0] if allowed else ("unauthenticated" if status == 401 else "denied")
            self.metrics.decision(allowed, kind)
        record(ident, method, path, allowed, reason, decisions, status)


def record(ident: Identity | None, method: str, path: str, allowed: bool, reason: str,
           decisions: list[Decision] | None = None, status: int | None = None) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    entry: dict[str, Any] = {
        "ts": round(time.time(), 3), "who": ident.id if ident else None, "via": ident.via if ident else None,
        "method": method, "path": path, "allowed": allowed, "reason": reason,
    }
    if decisions:
        entry["resources"] = [{"kind": d.kind, "name": d.name, "needed": str(d.needed), "have": str(d.have),
                               "rule": d.reason} for d in decisions]
    if status is not None:
        entry["status"] = status
    log.info(json.dumps(entry, separators=(",", ":")))

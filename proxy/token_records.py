"""The personal tokens minted through the gate, read back from the audit stream.

The gate keeps no database: each token minted on `/_gate/tokens` (the page, its JSON API,
`mlflow-gate login`) is one `"event": "token.minted"` line of the audit stream (`audit.py`), which
operators already ship and keep. `mlflow-gate token list` reads those lines (files, or stdin from
`kubectl logs` / `journalctl`) and, given the policy, says which tokens still work.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from .audit import MINTED
from .policy import Policy


def minted(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The mint records in audit lines (other lines, and lines that are not JSON, are skipped), oldest first."""
    found: dict[str, dict[str, Any]] = {}
    for line in lines:
        start = line.find("{")
        if start < 0 or MINTED not in line:
            continue
        try:
            entry = json.loads(line[start:])
        except ValueError:
            continue
        token = entry.get("token") if isinstance(entry, dict) and entry.get("event") == MINTED else None
        if isinstance(token, dict) and token.get("id"):
            found[str(token["id"])] = {**token, "minted_at": entry.get("ts"), "minted_by": entry.get("who"),
                                       "minted_via": entry.get("via")}
    return sorted(found.values(), key=lambda t: float(t.get("minted_at") or 0))


def state(token: dict[str, Any], policy: Policy | None, now: float | None = None) -> str:
    """active | expired | revoked (token) | revoked (user) | account removed; without a policy, by expiry only."""
    if float(token.get("expires") or 0) <= (time.time() if now is None else now):
        return "expired"
    if policy is None:
        return "active"
    user = str(token.get("user", ""))
    if str(token["id"]) in policy.revoked_tokens:
        return "revoked (token)"
    if user.lower() in policy.revoked_users:
        return "revoked (user)"
    if token.get("local_account") and user.lower() not in policy.users:
        return "account removed"
    return "active"


def table(tokens: list[dict[str, Any]], policy: Policy | None) -> str:
    rows = [("id", "user", "name", "expires_at", "state")]
    rows += [(str(t["id"]), str(t.get("user", "")), str(t.get("name", "")), str(t.get("expires_at", "")),
              state(t, policy)) for t in tokens]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)

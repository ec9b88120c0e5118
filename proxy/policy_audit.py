"""`policy audit`: what a policy makes of a server that existed before the gate.

Reads every experiment and registered model (prompts included) of an mlflow server, directly or
through a gate as an admin, and reports the names no team owns (they fall to `default`), how many
names each team owns, and prefixes that would group the unowned names, so adopting the gate on a
brownfield server is a plan, not a surprise. `audit` is pure; `fetch_names` does the paging.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from .policy import KINDS, Policy

_SEPARATORS = "/-_.:"
_SEARCH = {"experiment": ("/api/2.0/mlflow/experiments/search", "experiments", {"view_type": "ALL"}),
           "model": ("/api/2.0/mlflow/registered-models/search", "registered_models", {})}


class AuditError(Exception):
    pass


@dataclass
class KindReport:
    total: int = 0
    by_team: dict[str, int] = field(default_factory=dict)
    unowned: list[str] = field(default_factory=list)
    suggested: list[tuple[str, list[str]]] = field(default_factory=list)   # prefix, the names it groups

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total, "by_team": self.by_team, "unowned": self.unowned,
                "suggested_prefixes": [{"prefix": p, "count": len(names), "names": names}
                                       for p, names in self.suggested]}


@dataclass
class Audit:
    default: str
    kinds: dict[str, KindReport]

    def as_json(self) -> dict[str, Any]:
        return {"default": self.default, "experiments": self.kinds["experiment"].as_json(),
                "models": self.kinds["model"].as_json()}


def audit(policy: Policy, names: dict[str, list[str]]) -> Audit:
    """Ownership of the server's names (`{"experiment": [...], "model": [...]}`) under `policy`."""
    out = Audit(str(policy.default), {})
    for kind in KINDS:
        report = KindReport(total=len(names.get(kind, [])), by_team={t: 0 for t in sorted(policy.teams)})
        for name in sorted(set(names.get(kind, []))):
            owner = policy.owner(kind, name)
            if owner is None:
                report.unowned.append(name)
            else:
                report.by_team[owner.name] += 1
        owned = [p for t in policy.teams.values() for p in t.prefixes(kind)]
        report.suggested = suggest_prefixes(report.unowned, owned)
        out.kinds[kind] = report
    return out


def suggest_prefixes(names: list[str], owned: list[str]) -> list[tuple[str, list[str]]]:
    """Group names by their first segment (`iris-`, `cv/`), longer where that would overlap a prefix
    a team owns; largest groups first."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_segment(name, owned), []).append(name)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


def _segment(name: str, owned: list[str]) -> str:
    start = 0
    while True:
        cut = next((i for i in range(start, len(name)) if name[i] in _SEPARATORS), None)
        prefix = name if cut is None else name[:cut + 1]
        if cut is None or not any(p.startswith(prefix) or prefix.startswith(p) for p in owned):
            return prefix
        start = cut + 1


def _auth() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"authorization": f"Bearer {token}"}
    return {}


def _pages(client: httpx.Client, kind: str) -> Iterator[dict[str, Any]]:
    path, key, extra = _SEARCH[kind]
    token: str | None = None
    while True:
        params = {"max_results": "1000", **extra, **({"page_token": token} if token else {})}
        try:
            resp = client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise AuditError(f"cannot reach {client.base_url}: {exc}") from exc
        if resp.status_code in (401, 403):
            raise AuditError(f"{client.base_url}{path} answered {resp.status_code}: set MLFLOW_TRACKING_TOKEN to an "
                             "admin's personal token (mlflow-gate token create --user <an admin>), or pass the "
                             "mlflow server's own URL")
        if resp.status_code != 200:
            raise AuditError(f"{client.base_url}{path} answered {resp.status_code}: {resp.text[:300]}")
        data = resp.json()
        yield from data.get(key, [])
        token = data.get("next_page_token")
        if not token:
            return


def fetch_names(upstream: str, *, timeout: float = 30.0,
                transport: httpx.BaseTransport | None = None) -> dict[str, list[str]]:
    """Every experiment name (deleted ones too: their names stay taken) and registered-model name."""
    auth = None
    if not os.environ.get("MLFLOW_TRACKING_TOKEN") and os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = httpx.BasicAuth(os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    with httpx.Client(base_url=upstream.rstrip("/"), headers=_auth(), auth=auth, timeout=timeout,
                      transport=transport) as client:
        _refuse_a_gates_non_admin(client)
        return {kind: [str(item.get("name", "")) for item in _pages(client, kind)] for kind in KINDS}


def _refuse_a_gates_non_admin(client: httpx.Client) -> None:
    """Through a gate, a non-admin's searches show only what it may read: the report would be short."""
    try:
        resp = client.get("/_gate/me", headers={"accept": "application/json"})
    except httpx.HTTPError as exc:
        raise AuditError(f"cannot reach {client.base_url}: {exc}") from exc
    if resp.status_code != 200 or "json" not in resp.headers.get("content-type", ""):
        return   # a plain mlflow server (404), or no credential (the searches will say so)
    me = resp.json()
    if isinstance(me, dict) and me.get("admin") is False:
        raise AuditError(f"{client.base_url} is a gate and {me.get('id')!r} is not an admin there: it would show "
                         "only the names that user may read; set MLFLOW_TRACKING_TOKEN to an admin's personal token")


def audit_text(a: Audit, *, show: int = 20) -> str:
    lines = []
    for kind, label in (("experiment", "experiments"), ("model", "registered models and prompts")):
        r = a.kinds[kind]
        lines.append(f"{label}: {r.total} on the server, {r.total - len(r.unowned)} owned by a team, "
                     f"{len(r.unowned)} by no team (those fall to default: {a.default})")
        if r.by_team:
            lines.append("  by team: " + ", ".join(f"{t} {n}" for t, n in r.by_team.items()))
        if r.unowned:
            more = f" ... and {len(r.unowned) - show} more" if len(r.unowned) > show else ""
            lines.append("  owned by no team: " + ", ".join(repr(n) for n in r.unowned[:show]) + more)
            lines.append("  suggested prefixes:")
            for prefix, names in r.suggested[:show]:
                examples = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
                lines.append(f"    {prefix!r}  {len(names)} name(s): {examples}")
    return "\n".join(lines)

"""Judging one workflow step: direct must work, and the gate must answer as its expectation says."""
from __future__ import annotations

from typing import Any

from compat_versions import VERSIONS
from workflow import STEPS

EXPECT = {s.name: s.gate for s in STEPS}


def _brief(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    if r["ok"]:
        return f"ok, value {r.get('value')!r}"
    return f"failed: status {r.get('status')}, error_code {r.get('error_code')}: {r.get('error')}"


def direct_problem(name: str, direct: dict[str, Any] | None) -> str | None:
    if direct is None or not direct["ok"]:
        return f"{name!r} fails direct (the workflow or the MLflow version is broken): {_brief(direct)}"
    if EXPECT[name] == "hidden" and not direct.get("value"):
        return f"{name!r}: direct finds nothing, so the gate's hiding proves nothing"
    return None


def gate_problem(name: str, direct: dict[str, Any] | None, gate: dict[str, Any] | None) -> str | None:
    expect = EXPECT[name]
    if gate is None:
        return f"{name!r} did not run through the gate"
    if expect == "denied":
        if gate["ok"] or not gate.get("denied"):
            return f"{name!r} must be refused (403) through the gate; it was {_brief(gate)}"
        return None
    if direct is None or not direct["ok"]:
        return f"{name!r} cannot be compared: it fails direct"
    if not gate["ok"]:
        return f"{name!r} works direct ({_brief(direct)}) but through the gate {_brief(gate)}"
    if expect == "hidden":
        return None if not gate.get("value") else f"{name!r}: the gate shows the other team's {gate['value']!r}"
    if gate.get("value") != direct.get("value"):
        return f"{name!r} answers differently: direct {direct.get('value')!r}, through the gate {gate.get('value')!r}"
    return None


def table_rows(results: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    rows = []
    for series, modes in results.items():
        direct = {r["step"]: r for r in modes["direct"]}
        gate = {r["step"]: r for r in modes["gate"]}
        total = len(direct)
        ok_direct = sum(direct_problem(n, r) is None for n, r in direct.items())
        ok_gate = sum(gate_problem(n, direct.get(n), r) is None for n, r in gate.items())
        rows.append(f"| {VERSIONS[series].mlflow} | {ok_gate}/{total} | {ok_direct}/{total} |")
    return rows

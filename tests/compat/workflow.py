"""The client workflow of the compatibility suite: what a team does with its own MLflow version.

Run with the python of one compatibility venv, as a subprocess, against a server (direct or through
the gate), with the caller's token in `MLFLOW_TRACKING_TOKEN` when there is one:

    python workflow.py seed --url URL --uid UID                    # the other team's objects (bob)
    python workflow.py main --url URL --uid UID --seed '{...}'    # the team's workflow (alice)

It prints one JSON line per step (`{"step": ..., "ok": ..., "value": ..., "error_code": ...}`) and,
last, `{"state": {...}}` with the ids it made. Each step runs even when an earlier one failed (it then
fails too), so a run always reports every step. The steps are in wf_*.py (see wf_steps.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import wf_cross_team
import wf_genai
import wf_tracking
from wf_steps import STEPS, Ctx, Step

ORDER = [m.__name__ for m in (wf_tracking, wf_genai, wf_cross_team)]   # the run order (clean-up last)


def steps_for(version: str, phase: str) -> list[Step]:
    """The steps `version` runs in `phase`, in the order they run."""
    major, minor = (int(p) for p in version.split(".")[:2])
    chosen = [s for s in STEPS if s.phase == phase and s.since <= (major, minor)]
    return sorted(chosen, key=lambda s: ORDER.index(s.func.__module__))


# --- running ---------------------------------------------------------------------------------------------------

def outcome(exc: BaseException) -> dict[str, Any]:
    """What a failure looked like to the client: MLflow's error code, the HTTP status, whether it was a 403."""
    out: dict[str, Any] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:600], "error_code": None,
                           "status": None, "denied": False}
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "error_code", None)
        response = getattr(current, "response", None)
        status = getattr(response, "status_code", None)
        if status is None and hasattr(current, "get_http_status_code") and code:
            status = current.get_http_status_code()
        out["error_code"] = out["error_code"] or code
        out["status"] = out["status"] or status
        if code == "PERMISSION_DENIED" or status == 403 or "403 Client Error" in str(current):
            out["denied"] = True
        current = current.__cause__ or current.__context__
    return out


def _jsonable(value: Any, uid: str) -> Any:
    """The value as JSON, with the run's unique suffix made generic so direct and gate values compare."""
    return json.loads(json.dumps(value, default=str).replace(uid, "{uid}"))


def run_phase(phase: str, ctx: Ctx) -> None:
    import mlflow

    mlflow.set_tracking_uri(ctx.url)
    mlflow.set_registry_uri(ctx.url)
    for s in steps_for(mlflow.__version__, phase):
        try:
            result: dict[str, Any] = {"ok": True, "value": _jsonable(s.func(ctx), ctx.uid)}
        except Exception as exc:  # noqa: BLE001 - every failure is a result, and the next step still runs
            result = outcome(exc)
            if isinstance(exc, KeyError):
                result["error"] = f"an earlier step did not produce {exc}"
            print(traceback.format_exc(), file=sys.stderr, flush=True)
        print(json.dumps({"step": s.name, **result}), flush=True)
    print(json.dumps({"state": {k: v for k, v in ctx.state.items() if isinstance(v, str)}}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["seed", "main"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--uid", required=True)
    parser.add_argument("--seed", default="{}", help="the seed phase's state, as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_phase(args.phase, Ctx(args.url, args.uid, json.loads(args.seed), Path(tmp)))


if __name__ == "__main__":
    main()

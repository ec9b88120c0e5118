"""The compatibility workflow's steps: how one is declared, and what every step gets (`Ctx`).

A step is a function of `Ctx` registered with `@step(name, ...)`: it returns a JSON-able value the
suite compares between direct and through the gate, or raises. `since` is the first MLflow series
that has the feature; `gate` the expectation through the gate: "same" (works as direct, same value),
"denied" (the other team's object: direct works, the gate answers 403) or "hidden" (a search: direct
finds it, the gate returns nothing). Nothing here imports MLflow at module level: the test side
imports the step list in this repository's venv.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Step:
    name: str
    phase: str
    func: Callable[[Ctx], Any]
    since: tuple[int, int] = (2, 22)
    gate: str = "same"


STEPS: list[Step] = []


def step(name: str, *, phase: str = "main", since: str = "2.22", gate: str = "same") -> Callable[..., Any]:
    def register(func: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
        major, minor = (int(p) for p in since.split("."))
        STEPS.append(Step(name, phase, func, (major, minor), gate))
        return func
    return register


@dataclass
class Ctx:
    url: str
    uid: str
    seed: dict[str, str]
    tmp: Path
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def client(self) -> Any:
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.url, registry_uri=self.url)

    def http_get(self, path: str, params: dict[str, str]) -> Any:
        import requests

        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = requests.get(self.url + path, params=params, headers=headers, timeout=60)
        r.raise_for_status()
        return r.json()


def trace_id_of(obj: Any) -> str:
    """A span's or a trace info's id: `trace_id` from 3.0 on, `request_id` in 2.x."""
    return str(getattr(obj, "trace_id", None) or obj.request_id)


def folder(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)   # 2.x downloads only into an existing folder
    return str(path)


def state_of(info: Any) -> str:
    """A trace's state as stored: `state` from 3.0 on, `status` in 2.x (OK, ERROR, IN_PROGRESS)."""
    return str(getattr(info, "state", None) or info.status).rsplit(".", 1)[-1]


def training_data() -> tuple[Any, Any]:
    import numpy as np

    x = np.random.default_rng(0).random((40, 3))
    return x, (x[:, 0] > 0.5).astype(int)

"""Ids to the names the policy speaks of: run, trace, logged model, dataset, artifact path ->
experiment; experiment id -> name. Looked up through the upstream and cached.

Mappings that never change (a run's, trace's or logged model's experiment) are kept until the
cache is full; an experiment's name can change by rename, so it is kept for a short time and
dropped by the gate when a rename passes through it. An id that cannot be resolved raises
`Unresolvable`: the caller denies, never allows.
"""
from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from .errors import BadRequest, PermissionDenied, UpstreamUnavailable
from .forward import Upstream

K = TypeVar("K")
V = TypeVar("V")

_EXPERIMENT_ID = re.compile(r"^[0-9]{1,19}$")
STORE_TAG = "mlflow-gate.artifact-store"


class Unresolvable(PermissionDenied):
    """An id the upstream does not know (or will not say): denied, with the id named."""


class LRU(Generic[K, V]):
    def __init__(self, size: int, ttl: float | None = None) -> None:
        self.size, self.ttl = size, ttl
        self.data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self.data.get(key)
        if item is None:
            return None
        if self.ttl is not None and item[0] < time.monotonic():
            del self.data[key]
            return None
        self.data.move_to_end(key)
        return item[1]

    def put(self, key: K, value: V) -> None:
        self.data[key] = (time.monotonic() + (self.ttl or 0), value)
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)

    def drop(self, key: K) -> None:
        self.data.pop(key, None)


@dataclass(frozen=True)
class RunInfo:
    experiment_id: str
    user_id: str
    artifact_uri: str = ""


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _stored_in(what: str, ident: str, data: Any, field: tuple[str, ...]) -> str:
    """The experiment id at `field` of a lookup's answer."""
    found = _dig(data, *field)
    if not found:
        raise Unresolvable(f"Permission denied: {what} {ident!r} is not stored in an MLflow experiment.")
    return str(found)


class Resolver:
    def __init__(self, upstream: Upstream, *, name_ttl: float = 30.0, size: int = 100_000) -> None:
        self.upstream = upstream
        self.runs: LRU[str, RunInfo] = LRU(size)
        self.traces: LRU[str, str] = LRU(size)
        self.logged_models: LRU[str, str] = LRU(size)
        self.model_artifacts: LRU[str, str] = LRU(size)
        self.names: LRU[str, tuple[str, str | None]] = LRU(size, ttl=name_ttl)   # id -> (name, store team)
        self.datasets: LRU[str, tuple[str, ...]] = LRU(size // 10, ttl=name_ttl)
        self.trace_route_v3: bool | None = None   # whether the upstream has GET /api/3.0/mlflow/traces/{id}

    async def _get(self, what: str, ident: str, path: str, params: dict[str, str] | None = None) -> Any:
        status, data = await self.upstream.get_json(path, params)
        return self._answer(what, ident, status, data)

    @staticmethod
    def _answer(what: str, ident: str, status: int, data: Any) -> Any:
        if status == 200:
            return data
        if status >= 500:
            raise UpstreamUnavailable(f"The MLflow server failed to look up {what} {ident!r} ({status}).")
        raise Unresolvable(f"Permission denied: {what} {ident!r} cannot be resolved to an experiment "
                           f"(the server answered {status}).")

    async def run(self, run_id: str) -> RunInfo:
        info = self.runs.get(run_id)
        if info is None:
            data = await self._get("run", run_id, "/api/2.0/mlflow/runs/get", {"run_id": run_id})
            exp_id = _dig(data, "run", "info", "experiment_id")
            if not exp_id:
                raise Unresolvable(f"Permission denied: run {run_id!r} names no experiment.")
            info = RunInfo(str(exp_id), str(_dig(data, "run", "info", "user_id") or ""),
                           str(_dig(data, "run", "info", "artifact_uri") or ""))
            self.runs.put(run_id, info)
        return info

    async def trace(self, trace_id: str) -> str:
        exp_id = self.traces.get(trace_id)
        if exp_id is None:
            exp_id = await self._trace_experiment(trace_id)
            self.traces.put(trace_id, exp_id)
        return exp_id

    async def _trace_experiment(self, trace_id: str) -> str:
        """MLflow 3.2 on answers `GET /api/3.0/mlflow/traces/{id}`. 2.22 and 3.1 lack that route (their 404 is not
        MLflow's JSON error: remembered) and answer `GET /api/2.0/mlflow/traces/{id}/info`, as all versions do."""
        quoted = quote(trace_id, safe="")
        if self.trace_route_v3 is not False:
            status, data = await self.upstream.get_json(f"/api/3.0/mlflow/traces/{quoted}")
            if status != 404 or (isinstance(data, dict) and data.get("error_code")):
                self.trace_route_v3 = True
                return _stored_in("trace", trace_id, self._answer("trace", trace_id, status, data),
                                  ("trace", "trace_info", "trace_location", "mlflow_experiment", "experiment_id"))
            self.trace_route_v3 = False
        data = await self._get("trace", trace_id, f"/api/2.0/mlflow/traces/{quoted}/info")
        return _stored_in("trace", trace_id, data, ("trace_info", "experiment_id"))

    async def logged_model(self, model_id: str) -> str:
        return await self._experiment_of(self.logged_models, "logged model", model_id,
                                         f"/api/2.0/mlflow/logged-models/{quote(model_id, safe='')}",
                                         ("model", "info", "experiment_id"))

    async def logged_model_artifacts(self, model_id: str) -> str:
        """A logged model's artifact location (it never changes)."""
        uri = self.model_artifacts.get(model_id)
        if uri is None:
            data = await self._get("logged model", model_id, f"/api/2.0/mlflow/logged-models/{quote(model_id, safe='')}")
            uri = str(_dig(data, "model", "info", "artifact_uri") or "")
            self.model_artifacts.put(model_id, uri)
        return uri

    async def model_version_artifacts(self, name: str, version: str) -> str:
        """Where a model version's files are (its download URI)."""
        data = await self._get("model version", f"{name}/{version}", "/api/2.0/mlflow/model-versions/get-download-uri",
                               {"name": name, "version": version})
        return str(data.get("artifact_uri") or "")

    async def _experiment_of(self, cache: LRU[str, str], what: str, ident: str, path: str,
                             field: tuple[str, ...]) -> str:
        """The experiment id a child object lives in: looked up once, then cached (it never moves)."""
        exp_id = cache.get(ident)
        if exp_id is None:
            exp_id = _stored_in(what, ident, await self._get(what, ident, path), field)
            cache.put(ident, exp_id)
        return exp_id

    async def dataset(self, dataset_id: str) -> tuple[str, ...]:
        ids = self.datasets.get(dataset_id)
        if ids is None:
            data = await self._get("dataset", dataset_id,
                                   f"/api/3.0/mlflow/datasets/{quote(dataset_id, safe='')}/experiment-ids")
            ids = tuple(str(i) for i in data.get("experiment_ids", ()))
            if not ids:
                raise Unresolvable(f"Permission denied: dataset {dataset_id!r} belongs to no experiment.")
            self.datasets.put(dataset_id, ids)
        return ids

    async def experiment_name(self, experiment_id: str) -> str:
        return (await self._experiment(experiment_id))[0]

    async def experiment_store(self, experiment_id: str) -> str | None:
        """The team whose artifact store holds the experiment (its `mlflow-gate.artifact-store` tag)."""
        return (await self._experiment(experiment_id))[1]

    async def _experiment(self, experiment_id: str) -> tuple[str, str | None]:
        if not _EXPERIMENT_ID.match(experiment_id):
            raise BadRequest(f"{experiment_id!r} is not an experiment id (expected digits).")
        info = self.names.get(experiment_id)
        if info is None:
            data = await self._get("experiment", experiment_id, "/api/2.0/mlflow/experiments/get",
                                   {"experiment_id": experiment_id})
            name = _dig(data, "experiment", "name")
            if not isinstance(name, str):
                raise Unresolvable(f"Permission denied: experiment {experiment_id!r} has no name.")
            tags = _dig(data, "experiment", "tags") or []
            store = next((t.get("value") for t in tags if isinstance(t, dict) and t.get("key") == STORE_TAG), None)
            info = (name, store)
            self.names.put(experiment_id, info)
        return info

    def forget_name(self, experiment_id: str) -> None:
        self.names.drop(experiment_id)

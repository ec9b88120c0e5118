"""Ids to the names the policy speaks of: run, trace, logged model, dataset, artifact path ->
experiment; experiment id -> name. Looked up through the upstream and cached.

Mappings that never change (a run's, trace's or logged model's experiment) are kept until the
cache is full; an experiment's name can change by rename, so it is kept for a short time and
dropped by the gate when a rename passes through it. An id that cannot be resolved raises
`Unresolvable`: the caller denies, never allows.
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .cache import LRU
from .decide import Decision, decide
from .errors import BadRequest, PermissionDenied, UpstreamUnavailable
from .forward import Upstream
from .identity import Identity
from .params import ids_of
from .policy import Level, Policy
from .rewrite import STORE_TAG
from .routes import Names

if TYPE_CHECKING:
    from .call import Call

_EXPERIMENT_ID = re.compile(r"^[0-9]{1,19}$")
PROMPT_SOURCES = frozenset({"prompt-template", "dummy-source"})   # MLflow's placeholders for prompt versions


class Unresolvable(PermissionDenied):
    """An id the upstream does not know (or will not say): denied, with the id named."""


@dataclass(frozen=True)
class Target:
    """A name the policy decides on, reached from one id of a request."""
    kind: str          # experiment | model
    name: str
    level: Level       # what the request needs on it
    shown: str         # how the caller named it, for a denial (never the resolved name)


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


class Resolver:
    def __init__(self, upstream: Upstream, *, name_ttl: float = 30.0, size: int = 100_000) -> None:
        self.upstream = upstream
        self.runs: LRU[str, RunInfo] = LRU(size)
        self.traces: LRU[str, str] = LRU(size)
        self.logged_models: LRU[str, str] = LRU(size)
        self.model_artifacts: LRU[str, str] = LRU(size)
        self.names: LRU[str, tuple[str, str | None]] = LRU(size, ttl=name_ttl)   # id -> (name, store team)
        self.datasets: LRU[str, tuple[str, ...]] = LRU(size // 10, ttl=name_ttl)

    async def _get(self, what: str, ident: str, path: str, params: dict[str, str] | None = None) -> Any:
        status, data = await self.upstream.get_json(path, params)
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
        return await self._experiment_of(self.traces, "trace", trace_id,
                                         f"/api/3.0/mlflow/traces/{quote(trace_id, safe='')}",
                                         ("trace", "trace_info", "trace_location", "mlflow_experiment", "experiment_id"))

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
            found = _dig(await self._get(what, ident, path), *field)
            if not found:
                raise Unresolvable(f"Permission denied: {what} {ident!r} is not stored in an MLflow experiment.")
            exp_id = str(found)
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

    # --- ids -> the names the policy decides on ----------------------------------------------------

    async def targets(self, what: Names, value: str, ident: Identity, level: Level) -> list[Target]:
        """The names one id of a request stands for, with the level needed on each."""
        return await _RESOLVE[what](self, value, ident, level)

    async def _by_experiment(self, exp_id: str, level: Level, shown: str) -> list[Target]:
        return [Target("experiment", await self.experiment_name(exp_id), level, shown)]

    async def _experiment_id(self, value: str, ident: Identity, level: Level) -> list[Target]:
        return await self._by_experiment(value, level, f"experiment {value}")

    async def _run(self, value: str, ident: Identity, level: Level) -> list[Target]:
        return await self._by_experiment((await self.run(value)).experiment_id, level, f"run {value}")

    async def _run_owned(self, value: str, ident: Identity, level: Level) -> list[Target]:
        info = await self.run(value)
        return await self._by_experiment(info.experiment_id, level if info.user_id == ident.id else Level.MANAGE,
                                         f"run {value}")

    async def _trace(self, value: str, ident: Identity, level: Level) -> list[Target]:
        return await self._by_experiment(await self.trace(value), level, f"trace {value}")

    async def _logged_model(self, value: str, ident: Identity, level: Level) -> list[Target]:
        return await self._by_experiment(await self.logged_model(value), level, f"logged model {value}")

    async def _dataset(self, value: str, ident: Identity, level: Level) -> list[Target]:
        return [t for exp_id in await self.dataset(value)
                for t in await self._by_experiment(exp_id, level, f"dataset {value}")]

    async def _artifact_path(self, value: str, ident: Identity, level: Level) -> list[Target]:
        return await self._by_experiment(artifact_experiment(value), level, f"artifact path {value!r}")

    async def _source(self, source: str, ident: Identity, level: Level) -> list[Target]:
        """A model version's source must be something the caller may read, never a raw storage URI."""
        if source in PROMPT_SOURCES:     # a prompt version: no artifacts behind it
            return []
        if source.startswith("runs:/"):
            return await self._run(source[len("runs:/"):].lstrip("/").split("/")[0], ident, level)
        if source.startswith("models:/m-"):
            return await self._logged_model(source[len("models:/"):].split("/")[0], ident, level)
        if source.startswith("mlflow-artifacts:"):
            return await self._artifact_path(artifact_store_path(source) or "", ident, level)
        raise PermissionDenied("Permission denied: a model version's source must be a runs:/, models:/ or "
                               "mlflow-artifacts: URI of something you can read; raw storage URIs are for admins.")


def _by_name(kind: str, what: str) -> Callable[[Resolver, str, Identity, Level], Awaitable[list[Target]]]:
    async def resolve(resolver: Resolver, value: str, ident: Identity, level: Level) -> list[Target]:
        return [Target(kind, value, level, f"{what} {value!r}")]
    return resolve


async def authorize(call: Call, resolver: Resolver) -> None:
    """Every id the request names, resolved to its name and decided; the first shortfall is refused."""
    for need in call.route.needs:
        ids = ids_of(need.fields, call.params, call.path_params, call.headers, repeatable=need.what is Names.RUN)
        if not ids:
            if need.optional:
                continue
            raise BadRequest(f"Missing value for required parameter '{need.fields[0].split(':')[-1]}'.")
        aliases = tuple(ids_of((need.alias,), call.params, call.path_params, call.headers)) if need.alias else ()
        if need.alias and not aliases:
            raise BadRequest(f"Missing value for required parameter '{need.alias}'.")
        for value in ids:
            await check(call, resolver, need.what, value, need.level, aliases=aliases)


async def check(call: Call, resolver: Resolver, what: Names, value: str, level: Level, *,
                aliases: tuple[str, ...] = ()) -> None:
    """One id: resolved to its names, each decided and recorded; refused at the first shortfall.
    `aliases`: the model aliases the request sets, moves or deletes (protected ones need manage)."""
    for target in await resolver.targets(what, value, call.who, level):
        protected = _protected(call.rules, target, aliases)
        needed = Level.MANAGE if protected else target.level
        decision = decide(call.rules, call.who, target.kind, target.name, needed)
        call.decisions.append(decision)
        if not decision.allowed:
            raise PermissionDenied(_refusal(target, decision, protected), decision)


def _protected(policy: Policy, target: Target, aliases: tuple[str, ...]) -> str | None:
    """The first of `aliases` that the team owning the model protects, as "'champion' (team vision)"."""
    team = policy.owner(target.kind, target.name) if aliases else None
    found = next((a for a in aliases if team.protects(a)), None) if team else None
    return f"{found!r} (team {team.name})" if team and found is not None else None


def _refusal(target: Target, decision: Decision, protected: str | None) -> str:
    if protected is not None and decision.have >= target.level:     # refused because the alias is protected
        return (f"Permission denied: alias {protected} of {target.shown} is protected: setting, moving or "
                f"deleting it needs manage on the model; you have {decision.have}.")
    return f"Permission denied: {target.level} on {target.shown} is needed; you have {decision.have}."


_RESOLVE: dict[Names, Callable[[Resolver, str, Identity, Level], Awaitable[list[Target]]]] = {
    Names.EXPERIMENT: Resolver._experiment_id,
    Names.EXPERIMENT_NAME: _by_name("experiment", "experiment"),
    Names.NEW_EXPERIMENT: _by_name("experiment", "experiment"),
    Names.RUN: Resolver._run,
    Names.RUN_OWNED: Resolver._run_owned,
    Names.TRACE: Resolver._trace,
    Names.LOGGED_MODEL: Resolver._logged_model,
    Names.MODEL: _by_name("model", "model"),
    Names.NEW_MODEL: _by_name("model", "model"),
    Names.DATASET: Resolver._dataset,
    Names.ARTIFACT_PATH: Resolver._artifact_path,
    Names.SOURCE_URI: Resolver._source,
}
if set(_RESOLVE) != set(Names):                # every kind of id a route can name has its resolution
    raise ImportError(f"ids without a resolution: {sorted(n.value for n in set(Names) - set(_RESOLVE))}")


def artifact_experiment(path: str) -> str:
    """The experiment id an mlflow-artifacts path lives under: its first segment, digits only."""
    if not path or path.startswith("/") or "\\" in path:
        raise PermissionDenied(f"Permission denied: artifact path {path!r} must start with an experiment id.")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise BadRequest(f"Artifact path {path!r} holds '.', '..' or empty segments.")
    if not parts[0].isdigit() or not parts[0].isascii():
        raise PermissionDenied(f"Permission denied: artifact path {path!r} is not under an experiment; only "
                               "admins may reach the artifact store's root.")
    return parts[0]


def artifact_store_path(uri: str) -> str | None:
    """`mlflow-artifacts:/1/abc/artifacts` (or `mlflow-artifacts://host/1/...`) -> `1/abc/artifacts`;
    None for anything that is not an mlflow-artifacts URI."""
    if not uri.startswith("mlflow-artifacts:"):
        return None
    rest = uri[len("mlflow-artifacts:"):]
    if rest.startswith("//"):
        rest = "/" + rest[2:].partition("/")[2]
    return rest.strip("/") or None

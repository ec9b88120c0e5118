"""Ids to the names the policy speaks of: run, trace, logged model, dataset, artifact path ->
experiment; experiment id -> name. Looked up through the upstream and cached.

Mappings that never change (a run's, trace's or logged model's experiment) are kept until the
cache is full (the gate lets no trace move: see `existing_trace`); an experiment's name can change
by rename, so it is kept for a short time and dropped by the gate when a rename passes through it.
An id that cannot be resolved raises `Unresolvable`: the caller denies, never allows, with the
message a refused object gets (`denials.denial`), so no answer tells whether another team's object exists.

Ids the client chooses (a trace id of a trace it starts or exports spans to) are the exception: a
trace the upstream definitely does not have (404 RESOURCE_DOES_NOT_EXIST) is a create; every other
lookup stays fail-closed.
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .cache import LRU
from .decide import Decision, decide
from .denials import denial, shortfall, shown
from .errors import BadRequest, PermissionDenied, UpstreamUnavailable
from .forward import Upstream
from .identity import Identity
from .params import MAX_INT64, ids_of, missing_value
from .policy import Level, Policy
from .prechecks import precheck
from .rewrite import STORE_TAG
from .routes import Names, Need
from .uris import artifact_experiment, artifact_store_path, model_uri_parts, prompt_name

if TYPE_CHECKING:
    from .call import Call

_EXPERIMENT_ID = re.compile(r"^[0-9]{1,19}$")
_CHOSEN_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")      # what a client may pick as a new id
_BATCH = 500                 # experiment ids per batch lookup (below SQLite's bound-parameter limits)
PROMPT_SOURCES = frozenset({"prompt-template", "dummy-source"})   # MLflow's placeholders for prompt versions


class Unresolvable(PermissionDenied):
    """An id the upstream does not know (or will not say): denied like an object of another team.

    `detail` (what the upstream said) goes to the audit log only."""

    def __init__(self, shown: str, detail: str) -> None:
        super().__init__(f"Permission denied: you have no access to {shown}, or it does not exist.", detail=detail)


@dataclass(frozen=True)
class Target:
    """A name the policy decides on, reached from one id of a request."""
    kind: str          # experiment | model
    name: str
    level: Level       # what the request needs on it


@dataclass(frozen=True)
class RunInfo:
    experiment_id: str
    user_id: str
    artifact_uri: str = ""


def _name_and_store(exp: Any) -> tuple[str, str | None] | None:
    """An experiment's name and the team whose artifact store holds it (its `mlflow-gate.artifact-store` tag)."""
    name = exp.get("name") if isinstance(exp, dict) else None
    if not isinstance(name, str):
        return None
    tags = exp.get("tags") or []
    return name, next((t.get("value") for t in tags if isinstance(t, dict) and t.get("key") == STORE_TAG), None)


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
        raise Unresolvable(f"{what} {ident}", "not stored in an MLflow experiment")
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
        return _expect_found(what, ident, *await self.upstream.get_json(path, params))

    async def run(self, run_id: str) -> RunInfo:
        info = self.runs.get(run_id)
        if info is None:
            data = await self._get("run", run_id, "/api/2.0/mlflow/runs/get", {"run_id": run_id})
            exp_id = _dig(data, "run", "info", "experiment_id")
            if not exp_id:
                raise Unresolvable(f"run {run_id}", "the run names no experiment")
            info = RunInfo(str(exp_id), str(_dig(data, "run", "info", "user_id") or ""),
                           str(_dig(data, "run", "info", "artifact_uri") or ""))
            self.runs.put(run_id, info)
        return info

    async def trace(self, trace_id: str) -> str:
        exp_id = self.traces.get(trace_id)
        if exp_id is None:
            status, data, field = await self._trace_lookup(trace_id)
            exp_id = _stored_in("trace", trace_id, _expect_found("trace", trace_id, status, data), field)
            self.traces.put(trace_id, exp_id)
        return exp_id

    async def _trace_lookup(self, trace_id: str) -> tuple[int, Any, tuple[str, ...]]:
        """The upstream's answer about a trace, and where in it the experiment id is. MLflow 3.2 on answers
        `GET /api/3.0/mlflow/traces/{id}`; 2.22 and 3.1 lack that route (their 404 is not MLflow's JSON error:
        remembered) and answer `GET /api/2.0/mlflow/traces/{id}/info`, as all versions do."""
        if self.trace_route_v3 is not False:
            status, data = await self.upstream.get_json(_trace_path(trace_id))
            if status != 404 or (isinstance(data, dict) and data.get("error_code")):
                self.trace_route_v3 = True
                return status, data, _TRACE_EXPERIMENT
            self.trace_route_v3 = False
        status, data = await self.upstream.get_json(f"/api/2.0/mlflow/traces/{quote(trace_id, safe='')}/info")
        return status, data, ("trace_info", "experiment_id")

    async def existing_trace(self, trace_id: str) -> str | None:
        """The experiment of the trace a client-chosen id names, or None when there is none yet (a create).

        Only a definite "does not exist" from the upstream makes an id new. MLflow never moves a
        trace for the gate's callers (`Need.within` keeps trace starts in the trace's experiment),
        so the mapping is cached like any other."""
        if not _CHOSEN_ID.match(trace_id):
            raise BadRequest(f"Invalid trace id {trace_id!r}: use letters, digits, '-' and '_' (at most 128).")
        if (cached := self.traces.get(trace_id)) is not None:
            return cached
        status, data, field = await self._trace_lookup(trace_id)
        if _missing(status, data):
            return None
        exp_id = _stored_in("trace", trace_id, _expect_found("trace", trace_id, status, data), field)
        self.traces.put(trace_id, exp_id)
        return exp_id

    async def is_assessment_of(self, trace_id: str, assessment_id: str) -> bool:
        """Whether the trace holds an assessment with this id (not cached: assessments come and go)."""
        path = f"{_trace_path(trace_id)}/assessments/{quote(assessment_id, safe='')}"
        status, data = await self.upstream.get_json(path)
        if _missing(status, data):
            return False
        _expect_found("assessment", assessment_id, status, data)
        return True

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
                raise Unresolvable(f"dataset {dataset_id}", "the dataset belongs to no experiment")
            self.datasets.put(dataset_id, ids)
        return ids

    async def experiment_name(self, experiment_id: str) -> str:
        return (await self._experiment(experiment_id))[0]

    async def experiment_store(self, experiment_id: str) -> str | None:
        """The team whose artifact store holds the experiment (its `mlflow-gate.artifact-store` tag)."""
        return (await self._experiment(experiment_id))[1]

    async def _experiment(self, experiment_id: str) -> tuple[str, str | None]:
        if not _EXPERIMENT_ID.match(experiment_id) or int(experiment_id) > MAX_INT64:
            raise BadRequest(f"Invalid experiment ID '{experiment_id}'. Experiment ID must be a valid integer.")
        info = self.names.get(experiment_id)
        if info is None:
            data = await self._get("experiment", experiment_id, "/api/2.0/mlflow/experiments/get",
                                   {"experiment_id": experiment_id})
            info = _name_and_store(data.get("experiment") if isinstance(data, dict) else None)
            if info is None:
                raise Unresolvable(f"experiment {experiment_id}", "the experiment has no name")
            self.names.put(experiment_id, info)
        return info

    async def prefetch_experiments(self, ids: list[str]) -> None:
        """Many experiment ids in one request (the UI's compare view searches runs, traces, logged models of dozens):
        the names not cached yet come from one upstream search, not one lookup each. An id it does not return is
        left to `experiment_name`, which refuses it as before."""
        wanted = sorted({i for i in ids if _EXPERIMENT_ID.match(i) and self.names.get(i) is None})
        for start in range(0, len(wanted) if len(wanted) > 1 else 0, _BATCH):
            chunk = wanted[start:start + _BATCH]
            body = {"filter": f"experiment_id IN ({', '.join(repr(i) for i in chunk)})",
                    "max_results": len(chunk), "view_type": "ALL"}
            status, data = await self.upstream.get_json("/api/2.0/mlflow/experiments/search", body=body, method="POST",
                                                        reads=True)
            if status != 200 or not isinstance(data, dict):
                return                  # one lookup per id then, which says what is wrong
            for exp in data.get("experiments") or []:
                info = _name_and_store(exp)
                if info is not None and str(exp.get("experiment_id")) in chunk:
                    self.names.put(str(exp["experiment_id"]), info)

    def forget_name(self, experiment_id: str) -> None:
        self.names.drop(experiment_id)

    # --- ids -> the names the policy decides on ----------------------------------------------------

    async def targets(self, what: Names, value: str, ident: Identity, level: Level) -> list[Target]:
        """The names one id of a request stands for, with the level needed on each."""
        return await _RESOLVE[what](self, value, ident, level)

    async def _by_experiment(self, exp_id: str, level: Level) -> list[Target]:
        return [Target("experiment", await self.experiment_name(exp_id), level)]

    async def _experiment_id(self, value: str, ident: Identity, level: Level) -> list[Target]:
        return await self._by_experiment(value, level)

    async def _run(self, value: str, ident: Identity, level: Level) -> list[Target]:
        return await self._by_experiment((await self.run(value)).experiment_id, level)

    async def _run_owned(self, value: str, ident: Identity, level: Level) -> list[Target]:
        info = await self.run(value)
        return await self._by_experiment(info.experiment_id, level if info.user_id == ident.id else Level.MANAGE)

    async def _trace(self, value: str, ident: Identity, level: Level) -> list[Target]:
        return await self._by_experiment(await self.trace(value), level)

    async def _new_trace(self, value: str, ident: Identity, level: Level) -> list[Target]:
        """A chosen trace id: nothing to decide when it is new (the route decides on where it goes)."""
        exp_id = await self.existing_trace(value)
        return [] if exp_id is None else await self._by_experiment(exp_id, level)

    async def _logged_model(self, value: str, ident: Identity, level: Level) -> list[Target]:
        return await self._by_experiment(await self.logged_model(value), level)

    async def _dataset(self, value: str, ident: Identity, level: Level) -> list[Target]:
        return [t for exp_id in await self.dataset(value) for t in await self._by_experiment(exp_id, level)]

    async def _artifact_path(self, value: str, ident: Identity, level: Level) -> list[Target]:
        return await self._by_experiment(artifact_experiment(value), level)

    async def _source(self, source: str, ident: Identity, level: Level) -> list[Target]:
        """A model version's source must be something the caller may read, never a raw storage URI."""
        if source in PROMPT_SOURCES:     # a prompt version: no artifacts behind it
            return []
        if source.startswith("runs:/"):
            return await self._run(source[len("runs:/"):].lstrip("/").split("/")[0], ident, level)
        if source.startswith("models:"):
            return await self._model_uri(source, ident, level)
        if source.startswith("mlflow-artifacts:"):
            return await self._artifact_path(artifact_store_path(source) or "", ident, level)
        raise PermissionDenied("Permission denied: a model version's source must be a runs:/, models:/ or "
                               "mlflow-artifacts: URI of something you can read; raw storage URIs are for admins.")

    async def _model_uri(self, uri: str, ident: Identity, level: Level) -> list[Target]:
        """`models:/<id>` names a logged model; `models:/NAME/VERSION` (or a stage, `latest`) and `NAME@ALIAS`
        a registered model, whose version MLflow copies (so `models:/m-1/1` is model `m-1`, not logged model m-1)."""
        parts = model_uri_parts(uri, "models")
        if parts is None:
            raise BadRequest(f"Invalid model version source {uri!r}: use models:/<logged model id>, "
                             "models:/<name>/<version> or models:/<name>@<alias>.")
        if len(parts) == 1 and "@" not in parts[0]:
            return await self._logged_model(parts[0], ident, level)
        return [Target("model", parts[0] if len(parts) == 2 else parts[0].rsplit("@", 1)[0], level)]

    async def _prompt_uri(self, uri: str, ident: Identity, level: Level) -> list[Target]:
        return [Target("model", prompt_name(uri), level)]

    async def _within_only(self, value: str, ident: Identity, level: Level) -> list[Target]:
        raise TypeError("an assessment id is checked within its trace (Need.within), never on its own")


def _by_name(kind: str) -> Callable[[Resolver, str, Identity, Level], Awaitable[list[Target]]]:
    async def resolve(resolver: Resolver, value: str, ident: Identity, level: Level) -> list[Target]:
        return [Target(kind, value, level)]
    return resolve


async def authorize(call: Call, resolver: Resolver) -> None:
    """Every id the request names, resolved to its name and decided; the first shortfall is refused.

    All ids are read (typed, required ones present) before any is resolved, as MLflow validates a request
    before it looks anything up: a malformed request gets MLflow's 400 whatever its ids name."""
    precheck(call.route.pattern, call.params)
    named = []
    for need in call.route.needs:
        ids = ids_of(need.fields, call.params, call.path_params, call.headers, repeatable=need.what is Names.RUN)
        if not ids and not need.optional:
            raise BadRequest(call.route.missing) if call.route.missing else missing_value(_top_level(need.fields[0]))
        aliases = tuple(ids_of((need.alias,), call.params, call.path_params, call.headers)) if need.alias else ()
        if need.alias and ids and not aliases:
            raise missing_value(need.alias)
        named.append((need, ids, aliases))
    await resolver.prefetch_experiments([v for need, ids, _ in named if need.what is Names.EXPERIMENT for v in ids])
    for need, ids, aliases in named:
        for value in ids:
            if need.within is None:
                await check(call, resolver, need.what, value, need.level, aliases=aliases)
            else:
                await check_within(call, resolver, need, value)


def _top_level(field: str) -> str:
    """The parameter MLflow names when a field is missing: `locations[].mlflow_experiment.experiment_id` ->
    `locations` (its schemas speak of the request's own fields), `path:run_id` -> `run_id`."""
    return field.split(":")[-1].split(".")[0].removesuffix("[]")


async def check(call: Call, resolver: Resolver, what: Names, value: str, level: Level, *,
                aliases: tuple[str, ...] = ()) -> None:
    """One id: resolved to its names, each decided and recorded; refused at the first shortfall.
    `aliases`: the model aliases the request sets, moves or deletes (a protected one needs manage).

    Refused with no access and not found are one answer (`denials.denial`): the level the route needs, the
    id as the caller gave it, the names the caller may use. Only a caller who may read the object learns the
    level it holds."""
    try:
        targets = await resolver.targets(what, value, call.who, level)
    except Unresolvable as exc:
        raise PermissionDenied(denial(level, what, value, call.rules, call.who), detail=exc.detail) from exc
    for target in targets:
        protected = _protected(call.rules, target, aliases)
        decision = decide(call.rules, call.who, target.kind, target.name,
                          Level.MANAGE if protected else target.level)
        call.decisions.append(decision)
        if not decision.allowed:
            if decision.have is Level.NONE:
                raise PermissionDenied(denial(level, what, value, call.rules, call.who), decision)
            raise PermissionDenied(_refusal(call, what, value, target, decision, protected), decision)


def _protected(policy: Policy, target: Target, aliases: tuple[str, ...]) -> str | None:
    """The first of `aliases` that the team owning the model protects, as "'champion' (team vision)"."""
    team = policy.owner(target.kind, target.name) if aliases else None
    found = next((a for a in aliases if team.protects(a)), None) if team else None
    return f"{found!r} (team {team.name})" if team and found is not None else None


def _refusal(call: Call, what: Names, value: str, target: Target, decision: Decision, protected: str | None) -> str:
    """The refusal of a caller who may read the object but needs more (a protected alias says so)."""
    if protected is not None and decision.have >= target.level:     # refused because the alias is protected
        return (f"Permission denied: alias {protected} of {shown(what, value)} is protected: setting, moving or "
                f"deleting it needs manage on the model; you have {decision.have}.")
    return shortfall(decision.needed, decision.have, what, value, call.rules, call.who)


async def check_within(call: Call, resolver: Resolver, need: Need, value: str) -> None:
    """A chosen id that must stay where the request puts it: a trace started in the experiment it is already
    in (or a new one), an assessment id of that trace's own. MLflow would otherwise merge the start into the
    existing trace (or assessment) and move it, wherever it was."""
    assert need.within is not None
    where = ids_of((need.within,), call.params, call.path_params, call.headers)
    if need.what is Names.NEW_TRACE:
        exp_id = await resolver.existing_trace(value)
        if exp_id is not None and exp_id not in where:
            raise PermissionDenied(f"Permission denied: trace {value} already exists in another experiment, and a "
                                   "trace cannot move; start it with a new trace id.", detail=f"in experiment {exp_id}")
    elif not (where and await resolver.is_assessment_of(where[0], value)):
        raise PermissionDenied(f"Permission denied: assessment {value} is not one of this trace's; leave "
                               "assessment_id (and a trace start's overrides) out: MLflow assigns the id.")


_RESOLVE: dict[Names, Callable[[Resolver, str, Identity, Level], Awaitable[list[Target]]]] = {
    Names.EXPERIMENT: Resolver._experiment_id,
    Names.EXPERIMENT_NAME: _by_name("experiment"),
    Names.NEW_EXPERIMENT: _by_name("experiment"),
    Names.RUN: Resolver._run,
    Names.RUN_OWNED: Resolver._run_owned,
    Names.TRACE: Resolver._trace,
    Names.NEW_TRACE: Resolver._new_trace,
    Names.ASSESSMENT: Resolver._within_only,
    Names.LOGGED_MODEL: Resolver._logged_model,
    Names.MODEL: _by_name("model"),
    Names.NEW_MODEL: _by_name("model"),
    Names.PROMPT_URI: Resolver._prompt_uri,
    Names.DATASET: Resolver._dataset,
    Names.ARTIFACT_PATH: Resolver._artifact_path,
    Names.SOURCE_URI: Resolver._source,
}
if set(_RESOLVE) != set(Names):              # every kind of id a route can name is resolved
    raise ImportError(f"ids without a resolution: {sorted(n.value for n in set(Names) - set(_RESOLVE))}")


def _trace_path(trace_id: str) -> str:
    return f"/api/3.0/mlflow/traces/{quote(trace_id, safe='')}"


_TRACE_EXPERIMENT = ("trace", "trace_info", "trace_location", "mlflow_experiment", "experiment_id")


def _missing(status: int, data: Any) -> bool:
    """The upstream's definite "no such object" (not a refusal, a bad id or a failure)."""
    return status == 404 and isinstance(data, dict) and data.get("error_code") == "RESOURCE_DOES_NOT_EXIST"


def _expect_found(what: str, ident: str, status: int, data: Any) -> Any:
    if status == 200:
        return data
    if status >= 500:
        raise UpstreamUnavailable(f"The MLflow server failed to look up {what} {ident!r} ({status}).")
    raise Unresolvable(f"{what} {ident}", f"the server answered {status}")

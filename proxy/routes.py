"""The MLflow route table, as data.

Each row says, for one (method, path pattern): who may call it at all (`access`), where the ids
it touches are read (`needs`: which parameter, what it names, the level needed), which rewrite
applies before forwarding and which filter applies to the answer. Rows whose path starts with a
version ("2.0/...", "3.0/...") exist under both `/api/` and `/ajax-api/`, as in MLflow.

A route that no row matches is unknown: admins only. `tests/unit/test_route_coverage.py` checks
that every route the installed MLflow serves matches a row.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .policy import Level

R, E, M = Level.READ, Level.EDIT, Level.MANAGE

# access
PUBLIC = "public"          # no credential needed
SIGNED_IN = "signed_in"    # any authenticated caller
CHECKED = "checked"        # authenticated, then every `need` is decided
ADMIN = "admin"            # admins only
REFUSED = "refused"        # nobody, admins included


@dataclass(frozen=True)
class Need:
    """One resource a request touches.

    what: experiment (by id) | experiment_name | run | run_owned | trace | logged_model | model (by name)
          | dataset | artifact_path | source_uri
    fields: where the ids are: a parameter name (its camelCase twin is read too), `path:NAME` for a
            URL parameter, `header:NAME`, or a dotted path into the JSON body where `[]` walks a list.
    """
    what: str
    fields: tuple[str, ...]
    level: Level
    optional: bool = False


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    pattern: str
    access: str
    needs: tuple[Need, ...] = ()
    source: str = "proto"      # proto: as MLflow's _get_request_message | query: request.args only | none
    rewrite: str | None = None
    filter: str | None = None
    serve: str | None = None   # an artifact view the gate answers from its stores (run_file, run_list, ...)


def need(what: str, *fields: str, level: Level, optional: bool = False) -> Need:
    return Need(what, fields, level, optional)


def exp(*fields: str, level: Level, optional: bool = False) -> Need:
    return Need("experiment", fields or ("experiment_id",), level, optional)


def run(*fields: str, level: Level, optional: bool = False) -> Need:
    return Need("run", fields or ("run_id", "run_uuid"), level, optional)


def trace(*fields: str, level: Level) -> Need:
    return Need("trace", fields, level)


def lm(*fields: str, level: Level, optional: bool = False) -> Need:
    return Need("logged_model", fields or ("path:model_id",), level, optional)


def model(*fields: str, level: Level) -> Need:
    return Need("model", fields or ("name",), level)


def dataset(level: Level) -> Need:
    return Need("dataset", ("path:dataset_id",), level)


def art(level: Level) -> Need:
    return Need("artifact_path", ("path:artifact_path",), level)


def row(methods: str, pattern: str, access: str = CHECKED, *needs: Need, **kw: str | None) -> Route:
    return Route(frozenset(methods.split()), pattern, access, tuple(needs), **kw)  # type: ignore[arg-type]


def checked(methods: str, pattern: str, *needs: Need, **kw: str | None) -> Route:
    return row(methods, pattern, CHECKED, *needs, **kw)


ROUTES: tuple[Route, ...] = (
    # --- UI, server, misc --------------------------------------------------------------------
    row("GET", "/health", PUBLIC),
    row("GET", "/", SIGNED_IN, source="none"),
    row("GET", "/static-files/{path:path}", SIGNED_IN, source="none"),
    row("GET", "/favicon.ico", SIGNED_IN, source="none"),
    row("GET", "/version", SIGNED_IN, source="none"),
    row("GET", "3.0/mlflow/server-info", SIGNED_IN, source="none"),
    row("GET POST", "3.0/mlflow/ui-telemetry", SIGNED_IN, source="none"),
    row("GET", "/build/{filename:path}", ADMIN),
    row("GET POST", "/graphql", SIGNED_IN, source="none", filter="graphql"),
    # --- experiments -------------------------------------------------------------------------
    checked("POST", "2.0/mlflow/experiments/create", need("new_experiment", "name", level=E),
            rewrite="experiment_create"),
    checked("POST", "2.0/mlflow/experiments/delete", exp(level=M)),
    checked("POST", "2.0/mlflow/experiments/restore", exp(level=M)),
    checked("POST", "2.0/mlflow/experiments/delete-experiment-tag", exp(level=E), rewrite="experiment_tag"),
    checked("POST", "2.0/mlflow/experiments/set-experiment-tag", exp(level=E), rewrite="experiment_tag"),
    checked("GET", "2.0/mlflow/experiments/get", exp(level=R)),
    checked("GET", "2.0/mlflow/experiments/get-by-name", need("experiment_name", "experiment_name", level=R)),
    checked("POST", "2.0/mlflow/experiments/update", exp(level=M),
            need("experiment_name", "new_name", level=M, optional=True), rewrite="experiment_rename"),
    row("GET POST", "2.0/mlflow/experiments/search", SIGNED_IN, filter="experiments"),
    checked("POST", "2.0/mlflow/experiments/search-datasets", exp("experiment_ids", level=R)),
    row("POST", "2.0mlflow/experiments/search-datasets", ADMIN),         # Databricks stub (sic)
    # --- runs, metrics, params, tags ---------------------------------------------------------
    checked("POST", "2.0/mlflow/runs/create", exp(level=E), rewrite="run_create"),
    checked("POST", "2.0/mlflow/runs/create-promptlab-run", exp(level=E), rewrite="run_create"),
    checked("POST", "2.0/mlflow/runs/delete", Need("run_owned", ("run_id", "run_uuid"), E)),
    checked("POST", "2.0/mlflow/runs/restore", Need("run_owned", ("run_id", "run_uuid"), E)),
    checked("POST", "2.0/mlflow/runs/delete-tag", run(level=E)),
    checked("POST", "2.0/mlflow/runs/set-tag", run(level=E), rewrite="run_set_tag"),
    checked("POST", "2.0/mlflow/runs/update", run(level=E)),
    checked("POST", "2.0/mlflow/runs/log-parameter", run(level=E)),
    checked("POST", "2.0/mlflow/runs/log-model", run(level=E)),
    checked("POST", "2.0/mlflow/runs/log-metric", run(level=E), lm("model_id", level=E, optional=True)),
    checked("POST", "2.0/mlflow/runs/log-batch", run(level=E), lm("metrics[].model_id", level=E, optional=True),
            rewrite="run_log_batch"),
    checked("POST", "2.0/mlflow/runs/log-inputs", run(level=E), lm("models[].model_id", level=E, optional=True)),
    checked("POST", "2.0/mlflow/runs/outputs", run(level=E), lm("models[].model_id", level=E, optional=True)),
    checked("GET", "2.0/mlflow/runs/get", run(level=R)),
    checked("POST", "2.0/mlflow/runs/search", exp("experiment_ids", level=R)),
    checked("GET", "2.0/mlflow/metrics/get-history", run(level=R)),
    checked("GET", "2.0/mlflow/metrics/get-history-bulk", run("run_id", level=R), source="query"),
    checked("GET", "2.0/mlflow/metrics/get-history-bulk-interval", run("run_ids", level=R)),
    # --- run artifacts (served by the tracking server from a run id) --------------------------
    checked("GET", "/get-artifact", run(level=R), source="query", serve="run_file"),
    checked("POST", "2.0/mlflow/upload-artifact", run(level=E), source="query"),
    checked("GET", "2.0/mlflow/artifacts/list", run(level=R), serve="run_list"),
    checked("POST", "2.0/mlflow/artifacts/presigned-download-url", run(level=R)),
    checked("POST", "2.0/mlflow/artifacts/presigned-upload-url", run("run_id", level=E, optional=True),
            lm("model_id", level=E, optional=True)),
    # --- proxied artifacts (mlflow-artifacts:/<experiment id>/...) -----------------------------
    checked("GET", "2.0/mlflow-artifacts/artifacts", Need("artifact_path", ("path",), R)),
    checked("GET", "2.0/mlflow-artifacts/artifacts/{artifact_path:path}", art(R), source="none"),
    checked("PUT", "2.0/mlflow-artifacts/artifacts/{artifact_path:path}", art(E), source="none"),
    checked("DELETE", "2.0/mlflow-artifacts/artifacts/{artifact_path:path}", art(M), source="none"),
    checked("POST", "2.0/mlflow-artifacts/mpu/create/{artifact_path:path}", art(E), source="none"),
    checked("POST", "2.0/mlflow-artifacts/mpu/complete/{artifact_path:path}", art(E), source="none"),
    checked("POST", "2.0/mlflow-artifacts/mpu/abort/{artifact_path:path}", art(E), source="none"),
    checked("GET", "2.0/mlflow-artifacts/presigned/{artifact_path:path}", art(R), source="none"),
    # --- traces and assessments --------------------------------------------------------------
    checked("GET", "2.0/mlflow/get-trace-artifact", trace("request_id", level=R), source="query"),
    checked("GET", "3.0/mlflow/get-trace-artifact", trace("request_id", level=R), source="query"),
    checked("GET", "2.0/mlflow/traces", exp("experiment_ids", level=R)),
    checked("POST", "2.0/mlflow/traces", exp(level=E)),
    checked("PATCH", "2.0/mlflow/traces/{request_id}", trace("path:request_id", level=E)),
    checked("GET", "2.0/mlflow/traces/{request_id}/info", trace("path:request_id", level=R)),
    checked("PATCH DELETE", "2.0/mlflow/traces/{request_id}/tags", trace("path:request_id", level=E)),
    checked("POST", "2.0/mlflow/traces/delete-traces", exp(level=M)),
    checked("POST", "3.0/mlflow/traces/delete-traces", exp(level=M)),
    checked("POST", "2.0/mlflow/traces/link-prompts", trace("trace_id", level=E),
            model("prompt_versions[].name", level=R)),
    checked("POST", "2.0/mlflow/traces/link-to-run", run("run_id", level=E), trace("trace_ids", level=R)),
    checked("POST", "3.0/mlflow/traces",
            exp("trace.trace_info.trace_location.mlflow_experiment.experiment_id", level=E)),
    checked("GET", "3.0/mlflow/traces/{trace_id}", trace("path:trace_id", level=R)),
    checked("PATCH DELETE", "3.0/mlflow/traces/{trace_id}/tags", trace("path:trace_id", level=E)),
    checked("POST", "3.0/mlflow/traces/{trace_id}/assessments", trace("path:trace_id", level=E)),
    checked("GET", "3.0/mlflow/traces/{trace_id}/assessments/{assessment_id}", trace("path:trace_id", level=R)),
    checked("PATCH DELETE", "3.0/mlflow/traces/{trace_id}/assessments/{assessment_id}",
            trace("path:trace_id", level=E)),
    checked("GET", "3.0/mlflow/traces/get", trace("trace_id", level=R)),
    checked("GET", "3.0/mlflow/traces/batchGet", trace("trace_ids", level=R)),
    checked("POST", "3.0/mlflow/traces/batchGetInfos", trace("trace_ids", level=R)),
    checked("POST", "3.0/mlflow/traces/search",
            exp("locations[].mlflow_experiment.experiment_id", "experiment_ids", level=R)),
    checked("POST", "3.0/mlflow/traces/metrics", exp("experiment_ids", level=R)),
    checked("POST", "3.0/mlflow/traces/calculate-filter-correlation", exp("experiment_ids", level=R)),
    checked("POST", "/v1/traces", exp("header:x-mlflow-experiment-id", level=E), source="none"),
    row("GET", "2.0/mlflow/unified-traces", ADMIN),                      # Databricks stub
    row("GET", "2.0/mlflow/get-online-trace-details", ADMIN),            # Databricks stub
    # MLflow 2.22 and 3.1 serve traces through the 2.0 rows above (ids named `request_id`); these 2.0
    # routes of theirs are stubs that answer "not implemented" (the POST is registered under the literal
    # path `{assessment.trace_id}`).
    row("GET", "2.0/mlflow/traces/{trace_id}", ADMIN),
    row("POST", "2.0/mlflow/traces/{trace_id}/assessments", ADMIN),
    row("GET PATCH DELETE", "2.0/mlflow/traces/{trace_id}/assessments/{assessment_id}", ADMIN),
    row("POST", "2.0/mlflow/traces/search", ADMIN),                       # 3.1 only
    # --- logged models -----------------------------------------------------------------------
    checked("POST", "2.0/mlflow/logged-models", exp(level=E), run("source_run_id", level=R, optional=True)),
    checked("POST", "2.0/mlflow/logged-models/search", exp("experiment_ids", level=R)),
    checked("GET", "2.0/mlflow/logged-models/{model_id}", lm(level=R)),
    checked("PATCH", "2.0/mlflow/logged-models/{model_id}", lm(level=E)),
    checked("DELETE", "2.0/mlflow/logged-models/{model_id}", lm(level=M)),
    checked("GET", "2.0/mlflow/logged-models/{model_id}/artifacts/directories", lm(level=R)),
    checked("GET", "2.0/mlflow/logged-models/{model_id}/artifacts/files", lm(level=R), source="query",
            serve="logged_model_file"),
    checked("POST", "2.0/mlflow/logged-models/{model_id}/params", lm(level=E)),
    checked("PATCH", "2.0/mlflow/logged-models/{model_id}/tags", lm(level=E)),
    checked("DELETE", "2.0/mlflow/logged-models/{model_id}/tags/{tag_key}", lm(level=E)),
    # --- model registry and prompts ----------------------------------------------------------
    checked("POST", "2.0/mlflow/registered-models/create", need("new_model", "name", level=E),
            rewrite="model_create"),
    checked("GET", "2.0/mlflow/registered-models/get", model(level=R)),
    checked("GET POST", "2.0/mlflow/registered-models/get-latest-versions", model(level=R)),
    checked("POST", "2.0/mlflow/registered-models/rename", model(level=M), model("new_name", level=M)),
    checked("PATCH", "2.0/mlflow/registered-models/update", model(level=E)),
    checked("DELETE", "2.0/mlflow/registered-models/delete", model(level=M)),
    checked("POST", "2.0/mlflow/registered-models/set-tag", model(level=E)),
    checked("DELETE", "2.0/mlflow/registered-models/delete-tag", model(level=E)),
    checked("GET", "2.0/mlflow/registered-models/alias", model(level=R)),
    checked("POST DELETE", "2.0/mlflow/registered-models/alias", model(level=E)),
    row("GET", "2.0/mlflow/registered-models/search", SIGNED_IN, filter="registered_models"),
    checked("POST", "2.0/mlflow/model-versions/create", model(level=E), run("run_id", level=R, optional=True),
            lm("model_id", level=R, optional=True), Need("source_uri", ("source",), R, optional=True)),
    checked("GET", "2.0/mlflow/model-versions/get", model(level=R)),
    checked("GET", "2.0/mlflow/model-versions/get-download-uri", model(level=R)),
    checked("GET", "/model-versions/get-artifact", model(level=R), source="query", serve="model_version_file"),
    checked("PATCH", "2.0/mlflow/model-versions/update", model(level=E)),
    checked("POST", "2.0/mlflow/model-versions/set-tag", model(level=E)),
    checked("DELETE", "2.0/mlflow/model-versions/delete-tag", model(level=E)),
    checked("POST", "2.0/mlflow/model-versions/transition-stage", model(level=E)),
    checked("DELETE", "2.0/mlflow/model-versions/delete", model(level=M)),
    row("GET", "2.0/mlflow/model-versions/search", SIGNED_IN, filter="model_versions"),
    # --- evaluation datasets -----------------------------------------------------------------
    checked("POST", "3.0/mlflow/datasets/create", exp("experiment_ids", level=E)),
    checked("GET POST", "3.0/mlflow/datasets/search", exp("experiment_ids", level=R)),
    checked("GET", "3.0/mlflow/datasets/{dataset_id}", dataset(R)),
    checked("DELETE", "3.0/mlflow/datasets/{dataset_id}", dataset(M)),
    checked("GET", "3.0/mlflow/datasets/{dataset_id}/experiment-ids", dataset(R)),
    checked("GET", "3.0/mlflow/datasets/{dataset_id}/records", dataset(R)),
    checked("POST DELETE", "3.0/mlflow/datasets/{dataset_id}/records", dataset(E)),
    checked("PATCH", "3.0/mlflow/datasets/{dataset_id}/tags", dataset(E)),
    checked("DELETE", "3.0/mlflow/datasets/{dataset_id}/tags/{key}", dataset(E)),
    checked("POST", "3.0/mlflow/datasets/{dataset_id}/add-experiments", dataset(E), exp("experiment_ids", level=E)),
    checked("POST", "3.0/mlflow/datasets/{dataset_id}/remove-experiments", dataset(E),
            exp("experiment_ids", level=E)),
    # --- issues, label schemas, review queues, scorers, evaluation: experiment-scoped ---------
    checked("POST", "3.0/mlflow/issues", exp(level=E), run("source_run_id", level=R, optional=True)),
    checked("POST", "3.0/mlflow/issues/search", exp(level=R)),
    checked("POST", "3.0/mlflow/label-schemas/create", exp(level=M)),
    checked("GET", "3.0/mlflow/label-schemas/get-by-name", exp(level=R)),
    checked("GET", "3.0/mlflow/label-schemas/list", exp(level=R)),
    checked("POST", "3.0/mlflow/review-queues/create", exp(level=E)),
    checked("GET", "3.0/mlflow/review-queues/get-by-name", exp(level=R)),
    checked("GET", "3.0/mlflow/review-queues/list", exp(level=R)),
    checked("POST", "3.0/mlflow/review-queues/get-or-create-user", exp(level=E)),
    checked("POST", "3.0/mlflow/scorers/register", exp(level=E)),
    checked("GET", "3.0/mlflow/scorers/get", exp(level=R)),
    checked("GET", "3.0/mlflow/scorers/versions", exp(level=R)),
    checked("GET", "3.0/mlflow/scorers/list", exp(level=R)),
    checked("DELETE", "3.0/mlflow/scorers/delete", exp(level=M)),
    checked("PUT", "3.0/mlflow/scorers/online-config", exp(level=E)),
    checked("POST", "3.0/mlflow/scorer/invoke", exp(level=E), trace("trace_ids", level=R)),
    checked("POST", "3.0/mlflow/genai/evaluate/invoke", exp(level=E)),
    checked("POST", "3.0/mlflow/prompt-optimization/jobs", exp(level=E)),
    checked("GET POST", "3.0/mlflow/prompt-optimization/jobs/search", exp(level=R)),
    # Ids these rows carry (issue, schema, queue, job, scorer config) are not resolved to an
    # experiment by the gate yet: admins only, never allowed by guess.
    row("GET PATCH", "3.0/mlflow/issues/{issue_id}", ADMIN),
    row("POST", "3.0/mlflow/issues/invoke", ADMIN),
    row("POST", "3.0/mlflow/issues/schedule/state", ADMIN),
    row("GET", "3.0/mlflow/label-schemas/get", ADMIN),
    row("PATCH", "3.0/mlflow/label-schemas/update", ADMIN),
    row("DELETE", "3.0/mlflow/label-schemas/delete", ADMIN),
    row("GET", "3.0/mlflow/review-queues/get", ADMIN),
    row("POST", "3.0/mlflow/review-queues/update", ADMIN),
    row("POST", "3.0/mlflow/review-queues/delete", ADMIN),
    row("POST", "3.0/mlflow/review-queues/items/add", ADMIN),
    row("GET", "3.0/mlflow/review-queues/items/list", ADMIN),
    row("POST", "3.0/mlflow/review-queues/items/remove", ADMIN),
    row("POST", "3.0/mlflow/review-queues/items/set-status", ADMIN),
    row("GET", "3.0/mlflow/scorers/online-configs", ADMIN),
    row("GET DELETE", "3.0/mlflow/prompt-optimization/jobs/{job_id}", ADMIN),
    row("POST", "3.0/mlflow/prompt-optimization/jobs/{job_id}/cancel", ADMIN),
    # --- server administration: admins only ----------------------------------------------------
    row("GET POST", "2.0/mlflow/gateway-proxy", ADMIN),
    row("GET POST PUT PATCH DELETE", "3.0/mlflow/gateway/{rest:path}", ADMIN),
    row("GET POST PUT PATCH DELETE", "/gateway/{rest:path}", ADMIN),
    row("GET POST", "2.0/mlflow/webhooks", ADMIN),
    row("GET PATCH DELETE", "2.0/mlflow/webhooks/{webhook_id}", ADMIN),
    row("POST", "2.0/mlflow/webhooks/{webhook_id}/test", ADMIN),
    row("GET POST", "3.0/mlflow/workspaces", ADMIN),
    row("GET PATCH DELETE", "3.0/mlflow/workspaces/{workspace_name}", ADMIN),
    row("GET", "3.0/mlflow/jobs/{job_id}", ADMIN),
    row("PATCH", "3.0/mlflow/jobs/cancel/{job_id}", ADMIN),
    row("GET POST PUT PATCH DELETE", "3.0/jobs/{rest:path}", ADMIN),
    row("POST", "3.0/jobs/", ADMIN),
    row("POST", "3.0/mlflow/demo/generate", ADMIN),
    row("POST", "3.0/mlflow/demo/delete", ADMIN),
    row("GET POST", "3.0/mlflow/mcp-servers", ADMIN),
    row("GET POST PUT PATCH DELETE", "3.0/mlflow/mcp-servers/{rest:path}", ADMIN),
    row("GET POST", "3.0/mlflow/skills", ADMIN),
    row("GET POST PUT PATCH DELETE", "3.0/mlflow/skills/{rest:path}", ADMIN),
    row("GET POST PUT PATCH DELETE", "2.0/mlflow/users/{rest:path}", ADMIN),
    row("GET POST PUT PATCH DELETE", "3.0/mlflow/users/{rest:path}", ADMIN),
    row("GET POST PUT PATCH DELETE", "3.0/mlflow/roles/{rest:path}", ADMIN),
    # --- MLflow's assistant runs tools on the server's host: refused for everyone -------------
    row("GET POST PUT PATCH DELETE", "3.0/mlflow/assistant/{rest:path}", REFUSED),
)

API_PREFIXES = ("/api/", "/ajax-api/")
_PARAM = re.compile(r"\{(\w+)(:path)?\}")


def _regex(pattern: str) -> re.Pattern[str]:
    out, pos = "", 0
    for m in _PARAM.finditer(pattern):
        out += re.escape(pattern[pos:m.start()])
        out += f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)"
        pos = m.end()
    return re.compile(out + re.escape(pattern[pos:]) + r"\Z")


def _full_patterns(route: Route) -> list[str]:
    if route.pattern.startswith("/"):
        return [route.pattern]
    return [p + route.pattern for p in API_PREFIXES]


class RouteTable:
    """Matches (method, path) to a row: one dict lookup for fixed paths, then the parameterised rows."""

    def __init__(self, routes: tuple[Route, ...] = ROUTES) -> None:
        self.fixed: dict[tuple[str, str], Route] = {}
        self.params: dict[str, list[tuple[re.Pattern[str], Route]]] = {}
        for route in routes:
            for full in _full_patterns(route):
                for method in route.methods:
                    if _PARAM.search(full):
                        self.params.setdefault(method, []).append((_regex(full), route))
                    elif (method, full) in self.fixed:
                        raise ValueError(f"route {method} {full} is listed twice")
                    else:
                        self.fixed[(method, full)] = route

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        if method == "HEAD":
            method = "GET"
        route = self.fixed.get((method, path))
        if route is not None:
            return route, {}
        for regex, route in self.params.get(method, ()):
            found = regex.match(path)
            if found:
                return route, found.groupdict()
        return None

"""The MLflow route table, as data.

Each row says, for one (method, path pattern): who may call it at all (`access`), where the ids
it touches are read (`needs`: which parameter, what it names, the level needed), which rewrite
applies before forwarding, and who answers it (the upstream, a filtered search, GraphQL, an
artifact view or the artifact protocol of the gate's stores). Rows whose path starts with a
version ("2.0/...", "3.0/...") exist under both `/api/` and `/ajax-api/`, as in MLflow.

Every field is typed: a misspelt kind, rewrite or search fails when this module is imported.
A route that no row matches is unknown: admins only. `tests/unit/test_route_coverage.py` checks
that every route the installed MLflow serves matches a row.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .policy import Level

R, E, M = Level.READ, Level.EDIT, Level.MANAGE


class Access(enum.Enum):
    PUBLIC = "public"          # no credential needed
    SIGNED_IN = "signed_in"    # any authenticated caller
    CHECKED = "checked"        # authenticated, then every `need` is decided
    ADMIN = "admin"            # admins only
    REFUSED = "refused"        # nobody, admins included


PUBLIC, SIGNED_IN, CHECKED, ADMIN, REFUSED = (Access.PUBLIC, Access.SIGNED_IN, Access.CHECKED, Access.ADMIN,
                                              Access.REFUSED)


class Source(enum.Enum):
    """Where MLflow reads the request's parameters."""
    PROTO = "proto"            # as MLflow's _get_request_message: the query of a GET, else the JSON body
    QUERY = "query"            # request.args only
    OTLP = "otlp"              # an OTLP ExportTraceServiceRequest (protobuf or JSON, maybe compressed): `otlp.py`
    NONE = "none"              # no parameters the gate needs


class Names(enum.Enum):
    """What an id in a request names, and so how it is resolved to the name the policy decides on."""
    EXPERIMENT = "experiment"              # an experiment id
    EXPERIMENT_NAME = "experiment_name"    # an existing experiment's name
    NEW_EXPERIMENT = "new_experiment"      # the name of an experiment to create
    RUN = "run"
    RUN_OWNED = "run_owned"                # a run; manage is needed unless the caller created it
    TRACE = "trace"
    NEW_TRACE = "new_trace"                # a trace id the client chooses: new (not stored yet), or an existing trace
    ASSESSMENT = "assessment"              # an assessment id: must be one of the trace's that `within` names
    LOGGED_MODEL = "logged_model"
    MODEL = "model"                        # a registered model's (or prompt's) name
    PROMPT_URI = "prompt_uri"              # prompts:/NAME/VERSION or prompts:/NAME@ALIAS
    NEW_MODEL = "new_model"
    DATASET = "dataset"
    ARTIFACT_PATH = "artifact_path"        # an mlflow-artifacts path: <experiment id>/...
    SOURCE_URI = "source_uri"              # a model version's source


class Rewrite(enum.Enum):
    """A change the gate makes to the request body before forwarding (`rewrite.py`)."""
    EXPERIMENT_CREATE = "experiment_create"
    EXPERIMENT_TAG = "experiment_tag"
    RUN_CREATE = "run_create"
    PROMPTLAB_RUN = "promptlab_run"        # runs/create-promptlab-run: `user_id` is the caller
    RUN_SET_TAG = "run_set_tag"
    RUN_LOG_BATCH = "run_log_batch"
    TAG_VALUE = "tag_value"                # a key/value tag body: `mlflow.user` can only be the caller
    TAG_LIST = "tag_list"                  # a `tags` list on an existing object: the same
    CREATED_WITH_TAGS = "created_with_tags"    # a creation with a `tags` list: `mlflow.user` is the caller
    TRACE_START_V3 = "trace_start_v3"      # the trace's `mlflow.user` metadata is the caller
    TRACE_START_V2 = "trace_start_v2"
    TRACE_END_V2 = "trace_end_v2"
    OTLP_SPANS = "otlp_spans"              # root spans carry the caller as the trace's `mlflow.user` tag
    DATASET_CREATE = "dataset_create"      # `tags` (a JSON string) gets `mlflow.user` = the caller
    DATASET_TAGS = "dataset_tags"
    DATASET_RECORDS = "dataset_records"    # each record's `mlflow.user` tag is the caller
    ISSUE_CREATE = "issue_create"          # `created_by` is the caller
    ASSESSMENT_CREATE = "assessment_create"    # a person's (HUMAN) assessment is the caller's


class Search(enum.Enum):
    """A search whose answer the gate cuts to what the caller may read (`filters.py`)."""
    EXPERIMENTS = "experiments"
    REGISTERED_MODELS = "registered_models"
    MODEL_VERSIONS = "model_versions"
    # items decided by the experiments they belong to (`scoped_search.py`)
    DATASETS = "datasets"
    ISSUES = "issues"
    SCORERS = "scorers"


class View(enum.Enum):
    """One of the UI's artifact views, answered from the gate's own stores (`artifact_views.py`)."""
    RUN_FILE = "run_file"
    RUN_LIST = "run_list"
    LOGGED_MODEL_FILE = "logged_model_file"
    MODEL_VERSION_FILE = "model_version_file"
    PRESIGNED_DOWNLOAD = "presigned_download"      # a URL for one object, from a direct store (`storage.direct`)
    PRESIGNED_UPLOAD = "presigned_upload"


class Answer(enum.Enum):
    """A request the gate answers itself, never forwarded (`ui.py`): what the MLflow UI asks a server that has
    accounts, answered from the gate's own sign-in and policy."""
    CURRENT_USER = "current_user"            # who is signed in (the UI's account menu); its sign-out ends the session
    MY_PERMISSIONS = "my_permissions"        # the caller's access as MLflow's permission rows
    MY_ROLES = "my_roles"                    # ... as MLflow's roles (the account page), for the caller only
    PASSWORD = "password"                    # the UI's "change password": passwords live in the policy
    ASSISTANT_CONFIG = "assistant_config"    # no provider, no remote access: the assistant stays off
    ASSISTANT_PROVIDERS = "assistant_providers"


@dataclass(frozen=True)
class Need:
    """One resource a request touches.

    fields: where the ids are: a parameter name (its camelCase twin is read too), `path:NAME` for a
            URL parameter, `header:NAME`, or a dotted path into the JSON body where `[]` walks a list.
    within: for an id the client chooses, the field naming where an existing object must already lie
            (NEW_TRACE: the experiment; ASSESSMENT: the trace).
    alias:  on a model, where the request names an alias it sets, moves or deletes (read like `fields`):
            an alias the owning team lists in `protected_aliases` needs manage on the model.
    """
    what: Names
    fields: tuple[str, ...]
    level: Level
    optional: bool = False
    within: str | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "what", Names(self.what))
        if self.alias is not None and self.what is not Names.MODEL:
            raise ValueError(f"only a model has aliases, not {self.what.value}")


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    pattern: str
    access: Access
    needs: tuple[Need, ...] = ()
    source: Source = Source.PROTO
    rewrite: Rewrite | None = None
    search: Search | None = None
    view: View | None = None
    answer: Answer | None = None   # answered by the gate itself (`ui.py`)
    ui_name_check: bool = False    # the UI's "is this name free?" lookup: under /ajax-api/ a refusal reads "missing"
    graphql: bool = False          # a GraphQL document, authorized per root field (`graphql.py`)
    artifacts: bool = False        # MLflow's artifact protocol, served from the gate's stores when they hold the path
    renames: bool = False          # a success may rename the experiment: its cached name is dropped
    missing: str | None = None     # MLflow's own message for a missing required id, where its handler has one

    def __post_init__(self) -> None:
        object.__setattr__(self, "access", Access(self.access))
        object.__setattr__(self, "source", Source(self.source))
        for name, kind in (("rewrite", Rewrite), ("search", Search), ("view", View), ("answer", Answer)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, kind(value))


UNKNOWN = Route(frozenset(), "(unknown route)", Access.ADMIN)


def need(what: Names | str, *fields: str, level: Level, optional: bool = False) -> Need:
    return Need(Names(what), fields, level, optional)


def exp(*fields: str, level: Level, optional: bool = False) -> Need:
    return Need(Names.EXPERIMENT, fields or ("experiment_id",), level, optional)


def run(*fields: str, level: Level, optional: bool = False) -> Need:
    return Need(Names.RUN, fields or ("run_id", "run_uuid"), level, optional)


def trace(*fields: str, level: Level) -> Need:
    return Need(Names.TRACE, fields, level)


def lm(*fields: str, level: Level, optional: bool = False) -> Need:
    return Need(Names.LOGGED_MODEL, fields or ("path:model_id",), level, optional)


def model(*fields: str, level: Level) -> Need:
    return Need(Names.MODEL, fields or ("name",), level)


def alias(level: Level) -> Need:
    """A registered model's (or prompt's) alias being set, moved or deleted: `level` on the model, manage
    when the owning team protects the alias."""
    return Need(Names.MODEL, ("name",), level, alias="alias")


def dataset(level: Level) -> Need:
    return Need(Names.DATASET, ("path:dataset_id",), level)


def art(level: Level) -> Need:
    return Need(Names.ARTIFACT_PATH, ("path:artifact_path",), level, False)


def row(methods: str, pattern: str, access: Access | str = CHECKED, *needs: Need, **kw: object) -> Route:
    return Route(frozenset(methods.split()), pattern, Access(access), tuple(needs), **kw)  # type: ignore[arg-type]


def checked(methods: str, pattern: str, *needs: Need, **kw: object) -> Route:
    return row(methods, pattern, CHECKED, *needs, **kw)


def artifacts(methods: str, pattern: str, *needs: Need) -> Route:
    """A route of MLflow's artifact protocol (`mlflow-artifacts`)."""
    return row(methods, pattern, CHECKED, *needs, source=Source.NONE, artifacts=True)


_V3_EXPERIMENT = "trace.trace_info.trace_location.mlflow_experiment.experiment_id"

ROUTES: tuple[Route, ...] = (
    # --- UI, server, misc --------------------------------------------------------------------
    row("GET", "/health", PUBLIC),
    row("GET", "/", SIGNED_IN, source=Source.NONE),
    row("GET", "/static-files/{path:path}", SIGNED_IN, source=Source.NONE),
    row("GET", "/favicon.ico", SIGNED_IN, source=Source.NONE),
    row("GET", "/version", SIGNED_IN, source=Source.NONE),
    row("GET", "3.0/mlflow/server-info", SIGNED_IN, source=Source.NONE),
    row("GET POST", "3.0/mlflow/ui-telemetry", SIGNED_IN, source=Source.NONE),
    row("GET", "/build/{filename:path}", ADMIN),
    row("GET POST", "/graphql", SIGNED_IN, source=Source.NONE, graphql=True),
    # --- experiments -------------------------------------------------------------------------
    checked("POST", "2.0/mlflow/experiments/create", need(Names.NEW_EXPERIMENT, "name", level=E),
            rewrite=Rewrite.EXPERIMENT_CREATE),
    checked("POST", "2.0/mlflow/experiments/delete", exp(level=M)),
    checked("POST", "2.0/mlflow/experiments/restore", exp(level=M)),
    checked("POST", "2.0/mlflow/experiments/delete-experiment-tag", exp(level=E), rewrite=Rewrite.EXPERIMENT_TAG),
    checked("POST", "2.0/mlflow/experiments/set-experiment-tag", exp(level=E), rewrite=Rewrite.EXPERIMENT_TAG),
    checked("GET", "2.0/mlflow/experiments/get", exp(level=R)),
    checked("GET", "2.0/mlflow/experiments/get-by-name", need(Names.EXPERIMENT_NAME, "experiment_name", level=R),
            ui_name_check=True),
    checked("POST", "2.0/mlflow/experiments/update", exp(level=M),
            need(Names.EXPERIMENT_NAME, "new_name", level=M, optional=True), renames=True),
    row("GET POST", "2.0/mlflow/experiments/search", SIGNED_IN, search=Search.EXPERIMENTS),
    checked("POST", "2.0/mlflow/experiments/search-datasets", exp("experiment_ids", level=R)),
    row("POST", "2.0mlflow/experiments/search-datasets", ADMIN),         # Databricks stub (sic)
    # --- runs, metrics, params, tags ---------------------------------------------------------
    checked("POST", "2.0/mlflow/runs/create", exp(level=E), rewrite=Rewrite.RUN_CREATE),
    checked("POST", "2.0/mlflow/runs/create-promptlab-run", exp(level=E), rewrite=Rewrite.PROMPTLAB_RUN),
    checked("POST", "2.0/mlflow/runs/delete", Need(Names.RUN_OWNED, ("run_id", "run_uuid"), E)),
    checked("POST", "2.0/mlflow/runs/restore", Need(Names.RUN_OWNED, ("run_id", "run_uuid"), E)),
    checked("POST", "2.0/mlflow/runs/delete-tag", run(level=E)),
    checked("POST", "2.0/mlflow/runs/set-tag", run(level=E), rewrite=Rewrite.RUN_SET_TAG),
    checked("POST", "2.0/mlflow/runs/update", run(level=E)),
    checked("POST", "2.0/mlflow/runs/log-parameter", run(level=E)),
    checked("POST", "2.0/mlflow/runs/log-model", run(level=E)),
    checked("POST", "2.0/mlflow/runs/log-metric", run(level=E), lm("model_id", level=E, optional=True)),
    checked("POST", "2.0/mlflow/runs/log-batch", run(level=E), lm("metrics[].model_id", level=E, optional=True),
            rewrite=Rewrite.RUN_LOG_BATCH),
    checked("POST", "2.0/mlflow/runs/log-inputs", run(level=E), lm("models[].model_id", level=E, optional=True)),
    checked("POST", "2.0/mlflow/runs/outputs", run(level=E), lm("models[].model_id", level=E, optional=True)),
    checked("GET", "2.0/mlflow/runs/get", run(level=R)),
    checked("POST", "2.0/mlflow/runs/search", exp("experiment_ids", level=R)),
    checked("GET", "2.0/mlflow/metrics/get-history", run(level=R)),
    checked("GET", "2.0/mlflow/metrics/get-history-bulk", run("run_id", level=R), source=Source.QUERY),
    checked("GET", "2.0/mlflow/metrics/get-history-bulk-interval", run("run_ids", level=R)),
    # --- run artifacts (served by the tracking server from a run id) --------------------------
    checked("GET", "/get-artifact", run(level=R), source=Source.QUERY, view=View.RUN_FILE),
    checked("POST", "2.0/mlflow/upload-artifact", run(level=E), source=Source.QUERY,
            missing="Request must specify run_uuid."),
    checked("GET", "2.0/mlflow/artifacts/list", run(level=R), view=View.RUN_LIST),
    checked("POST", "2.0/mlflow/artifacts/presigned-download-url", run(level=R), view=View.PRESIGNED_DOWNLOAD),
    checked("POST", "2.0/mlflow/artifacts/presigned-upload-url", run("run_id", level=E, optional=True),
            lm("model_id", level=E, optional=True), view=View.PRESIGNED_UPLOAD),
    # --- proxied artifacts (mlflow-artifacts:/<experiment id>/...) -----------------------------
    checked("GET", "2.0/mlflow-artifacts/artifacts", Need(Names.ARTIFACT_PATH, ("path",), R), artifacts=True),
    artifacts("GET", "2.0/mlflow-artifacts/artifacts/{artifact_path:path}", art(R)),
    artifacts("PUT", "2.0/mlflow-artifacts/artifacts/{artifact_path:path}", art(E)),
    artifacts("DELETE", "2.0/mlflow-artifacts/artifacts/{artifact_path:path}", art(M)),
    artifacts("POST", "2.0/mlflow-artifacts/mpu/create/{artifact_path:path}", art(E)),
    artifacts("POST", "2.0/mlflow-artifacts/mpu/complete/{artifact_path:path}", art(E)),
    artifacts("POST", "2.0/mlflow-artifacts/mpu/abort/{artifact_path:path}", art(E)),
    artifacts("GET", "2.0/mlflow-artifacts/presigned/{artifact_path:path}", art(R)),
    # --- traces and assessments --------------------------------------------------------------
    checked("GET", "2.0/mlflow/get-trace-artifact", trace("request_id", level=R), source=Source.QUERY),
    checked("GET", "3.0/mlflow/get-trace-artifact", trace("request_id", level=R), source=Source.QUERY),
    checked("GET", "2.0/mlflow/traces", exp("experiment_ids", level=R)),
    checked("POST", "2.0/mlflow/traces", exp(level=E), rewrite=Rewrite.TRACE_START_V2),
    checked("PATCH", "2.0/mlflow/traces/{request_id}", trace("path:request_id", level=E),
            rewrite=Rewrite.TRACE_END_V2),
    checked("GET", "2.0/mlflow/traces/{request_id}/info", trace("path:request_id", level=R)),
    checked("PATCH", "2.0/mlflow/traces/{request_id}/tags", trace("path:request_id", level=E),
            rewrite=Rewrite.TAG_VALUE),
    checked("DELETE", "2.0/mlflow/traces/{request_id}/tags", trace("path:request_id", level=E)),
    checked("POST", "2.0/mlflow/traces/delete-traces", exp(level=M)),
    checked("POST", "3.0/mlflow/traces/delete-traces", exp(level=M)),
    checked("POST", "2.0/mlflow/traces/link-prompts", trace("trace_id", level=E),
            model("prompt_versions[].name", level=R)),
    # The client links traces it has just made, whose spans may still be on their way: a trace id the upstream does
    # not know yet has nothing to decide (the run is the caller's to edit); a stored trace needs read.
    checked("POST", "2.0/mlflow/traces/link-to-run", run("run_id", level=E), Need(Names.NEW_TRACE, ("trace_ids",), R)),
    # MLflow merges a start on an existing trace id (moving it, with its assessments): a chosen trace id is new
    # or already in the target experiment, and assessment ids it carries are that trace's own.
    checked("POST", "3.0/mlflow/traces",
            exp(_V3_EXPERIMENT, level=E),
            Need(Names.NEW_TRACE, ("trace.trace_info.trace_id",), E, within=_V3_EXPERIMENT),
            Need(Names.ASSESSMENT, ("trace.trace_info.assessments[].assessment_id",
                                    "trace.trace_info.assessments[].overrides"), E, optional=True,
                 within="trace.trace_info.trace_id"),
            rewrite=Rewrite.TRACE_START_V3),
    checked("GET", "3.0/mlflow/traces/{trace_id}", trace("path:trace_id", level=R)),
    checked("PATCH", "3.0/mlflow/traces/{trace_id}/tags", trace("path:trace_id", level=E), rewrite=Rewrite.TAG_VALUE),
    checked("DELETE", "3.0/mlflow/traces/{trace_id}/tags", trace("path:trace_id", level=E)),
    # MLflow keeps a client-chosen assessment id (a duplicate of any trace's is a 500): only the trace's own.
    checked("POST", "3.0/mlflow/traces/{trace_id}/assessments", trace("path:trace_id", level=E),
            Need(Names.ASSESSMENT, ("assessment.assessment_id",), E, optional=True, within="path:trace_id"),
            rewrite=Rewrite.ASSESSMENT_CREATE),
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
    # OTLP: spans of an existing trace are appended to it wherever it lives; the run header links the traces.
    checked("POST", "/v1/traces", exp("header:x-mlflow-experiment-id", level=E),
            run("header:x-mlflow-run-id", level=E, optional=True),
            Need(Names.NEW_TRACE, ("trace_ids",), E, optional=True), source=Source.OTLP, rewrite=Rewrite.OTLP_SPANS),
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
    checked("POST", "2.0/mlflow/logged-models", exp(level=E), run("source_run_id", level=R, optional=True),
            rewrite=Rewrite.CREATED_WITH_TAGS),
    checked("POST", "2.0/mlflow/logged-models/search", exp("experiment_ids", level=R)),
    checked("GET", "2.0/mlflow/logged-models/{model_id}", lm(level=R)),
    checked("PATCH", "2.0/mlflow/logged-models/{model_id}", lm(level=E)),
    checked("DELETE", "2.0/mlflow/logged-models/{model_id}", lm(level=M)),
    checked("GET", "2.0/mlflow/logged-models/{model_id}/artifacts/directories", lm(level=R)),
    checked("GET", "2.0/mlflow/logged-models/{model_id}/artifacts/files", lm(level=R), source=Source.QUERY,
            view=View.LOGGED_MODEL_FILE),
    checked("POST", "2.0/mlflow/logged-models/{model_id}/params", lm(level=E)),
    checked("PATCH", "2.0/mlflow/logged-models/{model_id}/tags", lm(level=E), rewrite=Rewrite.TAG_LIST),
    checked("DELETE", "2.0/mlflow/logged-models/{model_id}/tags/{tag_key}", lm(level=E)),
    # --- model registry and prompts ----------------------------------------------------------
    checked("POST", "2.0/mlflow/registered-models/create", need(Names.NEW_MODEL, "name", level=E),
            rewrite=Rewrite.CREATED_WITH_TAGS),
    checked("GET", "2.0/mlflow/registered-models/get", model(level=R)),
    checked("GET POST", "2.0/mlflow/registered-models/get-latest-versions", model(level=R)),
    checked("POST", "2.0/mlflow/registered-models/rename", model(level=M), model("new_name", level=M)),
    checked("PATCH", "2.0/mlflow/registered-models/update", model(level=E)),
    checked("DELETE", "2.0/mlflow/registered-models/delete", model(level=M)),
    checked("POST", "2.0/mlflow/registered-models/set-tag", model(level=E), rewrite=Rewrite.TAG_VALUE),
    checked("DELETE", "2.0/mlflow/registered-models/delete-tag", model(level=E)),
    # An alias also goes with the version it points to or its model (delete) and travels with a rename: those
    # rows need manage anyway. No other route sets one (model-versions/create takes none; GraphQL has no
    # alias mutation; prompt aliases are these same routes).
    checked("GET", "2.0/mlflow/registered-models/alias", model(level=R)),
    checked("POST DELETE", "2.0/mlflow/registered-models/alias", alias(level=E)),
    row("GET", "2.0/mlflow/registered-models/search", SIGNED_IN, search=Search.REGISTERED_MODELS),
    checked("POST", "2.0/mlflow/model-versions/create", model(level=E), run("run_id", level=R, optional=True),
            lm("model_id", level=R, optional=True), Need(Names.SOURCE_URI, ("source",), R, optional=True),
            rewrite=Rewrite.CREATED_WITH_TAGS),
    checked("GET", "2.0/mlflow/model-versions/get", model(level=R)),
    checked("GET", "2.0/mlflow/model-versions/get-download-uri", model(level=R)),
    checked("GET", "/model-versions/get-artifact", model(level=R), source=Source.QUERY, view=View.MODEL_VERSION_FILE),
    checked("PATCH", "2.0/mlflow/model-versions/update", model(level=E)),
    checked("POST", "2.0/mlflow/model-versions/set-tag", model(level=E), rewrite=Rewrite.TAG_VALUE),
    checked("DELETE", "2.0/mlflow/model-versions/delete-tag", model(level=E)),
    checked("POST", "2.0/mlflow/model-versions/transition-stage", model(level=E)),
    checked("DELETE", "2.0/mlflow/model-versions/delete", model(level=M)),
    row("GET", "2.0/mlflow/model-versions/search", SIGNED_IN, search=Search.MODEL_VERSIONS),
    # --- evaluation datasets -----------------------------------------------------------------
    checked("POST", "3.0/mlflow/datasets/create", exp("experiment_ids", level=E), rewrite=Rewrite.DATASET_CREATE),
    checked("GET POST", "3.0/mlflow/datasets/search", exp("experiment_ids", level=R, optional=True),
            search=Search.DATASETS),
    checked("GET", "3.0/mlflow/datasets/{dataset_id}", dataset(R)),
    checked("DELETE", "3.0/mlflow/datasets/{dataset_id}", dataset(M)),
    checked("GET", "3.0/mlflow/datasets/{dataset_id}/experiment-ids", dataset(R)),
    checked("GET", "3.0/mlflow/datasets/{dataset_id}/records", dataset(R)),
    checked("POST", "3.0/mlflow/datasets/{dataset_id}/records", dataset(E), rewrite=Rewrite.DATASET_RECORDS),
    checked("DELETE", "3.0/mlflow/datasets/{dataset_id}/records", dataset(E)),
    checked("PATCH", "3.0/mlflow/datasets/{dataset_id}/tags", dataset(E), rewrite=Rewrite.DATASET_TAGS),
    checked("DELETE", "3.0/mlflow/datasets/{dataset_id}/tags/{key}", dataset(E)),
    checked("POST", "3.0/mlflow/datasets/{dataset_id}/add-experiments", dataset(E), exp("experiment_ids", level=E)),
    checked("POST", "3.0/mlflow/datasets/{dataset_id}/remove-experiments", dataset(E),
            exp("experiment_ids", level=E)),
    # --- issues, label schemas, review queues, scorers, evaluation: experiment-scoped ---------
    checked("POST", "3.0/mlflow/issues", exp(level=E), run("source_run_id", level=R, optional=True),
            rewrite=Rewrite.ISSUE_CREATE),
    checked("POST", "3.0/mlflow/issues/search", exp(level=R, optional=True), search=Search.ISSUES),
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
    checked("GET", "3.0/mlflow/scorers/list", exp("experiment_id", "experiment_ids", level=R, optional=True),
            search=Search.SCORERS),
    checked("DELETE", "3.0/mlflow/scorers/delete", exp(level=M)),
    checked("PUT", "3.0/mlflow/scorers/online-config", exp(level=E)),
    checked("POST", "3.0/mlflow/scorer/invoke", exp(level=E), trace("trace_ids", level=R)),
    checked("POST", "3.0/mlflow/genai/evaluate/invoke", exp(level=E)),
    # The job copies the dataset into the run and registers new versions of the prompt.
    checked("POST", "3.0/mlflow/prompt-optimization/jobs", exp(level=E), Need(Names.PROMPT_URI, ("source_prompt_uri",), E),
            Need(Names.DATASET, ("config.dataset_id",), R, optional=True)),
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
    # MLflow's accounts (its basic-auth app; the UI asks these on every page): answered by the gate, whose
    # accounts they are. The other account routes are admin-only.
    row("GET", "2.0/mlflow/users/current", SIGNED_IN, source=Source.NONE, answer=Answer.CURRENT_USER),
    row("GET", "3.0/mlflow/users/current/permissions", SIGNED_IN, source=Source.NONE, answer=Answer.MY_PERMISSIONS),
    row("GET", "3.0/mlflow/users/roles/list", SIGNED_IN, source=Source.QUERY, answer=Answer.MY_ROLES),
    row("PATCH", "2.0/mlflow/users/update-password", SIGNED_IN, source=Source.NONE, answer=Answer.PASSWORD),
    row("GET POST PUT PATCH DELETE", "2.0/mlflow/users/{rest:path}", ADMIN),
    row("GET POST PUT PATCH DELETE", "3.0/mlflow/users/{rest:path}", ADMIN),
    row("GET POST PUT PATCH DELETE", "3.0/mlflow/roles/{rest:path}", ADMIN),
    # --- MLflow's assistant runs tools on the server's host: refused for everyone -------------
    # (the settings the UI reads on every page are answered by the gate: no provider, no remote access)
    row("GET", "3.0/mlflow/assistant/config", SIGNED_IN, source=Source.NONE, answer=Answer.ASSISTANT_CONFIG),
    row("GET", "3.0/mlflow/assistant/providers", SIGNED_IN, source=Source.NONE, answer=Answer.ASSISTANT_PROVIDERS),
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

    def lookup(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The row for (method, path); `UNKNOWN` (admins only) when there is none."""
        return self.match(method, path) or (UNKNOWN, {})

"""MLflow's own checks of a request that it makes before it looks anything up, for the routes whose ids the gate
resolves first (issue 11 item 6).

Without them a malformed request naming an id the caller cannot resolve gets the gate's 403 where MLflow answers
400 (too many run ids, a missing `metric_key`, a promptlab run without its template). Each check reads the
request alone, never stored state, so it tells nothing about any object; the messages are MLflow's
(`mlflow/server/handlers.py`; those of its schema checks end with its pointer to the API docs), checked in
MLflow's order. Routes without an entry are checked by MLflow after the gate's decision, as before.
"""
from __future__ import annotations

from collections.abc import Callable

from .errors import BadRequest
from .params import Params, missing_value, schema_refusal

_MAX_RUN_IDS = 100                # handlers.MAX_RUNS_GET_METRIC_HISTORY_BULK, get_metric_history_bulk_handler
_MAX_RESULTS_PER_RUN = 2500       # handlers.MAX_RESULTS_PER_RUN
_MAX_EXPERIMENT_IDS = 20          # search_datasets_impl
_PROMPTLAB_FIELDS = ("experiment_id", "prompt_template", "prompt_parameters", "model_route", "model_input",
                     "mlflow_version")


def _int(params: Params, field: str) -> int | None:
    """A query integer MLflow would read, or None (absent, or not an integer: MLflow's own answer then)."""
    value = params.scalar(field)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _ids_at_most(params: Params, field: str, limit: int, missing: BadRequest, too_many: str,
                 refuse: Callable[[str], BadRequest] = BadRequest) -> None:
    """At least one id in `field` and at most `limit` (`too_many` formatted with their number `n`)."""
    ids = len(params.values(field))
    if not ids:
        raise missing
    if ids > limit:
        raise refuse(too_many.format(n=ids))


def _history_bulk(params: Params) -> None:
    _ids_at_most(params, "run_id", _MAX_RUN_IDS, BadRequest("GetMetricHistoryBulk request must specify at least one "
                 "run_id."), f"GetMetricHistoryBulk request cannot specify more than {_MAX_RUN_IDS} run_ids. "
                 "Received {n} run_ids.")
    if not params.values("metric_key"):
        raise BadRequest("GetMetricHistoryBulk request must specify a metric_key.")


def _history_bulk_interval(params: Params) -> None:
    _ids_at_most(params, "run_ids", _MAX_RUN_IDS, missing_value("run_ids"), "GetMetricHistoryBulkInterval request "
                 f"must specify at most {_MAX_RUN_IDS} run_ids. Received {{n}} run_ids.", schema_refusal)
    if not any(params.values("metric_key")):          # "" is missing here (a schema check), not in the bulk handler
        raise missing_value("metric_key")
    max_results = _int(params, "max_results")
    if max_results is not None and not 1 <= max_results <= _MAX_RESULTS_PER_RUN:
        raise schema_refusal(f"max_results must be between 1 and {_MAX_RESULTS_PER_RUN}.")
    start, end = _int(params, "start_step"), _int(params, "end_step")
    if start is not None and end is not None and start > end:
        raise BadRequest(f"end_step must be greater than start_step. Found start_step={start} and end_step={end}.")
    if (start is None) != (end is None):
        raise BadRequest("If either start step or end step are specified, both must be specified.")


def _search_datasets(params: Params) -> None:
    _ids_at_most(params, "experiment_ids", _MAX_EXPERIMENT_IDS, BadRequest("SearchDatasets request must specify at "
                 "least one experiment_id."), f"SearchDatasets request cannot specify more than {_MAX_EXPERIMENT_IDS} "
                 "experiment_ids. Received {n} experiment_ids.")


def _promptlab_run(params: Params) -> None:
    for field in _PROMPTLAB_FIELDS:
        if not params.values(field):
            raise BadRequest(f"CreatePromptlabRun request must specify {field}.")


PRECHECKS: dict[str, Callable[[Params], None]] = {
    "2.0/mlflow/metrics/get-history-bulk": _history_bulk,
    "2.0/mlflow/metrics/get-history-bulk-interval": _history_bulk_interval,
    "2.0/mlflow/experiments/search-datasets": _search_datasets,
    "2.0/mlflow/runs/create-promptlab-run": _promptlab_run,
}


def precheck(pattern: str, params: Params) -> None:
    """MLflow's 400 for a request to `pattern` it refuses before any lookup; nothing for a well-formed one."""
    check = PRECHECKS.get(pattern)
    if check is not None:
        check(params)

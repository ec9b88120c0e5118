"""Steps: the other team's objects (direct works; the gate refuses or hides them), then clean-up."""
from __future__ import annotations

from typing import Any

from wf_steps import Ctx, folder, step

# --- the other team's objects: direct works, the gate refuses or hides them -------------------------------------

@step("cross-team: get experiment", gate="denied")
def x_get_experiment(c: Ctx) -> Any:
    c.client.get_experiment(c.seed["beta_exp"])


@step("cross-team: get run", gate="denied")
def x_get_run(c: Ctx) -> Any:
    c.client.get_run(c.seed["beta_run"])


@step("cross-team: log metric", gate="denied")
def x_log_metric(c: Ctx) -> Any:
    c.client.log_metric(c.seed["beta_run"], "intrusion", 1.0)


@step("cross-team: search runs", gate="denied")
def x_search_runs(c: Ctx) -> Any:
    c.client.search_runs([c.seed["beta_exp"]])


@step("cross-team: download artifact", gate="denied")
def x_download(c: Ctx) -> Any:
    c.client.download_artifacts(c.seed["beta_run"], "note.txt", folder(c.tmp / "stolen"))


@step("cross-team: create experiment in their namespace", gate="denied")
def x_create_experiment(c: Ctx) -> Any:
    c.client.create_experiment(f"beta/intruder-{c.uid}")


@step("cross-team: get registered model", gate="denied")
def x_get_model(c: Ctx) -> Any:
    c.client.get_registered_model(c.seed["beta_model"])


@step("cross-team: set alias", gate="denied")
def x_set_alias(c: Ctx) -> Any:
    c.client.set_registered_model_alias(c.seed["beta_model"], "mine", "1")


@step("cross-team: get trace", gate="denied")
def x_get_trace(c: Ctx) -> Any:
    c.client.get_trace(c.seed["beta_trace"])


@step("cross-team: set trace tag", gate="denied")
def x_set_trace_tag(c: Ctx) -> Any:
    c.client.set_trace_tag(c.seed["beta_trace"], "owned", "alpha")


@step("cross-team: search experiments", gate="hidden")
def x_search_experiments(c: Ctx) -> Any:
    return [e.name for e in c.client.search_experiments(filter_string=f"name LIKE 'beta/compat-{c.uid}%'")]


@step("cross-team: search registered models", gate="hidden")
def x_search_models(c: Ctx) -> Any:
    return [m.name for m in c.client.search_registered_models(f"name = '{c.seed['beta_model']}'")]


@step("run: delete own run")
def run_delete(c: Ctx) -> Any:
    c.client.delete_run(c.state["run"])
    return c.client.get_run(c.state["run"]).info.lifecycle_stage

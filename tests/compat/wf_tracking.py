"""Steps: the other team's seed objects, experiments, runs, artifacts, an sklearn model, the registry."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from wf_steps import Ctx, folder, state_of, step, trace_id_of, training_data

# --- the other team (bob) --------------------------------------------------------------------------------------

@step("seed: create experiment", phase="seed")
def seed_experiment(c: Ctx) -> Any:
    c.state["beta_exp"] = c.client.create_experiment(f"beta/compat-{c.uid}")


@step("seed: run with param and artifact", phase="seed")
def seed_run(c: Ctx) -> Any:
    run = c.client.create_run(c.state["beta_exp"])
    c.state["beta_run"] = run.info.run_id
    c.client.log_param(run.info.run_id, "secret", "beta")
    c.client.log_text(run.info.run_id, "beta secret", "note.txt")


@step("seed: registered model with a version", phase="seed")
def seed_model(c: Ctx) -> Any:
    name = f"beta-compat-{c.uid}"
    c.client.create_registered_model(name)
    c.client.create_model_version(name, f"runs:/{c.state['beta_run']}/note.txt", run_id=c.state["beta_run"])
    c.state["beta_model"] = name


@step("seed: trace", phase="seed")
def seed_trace(c: Ctx) -> Any:
    span = c.client.start_trace("beta-trace", experiment_id=c.state["beta_exp"])
    c.state["beta_trace"] = trace_id_of(span)
    c.client.end_trace(trace_id_of(span))
    found = [t.info for t in c.client.search_traces([c.state["beta_exp"]]) if trace_id_of(t.info) == trace_id_of(span)]
    return [state_of(info) for info in found]


# --- experiments and runs --------------------------------------------------------------------------------------

@step("experiment: create")
def experiment_create(c: Ctx) -> Any:
    c.state["exp_name"] = f"alpha/compat-{c.uid}"
    c.state["exp"] = c.client.create_experiment(c.state["exp_name"])


@step("experiment: get by name")
def experiment_get_by_name(c: Ctx) -> Any:
    return c.client.get_experiment_by_name(c.state["exp_name"]).experiment_id == c.state["exp"]


@step("experiment: set tag")
def experiment_set_tag(c: Ctx) -> Any:
    c.client.set_experiment_tag(c.state["exp"], "stage", "compat")


@step("experiment: get")
def experiment_get(c: Ctx) -> Any:
    return c.client.get_experiment(c.state["exp"]).tags.get("stage")


@step("experiment: set active (fluent)")
def experiment_set_active(c: Ctx) -> Any:
    import mlflow

    return mlflow.set_experiment(c.state["exp_name"]).experiment_id == c.state["exp"]


@step("run: start (fluent)")
def run_start(c: Ctx) -> Any:
    import mlflow

    c.state["run"] = mlflow.start_run(run_name="compat").info.run_id


@step("run: log param")
def run_log_param(c: Ctx) -> Any:
    import mlflow

    mlflow.log_param("C", 1.0)


@step("run: log metric steps")
def run_log_metric(c: Ctx) -> Any:
    import mlflow

    for s in range(3):
        mlflow.log_metric("loss", 1 / (s + 1), step=s)


@step("run: log batch")
def run_log_batch(c: Ctx) -> Any:
    from mlflow.entities import Metric, Param, RunTag

    c.client.log_batch(c.state["run"], metrics=[Metric("acc", 0.9, 0, 0)], params=[Param("solver", "lbfgs")],
                       tags=[RunTag("batch", "yes")])


@step("run: set tag")
def run_set_tag(c: Ctx) -> Any:
    c.client.set_tag(c.state["run"], "purpose", "compat")


@step("run: get")
def run_get(c: Ctx) -> Any:
    data = c.client.get_run(c.state["run"]).data
    return {"params": data.params, "metrics": data.metrics,
            "tags": {k: data.tags.get(k) for k in ("purpose", "batch")}}


@step("run: metric history")
def run_metric_history(c: Ctx) -> Any:
    return [(m.step, m.value) for m in c.client.get_metric_history(c.state["run"], "loss")]


@step("artifact: log file")
def artifact_log_file(c: Ctx) -> Any:
    import mlflow

    path = c.tmp / "hello.txt"
    path.write_text("hello from compat")
    mlflow.log_artifact(str(path))


@step("artifact: log dict in a folder")
def artifact_log_dict(c: Ctx) -> Any:
    import mlflow

    mlflow.log_dict({"a": 1}, "configs/params.json")


@step("artifact: list")
def artifact_list(c: Ctx) -> Any:
    top = [f.path for f in c.client.list_artifacts(c.state["run"])]
    return sorted(top + [f.path for f in c.client.list_artifacts(c.state["run"], "configs")])


@step("artifact: download")
def artifact_download(c: Ctx) -> Any:
    local = c.client.download_artifacts(c.state["run"], "hello.txt", folder(c.tmp / "dl"))
    return Path(local).read_text()


@step("model: log sklearn model")
def model_log(c: Ctx) -> Any:
    import inspect

    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    x, y = training_data()
    fitted = LogisticRegression().fit(x, y)
    where = "name" if "name" in inspect.signature(mlflow.sklearn.log_model).parameters else "artifact_path"
    c.state["model_uri"] = mlflow.sklearn.log_model(fitted, input_example=x[:2], **{where: "model"}).model_uri


@step("model: load back and predict")
def model_load(c: Ctx) -> Any:
    import mlflow.sklearn

    return mlflow.sklearn.load_model(c.state["model_uri"]).predict(training_data()[0][:5]).tolist()


@step("run: end")
def run_end(c: Ctx) -> Any:
    import mlflow

    mlflow.end_run()
    return c.client.get_run(c.state["run"]).info.status


@step("search: runs by param")
def search_runs(c: Ctx) -> Any:
    return len(c.client.search_runs([c.state["exp"]], "params.C = '1.0'"))


@step("search: experiments by name")
def search_experiments(c: Ctx) -> Any:
    return [e.name for e in c.client.search_experiments(filter_string=f"name LIKE 'alpha/compat-{c.uid}%'")]


@step("search: logged models", since="3.1")
def search_logged_models(c: Ctx) -> Any:
    return len(c.client.search_logged_models(experiment_ids=[c.state["exp"]]))


# --- registry --------------------------------------------------------------------------------------------------

@step("registry: create model")
def registry_create(c: Ctx) -> Any:
    c.state["model"] = c.client.create_registered_model(f"alpha-compat-{c.uid}").name


@step("registry: register version from the logged model")
def registry_version(c: Ctx) -> Any:
    import mlflow

    c.state["version"] = mlflow.register_model(c.state["model_uri"], c.state["model"]).version
    return c.state["version"]


@step("registry: set version tag")
def registry_version_tag(c: Ctx) -> Any:
    c.client.set_model_version_tag(c.state["model"], c.state["version"], "validated", "yes")


@step("registry: set alias")
def registry_set_alias(c: Ctx) -> Any:
    c.client.set_registered_model_alias(c.state["model"], "champion", c.state["version"])


@step("registry: get version by alias")
def registry_get_alias(c: Ctx) -> Any:
    mv = c.client.get_model_version_by_alias(c.state["model"], "champion")
    return {"version": mv.version, "tag": mv.tags.get("validated")}


@step("registry: load model by alias")
def registry_load_alias(c: Ctx) -> Any:
    import mlflow.sklearn

    model = mlflow.sklearn.load_model(f"models:/{c.state['model']}@champion")
    return model.predict(training_data()[0][:5]).tolist()


@step("registry: update description")
def registry_update(c: Ctx) -> Any:
    c.client.update_registered_model(c.state["model"], description="compat model")
    return c.client.get_registered_model(c.state["model"]).description


@step("search: registered models")
def registry_search(c: Ctx) -> Any:
    return [m.name for m in c.client.search_registered_models(f"name = '{c.state['model']}'")]


@step("search: model versions")
def registry_search_versions(c: Ctx) -> Any:
    return [v.version for v in c.client.search_model_versions(f"name = '{c.state['model']}'")]


@step("registry: delete alias")
def registry_delete_alias(c: Ctx) -> Any:
    c.client.delete_registered_model_alias(c.state["model"], "champion")

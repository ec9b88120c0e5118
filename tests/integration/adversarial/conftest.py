"""One object of every kind for team alpha (alice, the attacker's own) and team beta (bob, the victim), made with the
real `mlflow` client through the gate, once per backend."""
from __future__ import annotations

import mlflow
import pytest

from tests.integration.adversarial.adv_it import Objects
from tests.integration.gate_it import ALICE, BOB, World, uid


def _objects_of(gate, user: str, team: str, exp: str, run: str, exp_name: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from mlflow.genai import datasets

    client = gate.client(user)
    n = uid()
    with client.acting():
        mlflow.set_experiment(experiment_id=exp)
        with mlflow.start_span(name=f"{team}-adv") as span:
            span.set_inputs({"q": f"{team}-secret"})
        trace_id = mlflow.get_last_active_trace_id()
        assert trace_id
        feedback = mlflow.log_feedback(trace_id=trace_id, name="quality", value=1.0)
        dataset = datasets.create_dataset(name=f"{team}-adv-{n}", experiment_id=[exp])
        prompt = f"{team}-adv-prompt-{n}"
        mlflow.genai.register_prompt(name=prompt, template="Hello {{x}}")
    model = f"{team}-adv-{n}"
    client.create_registered_model(model)
    artifact_uri = client.get_run(run).info.artifact_uri
    client.create_model_version(model, f"{artifact_uri}/notes", run_id=run)
    logged = client.create_logged_model(exp, name=f"{team}-adv").model_id
    return {
        "experiment": exp, "experiment_name": exp_name, "run": run, "trace": trace_id, "logged_model": logged,
        "assessment": feedback.assessment_id,
        "dataset": dataset.dataset_id, "model": model, "prompt_uri": f"prompts:/{prompt}/1",
        "artifact_path": f"{exp}/{run}/artifacts/notes/readme.txt", "source_run": f"runs:/{run}/notes",
        "source_model": f"models:/{logged}", "source_version": f"models:/{model}/1",
        "source_artifacts": f"mlflow-artifacts:/{exp}/{run}/artifacts/notes",
    }


@pytest.fixture(scope="session")
def objects(gate, world: World) -> Objects:  # type: ignore[no-untyped-def]
    return Objects(own=_objects_of(gate, ALICE, "alpha", world.alpha_exp, world.alpha_run, "alpha/base"),
                   foreign=_objects_of(gate, BOB, "beta", world.beta_exp, world.beta_run, "beta/base"))

"""Model registry through the gate: registered models, model versions, aliases and prompts."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from tests.integration.gate_it import ALICE, BOB, MO, ROOT, World, denied, is_denied, search_pages, uid

pytestmark = pytest.mark.integration


def model_names(client, **kwargs) -> list[str]:  # type: ignore[no-untyped-def]
    return [m.name for page in search_pages(client.search_registered_models, max_results=100, **kwargs) for m in page]


def run_with_model_files(client, experiment_id: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A run with a (tiny) model directory among its artifacts; returns (run_id, source URI)."""
    run_id = client.create_run(experiment_id).info.run_id
    client.log_text(run_id, "artifact_path: model\nflavors: {}\n", "model/MLmodel")
    return run_id, f"{client.get_run(run_id).info.artifact_uri}/model"


def test_registered_models(gate):
    alice, bob, mo, root = gate.client(ALICE), gate.client(BOB), gate.client(MO), gate.client(ROOT)
    n = uid()
    alice.create_registered_model(f"alpha-m-{n}", description="alpha's")
    bob.create_registered_model(f"beta-m-{n}")
    bob.create_registered_model(f"shared-m-{n}")  # everyone may edit shared- names
    with denied():
        alice.create_registered_model(f"beta-x-{n}")
    with denied():
        bob.create_registered_model(f"alpha-x-{n}")
    with denied():
        alice.create_registered_model(f"unowned-{n}")
    assert alice.get_registered_model(f"alpha-m-{n}").description == "alpha's"
    with denied():
        bob.get_registered_model(f"alpha-m-{n}")
    with denied():
        alice.get_registered_model(f"beta-m-{n}")

    alice.update_registered_model(f"alpha-m-{n}", description="v2")
    alice.set_registered_model_tag(f"alpha-m-{n}", "k", "v")
    with denied():
        bob.update_registered_model(f"alpha-m-{n}", description="bob")
    with denied():
        bob.set_registered_model_tag(f"alpha-m-{n}", "k", "bob")
    model = alice.get_registered_model(f"alpha-m-{n}")
    assert (model.description, model.tags) == ("v2", {"k": "v", "mlflow.user": ALICE})  # the gate records the creator

    # search: only readable names, also with a filter
    assert set(model_names(alice, filter_string=f"name LIKE '%{n}%'")) == {f"alpha-m-{n}", f"shared-m-{n}"}
    assert set(model_names(bob, filter_string=f"name LIKE '%{n}%'")) == {f"beta-m-{n}", f"shared-m-{n}"}
    assert all(name.startswith(("alpha-", "shared-")) for name in model_names(alice))
    assert set(model_names(root, filter_string=f"name LIKE '%{n}%'")) == {
        f"alpha-m-{n}", f"beta-m-{n}", f"shared-m-{n}"}

    # rename: manage on both names; delete: manage
    with denied():
        alice.rename_registered_model(f"alpha-m-{n}", f"alpha-renamed-{n}")
    with denied():
        mo.rename_registered_model(f"alpha-m-{n}", f"beta-moved-{n}")
    mo.rename_registered_model(f"alpha-m-{n}", f"alpha-renamed-{n}")
    assert alice.get_registered_model(f"alpha-renamed-{n}").description == "v2"
    with denied():
        alice.delete_registered_model(f"alpha-renamed-{n}")
    with denied():
        bob.delete_registered_model(f"alpha-renamed-{n}")
    mo.delete_registered_model(f"alpha-renamed-{n}")
    assert f"alpha-renamed-{n}" not in model_names(root, filter_string=f"name LIKE '%{n}%'")


def test_model_versions(gate, world: World, tmp_path: Path):
    alice, bob, mo = gate.client(ALICE), gate.client(BOB), gate.client(MO)
    n = uid()
    name = f"alpha-mv-{n}"
    alice.create_registered_model(name)
    run_id, source = run_with_model_files(alice, world.alpha_exp)
    mv = alice.create_model_version(name, source, run_id=run_id)
    assert mv.version == "1"
    assert alice.get_model_version(name, "1").run_id == run_id
    alice.update_model_version(name, "1", description="first")
    alice.set_model_version_tag(name, "1", "validated", "yes")
    got = alice.get_model_version(name, "1")
    assert (got.description, got.tags) == ("first", {"validated": "yes", "mlflow.user": ALICE})
    versions = alice.search_model_versions(f"name = '{name}'")
    assert [v.version for v in versions] == ["1"]

    with denied():
        bob.get_model_version(name, "1")
    with denied():
        bob.create_model_version(name, source, run_id=run_id)
    with denied():
        bob.update_model_version(name, "1", description="bob")
    with denied():
        bob.set_model_version_tag(name, "1", "validated", "no")
    assert_no_versions_of(bob, name)

    # Creating a version needs read on the source run's experiment too.
    beta_name = f"beta-mv-{n}"
    bob.create_registered_model(beta_name)
    with denied():
        bob.create_model_version(beta_name, source, run_id=run_id)
    beta_run, beta_source = run_with_model_files(bob, world.beta_exp)
    assert bob.create_model_version(beta_name, beta_source, run_id=beta_run).version == "1"
    with denied():
        alice.create_model_version(name, beta_source, run_id=beta_run)

    # Downloading a version's files needs read on the model.
    with alice.acting():
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path / "a")))
        assert (local / "MLmodel").exists()
    with bob.acting(), denied():
        mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path / "b"))

    # Deleting a version needs manage.
    with denied():
        alice.delete_model_version(name, "1")
    mo.delete_model_version(name, "1")
    assert list(alice.search_model_versions(f"name = '{name}'")) == []


def assert_no_versions_of(client, name: str) -> None:  # type: ignore[no-untyped-def]
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception as exc:  # noqa: BLE001 - a refusal is also fine
        assert is_denied(exc), f"unexpected error: {exc!r}"
    else:
        assert list(versions) == []
    assert name not in {v.name for v in client.search_model_versions()}


def test_aliases(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    name = f"alpha-alias-{uid()}"
    alice.create_registered_model(name)
    run_id, source = run_with_model_files(alice, world.alpha_exp)
    alice.create_model_version(name, source, run_id=run_id)
    alice.create_model_version(name, source, run_id=run_id)
    alice.set_registered_model_alias(name, "champion", "2")
    assert alice.get_model_version_by_alias(name, "champion").version == "2"
    assert alice.get_registered_model(name).aliases == {"champion": "2"}
    with denied():
        bob.get_model_version_by_alias(name, "champion")
    with denied():
        bob.set_registered_model_alias(name, "champion", "1")
    with denied():
        bob.delete_registered_model_alias(name, "champion")
    assert alice.get_model_version_by_alias(name, "champion").version == "2"
    with alice.acting():
        assert mlflow.artifacts.load_text(f"models:/{name}@champion/MLmodel").startswith("artifact_path")
    alice.set_registered_model_alias(name, "champion", "1")
    assert alice.get_model_version_by_alias(name, "champion").version == "1"
    alice.delete_registered_model_alias(name, "champion")
    assert alice.get_registered_model(name).aliases == {}


def test_prompts(gate):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    name = f"alpha-prompt-{uid()}"
    with alice.acting():
        v1 = mlflow.genai.register_prompt(name=name, template="Hello {{name}}!", commit_message="first")
        assert v1.version == 1
        mlflow.genai.register_prompt(name=name, template="Hi {{name}}!")
        loaded = mlflow.genai.load_prompt(f"prompts:/{name}/1", cache_ttl_seconds=0)
        assert loaded.template == "Hello {{name}}!"
        assert loaded.format(name="Ann") == "Hello Ann!"
        mlflow.genai.set_prompt_alias(name, alias="prod", version=2)
        assert mlflow.genai.load_prompt(f"prompts:/{name}@prod", cache_ttl_seconds=0).template == "Hi {{name}}!"
        assert name in {p.name for p in mlflow.genai.search_prompts(max_results=1000)}
        with denied():
            mlflow.genai.register_prompt(name=f"beta-prompt-{uid()}", template="x")
    with bob.acting():
        with denied():
            mlflow.genai.load_prompt(f"prompts:/{name}/1", cache_ttl_seconds=0)
        with denied():
            mlflow.genai.load_prompt(f"prompts:/{name}@prod", cache_ttl_seconds=0)
        with denied():
            mlflow.genai.register_prompt(name=name, template="bob's version")
        with denied():
            mlflow.genai.set_prompt_alias(name, alias="prod", version=1)
        assert name not in {p.name for p in mlflow.genai.search_prompts(max_results=1000)}
        bob_prompt = f"beta-prompt-{uid()}"
        mlflow.genai.register_prompt(name=bob_prompt, template="Bob {{x}}")
    with alice.acting():
        with denied():
            mlflow.genai.load_prompt(f"prompts:/{bob_prompt}/1", cache_ttl_seconds=0)
        assert mlflow.genai.load_prompt(f"prompts:/{name}/2", cache_ttl_seconds=0).template == "Hi {{name}}!"

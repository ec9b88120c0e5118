"""Tracking families through the gate with the real `mlflow` client: experiments, runs, metrics, params, tags,
artifacts, identity and grants. Allowed calls must work as against a bare server; denied ones must raise the
gate's PERMISSION_DENIED."""
from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from tests.integration.gate_it import ALICE, BOB, MO, ROOT, World, denied, search_pages, uid

pytestmark = pytest.mark.integration


def all_experiment_names(client, **kwargs) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.name for page in search_pages(client.search_experiments, max_results=50, **kwargs) for e in page]


# ---------------------------------------------------------------------------------------------------------- identity


def test_client_sends_each_users_token(gate):
    """The helpers really switch identity: the client's credentials and the gate's idea of the caller change."""
    for user in (ALICE, BOB, ALICE):
        with gate.as_user(user):
            creds = get_default_host_creds(gate.url)
            assert creds.token == gate.token(user)
            assert creds.username is None and creds.password is None
            r = http_request(creds, "/_gate/me", "GET", extra_headers={"Accept": "application/json"})
            assert r.status_code == 200, r.text
            assert r.json()["id"] == user


def test_new_runs_get_authenticated_user_and_team_tags(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    run = alice.create_run(world.alpha_exp, tags={"mlflow.user": ROOT})
    tags = alice.get_run(run.info.run_id).data.tags
    assert tags["mlflow.user"] == ALICE
    assert tags["cost-center"] == "a-1"

    # The fluent API sets mlflow.user to the local OS user; the gate replaces it.
    with alice.acting(), mlflow.start_run(experiment_id=world.alpha_exp) as active:
        fluent_id = active.info.run_id
    tags = alice.get_run(fluent_id).data.tags
    assert tags["mlflow.user"] == ALICE
    assert tags["cost-center"] == "a-1"

    # A run in an experiment no team owns gets the caller but no team tags.
    shared_run = bob.create_run(world.shared_exp, tags={"mlflow.user": ALICE}).info.run_id
    tags = bob.get_run(shared_run).data.tags
    assert tags["mlflow.user"] == BOB
    assert "cost-center" not in tags


def test_group_membership_gives_team_access(gate, world: World):
    gina = gate.client("gina@corp.test", groups=("beta-team",))
    eid = gina.create_experiment(f"beta/by-group-{uid()}")
    assert gina.get_experiment(world.beta_exp).name == "beta/base"
    gina.create_run(eid)
    with denied():
        gina.get_experiment(world.alpha_exp)
    without_group = gate.client("gina@corp.test")
    with denied():
        without_group.get_experiment(world.beta_exp)


def test_admin_sees_and_manages_everything(gate, world: World):
    root = gate.client(ROOT)
    names = set(all_experiment_names(root))
    assert {"alpha/base", "beta/base", "alpha/public/base", "shared/base"} <= names
    assert root.get_run(world.beta_run).data.params["secret"] == "beta-secret"
    eid = root.create_experiment(f"unowned-{uid()}")
    root.delete_experiment(eid)


# ------------------------------------------------------------------------------------------------------- experiments


def test_experiment_create_in_own_prefix_only(gate):
    alice, bob, root = gate.client(ALICE), gate.client(BOB), gate.client(ROOT)
    n = uid()
    eid = alice.create_experiment(f"alpha/create-{n}")
    exp = alice.get_experiment(eid)
    assert exp.name == f"alpha/create-{n}"
    assert exp.tags.get("cost-center") == "a-1"  # the team's tags go on new experiments too
    with denied():
        bob.create_experiment(f"alpha/by-bob-{n}")
    with denied():
        alice.create_experiment(f"beta/by-alice-{n}")
    with denied():
        alice.create_experiment(f"unowned-{n}")  # default: none
    with denied():
        alice.create_experiment(f"alpha-not-a-folder-{n}")  # prefixes are plain string prefixes: "alpha/" only
    for name in (f"alpha/by-bob-{n}", f"beta/by-alice-{n}", f"unowned-{n}", f"alpha-not-a-folder-{n}"):
        assert root.get_experiment_by_name(name) is None


def test_experiment_get_and_get_by_name(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    assert alice.get_experiment(world.alpha_exp).name == "alpha/base"
    assert alice.get_experiment_by_name("alpha/base").experiment_id == world.alpha_exp
    assert alice.get_experiment_by_name(f"alpha/missing-{uid()}") is None  # allowed, so MLflow's own answer
    with denied():
        alice.get_experiment(world.beta_exp)
    with denied():
        alice.get_experiment_by_name("beta/base")
    with denied():
        bob.get_experiment(world.alpha_exp)
    with denied():
        bob.get_experiment_by_name("alpha/base")


def test_experiment_search_shows_only_readable(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    names = all_experiment_names(alice)
    assert {"alpha/base", "alpha/public/base", "shared/base"} <= set(names)
    assert all(n.startswith(("alpha/", "shared/")) for n in names), names
    assert len(names) == len(set(names))

    names = all_experiment_names(bob)
    assert {"beta/base", "alpha/public/base", "shared/base"} <= set(names)
    assert all(n.startswith(("beta/", "shared/", "alpha/public/")) for n in names), names

    assert all_experiment_names(alice, filter_string="name LIKE 'beta/%'") == []
    assert all_experiment_names(bob, filter_string="name = 'alpha/base'") == []


def test_experiment_rename_needs_manage_on_both_names(gate):
    alice, mo = gate.client(ALICE), gate.client(MO)
    n = uid()
    eid = alice.create_experiment(f"alpha/rename-{n}")
    with denied():
        alice.rename_experiment(eid, f"alpha/renamed-by-alice-{n}")  # edit is not enough
    with denied():
        mo.rename_experiment(eid, f"beta/moved-{n}")  # manage on the old name only
    assert alice.get_experiment(eid).name == f"alpha/rename-{n}"
    mo.rename_experiment(eid, f"alpha/renamed-{n}")
    assert alice.get_experiment(eid).name == f"alpha/renamed-{n}"


def test_experiment_delete_and_restore_need_manage(gate):
    alice, bob, mo = gate.client(ALICE), gate.client(BOB), gate.client(MO)
    eid = alice.create_experiment(f"alpha/delete-{uid()}")
    with denied():
        alice.delete_experiment(eid)
    with denied():
        bob.delete_experiment(eid)
    assert alice.get_experiment(eid).lifecycle_stage == "active"
    mo.delete_experiment(eid)
    assert alice.get_experiment(eid).lifecycle_stage == "deleted"
    with denied():
        alice.restore_experiment(eid)
    mo.restore_experiment(eid)
    assert alice.get_experiment(eid).lifecycle_stage == "active"


def test_experiment_tags(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    alice.set_experiment_tag(world.alpha_exp, "owner-note", "v1")
    assert alice.get_experiment(world.alpha_exp).tags["owner-note"] == "v1"
    with denied():
        bob.set_experiment_tag(world.alpha_exp, "owner-note", "bob")
    with denied():
        bob.set_experiment_tag(world.public_exp, "owner-note", "bob")  # a read grant does not allow writes
    with denied():
        alice.set_experiment_tag(world.beta_exp, "owner-note", "alice")
    with denied():
        bob.delete_experiment_tag(world.alpha_exp, "owner-note")
    assert alice.get_experiment(world.alpha_exp).tags["owner-note"] == "v1"
    alice.delete_experiment_tag(world.alpha_exp, "owner-note")
    assert "owner-note" not in alice.get_experiment(world.alpha_exp).tags


# -------------------------------------------------------------------------------------------------------------- runs


def test_run_create_get_update(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    run_id = alice.create_run(world.alpha_exp, run_name="first").info.run_id
    assert alice.get_run(run_id).info.run_name == "first"
    alice.update_run(run_id, status="FINISHED", name="second")
    info = alice.get_run(run_id).info
    assert (info.status, info.run_name) == ("FINISHED", "second")
    with denied():
        bob.get_run(run_id)
    with denied():
        bob.update_run(run_id, name="bob-was-here")
    with denied():
        bob.create_run(world.alpha_exp)
    with denied():
        alice.create_run(world.beta_exp)
    with denied():
        alice.get_run(world.beta_run)
    assert alice.get_run(run_id).info.run_name == "second"


def test_run_delete_own_edit_others_manage(gate, world: World):
    alice, bob, mo = gate.client(ALICE), gate.client(BOB), gate.client(MO)
    own = alice.create_run(world.alpha_exp).info.run_id
    mos = mo.create_run(world.alpha_exp).info.run_id
    other = alice.create_run(world.alpha_exp).info.run_id
    with denied():
        bob.delete_run(own)
    with denied():
        alice.delete_run(mos)  # another user's run: manage needed
    assert alice.get_run(mos).info.lifecycle_stage == "active"
    alice.delete_run(own)
    assert alice.get_run(own).info.lifecycle_stage == "deleted"
    mo.delete_run(other)  # the maintainer may delete anyone's run
    assert alice.get_run(other).info.lifecycle_stage == "deleted"


def test_run_search_across_experiments(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    shared_run = alice.create_run(world.shared_exp).info.run_id
    runs = alice.search_runs([world.alpha_exp, world.public_exp, world.shared_exp], max_results=1000)
    ids = {r.info.run_id for r in runs}
    assert {world.alpha_run, world.alpha_run2, world.public_run, shared_run} <= ids
    assert {r.info.experiment_id for r in runs} <= {world.alpha_exp, world.public_exp, world.shared_exp}

    # bob may read alpha/public/ (grant) but not alpha/base.
    runs = bob.search_runs([world.public_exp], filter_string="params.secret = 'public-data'")
    assert [r.info.run_id for r in runs] == [world.public_run]
    assert_denied_or_without(lambda: bob.search_runs([world.alpha_exp]), {world.alpha_run, world.alpha_run2})
    assert_denied_or_without(lambda: bob.search_runs([world.beta_exp, world.alpha_exp], max_results=1000),
                             {world.alpha_run, world.alpha_run2})

    # The fluent search over all experiments: only what alice may read.
    with alice.acting():
        found = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1000)
    exps = {r.info.experiment_id for r in found}
    assert world.alpha_exp in exps and world.beta_exp not in exps
    assert world.beta_run not in {r.info.run_id for r in found}


def assert_denied_or_without(call, forbidden: set[str]) -> None:  # type: ignore[no-untyped-def]
    """A search over something unreadable is either refused or answered without the unreadable objects."""
    try:
        results = call()
    except Exception as exc:  # noqa: BLE001 - checked below
        from tests.integration.gate_it import is_denied

        assert is_denied(exc), f"unexpected error: {exc!r}"
        return
    ids = {getattr(getattr(r, "info", r), "run_id", None) for r in results}
    assert not ids & forbidden, f"unreadable objects returned: {ids & forbidden}"


# ------------------------------------------------------------------------------------------- metrics, params, tags


def test_metrics(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    run_id = alice.create_run(world.alpha_exp).info.run_id
    now = int(time.time() * 1000)
    alice.log_metric(run_id, "acc", 0.1, timestamp=now, step=0)
    alice.log_batch(run_id, metrics=[Metric("acc", 0.2, now, 1), Metric("acc", 0.3, now, 2)])
    assert [m.value for m in alice.get_metric_history(run_id, "acc")] == [0.1, 0.2, 0.3]
    assert alice.get_run(run_id).data.metrics["acc"] == 0.3
    with denied():
        bob.log_metric(run_id, "acc", 9.0)
    with denied():
        bob.log_batch(run_id, metrics=[Metric("acc", 9.0, now, 3)])
    with denied():
        bob.get_metric_history(run_id, "acc")
    with denied():
        alice.log_metric(world.beta_run, "loss", 9.0)
    with denied():
        alice.get_metric_history(world.beta_run, "loss")
    assert [m.value for m in alice.get_metric_history(run_id, "acc")] == [0.1, 0.2, 0.3]
    assert [m.value for m in bob.get_metric_history(world.beta_run, "loss")] == [0.5]
    # read grant: bob reads the public run's metrics but cannot add to them
    assert [m.value for m in bob.get_metric_history(world.public_run, "loss")] == [0.5]
    with denied():
        bob.log_metric(world.public_run, "loss", 9.0)


def test_params(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    run_id = alice.create_run(world.alpha_exp).info.run_id
    alice.log_param(run_id, "lr", "0.01")
    alice.log_batch(run_id, params=[Param("layers", "3")])
    assert alice.get_run(run_id).data.params == {"lr": "0.01", "layers": "3"}
    with denied():
        bob.log_param(run_id, "bob", "1")
    with denied():
        bob.log_batch(run_id, params=[Param("bob", "1")])
    with denied():
        alice.log_param(world.beta_run, "alice", "1")
    assert "bob" not in alice.get_run(run_id).data.params
    assert bob.get_run(world.beta_run).data.params == {"secret": "beta-secret"}
    assert bob.get_run(world.public_run).data.params == {"secret": "public-data"}


def test_run_tags(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    run_id = alice.create_run(world.alpha_exp).info.run_id
    alice.set_tag(run_id, "stage", "dev")
    alice.log_batch(run_id, tags=[RunTag("team-note", "x")])
    tags = alice.get_run(run_id).data.tags
    assert (tags["stage"], tags["team-note"]) == ("dev", "x")
    with denied():
        bob.set_tag(run_id, "stage", "bob")
    with denied():
        bob.delete_tag(run_id, "stage")
    with denied():
        bob.set_tag(world.public_run, "stage", "bob")
    with denied():
        alice.set_tag(world.beta_run, "note", "alice")
    alice.delete_tag(run_id, "stage")
    assert "stage" not in alice.get_run(run_id).data.tags
    assert bob.get_run(world.beta_run).data.tags["note"] == "beta-secret"


# --------------------------------------------------------------------------------------------------------- artifacts


def test_artifacts_log_list_download(gate, world: World, tmp_path: Path):
    alice = gate.client(ALICE)
    run_id = alice.create_run(world.alpha_exp).info.run_id
    alice.log_text(run_id, "hello alpha", "out/hello.txt")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    alice.log_artifact(run_id, str(blob), "out")
    with alice.acting(), mlflow.start_run(run_id=run_id):
        mlflow.log_dict({"k": [1, 2]}, "out/conf.json")

    listing = {f.path: f for f in alice.list_artifacts(run_id, "out")}
    assert set(listing) == {"out/hello.txt", "out/blob.bin", "out/conf.json"}
    assert listing["out/blob.bin"].file_size == blob.stat().st_size
    local = Path(alice.download_artifacts(run_id, "out", str(tmp_path / "dl")))
    assert (local / "hello.txt").read_text() == "hello alpha"
    assert (local / "blob.bin").read_bytes() == blob.read_bytes()
    with alice.acting():
        assert mlflow.artifacts.load_text(f"runs:/{run_id}/out/hello.txt") == "hello alpha"
        assert alice.get_run(run_id).info.artifact_uri == f"mlflow-artifacts:/{world.alpha_exp}/{run_id}/artifacts"


def test_artifacts_cross_team_denied(gate, world: World, tmp_path: Path):
    bob, alice = gate.client(BOB), gate.client(ALICE)
    alpha_uri = f"mlflow-artifacts:/{world.alpha_exp}/{world.alpha_run}/artifacts"
    with bob.acting():
        # straight to the artifact routes (no get_run first)
        with denied():
            mlflow.artifacts.download_artifacts(artifact_uri=f"{alpha_uri}/notes/readme.txt",
                                                dst_path=str(tmp_path / "bob"))
        with denied():
            mlflow.artifacts.list_artifacts(artifact_uri=f"{alpha_uri}/notes")
        upload = tmp_path / "evil.txt"
        upload.write_text("bob was here")
        with denied():
            get_artifact_repository(f"{alpha_uri}/notes").log_artifact(str(upload))
        # through the run
        with denied():
            bob.list_artifacts(world.alpha_run)
        with denied():
            bob.log_text(world.alpha_run, "bob was here", "notes/evil.txt")
        # read grant: the public run's artifacts can be read, not written
        assert mlflow.artifacts.load_text(f"runs:/{world.public_run}/notes/readme.txt") == "artifact of public-data"
        with denied():
            bob.log_text(world.public_run, "bob was here", "notes/evil.txt")
    assert {f.path for f in alice.list_artifacts(world.alpha_run, "notes")} == {"notes/readme.txt"}
    assert {f.path for f in alice.list_artifacts(world.public_run, "notes")} == {"notes/readme.txt"}
    with alice.acting(), denied():
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"mlflow-artifacts:/{world.beta_exp}/{world.beta_run}/artifacts/notes/readme.txt",
            dst_path=str(tmp_path / "alice"))


# ------------------------------------------------------------------------------------------------------------ grants


def test_read_grant_allows_reading_not_writing(gate, world: World):
    bob, alice, mo = gate.client(BOB), gate.client(ALICE), gate.client(MO)
    assert bob.get_experiment(world.public_exp).name == "alpha/public/base"
    assert bob.get_experiment_by_name("alpha/public/base").experiment_id == world.public_exp
    assert bob.get_run(world.public_run).data.params["secret"] == "public-data"
    with denied():
        bob.create_run(world.public_exp)
    with denied():
        bob.create_experiment(f"alpha/public/by-bob-{uid()}")
    with denied():
        bob.rename_experiment(world.public_exp, "alpha/public/renamed")
    with denied():
        bob.delete_run(world.public_run)
    # "alpha/public/" is a plain prefix: "alpha/publicity" is not covered by the grant.
    lookalike = alice.create_experiment(f"alpha/publicity-{uid()}")
    with denied():
        bob.get_experiment(lookalike)
    mo.delete_experiment(lookalike)


def test_everyone_edit_grant_on_shared(gate, world: World):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    eid = alice.create_experiment(f"shared/by-alice-{uid()}")
    run_id = bob.create_run(eid).info.run_id  # bob edits alice's shared experiment
    bob.log_metric(run_id, "m", 1.0)
    alice.log_metric(run_id, "m", 2.0)
    assert [m.value for m in alice.get_metric_history(run_id, "m")] == [1.0, 2.0]
    with denied():
        bob.delete_experiment(eid)  # edit, not manage

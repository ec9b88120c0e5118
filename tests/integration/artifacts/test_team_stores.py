"""Each team's artifacts land in the team's own store, reached with the team's own keys, and come back through
every read path (the mlflow client, the UI routes, registered model versions), for S3 roots, a folder root and
the default store."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pytest
from botocore.exceptions import ClientError
from mlflow.exceptions import MlflowException

from tests.integration.artifacts.art_it import ALICE, BOB, BUCKETS, MO, ROOT, ArtGate, Logged, Version, uid
from tests.integration.gate_it import is_denied

pytestmark = pytest.mark.integration

STORE_TAG = "mlflow-gate.artifact-store"
TEAMS = ["alpha", "beta", "gamma", "shared"]


def log_of(request: pytest.FixtureRequest, team: str) -> Logged:
    return request.getfixturevalue(f"{team}_log")


def store_of(gate: ArtGate, exp_id: str) -> str | None:
    return gate.client(ROOT).get_experiment(exp_id).tags.get(STORE_TAG)


def exp_ids_in(keys: list[str]) -> set[str]:
    """Experiment ids of the keys under the teams' `mlflow/` prefix."""
    return {k.split("/")[1] for k in keys if k.startswith("mlflow/") and k.count("/") >= 2}


# --------------------------------------------------------------------------------------------------------------
# the set-up itself


def test_client_side_has_no_aws_credentials() -> None:
    import boto3

    assert not [k for k in os.environ if k.startswith("AWS_")]
    assert boto3.session.Session().get_credentials() is None, "the test process can find AWS credentials"


def test_moto_refuses_each_team_the_other_bucket(gate: ArtGate) -> None:
    s3 = gate.s3
    for who, other in [("alpha", "beta"), ("beta", "alpha")]:
        with pytest.raises(ClientError) as exc:
            s3.client(who).put_object(Bucket=BUCKETS[other], Key="probe", Body=b"x")
        assert exc.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(ClientError) as exc:
            s3.client(who).list_objects_v2(Bucket=BUCKETS[other])
        assert exc.value.response["Error"]["Code"] == "AccessDenied"


def test_health_reports_each_team_store(gate: ArtGate) -> None:
    r = gate.health()
    body = r.json()
    assert r.status_code == 200, body
    stores = body.get("stores")
    assert isinstance(stores, dict), body
    for team in ("alpha", "beta"):
        assert stores.get(team, {}).get("ok") is True, stores
        assert isinstance(stores[team].get("detail"), str), stores
    if "gamma" in stores:
        assert stores["gamma"]["ok"] is True, stores
    text = r.text
    for name, value in gate.env.items():
        if name.endswith("SECRET_ACCESS_KEY") or name == "MLFLOW_GATE_SECRET_KEY":
            assert value not in text, f"/_gate/health shows {name}"


# --------------------------------------------------------------------------------------------------------------
# where things land


@pytest.mark.parametrize("team", ["alpha", "beta", "gamma"])
def test_team_experiment_is_tagged_with_its_store(gate: ArtGate, request: pytest.FixtureRequest, team: str) -> None:
    log = log_of(request, team)
    assert store_of(gate, log.exp_id) == team


def test_shared_experiment_is_not_tagged_with_a_team_store(gate: ArtGate, shared_log: Logged) -> None:
    assert store_of(gate, shared_log.exp_id) not in {"alpha", "beta", "gamma"}


@pytest.mark.parametrize("team", ["alpha", "beta"])
def test_s3_team_objects_land_in_own_bucket_only(gate: ArtGate, request: pytest.FixtureRequest, team: str) -> None:
    s3 = gate.s3
    log = log_of(request, team)
    bucket, other = BUCKETS[team], BUCKETS["beta" if team == "alpha" else "alpha"]
    keys = s3.keys_in(bucket, f"mlflow/{log.exp_id}/", who=team)  # the team's own key can read it
    missing = [p for p in log.expected_paths() if f"mlflow/{p}" not in keys]
    assert not missing, f"not in {bucket}: {missing}; present: {sorted(keys)}"
    for path, content in log.expected_paths().items():
        if content is not None:
            assert s3.get(bucket, f"mlflow/{path}", who=team) == content, path
    # every object of the experiment follows MLflow's layout (other tests add runs to this experiment)
    layout = re.compile(rf"mlflow/{log.exp_id}/([0-9a-f]{{32}}|models/m-[0-9a-f]{{32}}|traces/tr-[0-9a-f]{{32}})"
                        r"/artifacts/[^/].*")
    stray = [k for k in keys if not layout.fullmatch(k) or "/../" in k or "//" in k]
    assert not stray, f"unexpected objects for {log.exp_name}: {stray}"
    assert log.exp_id not in exp_ids_in(s3.keys_in(other, "")), f"{log.exp_name} has objects in {other}"
    assert not (gate.default_root / log.exp_id).exists(), f"{log.exp_name} has files in the default store"
    assert not (gate.gamma_root / log.exp_id).exists(), f"{log.exp_name} has files in gamma's root"


def test_buckets_hold_only_their_teams_experiments(gate: ArtGate, alpha_log: Logged, beta_log: Logged,
                                                   gamma_log: Logged, shared_log: Logged) -> None:
    s3 = gate.s3
    for team, bucket in BUCKETS.items():
        keys = s3.keys_in(bucket, "", who=team)
        assert all(k.startswith("mlflow/") for k in keys), [k for k in keys if not k.startswith("mlflow/")]
        for exp_id in exp_ids_in(keys):
            assert store_of(gate, exp_id) == team, f"experiment {exp_id} ({store_of(gate, exp_id)}) is in {bucket}"
    beta_ids = exp_ids_in(s3.keys_in(BUCKETS["beta"], "", who="beta"))
    assert alpha_log.exp_id not in beta_ids and gamma_log.exp_id not in beta_ids and shared_log.exp_id not in beta_ids
    alpha_ids = exp_ids_in(s3.keys_in(BUCKETS["alpha"], "", who="alpha"))
    assert beta_log.exp_id not in alpha_ids and gamma_log.exp_id not in alpha_ids and shared_log.exp_id not in alpha_ids


def assert_only_in_folder(gate: ArtGate, log: Logged, root: Path, other_root: Path, missing: str) -> None:
    """Every file LOG produced is in the folder store ROOT, none in a bucket or in the folder store OTHER_ROOT."""
    for path, content in log.expected_paths().items():
        f = root / path
        assert f.is_file(), f"{missing}: {f}"
        if content is not None:
            assert f.read_bytes() == content, path
    for bucket in BUCKETS.values():
        assert log.exp_id not in exp_ids_in(gate.s3.keys_in(bucket, ""))
    assert not (other_root / log.exp_id).exists()


def test_file_team_root_holds_gamma_artifacts(gate: ArtGate, gamma_log: Logged) -> None:
    assert_only_in_folder(gate, gamma_log, gate.gamma_root, gate.default_root, "missing on disk")


def test_shared_experiment_uses_default_store(gate: ArtGate, shared_log: Logged) -> None:
    assert_only_in_folder(gate, shared_log, gate.default_root, gate.gamma_root, "missing in the default store")


def test_upstream_keeps_no_artifacts_of_its_own(gate: ArtGate, alpha_log: Logged, shared_log: Logged) -> None:
    """The mlflow server's only artifact store is the gate: nothing lands in its working directory."""
    leftovers = [p for p in (gate.root / "mlflow").rglob("*") if p.is_file()]
    assert not leftovers, leftovers


# --------------------------------------------------------------------------------------------------------------
# reading back


@pytest.mark.parametrize("team", TEAMS)
def test_model_loads_back(gate: ArtGate, request: pytest.FixtureRequest, team: str) -> None:
    import mlflow.sklearn

    log = log_of(request, team)
    with gate.as_user(log.user):
        model = mlflow.sklearn.load_model(log.model_uri)
    assert [int(v) for v in model.predict(log.X[:5])] == log.predictions


@pytest.mark.parametrize("team", TEAMS)
def test_params_and_metrics_read_back(gate: ArtGate, request: pytest.FixtureRequest, team: str) -> None:
    log = log_of(request, team)
    run = gate.client(log.user).get_run(log.run_id)
    assert run.data.params == {"team": team} and run.data.metrics == {"loss": 0.25}, run.data
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri


@pytest.mark.parametrize("team", TEAMS)
def test_client_downloads_run_artifacts(gate: ArtGate, request: pytest.FixtureRequest, team: str) -> None:
    log = log_of(request, team)
    with gate.as_user(log.user) as c, tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=log.run_id, artifact_path="", dst_path=tmp)
        for path, content in log.files.items():
            assert Path(local, path).read_bytes() == content, path
        assert sorted(f.path for f in c.list_artifacts(log.run_id, "dir")) == ["dir/a.txt", "dir/sub"]


@pytest.mark.parametrize("team", TEAMS)
def test_ui_routes_serve_team_artifacts(gate: ArtGate, request: pytest.FixtureRequest, team: str) -> None:
    log = log_of(request, team)
    with gate.http(log.user) as h:
        for path, content in log.files.items():
            r = h.get("/get-artifact", params={"run_uuid": log.run_id, "path": path})
            assert r.status_code == 200 and r.content == content, (path, r.status_code, r.text[:300])

        r = h.get("/ajax-api/2.0/mlflow/artifacts/list", params={"run_uuid": log.run_id})
        assert r.status_code == 200, r.text
        assert {f["path"] for f in r.json().get("files", [])} >= {"notes", "dir"}, r.text
        r = h.get("/ajax-api/2.0/mlflow/artifacts/list", params={"run_uuid": log.run_id, "path": "dir/sub"})
        assert r.status_code == 200, r.text
        assert [(f["path"], int(f.get("file_size", -1))) for f in r.json()["files"]] == \
            [("dir/sub/b.bin", len(log.files["dir/sub/b.bin"]))], r.text

        r = h.get(f"/ajax-api/2.0/mlflow/logged-models/{log.model_id}/artifacts/files",
                  params={"artifact_file_path": "MLmodel"})
        assert r.status_code == 200 and b"flavors:" in r.content and log.model_id.encode() in r.content, r.text[:300]
        r = h.get(f"/ajax-api/2.0/mlflow/logged-models/{log.model_id}/artifacts/directories")
        assert r.status_code == 200, r.text
        assert "MLmodel" in {f["path"] for f in r.json().get("files", [])}, r.text

        r = h.get("/ajax-api/3.0/mlflow/get-trace-artifact", params={"request_id": log.trace_id})
        assert r.status_code == 200, r.text[:300]
        assert f"question of {team}".upper() in r.text, r.text[:500]
        r = h.get("/ajax-api/3.0/mlflow/get-trace-artifact",
                  params={"request_id": log.trace_id, "path": log.attachment_id})
        assert r.status_code == 200 and r.content == log.attachment, (r.status_code, r.text[:300])


def test_registered_model_version_downloads(gate: ArtGate, alpha_version: Version) -> None:
    import mlflow.sklearn

    uri = f"models:/{alpha_version.name}/{alpha_version.version}"
    with gate.as_user(ALICE), tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(uri, dst_path=tmp)
        assert b"flavors:" in Path(local, "MLmodel").read_bytes()
        model = mlflow.sklearn.load_model(uri)
    assert [int(v) for v in model.predict(alpha_version.source.X[:5])] == alpha_version.source.predictions
    with gate.http(ALICE) as h:
        r = h.get("/model-versions/get-artifact",
                  params={"name": alpha_version.name, "version": alpha_version.version, "path": "MLmodel"})
    assert r.status_code == 200 and b"flavors:" in r.content, (r.status_code, r.text[:300])


# --------------------------------------------------------------------------------------------------------------
# the store is fixed at creation


def _log_note(c: Any, exp_id: str, text: str) -> str:
    run_id = c.create_run(exp_id).info.run_id
    c.log_text(run_id, text, "note.txt")
    return run_id


def test_rename_keeps_artifacts_readable(gate: ArtGate) -> None:
    s3 = gate.s3
    alice, mo = gate.client(ALICE), gate.client(MO)
    name = f"alpha/torename-{uid()}"
    exp_id = alice.create_experiment(name)
    run_id = _log_note(alice, exp_id, f"before rename {name}")
    new_name = f"alpha/renamed-{uid()}"
    mo.rename_experiment(exp_id, new_name)  # mo maintains team alpha: manage on both names
    assert alice.get_experiment(exp_id).name == new_name
    assert store_of(gate, exp_id) == "alpha"
    with tempfile.TemporaryDirectory() as tmp:
        assert Path(alice.download_artifacts(run_id, "note.txt", tmp)).read_text() == f"before rename {name}"
    with gate.http(ALICE) as h:
        r = h.get("/get-artifact", params={"run_uuid": run_id, "path": "note.txt"})
    assert r.status_code == 200 and r.text == f"before rename {name}", (r.status_code, r.text[:300])
    assert s3.get(BUCKETS["alpha"], f"mlflow/{exp_id}/{run_id}/artifacts/note.txt", who="alpha") == \
        f"before rename {name}".encode()
    run2 = _log_note(alice, exp_id, "after rename")
    assert s3.get(BUCKETS["alpha"], f"mlflow/{exp_id}/{run2}/artifacts/note.txt", who="alpha") == b"after rename"


def test_client_cannot_choose_the_artifact_location(gate: ArtGate) -> None:
    s3 = gate.s3
    alice = gate.client(ALICE)
    try:
        exp_id = alice.create_experiment(f"alpha/forced-{uid()}", artifact_location="s3://team-beta/stolen")
    except MlflowException as exc:
        assert is_denied(exc, "PERMISSION_DENIED", 403) or is_denied(exc, "INVALID_PARAMETER_VALUE", 400), exc
        return
    run_id = _log_note(alice, exp_id, "forced")
    assert store_of(gate, exp_id) == "alpha"
    assert s3.get(BUCKETS["alpha"], f"mlflow/{exp_id}/{run_id}/artifacts/note.txt", who="alpha") == b"forced"
    assert not s3.keys_in(BUCKETS["beta"], "stolen")


def _tag_attempt(call: Any) -> None:
    """A tag write on the store tag is either refused (403/400) or has no effect (checked by the caller)."""
    try:
        call()
    except MlflowException as exc:
        assert is_denied(exc, "PERMISSION_DENIED", 403) or is_denied(exc, "INVALID_PARAMETER_VALUE", 400), exc


def test_store_tag_cannot_be_spoofed(gate: ArtGate, beta_log: Logged, shared_log: Logged) -> None:
    s3 = gate.s3
    bob = gate.client(BOB)

    # a new beta experiment that claims alpha's store
    try:
        spoof = bob.create_experiment(f"beta/spoof-{uid()}", tags={STORE_TAG: "alpha"})
    except MlflowException as exc:
        assert is_denied(exc, "PERMISSION_DENIED", 403) or is_denied(exc, "INVALID_PARAMETER_VALUE", 400), exc
    else:
        assert store_of(gate, spoof) == "beta"
        run_id = _log_note(bob, spoof, "spoofed create")
        assert s3.get(BUCKETS["beta"], f"mlflow/{spoof}/{run_id}/artifacts/note.txt", who="beta") == \
            b"spoofed create"
        assert spoof not in exp_ids_in(s3.keys_in(BUCKETS["alpha"], ""))

    # retagging or untagging an existing experiment
    _tag_attempt(lambda: bob.set_experiment_tag(beta_log.exp_id, STORE_TAG, "alpha"))
    assert store_of(gate, beta_log.exp_id) == "beta"
    _tag_attempt(lambda: bob.delete_experiment_tag(beta_log.exp_id, STORE_TAG))
    assert store_of(gate, beta_log.exp_id) == "beta"
    run_id = _log_note(bob, beta_log.exp_id, "after retag")
    assert s3.get(BUCKETS["beta"], f"mlflow/{beta_log.exp_id}/{run_id}/artifacts/note.txt", who="beta") == \
        b"after retag"

    # pointing a shared (default-store) experiment at alpha's bucket
    _tag_attempt(lambda: bob.set_experiment_tag(shared_log.exp_id, STORE_TAG, "alpha"))
    assert store_of(gate, shared_log.exp_id) not in {"alpha", "beta", "gamma"}
    run_id = _log_note(bob, shared_log.exp_id, "shared after retag")
    assert (gate.default_root / shared_log.exp_id / run_id / "artifacts" / "note.txt").read_bytes() == \
        b"shared after retag"
    assert shared_log.exp_id not in exp_ids_in(s3.keys_in(BUCKETS["alpha"], ""))


# File names a bare mlflow server stores and serves unchanged (names with `?` or `#` are cut by MLflow itself).
ODD_NAMES = ["with space.txt", "100% done.txt", "ünïcode.txt", "a+b.txt", "semi;colon.txt", "amp&=.txt"]


@pytest.mark.parametrize("name", ODD_NAMES)
@pytest.mark.parametrize("team", ["alpha", "gamma"])
def test_unusual_file_names_round_trip(gate: ArtGate, request: pytest.FixtureRequest, team: str, name: str) -> None:
    """Every client call works as with a bare server: file names with spaces, `%`, non-ASCII and the like."""
    log = log_of(request, team)
    with gate.as_user(log.user) as c, tempfile.TemporaryDirectory() as tmp:
        run_id = c.create_run(log.exp_id).info.run_id
        Path(tmp, name).write_text(f"content of {name}")
        c.log_artifact(run_id, str(Path(tmp, name)), "odd")
        back = Path(c.download_artifacts(run_id, f"odd/{name}", tmp + "/back")).read_text()
        assert back == f"content of {name}"
        assert [f.path for f in c.list_artifacts(run_id, "odd")] == [f"odd/{name}"]
    rel = f"{log.exp_id}/{run_id}/artifacts/odd/{name}"
    if team == "gamma":
        assert (gate.gamma_root / rel).read_text() == f"content of {name}"
    else:
        assert gate.s3.get(BUCKETS[team], f"mlflow/{rel}", who=team) == f"content of {name}".encode()
    with gate.http(log.user) as h:
        r = h.get("/get-artifact", params={"run_uuid": run_id, "path": f"odd/{name}"})
    assert r.status_code == 200 and r.text == f"content of {name}", (r.status_code, r.text[:300])


def test_admin_created_team_experiment_uses_team_store(gate: ArtGate) -> None:
    root = gate.client(ROOT)
    exp_id = root.create_experiment(f"alpha/by-admin-{uid()}")
    assert store_of(gate, exp_id) == "alpha"
    run_id = _log_note(root, exp_id, "by admin")
    assert gate.s3.get(BUCKETS["alpha"], f"mlflow/{exp_id}/{run_id}/artifacts/note.txt", who="alpha") == b"by admin"
    with gate.as_user(ALICE):
        exp_id2 = mlflow.set_experiment(f"alpha/set-experiment-{uid()}").experiment_id  # the fluent way
    assert store_of(gate, exp_id2) == "alpha"

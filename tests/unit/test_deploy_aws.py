"""deploy/aws (the IAM documents of `storage.role_arn` and `storage.direct`) against each other, the example
overlay's policy and service account, and the gate's own limits; offline. tests/unit/test_deploy.py renders and
schema-checks the overlay (the service account patch included)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.aws_credentials import SESSION_SECONDS
from proxy.policy import load_policy
from proxy.s3 import PRESIGN_SECONDS

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "deploy" / "aws"
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "example"
BASE = ROOT / "deploy" / "k8s" / "base"
GATE_ROLE = "arn:aws:iam::111111111111:role/mlflow-gate"


def doc(name: str) -> dict[str, Any]:
    return json.loads((AWS / name).read_text())  # type: ignore[no-any-return]


def statements(name: str) -> list[dict[str, Any]]:
    d = doc(name)
    assert d["Version"] == "2012-10-17", name
    assert isinstance(d["Statement"], list) and d["Statement"], name
    return d["Statement"]  # type: ignore[no-any-return]


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def role_teams() -> dict[str, Any]:
    """The example policy's teams with a role."""
    teams = load_policy(OVERLAY / "policies").teams
    found = {name: t for name, t in teams.items() if t.storage.role_arn}
    assert found, "the example policy shows no team with storage.role_arn"
    return found


@pytest.mark.parametrize("name", sorted(p.name for p in AWS.glob("*.json")))
def test_every_document_is_an_iam_policy(name: str) -> None:
    for st in statements(name):
        assert st["Effect"] in ("Allow", "Deny"), st
        assert "Action" in st and all(a.startswith(("s3:", "sts:")) for a in as_list(st["Action"])), st
        assert "Sid" in st, f"{name}: every statement says what it is for"


def test_the_gate_role_may_only_assume_the_team_roles() -> None:
    (st,) = statements("gate-role-permissions.json")
    assert st["Effect"] == "Allow" and as_list(st["Action"]) == ["sts:AssumeRole"]
    assert sorted(as_list(st["Resource"])) == sorted(t.storage.role_arn for t in role_teams().values())


def test_the_gate_role_is_the_service_accounts_on_eks() -> None:
    (st,) = statements("gate-role-trust-eks.json")
    assert as_list(st["Action"]) == ["sts:AssumeRoleWithWebIdentity"]
    provider = st["Principal"]["Federated"]
    assert provider.startswith("arn:aws:iam::111111111111:oidc-provider/")
    host = provider.split("oidc-provider/", 1)[1]
    namespace = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["namespace"]
    accounts = [d for d in yaml.safe_load_all((BASE / "serviceaccounts.yaml").read_text()) if d]
    gate_account = next(d["metadata"]["name"] for d in accounts if d["metadata"]["name"] == "mlflow-gate")
    assert st["Condition"]["StringEquals"] == {f"{host}:sub": f"system:serviceaccount:{namespace}:{gate_account}",
                                               f"{host}:aud": "sts.amazonaws.com"}
    patch = yaml.safe_load((OVERLAY / "serviceaccount-irsa.yaml").read_text())
    assert patch["kind"] == "ServiceAccount" and patch["metadata"]["name"] == gate_account
    assert patch["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == GATE_ROLE
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert {"path": "serviceaccount-irsa.yaml"} in kustomization["patches"]


def test_the_gate_role_is_the_instance_role_on_a_vm() -> None:
    (st,) = statements("gate-role-trust-ec2.json")
    assert st["Principal"] == {"Service": "ec2.amazonaws.com"} and as_list(st["Action"]) == ["sts:AssumeRole"]


def test_a_team_role_trusts_the_gate_with_the_teams_external_id() -> None:
    (st,) = statements("team-role-trust.json")
    assert st["Principal"] == {"AWS": GATE_ROLE} and as_list(st["Action"]) == ["sts:AssumeRole"]
    team = role_teams()["forecast"]
    assert st["Condition"] == {"StringEquals": {"sts:ExternalId": team.storage.external_id}}


def _bucket_and_prefix(root: str) -> tuple[str, str]:
    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def test_a_team_role_reaches_its_artifact_root_only_with_what_the_gate_needs() -> None:
    team = role_teams()["forecast"]
    bucket, prefix = _bucket_and_prefix(team.artifact_root or "")
    listing, objects = statements("team-role-permissions.json")
    assert listing["Resource"] == f"arn:aws:s3:::{bucket}"
    assert set(listing["Condition"]["StringLike"]["s3:prefix"]) == {prefix, f"{prefix}/*"}
    assert objects["Resource"] == f"arn:aws:s3:::{bucket}/{prefix}/*"
    needed = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    if team.storage.object_tags:
        needed.add("s3:PutObjectTagging")     # PutObject / CreateMultipartUpload with x-amz-tagging
    assert needed <= set(objects["Action"]) and not any("*" in a for a in objects["Action"])


def test_the_team_bucket_admits_the_team_role_and_fresh_signatures_only() -> None:
    team = role_teams()["forecast"]
    bucket, _ = _bucket_and_prefix(team.artifact_root or "")
    by_sid = {st["Sid"]: st for st in statements("team-bucket-policy.json")}
    for st in by_sid.values():
        assert st["Effect"] == "Deny" and st["Principal"] == "*"
        assert st["Resource"] == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    assert team.storage.role_arn in by_sid["TheTeamRoleOnly"]["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
    age = int(by_sid["SignaturesLive15MinutesAtMost"]["Condition"]["NumericGreaterThan"]["s3:signatureAge"])
    assert age == PRESIGN_SECONDS * 1000, "the bucket's limit is the gate's own"


def test_the_session_duration_fits_the_default_role_limit() -> None:
    assert SESSION_SECONDS <= 3600, "a role's MaxSessionDuration is one hour unless raised"

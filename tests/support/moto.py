"""moto_server as the S3 store of team artifacts, with IAM enforced (tests/integration/artifacts and production),
or without (the artifact benchmark): `start_moto` starts one, `Moto` is what a test holds of it.

moto answers the first INITIAL_NO_AUTH_ACTION_COUNT requests without checking credentials; `setup_requests` is how
many `create_buckets_and_users` sends, so IAM is enforced from the request after it. With IAM enforced, moto runs
through `moto_presigned.py`, which also checks presigned URLs (signature, expiry, the signer's policies).

With `roles` (team -> external id), the gate has an AWS identity of its own (the IAM user `mlflow-gate`, allowed
nothing but sts:AssumeRole) and each of those teams a role `mlflow-<team>`, allowed on the team's bucket only, whose
trust policy names the gate's user and the team's external id: as `storage.role_arn` is set up in AWS.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.process import BIN, Process, Server, child_env, free_port

REGION = "us-east-1"
ACCOUNT = "123456789012"       # moto's account
GATE_USER = "mlflow-gate"      # the gate's own AWS identity, with `roles`
WEB_ROLE = "mlflow-gate-web"   # the same, as an EKS pod has it: a role assumed with a web identity token
WEB_SESSION = "mlflow-gate-pod"  # the session name such a gate is given (AWS_ROLE_SESSION_NAME)
PRESIGNED_MOTO = Path(__file__).with_name("moto_presigned.py")


def setup_requests(buckets: int, roles: int = 0) -> int:
    """Requests `create_buckets_and_users` sends for this many team buckets: one create_bucket each, then
    (create_user, create_access_key, put_user_policy) for each team and for the admin; with roles, the same three
    for the gate's user and (create_role, put_role_policy) for each role and for WEB_ROLE."""
    return buckets + 3 * (buckets + 1) + (3 + 2 * (roles + 1) if roles else 0)


def role_arn(team: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/mlflow-{team}"


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def create_roles(iam: Any, buckets: dict[str, str], roles: dict[str, str]) -> tuple[str, str]:
    """The gate's user (allowed only to assume the team roles), the same as a web identity role (WEB_ROLE), and a
    role per team of ROLES (team -> external id) trusting both with that external id, allowed on the team's bucket
    only. Returns the gate's (key id, secret)."""
    assume = _policy({"Effect": "Allow", "Action": "sts:AssumeRole",
                      "Resource": f"arn:aws:iam::{ACCOUNT}:role/mlflow-*"})
    iam.create_user(UserName=GATE_USER)
    k = iam.create_access_key(UserName=GATE_USER)["AccessKey"]
    iam.put_user_policy(UserName=GATE_USER, PolicyName="assume-team-roles", PolicyDocument=assume)
    iam.create_role(RoleName=WEB_ROLE, AssumeRolePolicyDocument=_policy(
        {"Effect": "Allow", "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.example"},
         "Action": "sts:AssumeRoleWithWebIdentity"}))
    iam.put_role_policy(RoleName=WEB_ROLE, PolicyName="assume-team-roles", PolicyDocument=assume)
    # AWS matches a role session against the role's ARN in a trust policy; moto compares the session's own ARN
    gate_principals = [f"arn:aws:iam::{ACCOUNT}:user/{GATE_USER}",
                       f"arn:aws:sts::{ACCOUNT}:assumed-role/{WEB_ROLE}/{WEB_SESSION}"]
    for team, external_id in roles.items():
        bucket = buckets[team]
        iam.create_role(RoleName=f"mlflow-{team}", AssumeRolePolicyDocument=_policy(
            {"Effect": "Allow", "Principal": {"AWS": gate_principals},
             "Action": "sts:AssumeRole", "Condition": {"StringEquals": {"sts:ExternalId": external_id}}}))
        iam.put_role_policy(RoleName=f"mlflow-{team}", PolicyName="team-bucket", PolicyDocument=_policy(
            {"Effect": "Allow", "Action": "s3:*", "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}))
    return k["AccessKeyId"], k["SecretAccessKey"]


def s3_client(url: str, key_id: str, secret: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=key_id,
                        aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1, "mode": "standard"},
                                      s3={"addressing_style": "path"}))


def list_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key under `prefix`, following continuation tokens."""
    out: list[str] = []
    token = None
    while True:
        kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kw["ContinuationToken"] = token
        r = client.list_objects_v2(**kw)
        out += [o["Key"] for o in r.get("Contents", [])]
        token = r.get("NextContinuationToken")
        if not token:
            return out


def create_buckets_and_users(url: str, buckets: dict[str, str],
                             roles: dict[str, str] | None = None) -> tuple[Any, dict[str, tuple[str, str]]]:
    """With moto's setup credentials (before IAM is enforced): create each team's bucket, for each team an IAM user
    allowed on its own bucket only, and an `admin` user allowed on everything (for inspection); with ROLES, the
    gate's user and the team roles (`create_roles`).

    `buckets`: team -> bucket. Returns the setup S3 client and team (and "admin", and GATE_USER with roles) ->
    (access key id, secret).
    """
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"})
    setup = {name: boto3.client(name, endpoint_url=url, region_name=REGION, aws_access_key_id="setup",
                                aws_secret_access_key="setup", config=cfg) for name in ("s3", "iam")}
    for bucket in buckets.values():
        setup["s3"].create_bucket(Bucket=bucket)
    keys: dict[str, tuple[str, str]] = {}
    users = [(team, [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]) for team, bucket in buckets.items()]
    for who, resources in [*users, ("admin", ["*"])]:
        setup["iam"].create_user(UserName=f"{who}-user")
        k = setup["iam"].create_access_key(UserName=f"{who}-user")["AccessKey"]
        keys[who] = (k["AccessKeyId"], k["SecretAccessKey"])
        setup["iam"].put_user_policy(UserName=f"{who}-user", PolicyName=f"{who}-s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*" if who == "admin" else "s3:*",
                           "Resource": resources}]}))
    if roles:
        keys[GATE_USER] = create_roles(setup["iam"], buckets, roles)
    return setup["s3"], keys


def check_iam_enforced(url: str, setup_s3: Any, keys: dict[str, tuple[str, str]], buckets: dict[str, str]) -> None:
    """IAM must be enforced once the setup is done: the setup key is unknown to IAM, and each team's key is refused
    on every other team's bucket. AssertionError otherwise."""
    from botocore.exceptions import ClientError

    probes = [(setup_s3, "setup", bucket, "InvalidAccessKeyId") for bucket in list(buckets.values())[:1]]
    probes += [(s3_client(url, *keys[team]), team, bucket, "AccessDenied")
               for team in buckets for other, bucket in buckets.items() if other != team]
    if GATE_USER in keys:  # the gate's own identity reaches no bucket: only the roles it assumes do
        probes += [(s3_client(url, *keys[GATE_USER]), GATE_USER, bucket, "AccessDenied") for bucket in buckets.values()]
    for client, who, bucket, code in probes:
        try:
            client.list_objects_v2(Bucket=bucket)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == code, exc.response
        else:
            raise AssertionError(f"moto does not enforce IAM: {who} listed {bucket}")


@dataclass
class Moto(Server):
    """A running moto_server: each team's key (allowed on its own bucket only) and an admin key for inspection
    (none of them when IAM is not enforced: any key works then)."""

    process: Process
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # team, "admin" -> (access key id, secret)
    roles: dict[str, str] = field(default_factory=dict)  # team -> the ARN of its role (with `roles`)

    def client(self, who: str = "admin") -> Any:
        return s3_client(self.url, *self.keys[who])

    def keys_in(self, bucket: str, prefix: str = "", who: str = "admin") -> list[str]:
        return list_keys(self.client(who), bucket, prefix)

    def get(self, bucket: str, key: str, who: str = "admin") -> bytes:
        return self.client(who).get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

    def exists(self, bucket: str, key: str, who: str = "admin") -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client(who).head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                return False
            raise


def start_moto(root: Path, buckets: dict[str, str] | None = None, timeout: float = 30,
               roles: dict[str, str] | None = None) -> Moto:
    """moto_server on a free port, working in ROOT, logging to ROOT/moto.log; ready.

    With `buckets` (team -> bucket): the buckets, an IAM user per team allowed on its own bucket only and an `admin`
    user allowed on everything, and IAM enforced from then on (checked), presigned URLs included. With `roles`
    (team -> external id, teams of `buckets`), the gate's user and the team roles too. Without: no bucket and no IAM.
    """
    port = free_port()
    cmd = [str(BIN / "moto_server")]
    env = child_env()
    if buckets:
        cmd = [sys.executable, str(PRESIGNED_MOTO)]
        env = child_env(INITIAL_NO_AUTH_ACTION_COUNT=str(setup_requests(len(buckets), len(roles or {}))))
    process = Process("moto_server", [*cmd, "-H", "127.0.0.1", "-p", str(port)], env, root,
                      root / "moto.log", f"http://127.0.0.1:{port}", "/moto-api/")
    try:
        process.start().wait_ready(timeout)
        if not buckets:
            return Moto(process)
        setup_s3, keys = create_buckets_and_users(process.url, buckets, roles)
        check_iam_enforced(process.url, setup_s3, keys, buckets)
        return Moto(process, keys, {team: role_arn(team) for team in roles or {}})
    except BaseException:
        process.stop()
        raise

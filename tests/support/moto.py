"""moto_server as the S3 store of team artifacts, with IAM enforced: shared by tests/integration/artifacts and
tests/integration/production (each starts and owns its own server; this module only builds the pieces).

moto answers the first INITIAL_NO_AUTH_ACTION_COUNT requests without checking credentials; `setup_requests` is how
many `create_buckets_and_users` sends, so IAM is enforced from the request after it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REGION = "us-east-1"


def moto_cmd(bin_dir: Path, port: int) -> list[str]:
    return [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]


def setup_requests(buckets: int) -> int:
    """Requests `create_buckets_and_users` sends for this many team buckets: one create_bucket each, then
    (create_user, create_access_key, put_user_policy) for each team and for the admin."""
    return buckets + 3 * (buckets + 1)


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


def create_buckets_and_users(url: str, buckets: dict[str, str]) -> tuple[Any, dict[str, tuple[str, str]]]:
    """With moto's setup credentials (before IAM is enforced): create each team's bucket, for each team an IAM user
    allowed on its own bucket only, and an `admin` user allowed on everything (for inspection).

    `buckets`: team -> bucket. Returns the setup S3 client and team (and "admin") -> (access key id, secret).
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
    return setup["s3"], keys

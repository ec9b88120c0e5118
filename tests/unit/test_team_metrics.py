"""Per-team metrics, and the Grafana dashboard built on the gate's series, validated offline.

The dashboard is decoded with Grafana's own typed models (grafana-foundation-sdk: the dashboard,
every panel plugin's options and field config, Prometheus queries) and encoded again: a key those
models do not know is dropped on the way, so the round trip must give back every key and value.
Every query must parse as PromQL (promql-parser) and name only series the gate exports.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.decide import Decision
from proxy.metrics import NO_TEAM, Metrics
from proxy.policy import Level, PolicyStore

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "mlflow-gate-dashboard.json"


@pytest.fixture()
def metrics(tmp_path: Path) -> Metrics:
    policy = tmp_path / "p.yaml"
    policy.write_text("teams:\n  vision: {experiments: [vision/]}\n  nlp: {experiments: [nlp/]}\n")
    return Metrics(PolicyStore(policy))


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_per_team_counters(metrics: Metrics) -> None:
    metrics.team_request("vision")
    metrics.team_request("vision")
    metrics.team_request(None)
    metrics.team_decision("nlp", False)
    metrics.team_decision("nlp", True)
    metrics.team_bytes("vision", "in", 1000)
    metrics.team_bytes("vision", "out", 250)
    metrics.team_bytes("vision", "out", 0)
    got = samples(metrics)
    assert got[("mlflow_gate_team_requests_total", (("team", "vision"),))] == 2
    assert got[("mlflow_gate_team_requests_total", (("team", NO_TEAM),))] == 1
    assert got[("mlflow_gate_team_decisions_total", (("allowed", "false"), ("team", "nlp")))] == 1
    assert got[("mlflow_gate_team_decisions_total", (("allowed", "true"), ("team", "nlp")))] == 1
    assert got[("mlflow_gate_team_artifact_bytes_total", (("direction", "in"), ("team", "vision")))] == 1000
    assert got[("mlflow_gate_team_artifact_bytes_total", (("direction", "out"), ("team", "vision")))] == 250


@pytest.mark.parametrize("label", ["bob@corp.test", "s3://acme-vision/artifacts", "ghost", "", "vision "])
def test_only_the_policys_team_names_become_labels(metrics: Metrics, label: str) -> None:
    """A caller's id, a storage root or a team the policy lacks never becomes a label value."""
    metrics.team_request(label)
    metrics.team_decision(label, True)
    metrics.team_bytes(label, "in", 5)
    values = {v for (name, labels), _ in samples(metrics).items() if name.startswith("mlflow_gate_team_")
              for k, v in labels if k == "team"}
    assert values == {NO_TEAM}


def test_a_request_counts_under_each_team_owning_a_name_it_was_decided_on(metrics: Metrics) -> None:
    assert metrics.store is not None
    policy = metrics.store.current
    d = Decision
    metrics.team_call(policy, [d(True, "experiment", "vision/a", Level.READ, Level.EDIT, "member"),
                               d(True, "experiment", "vision/b", Level.READ, Level.EDIT, "member"),
                               d(False, "experiment", "nlp/x", Level.READ, Level.NONE, "no rule")])
    metrics.team_call(policy, [d(True, "experiment", "Default", Level.READ, Level.READ, "default")])
    metrics.team_call(policy, [])                    # an admin's, a search's, a refusal before any decision
    metrics.team_call(None, [])                      # failed before the policy was read
    got = samples(metrics)
    assert got[("mlflow_gate_team_requests_total", (("team", "vision"),))] == 1
    assert got[("mlflow_gate_team_requests_total", (("team", "nlp"),))] == 1
    assert got[("mlflow_gate_team_requests_total", (("team", NO_TEAM),))] == 3
    assert got[("mlflow_gate_team_decisions_total", (("allowed", "true"), ("team", "vision")))] == 2
    assert got[("mlflow_gate_team_decisions_total", (("allowed", "false"), ("team", "nlp")))] == 1
    assert got[("mlflow_gate_team_decisions_total", (("allowed", "true"), ("team", NO_TEAM)))] == 1


def test_bytes_have_a_direction(metrics: Metrics) -> None:
    with pytest.raises(ValueError):
        metrics.team_bytes("vision", "sideways", 1)


# --- the dashboard ---------------------------------------------------------------------------

def exported_names(m: Metrics) -> set[str]:
    """Every series name /_gate/metrics serves, once each counter and histogram has a sample."""
    m.request("GET", 200, 0.01)
    m.decision(True, "policy")
    m.upstream.labels("forward").observe(0.01)
    m.upstream_errors.inc()
    m.artifact_bytes.labels("in", "default").inc(1)
    m.team_request("vision")
    m.team_decision("vision", True)
    m.team_bytes("vision", "in", 1)
    return {name for name, _ in samples(m)}


def _metric_names(node: Any) -> set[str]:
    import promql_parser

    if isinstance(node, promql_parser.VectorSelector):
        return {node.name}
    if isinstance(node, promql_parser.MatrixSelector):
        return {node.vector_selector.name}
    if isinstance(node, promql_parser.Call):
        return set().union(*(_metric_names(a) for a in node.args)) if node.args else set()
    if isinstance(node, promql_parser.BinaryExpr):
        return _metric_names(node.lhs) | _metric_names(node.rhs)
    if isinstance(node, (promql_parser.AggregateExpr, promql_parser.ParenExpr, promql_parser.UnaryExpr,
                         promql_parser.SubqueryExpr)):
        return _metric_names(node.expr)
    return set()


def promql_names(expr: str) -> set[str]:
    import promql_parser

    # Grafana's macros become what Grafana sends
    expr = re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)
    return _metric_names(promql_parser.parse(expr))


def _dropped(ours: Any, theirs: Any, path: str = "") -> list[str]:
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [f"{path}: became {type(theirs).__name__}"]
        return [p for k, v in ours.items() for p in
                ([f"{path}.{k}: not in Grafana's model"] if k not in theirs else _dropped(v, theirs[k], f"{path}.{k}"))]
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(ours) != len(theirs):
            return [f"{path}: list changed"]
        return [p for i, (a, b) in enumerate(zip(ours, theirs)) for p in _dropped(a, b, f"{path}[{i}]")]
    return [] if ours == theirs else [f"{path}: {ours!r} became {theirs!r}"]


def test_the_dashboard_is_a_grafana_dashboard_model() -> None:
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel

    plugins.register_default_plugins()
    data = json.loads(DASHBOARD.read_text())
    model = Dashboard.from_json(data)
    assert _dropped(data, json.loads(json.dumps(model, cls=JSONEncoder))) == []
    assert model.uid and model.title and isinstance(model.schema_version, int) and model.schema_version >= 36
    panels = [p for p in model.panels or []]
    assert all(isinstance(p, (Panel, RowPanel)) for p in panels)
    assert {type(p.targets[0]).__module__ for p in panels if isinstance(p, Panel)} == {
        "grafana_foundation_sdk.models.prometheus"}    # every query decoded as a Prometheus query


def test_the_dashboard_layout_and_queries() -> None:
    data = json.loads(DASHBOARD.read_text())
    panels = data["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")) and 0 <= g["x"] and g["x"] + g["w"] <= 24
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"panel {p['title']!r} overlaps another"
        cells |= area
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            refs = [t["refId"] for t in p["targets"]]
            assert p["targets"] and len(refs) == len(set(refs)), p["title"]
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "$team" in json.dumps(panels) and variables["team"]["includeAll"]


def test_every_query_names_series_the_gate_exports(metrics: Metrics) -> None:
    data = json.loads(DASHBOARD.read_text())
    exported = exported_names(metrics)
    used: set[str] = set()
    for p in data["panels"]:
        for t in p.get("targets", []):
            names = promql_names(t["expr"])
            assert names, t["expr"]
            assert names <= exported, (p["title"], names - exported)
            used |= names
    team_query = data["templating"]["list"][1]["query"]["query"]
    assert re.fullmatch(r"label_values\((\w+), team\)", team_query).group(1) in exported  # type: ignore[union-attr]
    # the per-team series and the existing ones are all on the dashboard
    for family in ("mlflow_gate_team_requests_total", "mlflow_gate_team_decisions_total",
                   "mlflow_gate_team_artifact_bytes_total", "mlflow_gate_requests_total",
                   "mlflow_gate_request_seconds_bucket", "mlflow_gate_decisions_total",
                   "mlflow_gate_upstream_seconds_bucket", "mlflow_gate_upstream_errors_total",
                   "mlflow_gate_artifact_bytes_total", "mlflow_gate_policy_reloads_total", "mlflow_gate_policy_error",
                   "mlflow_gate_policy_teams"):
        assert family in used, family


def test_a_query_on_a_series_the_gate_lacks_is_caught(metrics: Metrics) -> None:
    assert not promql_names("sum(rate(mlflow_gate_team_bytes_total[$__rate_interval]))") <= exported_names(metrics)

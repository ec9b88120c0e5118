"""Prometheus metrics for /_gate/metrics (prometheus-client): requests, decisions by reason,
upstream latency, policy reloads and artifact bytes, and per-team requests, decisions and artifact
bytes. One registry per app, so tests can run many.

Per-team series are labelled with a team name of the policy in force and nothing else (never a
user id or a storage root): any other value, and names no team owns, count as `NO_TEAM`, so
their number stays bounded by the policy's teams."""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .policy import Policy, PolicyStore

if TYPE_CHECKING:
    from .decide import Decision

NO_TEAM = "(no team)"     # names no team owns; a team name cannot hold a space
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})   # any other: OTHER
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _PolicyCollector(Collector):
    def __init__(self, store: PolicyStore) -> None:
        self.store = store

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        reloads = CounterMetricFamily("mlflow_gate_policy_reloads", "Policy reloads by result", labels=["result"])
        for result, count in self.store.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        yield GaugeMetricFamily("mlflow_gate_policy_error", "1 while the last policy change failed validation",
                                value=1 if self.store.error else 0)
        yield GaugeMetricFamily("mlflow_gate_policy_teams", "Teams in the policy in force",
                                value=len(self.store.current.teams))


class Metrics:
    def __init__(self, store: PolicyStore | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mlflow_gate_requests", "Requests answered, by method and status class",
                                ["method", "status"], registry=self.registry)
        self.duration = Histogram("mlflow_gate_request_seconds", "Time to answer a request (to its last byte)",
                                  buckets=LATENCY_BUCKETS, registry=self.registry)
        self.decisions = Counter("mlflow_gate_decisions", "Authorization decisions by outcome and reason",
                                 ["allowed", "reason"], registry=self.registry)
        self.upstream = Histogram("mlflow_gate_upstream_seconds", "Upstream mlflow server time to response headers",
                                  ["kind"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.upstream_errors = Counter("mlflow_gate_upstream_errors", "Upstream calls that failed to connect",
                                       registry=self.registry)
        self.artifact_bytes = Counter("mlflow_gate_artifact_bytes", "Artifact bytes served by the gate's stores, "
                                      "by team (store: the team's name, or default)",
                                      ["direction", "store"], registry=self.registry)
        self.team_requests = Counter("mlflow_gate_team_requests", "Requests by the team owning what they touch",
                                     ["team"], registry=self.registry)
        self.team_decisions = Counter("mlflow_gate_team_decisions",
                                      "Authorization decisions by the team owning the name, and outcome",
                                      ["team", "allowed"], registry=self.registry)
        self.team_artifact_bytes = Counter("mlflow_gate_team_artifact_bytes",
                                           "Artifact bytes up (in) and down (out) by the team owning the experiment",
                                           ["team", "direction"], registry=self.registry)
        self.store = store
        if store is not None:
            self.registry.register(_PolicyCollector(store))
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _inc(self, counter: Counter, labels: tuple[str, ...], n: float = 1) -> None:
        """`counter.labels(*labels).inc(n)`, with the labelled child kept: `labels()` costs three times the
        increment, on every request. Only for bounded label values (the callers map anything else)."""
        key = (id(counter), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        child.inc(n)

    def request(self, method: str, status: int, seconds: float) -> None:
        self._inc(self.requests, (method if method in METHODS else "OTHER", f"{status // 100}xx"))
        self.duration.observe(seconds)

    def decision(self, allowed: bool, reason: str) -> None:
        self._inc(self.decisions, ("true" if allowed else "false", reason))

    def team_label(self, team: str | None) -> str:
        """`team` when the policy in force has such a team, else NO_TEAM (bounded, never a caller's data)."""
        if team is None or self.store is None or team not in self.store.current.teams:
            return NO_TEAM
        return team

    def team_request(self, team: str | None) -> None:
        self._inc(self.team_requests, (self.team_label(team),))

    def team_decision(self, team: str | None, allowed: bool) -> None:
        self._inc(self.team_decisions, (self.team_label(team), "true" if allowed else "false"))

    def team_call(self, policy: Policy | None, decisions: list[Decision]) -> None:
        """One request's per-team figures: each decision under the team owning its name, and the request once
        under each team owning a name it was decided on (NO_TEAM when none: admins, searches, refused
        before a decision)."""
        teams: set[str | None] = set()
        for d in decisions:
            owner = policy.owner(d.kind, d.name) if policy is not None else None
            team = owner.name if owner is not None else None
            self.team_decision(team, d.allowed)
            teams.add(team)
        for team in teams or (None,):
            self.team_request(team)

    def team_bytes(self, team: str | None, direction: str, n: int) -> None:
        """`direction` is "in" (uploads) or "out" (downloads)."""
        if direction not in ("in", "out"):
            raise ValueError(f"direction must be 'in' or 'out', got {direction!r}")
        if n > 0:
            self._inc(self.team_artifact_bytes, (self.team_label(team), direction), n)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""The same request sent to MLflow directly and through the gate, the two answers compared.

For transparency tests: where the policy allows a request, the gate must answer what MLflow answers
(status and `error_code`; the message where MLflow's is the point). `SameRequest` holds both base URLs
and the caller's token (the direct side sends none: the upstream has no authentication):

    same = SameRequest(gate.upstream, gate.url, gate.token(ROOT))
    same.check("POST", "/api/2.0/mlflow/runs/create", json={"experiment_id": "999999"})

`check` raises an AssertionError naming both answers when status or error code differ, and returns
them for further checks. Plain functions and one small class over httpx: usable from any suite
(tests/integration with the `gate` fixture, or tests/compat stacks of older MLflow versions).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Self

import httpx


@dataclass(frozen=True)
class Answer:
    status: int
    error_code: str | None
    message: str
    body: Any

    @classmethod
    def of(cls, r: httpx.Response) -> Answer:
        try:
            body: Any = r.json()
        except (ValueError, json.JSONDecodeError):
            body = r.text[:500]
        code = body.get("error_code") if isinstance(body, dict) else None
        message = str(body.get("message", "")) if isinstance(body, dict) else str(body)
        return cls(r.status_code, code, message, body)

    def __str__(self) -> str:
        return f"{self.status} {self.error_code or ''} {self.message[:300]!r}".replace("  ", " ")


class SameRequest:
    def __init__(self, direct_url: str, gate_url: str, token: str | None, timeout: float = 60) -> None:
        self.direct = httpx.Client(base_url=direct_url, timeout=timeout)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.gate = httpx.Client(base_url=gate_url, headers=headers, timeout=timeout)

    def both(self, method: str, path: str, **kwargs: Any) -> tuple[Answer, Answer]:
        """(direct, through the gate) for one request; `kwargs` as for `httpx.Client.request`."""
        return (Answer.of(self.direct.request(method, path, **kwargs)),
                Answer.of(self.gate.request(method, path, **kwargs)))

    def check(self, method: str, path: str, *, message: bool = False, **kwargs: Any) -> tuple[Answer, Answer]:
        direct, gated = self.both(method, path, **kwargs)
        same = (direct.status, direct.error_code) == (gated.status, gated.error_code)
        if message:
            same = same and direct.message == gated.message
        assert same, f"{method} {path} {kwargs}: direct {direct}, through the gate {gated}"
        return direct, gated

    def close(self) -> None:
        self.direct.close()
        self.gate.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

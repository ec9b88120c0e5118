"""One request on its way through the gate: what it has learnt so far, step by step.

The handler (`gate.py`) fills it in order: the edge gives the headers, the credential chain the
identity, the route table the route, the parameter reader the parameters, the resolution step the
decisions. Every later step reads it instead of taking a long list of arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .decide import Decision
from .forward import Receive, Send
from .identity import Identity
from .params import Params
from .policy import Policy
from .routes import UNKNOWN, Route


@dataclass
class Call:
    scope: dict[str, Any]
    receive: Receive
    send: Send
    headers: dict[bytes, bytes] = field(default_factory=dict)
    request_id: str = ""
    policy: Policy | None = None
    ident: Identity | None = None
    route: Route = UNKNOWN
    path_params: dict[str, str] = field(default_factory=dict)
    admin: bool = False
    params: Params = field(default_factory=lambda: Params(query=[]))
    body: bytes | None = None              # the request body, when the gate had to read it
    decisions: list[Decision] = field(default_factory=list)

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    @property
    def query(self) -> bytes:
        return bytes(self.scope.get("query_string", b""))

    @property
    def who(self) -> Identity:
        """The caller, once the credential chain has proven one (every step after it may rely on it)."""
        assert self.ident is not None, "the caller is identified before any step that needs it"
        return self.ident

    @property
    def rules(self) -> Policy:
        assert self.policy is not None, "the policy is read before any step that needs it"
        return self.policy

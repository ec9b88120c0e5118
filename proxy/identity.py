"""Who the caller is, once proven."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Identity:
    id: str
    groups: frozenset[str] = field(default_factory=frozenset)
    via: str = "token"          # session | token | basic | password | jwt
    token_id: str | None = None
    expires: float | None = None
    account: str | None = None  # set when a local account issued the credential: its stamp (accounts.py)
    issuer: str | None = None   # a machine caller: the entry of `issuers:` whose token proved it

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"id": self.id, "groups": sorted(self.groups), "via": self.via}
        if self.issuer is not None:
            out["issuer"] = self.issuer
        return out

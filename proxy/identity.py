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

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "groups": sorted(self.groups), "via": self.via}

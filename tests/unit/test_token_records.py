"""`mlflow-gate token list`: mint records read back from audit lines, and what the policy says of each."""
from __future__ import annotations

import json
import time

import pytest

from proxy.audit import Audit
from proxy.identity import Identity
from proxy.policy import load_policy_text
from proxy.token_records import minted, state, table
from proxy.tokens import mint_token, read_token

KEY = "unit-test-secret-key-0123456789"


def audit_lines(*tokens: tuple[Identity, str]) -> list[str]:
    lines: list[str] = []
    audit = Audit(sink=lines.append)
    for ident, token in tokens:
        audit.record(ident, "GET", "/x", True, "policy")          # decision lines are skipped
        audit.minted(ident, read_token(KEY, token))
    return lines


def test_mint_records_are_read_back_from_the_audit_stream() -> None:
    dave = Identity("dave@x.test", frozenset({"vision"}), via="session", account="stamp")
    carol = Identity("carol@x.test", via="jwt")
    t1 = mint_token(KEY, dave.id, ("vision",), 3600, "laptop", account="stamp")
    t2 = mint_token(KEY, carol.id, (), 60, "ci")
    lines = ["not json {", "2026/12/01 INFO something else", *audit_lines((dave, t1), (carol, t2)), ""]
    records = minted(lines)
    assert [r["id"] for r in records] == [read_token(KEY, t1).id, read_token(KEY, t2).id]
    assert records[0]["user"] == "dave@x.test" and records[0]["name"] == "laptop" and records[0]["local_account"]
    assert records[1]["minted_via"] == "jwt" and not records[1]["local_account"]
    assert "mgt_" not in json.dumps(records), "the token itself is never written to the audit stream"
    out = table(records, None)
    assert out.splitlines()[0].split() == ["id", "user", "name", "expires_at", "state"]
    assert all(line.endswith("active") for line in out.splitlines()[1:])


@pytest.mark.parametrize(("policy", "expected"), [
    ("users: {dave@x.test: {password: 'scrypt$1$1$1$a$b'}}\n", "active"),
    ("users: {}\n", "account removed"),
    ("revoked_users: [dave@x.test]\n", "revoked (user)"),
])
def test_the_state_of_a_local_accounts_token_follows_the_policy(policy: str, expected: str) -> None:
    record = {"id": "abc", "user": "Dave@x.test", "expires": time.time() + 60, "local_account": True}
    assert state(record, load_policy_text(policy)) == expected
    assert state({**record, "expires": time.time() - 1}, load_policy_text(policy)) == "expired"
    assert state(record, load_policy_text("revoked_tokens: [abc]\n")) == "revoked (token)"

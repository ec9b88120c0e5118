"""Policy text for tests: a team's entry under `teams:` written on one line of the test.

The policies of the unit tests differ in who is in which team and what each owns, but their team
entries all read the same way; `team` writes one so a test's policy shows only its own values.
"""
from __future__ import annotations

import json

import pytest

from proxy.policy import PolicyError, load_policy_text


def team(name: str, *members: str, **keys: object) -> str:
    """The YAML lines of team `name` (indented for `teams:`): `members`, then the other keys in the order given."""
    fields: dict[str, object] = {"members": list(members), **keys} if members else keys
    lines = [f"  {name}:", *(f"    {key}: {json.dumps(values)}" for key, values in fields.items())]
    return "\n".join(lines) + "\n"


def problems(text: str) -> list[str]:
    """What `load_policy_text` reports about `text` (read as p.yaml), which it must refuse."""
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml")
    return [str(p) for p in info.value.problems]


def assert_reported(text: str, expected: str) -> None:
    """`text` is refused, one problem says `expected`, and every problem names the file with its location."""
    found = problems(text)
    assert any(expected in p for p in found), found
    assert all(p.startswith("p.yaml: ") for p in found)

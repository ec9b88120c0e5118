"""Policy text for tests: a team's entry under `teams:` written on one line of the test.

The policies of the unit tests differ in who is in which team and what each owns, but their team
entries all read the same way; `team` writes one so a test's policy shows only its own values.
"""
from __future__ import annotations

import json


def team(name: str, *members: str, **keys: object) -> str:
    """The YAML lines of team `name` (indented for `teams:`): `members`, then the other keys in the order given."""
    fields: dict[str, object] = {"members": list(members), **keys} if members else keys
    lines = [f"  {name}:", *(f"    {key}: {json.dumps(values)}" for key, values in fields.items())]
    return "\n".join(lines) + "\n"

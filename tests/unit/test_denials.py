"""How a refusal reads (proxy/denials.py): the level needed, on what as the caller named it, and the names the
caller may use for that kind and level, so the fix is obvious; the same words whether the object is another
team's or missing."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.call import Call
from proxy.denials import denial, shown, usable
from proxy.errors import PermissionDenied
from proxy.identity import Identity
from proxy.policy import Level, load_policy_text
from proxy.resources import Target, Unresolvable, check
from proxy.routes import Names
from tests.support.policies import team

POLICY = load_policy_text("""
admins: [root@x.test]
default: none
teams:
""" + team("vision", "group:vision", maintainers=["carol@x.test"], experiments=["vision/"], models=["vision-"])
    + team("nlp", "group:nlp", experiments=["nlp/"], models=["nlp-"]) + """grants:
  - {to: [everyone], experiments: ["shared/"], models: ["shared-"], permission: edit}
  - {to: [everyone], experiments: ["users/{user}/"], permission: manage}
  - {to: [team:nlp], experiments: ["vision/benchmarks/"], permission: read}
denies:
  - {to: [group:contractors], experiments: ["shared/"], keep: read}
""")
BOB = Identity("bob@x.test", frozenset({"vision"}))


@pytest.mark.parametrize(("ident", "kind", "level", "expected"), [
    (BOB, Names.EXPERIMENT_NAME, Level.READ,
     "You can read experiments whose names start with 'shared/', 'users/bob@x.test/' or 'vision/'."),
    (BOB, Names.NEW_EXPERIMENT, Level.EDIT,
     "You can create and edit experiments whose names start with 'shared/', 'users/bob@x.test/' or 'vision/'."),
    (BOB, Names.EXPERIMENT, Level.MANAGE, "You can manage experiments whose names start with 'users/bob@x.test/'."),
    (BOB, Names.NEW_MODEL, Level.EDIT,
     "You can create and edit registered models and prompts whose names start with 'shared-' or 'vision-'."),
    (Identity("nina@x.test", frozenset({"nlp"})), Names.EXPERIMENT, Level.READ,
     "You can read experiments whose names start with 'nlp/', 'shared/', 'users/nina@x.test/' or 'vision/benchmarks/'."),
    # a deny that caps a whole prefix below the level leaves it out
    (Identity("kim@x.test", frozenset({"contractors"})), Names.NEW_EXPERIMENT, Level.EDIT,
     "You can create and edit experiments whose names start with 'users/kim@x.test/'."),
    (Identity("kim@x.test", frozenset({"contractors"})), Names.MODEL, Level.MANAGE,
     "You cannot manage any registered models and prompts yet: ask an admin to add you to a team or a grant."),
])
def test_the_names_a_caller_may_use(ident: Identity, kind: Names, level: Level, expected: str) -> None:
    assert usable(POLICY, ident, kind, "x", level) == expected


def test_default_and_long_lists() -> None:
    open_policy = load_policy_text("default: read\nteams: {t: {members: [a@x.test], experiments: ['t/']}}\n")
    assert usable(open_policy, Identity("z@x.test"), Names.EXPERIMENT, "1", Level.READ) == \
        "You can read experiments whose names no team owns."
    assert usable(open_policy, Identity("a@x.test"), Names.EXPERIMENT, "1", Level.READ) == \
        "You can read experiments whose names start with 't/', and names no team owns."
    many = load_policy_text("grants:\n" + "".join(f"  - {{to: [everyone], experiments: ['p{i:02}/'], permission: read}}\n"
                                                   for i in range(12)))
    text = usable(many, Identity("z@x.test"), Names.EXPERIMENT, "1", Level.READ)
    assert "'p07/' or 4 more (see /_gate/me)." in text and "'p08/'" not in text


def test_experiment_0_is_the_default_experiment() -> None:
    assert shown(Names.EXPERIMENT, "0") == "the Default experiment (id 0)"
    assert shown(Names.EXPERIMENT, "10") == "experiment 10"
    text = denial(Level.EDIT, Names.EXPERIMENT, "0", POLICY, BOB)
    assert text.startswith("Permission denied: edit on the Default experiment (id 0) is needed; you have no access "
                           "to it, or it does not exist. You can create and edit experiments whose names start with")
    assert text.endswith("Runs that name no experiment go to the Default one: choose yours first "
                         "(mlflow.set_experiment).")


def test_a_name_is_refused_as_a_name() -> None:
    """Names are decided without a lookup, so their refusal need not hedge about existence."""
    assert denial(Level.EDIT, Names.NEW_EXPERIMENT, "iris-test", POLICY, BOB).startswith(
        "Permission denied: edit on experiment 'iris-test' is needed; you have no access to that name. You can "
        "create and edit experiments whose names start with 'shared/'")


class Resolver:
    """Experiment ids -> names as the upstream answers; any other id is not found."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    async def targets(self, what: Names, value: str, ident: Identity, level: Level) -> list[Target]:
        if value not in self.names:
            raise Unresolvable(f"{what.value} {value}", "the server answered 404")
        return [Target("experiment", self.names[value], level)]


async def _nothing(*_: Any) -> Any:
    return None


def refusal(value: str, names: dict[str, str], what: Names = Names.EXPERIMENT, level: Level = Level.READ) -> str:
    call = Call({"method": "GET", "path": "/api/2.0/mlflow/experiments/get"}, _nothing, _nothing,
                policy=POLICY, ident=BOB)
    with pytest.raises(PermissionDenied) as err:
        asyncio.run(check(call, Resolver(names), what, value, level))  # type: ignore[arg-type]
    return err.value.message


@pytest.mark.parametrize("what", [Names.EXPERIMENT, Names.RUN, Names.TRACE, Names.LOGGED_MODEL])
def test_another_team_s_object_and_a_missing_one_read_the_same(what: Names) -> None:
    assert refusal("7", {"7": "nlp/bert"}, what) == refusal("7", {}, what)
    assert "nlp/bert" not in refusal("7", {"7": "nlp/bert"}, what)


def test_a_reader_who_needs_more_learns_what_it_holds() -> None:
    message = refusal("3", {"3": "vision/benchmarks/imagenet"}, level=Level.MANAGE)
    assert message.startswith("Permission denied: manage on experiment 3 is needed; you have edit. You can manage "
                              "experiments whose names start with 'users/bob@x.test/'.")

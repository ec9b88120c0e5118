"""How a refusal reads: the level a request needed, on what (the id or name as the caller gave it), and the
names the caller may use instead, so the fix is obvious.

A refusal of another team's object and of a missing one read the same (`denial`): the text depends on the
request and on the caller only, never on what an id resolved to.
"""
from __future__ import annotations

from .decide import prefixes_at
from .identity import Identity
from .policy import Level, Policy
from .routes import Names

DEFAULT_EXPERIMENT = "0"        # where MLflow puts runs that name no experiment
MAX_SHOWN = 8                   # prefixes a refusal lists; the rest are on /_gate/me

# How a refusal names each kind of id: as the caller gave it, never what it resolved to.
SHOWN: dict[Names, str] = {
    Names.EXPERIMENT: "experiment {}", Names.EXPERIMENT_NAME: "experiment {!r}", Names.NEW_EXPERIMENT: "experiment {!r}",
    Names.RUN: "run {}", Names.RUN_OWNED: "run {}", Names.TRACE: "trace {}", Names.NEW_TRACE: "trace {}",
    Names.ASSESSMENT: "assessment {}", Names.LOGGED_MODEL: "logged model {}", Names.MODEL: "model {!r}",
    Names.NEW_MODEL: "model {!r}", Names.PROMPT_URI: "prompt {!r}", Names.DATASET: "dataset {}",
    Names.ARTIFACT_PATH: "artifact path {!r}", Names.SOURCE_URI: "model version source {!r}",
}
if set(SHOWN) != set(Names):                # every kind of id a route can name has a way to be shown
    raise ImportError(f"ids without a way to show them: {sorted(n.value for n in set(Names) - set(SHOWN))}")

_MODEL_KINDS = frozenset({Names.MODEL, Names.NEW_MODEL, Names.PROMPT_URI})
# Decided on the name the caller gave, with no lookup: whether something has that name never matters.
_BY_NAME = _MODEL_KINDS | {Names.EXPERIMENT_NAME, Names.NEW_EXPERIMENT}
_VERBS = {Level.READ: "read", Level.EDIT: "create and edit", Level.MANAGE: "manage"}
_NOUNS = {"experiment": "experiments", "model": "registered models and prompts"}


def shown(what: Names, value: str) -> str:
    """An id as a refusal names it: as the caller gave it; experiment 0 is the Default experiment."""
    if what is Names.EXPERIMENT and value == DEFAULT_EXPERIMENT:
        return "the Default experiment (id 0)"
    return SHOWN[what].format(value)


def kind_of(what: Names) -> str:
    """The kind of name (experiment | model) the policy decides an id of this kind on."""
    return "model" if what in _MODEL_KINDS else "experiment"


def denial(level: Level, what: Names, value: str, policy: Policy, ident: Identity, via: str = "") -> str:
    """The refusal of a request needing `level` on an object the caller may not reach, or that does not exist
    (`via`: what in the request named it, e.g. a GraphQL field)."""
    none = "you have no access to that name" if what in _BY_NAME else "you have no access to it, or it does not exist"
    return (f"Permission denied: {level} on {shown(what, value)} is needed{via}; {none}. "
            f"{usable(policy, ident, what, value, level)}")


def shortfall(needed: Level, have: Level, what: Names, value: str, policy: Policy, ident: Identity) -> str:
    """The refusal of a caller who may read the object but needs more."""
    return (f"Permission denied: {needed} on {shown(what, value)} is needed; you have {have}. "
            f"{usable(policy, ident, what, value, needed)}")


def usable(policy: Policy, ident: Identity, what: Names, value: str, level: Level) -> str:
    """The names where the caller does hold `level` on this kind: what to use instead."""
    kind = kind_of(what)
    verb, noun = _VERBS.get(level, str(level)), _NOUNS[kind]
    prefixes = [repr(p) for p in prefixes_at(policy, ident, kind, level)]
    unowned = policy.default >= level
    if len(prefixes) > MAX_SHOWN:
        prefixes = prefixes[:MAX_SHOWN] + [f"{len(prefixes) - MAX_SHOWN} more (see /_gate/me)"]
    if prefixes:
        text = (f"You can {verb} {noun} whose names start with {_either(prefixes)}"
                + (", and names no team owns." if unowned else "."))
    elif unowned:
        text = f"You can {verb} {noun} whose names no team owns."
    else:
        text = f"You cannot {verb} any {noun} yet: ask an admin to add you to a team or a grant."
    if what is Names.EXPERIMENT and value == DEFAULT_EXPERIMENT:
        text += " Runs that name no experiment go to the Default one: choose yours first (mlflow.set_experiment)."
    return text


def _either(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]

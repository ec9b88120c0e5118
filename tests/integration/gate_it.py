"""Helpers shared by the integration suites (plain functions; fixtures live in the conftest files)."""
from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
from mlflow.exceptions import MlflowException

ALICE, MO, BOB, ROOT = "alice@corp.test", "mo@corp.test", "bob@corp.test", "root@corp.test"


def uid() -> str:
    return uuid.uuid4().hex[:8]


def search_pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Each page of a paged search of the mlflow client (`search_experiments`, `search_registered_models`, ...),
    following the page tokens to the end."""
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield page
        token = page.token
        if not token:
            return


def is_denied(exc: BaseException, code: str = "PERMISSION_DENIED", status: int = 403) -> bool:
    """Whether `exc` (or an error it wraps) is the gate's refusal.

    REST calls raise `RestException` carrying the gate's error_code. Some client helpers catch that and raise their
    own `MlflowException` ("Failed to get logged model ... You may not have access"), keeping the gate's error as
    `__cause__`/`__context__`; artifact downloads wrap the `HTTPError`, whose text carries the gate's JSON.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MlflowException) and (
                current.error_code == code or (f"{status} Client Error" in str(current) and code in str(current))):
            return True
        if isinstance(current, requests.HTTPError) and current.response is not None \
                and current.response.status_code == status:
            return True
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def denied(code: str = "PERMISSION_DENIED", status: int = 403) -> Iterator[None]:
    """The block must fail with the gate's refusal (403 PERMISSION_DENIED unless told otherwise)."""
    try:
        yield
    except (MlflowException, requests.HTTPError) as exc:
        if not is_denied(exc, code, status):
            raise AssertionError(f"expected {status} {code}, got {type(exc).__name__}: {exc}") from exc
    else:
        raise AssertionError(f"expected {status} {code}, but the call succeeded")


def set_policy(gate: Any, text: str) -> None:
    """Write the gate's policy file and wait until the gate has tried to load it."""
    gate.set_policy(text, ROOT)


@contextlib.contextmanager
def policy_plus(gate: Any, extra: str) -> Iterator[str]:
    """The gate's policy with `extra` appended for the block; yields the original text."""
    original = gate.policy_path.read_text()
    try:
        set_policy(gate, original + extra)
        yield original
    finally:
        set_policy(gate, original)


@dataclass
class World:
    """Objects every suite may read; suites create their own objects for anything they change."""

    alpha_exp: str  # alpha/base, by alice
    beta_exp: str  # beta/base, by bob
    public_exp: str  # alpha/public/base, by alice (team beta may read it)
    shared_exp: str  # shared/base, by bob (everyone may edit)
    alpha_run: str  # in alpha/base, by alice, with a param, a metric, a tag and an artifact
    alpha_run2: str  # in alpha/base, by alice
    mo_run: str  # in alpha/base, by mo
    beta_run: str  # in beta/base, by bob, with a param, a metric, a tag and an artifact
    public_run: str  # in alpha/public/base, by alice

"""Each search the gate cuts: where its items and names are, its limits, and its `order_by` read as MLflow reads it.

The gate merges one upstream search per readable prefix, so it must order items exactly as MLflow's SQL store
does: the same keys, the same default order and the same tie-breakers (`SqlAlchemyStore`
`_get_search_experiments_order_by_clauses`, `_parse_search_registered_models_order_by`,
`_parse_search_model_versions_order_by` in MLflow 3.17). Strings compare by code point, as SQLite, MySQL's binary
comparison and PostgreSQL's C collations do; a missing (NULL) value sorts first ascending, last descending, as in
SQLite. An `order_by` the gate cannot read gives no key: the search is then not merged (`plan.py`), and MLflow
answers it, or refuses it, itself.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .routes import Search

SortKey = Callable[[dict[str, Any]], tuple[Any, ...]]


@dataclass(frozen=True)
class SearchKind:
    list_key: str                  # the list in the answer
    name_kind: str                 # experiment | model (what the policy decides on)
    name_field: str                # the name of each item
    default_max: int               # MLflow's max_results when none is given
    upstream_max: int              # the most MLflow returns in one page
    columns: dict[str, tuple[str, bool]]          # order_by key -> (item field, numeric)
    default_order: tuple[str, ...]
    tie_breakers: tuple[tuple[str, bool], ...]    # (key, ascending), added unless the order names the key
    entity_prefix: bool = True     # `attribute.<key>` is accepted


SEARCHES = {
    Search.EXPERIMENTS: SearchKind(
        "experiments", "experiment", "name", 1000, 50_000,
        {"name": ("name", False), "experiment_id": ("experiment_id", True),
         "creation_time": ("creation_time", True), "last_update_time": ("last_update_time", True)},
        ("creation_time DESC", "experiment_id ASC"), (("experiment_id", False),)),
    Search.REGISTERED_MODELS: SearchKind(
        "registered_models", "model", "name", 100, 1000,
        {"name": ("name", False), "timestamp": ("last_updated_timestamp", True),
         "last_updated_timestamp": ("last_updated_timestamp", True),
         "creation_timestamp": ("creation_timestamp", True)},      # the file store's; the SQL store refuses it
        (), (("name", True),), entity_prefix=False),
    Search.MODEL_VERSIONS: SearchKind(
        "model_versions", "model", "name", 10_000, 200_000,
        {"name": ("name", False), "version_number": ("version", True),
         "creation_timestamp": ("creation_timestamp", True), "last_updated_timestamp": ("last_updated_timestamp", True)},
        ("last_updated_timestamp DESC", "name ASC", "version_number DESC"),
        (("name", True), ("version_number", False))),
}


def parse_clause(kind: SearchKind, clause: str) -> tuple[str, bool] | None:
    """`name`, `name DESC`, `` `creation_time` asc ``, `attribute.name` -> (key, ascending); None when unknown."""
    try:
        words = shlex.split(clause.replace("`", '"'))
    except ValueError:
        return None
    if not 1 <= len(words) <= 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
        return None
    key = words[0].strip()
    if kind.entity_prefix and key.startswith("attribute."):
        key = key[len("attribute."):].strip("\"'`")
    if key not in kind.columns:
        return None
    return key, len(words) == 1 or words[1].lower() == "asc"


def order_of(kind: SearchKind, order_by: list[str]) -> list[tuple[str, bool]] | None:
    """The full order MLflow applies: the caller's (or the default) plus the tie-breakers."""
    parsed = [parse_clause(kind, c) for c in (order_by or kind.default_order)]
    if any(p is None for p in parsed):
        return None
    order = [p for p in parsed if p is not None]
    fields = [kind.columns[k][0] for k, _ in order]
    if len(set(fields)) != len(fields):      # MLflow refuses duplicate fields; let it say so
        return None
    named = {k for k, _ in order}
    return order + [(k, asc) for k, asc in kind.tie_breakers if k not in named]


def name_first(kind: SearchKind, order_by: list[str]) -> bool | None:
    """True (ascending) or False (descending) when the order starts with the name, None otherwise. Names that
    start with different prefixes (none inside another) then never interleave: prefix by prefix is the order."""
    order = order_of(kind, order_by)
    return order[0][1] if order and order[0][0] == "name" else None


class Desc:
    """Reverses the comparison of the value it wraps (a descending column in a sort key)."""
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: Desc) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Desc) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


def _value(item: dict[str, Any], field: str, numeric: bool) -> tuple[int, Any]:
    raw = item.get(field)
    if raw is None or raw == "":
        return (0, 0 if numeric else "")
    if numeric:
        try:
            return (1, int(raw))
        except (TypeError, ValueError):
            return (1, 0)
    return (1, str(raw))


def sort_key(kind: SearchKind, order_by: list[str]) -> SortKey | None:
    """The key that orders items as MLflow's answer does, or None when the order cannot be read."""
    order = order_of(kind, order_by)
    if order is None:
        return None
    cols = [(*kind.columns[key], asc) for key, asc in order]

    def key(item: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(_value(item, f, n) if asc else Desc(_value(item, f, n)) for f, n, asc in cols)
    return key

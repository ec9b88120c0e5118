"""Which upstream searches answer a caller's search: one per readable prefix, or one scan of everything.

MLflow's filters have no OR, so a caller who may read several prefixes gets one upstream search per prefix
(`name LIKE 'prefix%' AND <the caller's filter>`), merged in order by `merge.py`. The `LIKE` only narrows what
MLflow returns; each stream still keeps only names that start with its prefix (exactly, case and all) and that the
policy lets the caller read (`keep`), so:

- prefixes inside another readable prefix (`alpha/public/` under `alpha/`) are dropped: no name is merged twice;
- `_` and `%` stay in the pattern (wildcards there only widen the match); a quote or a backslash cannot be written
  the same way for every database, so the pattern stops before it (the stream then narrows less);
- SQLite's case-insensitive `LIKE` widens the match too, and the prefix check cuts it back;
- a denied sub-prefix inside a readable prefix is cut by `keep`;
- a caller filter that names a name (`name = 'x'`, `name LIKE 'alpha/sub%'`) skips the prefixes it excludes.

A caller whose readable names are no finite list of prefixes (an admin, `default: read`), or too many prefixes to
search one by one, gets one scan of the whole server cut item by item.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_STREAMS = 20          # more readable prefixes than this: one scan is cheaper than a search per prefix


@dataclass(frozen=True)
class Stream:
    prefix: str               # every item kept starts with it ("" for the scan)
    pattern: str | None       # the clause sent upstream (None: the caller's filter alone)

    @property
    def dense(self) -> bool:
        """Whether the upstream narrows this stream to (about) its prefix: pages need not be oversized."""
        return self.pattern is not None


SCAN = Stream("", None)


def outermost(prefixes: list[str]) -> list[str]:
    """The prefixes not inside another one, sorted."""
    out: list[str] = []
    for p in sorted(set(prefixes)):
        if not out or not p.startswith(out[-1]):
            out.append(p)
    return out


def like_clause(prefix: str) -> str | None:
    """`name LIKE '<prefix>%'` as every MLflow store reads it, stopped before a backslash (an escape on
    PostgreSQL and MySQL, a plain character on SQLite) and, when the prefix holds both quote characters, before
    the first of them; None when nothing of the prefix is left."""
    literal = prefix.split("\\", 1)[0]
    if "'" in literal and '"' in literal:
        literal = literal[:min(literal.index("'"), literal.index('"'))]
    quote = '"' if "'" in literal else "'"        # MLflow takes a double-quoted value as it is
    return f"name LIKE {quote}{literal}%{quote}" if literal else None


_STRING = r"'[^']*'|\"[^\"]*\""
_TOKEN = re.compile(rf"\s*({_STRING}|`[^`]*`|!=|<=|>=|=|<|>|\(|\)|,|[^\s'\"`=<>!(),]+)")


def _tokens(text: str) -> list[str] | None:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return None if text[pos:].strip() else out
        out.append(m.group(1))
        pos = m.end()
    return out


def name_constraints(user_filter: str | None) -> list[tuple[str, str]]:
    """(comparator, literal) of every `name =|LIKE|ILIKE '...'` conjunct of the caller's filter; [] when the filter
    holds anything the gate might read differently from MLflow (escapes, doubled quotes): nothing is skipped then."""
    if not user_filter or any(s in user_filter for s in ("\\", "''", '""')):
        return []
    tokens = _tokens(user_filter)
    if tokens is None:
        return []
    out = []
    for i in range(len(tokens) - 2):
        ident, op, value = tokens[i].replace("`", ""), tokens[i + 1].upper(), tokens[i + 2]
        joined = i == 0 or tokens[i - 1].upper() == "AND"
        if (joined and ident in ("name", "attribute.name") and op in ("=", "LIKE", "ILIKE") and len(value) >= 2
                and value[0] in "'\"" and value[-1] == value[0]):
            out.append((op, value[1:-1]))
    return out


def excluded(prefix: str, constraints: list[tuple[str, str]]) -> bool:
    """Whether some name constraint of the caller's filter rules out every name that starts with `prefix`.
    `LIKE` is case-insensitive on SQLite (and `ILIKE` everywhere): those compare ASCII case-folded, or not at all."""
    for op, literal in constraints:
        if op == "=":
            if not literal.startswith(prefix):
                return True
            continue
        head = re.split(r"[%_]", literal, maxsplit=1)[0]
        if not (head.isascii() and prefix.isascii()):
            continue
        head, folded = head.lower(), prefix.lower()
        if not (head.startswith(folded) or folded.startswith(head)):
            return True
    return False


def plan(prefixes: list[str] | None, user_filter: str | None) -> list[Stream]:
    """The upstream searches that together hold every item the caller may read and its filter matches."""
    if prefixes is None:
        return [SCAN]
    constraints = name_constraints(user_filter)
    wanted = [p for p in outermost(prefixes) if not excluded(p, constraints)]
    if len(wanted) > MAX_STREAMS or "" in wanted:
        return [SCAN]
    streams = [Stream(p, like_clause(p)) for p in wanted]
    return [SCAN] if any(s.pattern is None for s in streams) else streams


def upstream_filter(stream: Stream, user_filter: str | None) -> str | None:
    """The filter one stream sends: its clause AND the caller's."""
    theirs = user_filter.strip() if user_filter and user_filter.strip() else None
    if stream.pattern is None:
        return theirs
    return f"{stream.pattern} AND {theirs}" if theirs else stream.pattern

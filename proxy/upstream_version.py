"""Which MLflow the gate fronts.

The version comes from the upstream's `GET /version` (every MLflow since 2.x answers it with the bare
version string), read at start-up and again whenever the upstream comes back after being unreachable
or answers another version (a restart may be an upgrade). Each time, the log says which version it
is and which of that version's routes the route table does not classify: those are admin-only.

A version's routes are known from the lists in `upstream_routes/` (one per tested release, made from
that release's own Flask and FastAPI apps by the compatibility suite; `/ajax-api/` twins of `/api/`
routes are left out, they match the same row). For another release the log says no list is shipped.
"""
from __future__ import annotations

import asyncio
import logging
import re
from functools import cache
from pathlib import Path

from .errors import UpstreamUnavailable
from .forward import Upstream
from .routes import RouteTable

log = logging.getLogger("mlflow_gate")

ROUTE_LISTS = Path(__file__).with_name("upstream_routes")
_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?([.+\-\w]*)$")
_SAMPLES = {"artifact_path": "1/0123456789abcdef0123456789abcdef/artifacts/x.txt", "path": "a/b",
            "filename": "a.js"}


def shipped_versions() -> list[str]:
    return sorted((p.stem for p in ROUTE_LISTS.glob("*.txt")), key=lambda v: [int(x) for x in v.split(".")])


def route_list_for(version: str) -> str | None:
    """The shipped list that describes `version`: its own, else the newest of the same major.minor series."""
    if not _VERSION.match(version):
        return None
    shipped = shipped_versions()
    if version in shipped:
        return version
    series = [v for v in shipped if v.split(".")[:2] == version.split(".")[:2]]
    return series[-1] if series else None


@cache
def known_routes(version: str) -> frozenset[tuple[str, str]] | None:
    """(method, path pattern) of every route `version` serves, or None when no list is shipped for it."""
    path = ROUTE_LISTS / f"{version}.txt"
    if not _VERSION.match(version) or not path.is_file():
        return None
    lines = path.read_text().splitlines()
    return frozenset((m, p) for m, p in (line.split(" ", 1) for line in lines if line.strip()))


def sample_path(pattern: str) -> str:
    """A concrete path a route pattern matches (`{run_id}` -> `p-run_id`)."""
    return re.sub(r"\{(\w+)\}", lambda m: _SAMPLES.get(m.group(1), "p-" + m.group(1)), pattern)


def unclassified(table: RouteTable, routes: frozenset[tuple[str, str]]) -> list[str]:
    return sorted(f"{m} {p}" for m, p in routes if table.match(m, sample_path(p)) is None)


def describe(version: str, table: RouteTable) -> tuple[int, str]:
    """The log level and line for fronting `version`."""
    listed = route_list_for(version)
    routes = known_routes(listed) if listed else None
    if routes is None:
        return logging.WARNING, (f"MLflow {version}: no route list is shipped for this version (known: "
                                 f"{', '.join(shipped_versions())}); routes the table does not know are admin-only")
    source = "" if listed == version else f" (by the route list of {listed})"
    missing = unclassified(table, routes)
    if not missing:
        return logging.INFO, f"MLflow {version}: every route is classified ({len(routes)} routes){source}"
    return logging.WARNING, (f"MLflow {version}: {len(missing)} of {len(routes)} routes are not classified "
                             f"and admin-only{source}: {', '.join(missing)}")


async def read_version(upstream: Upstream) -> str | None:
    """The upstream's version, None when it answers but not with a version (then it is not an MLflow we know)."""
    status, data = await upstream.get_json("/version")
    text = str(data.get("raw", "") if isinstance(data, dict) else data).strip()
    return text if status == 200 and _VERSION.match(text) else None


class UpstreamVersion:
    """The version last read; `watch()` keeps it current (quickly until the first answer, then every `every` s)."""

    def __init__(self, upstream: Upstream, table: RouteTable) -> None:
        self.upstream, self.table = upstream, table
        self.version: str | None = None
        self.reachable = False
        self.task: asyncio.Task[None] | None = None

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def check(self) -> None:
        try:
            version = await read_version(self.upstream)
        except UpstreamUnavailable:
            if self.reachable:
                log.warning("upstream %s is unreachable; its version is read again when it is back",
                            self.upstream.base_url)
            self.reachable = False
            return
        if version != self.version or not self.reachable:
            if version is None:
                log.warning("upstream %s does not answer GET /version with an MLflow version", self.upstream.base_url)
            else:
                log.info("fronts MLflow %s at %s", version, self.upstream.base_url)
                log.log(*describe(version, self.table))
        self.version, self.reachable = version, True

    async def watch(self, every: float = 30.0) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a watcher that dies would stop noticing upgrades
                log.exception("upstream version check failed")
            await asyncio.sleep(every if self.reachable else 1.0)


def start(upstream: Upstream, table: RouteTable) -> UpstreamVersion:
    """The version watcher of the app's lifespan, running; `stop()` it when the lifespan ends."""
    watcher = UpstreamVersion(upstream, table)
    watcher.task = asyncio.create_task(watcher.watch())
    return watcher

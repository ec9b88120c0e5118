"""One MLflow request through the gate, as a sequence of steps; each step's code lives in the module
that names it:

  edge       the path and headers are checked
  authn      the caller is identified
  routes     the route is looked up
  limits     the caller's request budget is counted (429 when spent)
  params     the parameters are read as MLflow will read them
  resources  every id is resolved to its name and decided (`decide`)
  rewrite    the body is rewritten where the gate forces something
  then one answer: the gate's own to the MLflow UI (`ui`: who is signed in, its sign-out), GraphQL
  (`graphql`), a filtered search (`searches`, `filters`), an artifact view or the artifact protocol from
  the gate's stores (`artifact_views`), or the upstream's (`forward`).

Everything here is plain asyncio over ASGI messages: the forwarding path carries no framework
routing beyond one table lookup (reference/proxy-overhead.md).
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import quote

from . import graphql, scoped_search, ui
from .artifact_views import serve_protocol, serve_view
from .call import Call
from .decide import is_admin
from .edge import check_origin, check_path, header_map, is_page_load, read_body, request_id, set_headers
from .errors import BadRequest, GateError, Internal, PermissionDenied, RateLimited, Unauthenticated, send_error
from .forward import Receive, Send, relay, send_bytes
from .limits import retry_after
from .params import check_version, read_params
from .policy import Team
from .resources import Unresolvable, authorize
from .rewrite import check_types, rewrite_body
from .routes import UNKNOWN, Access, Rewrite, Route, Source
from .services import Services

log = logging.getLogger("mlflow_gate")
_JSON = [(b"content-type", b"application/json")]
_NO_CREDENTIAL = ("Authentication required: send Authorization: Bearer <token> (MLFLOW_TRACKING_TOKEN), "
                  "Basic credentials, or sign in at /_gate/login.")


class Gate:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        start, status = time.perf_counter(), 0
        rid = request_id(scope)
        set_headers(scope, {b"x-request-id": rid.encode()})        # sent upstream as well

        async def counted(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        call = Call(scope, receive, counted, request_id=rid)
        try:
            await self.handle(call)
        except GateError as err:
            await self.refuse(call, err)
        except Exception:
            log.exception("request %s (%s %s) failed", rid, scope["method"], scope.get("path"))
            if not status:                         # nothing sent yet: the client still gets MLflow's shape
                await send_error(counted, Internal(f"The gate failed on this request (request id {rid}); "
                                                   "the error is logged under that id."))
        finally:
            self.s.metrics.request(scope["method"], status or 500, time.perf_counter() - start)
            self.s.metrics.team_call(call.policy, call.decisions)

    async def handle(self, call: Call) -> None:
        call.headers = header_map(call.scope)
        check_path(call.path, call.scope.get("raw_path") or call.path.encode())
        call.policy = self.s.store.current
        call.route, call.path_params = self.s.table.lookup(call.method, call.path)
        if ui.signing_out(call):
            await ui.sign_out(call, self.s)
            return
        peer = call.scope.get("client")
        call.ident = await self.s.authn.identify(call.headers, call.policy, peer[0] if peer else None)
        self.limit(call)
        if call.route.access is Access.PUBLIC:
            await self.forward(call)
            return
        self.admit(call)
        if needs_body(call.route, call.method, call.query):
            call.body = await read_body(call.receive)
        call.params = read_params(call.method, call.route.source, call.query, call.body, call.headers)
        check_types(call.route.rewrite, call.params)
        check_version(call.params)
        if call.route.access is Access.CHECKED and not call.admin:
            await authorize(call, self.s.resolver)
        await self.respond(call)

    def limit(self, call: Call) -> None:
        """The caller's `limits.requests_per_minute` on this replica; public routes (health) are not counted."""
        per_minute = call.rules.limits.requests_per_minute
        if call.ident is None or call.route.access is Access.PUBLIC:
            return
        wait = self.s.budgets.wait(per_minute, call.ident.id, time.monotonic())
        if wait is not None:
            self.s.metrics.decision(False, "rate limited")
            raise RateLimited(f"Too many requests: each caller may send {per_minute} a minute to this gate replica "
                              f"(limits.requests_per_minute); retry in {retry_after(wait)} s.", wait)

    def admit(self, call: Call) -> None:
        """A caller, a same-site write when signed in by cookie, and a route this caller may use at all."""
        if call.ident is None:
            raise Unauthenticated(_NO_CREDENTIAL)
        if call.ident.via == "session":
            check_origin(call.scope, call.headers, self.s.public_origin)
        route = call.route
        if route.access is Access.REFUSED:
            raise PermissionDenied(f"Permission denied: {call.path} is disabled by the gate for everyone.")
        call.admin = is_admin(call.rules, call.ident)
        if route.access is Access.ADMIN and not call.admin:
            what = "an unknown route" if route is UNKNOWN else call.path
            raise PermissionDenied(f"Permission denied: {what} is for admins only.")

    async def respond(self, call: Call) -> None:
        route = call.route
        if route.answer is not None:
            status, headers, body = ui.answer(call)
            self.allowed(call, "answered by the gate")
            await send_bytes(call.send, status, headers, body)
            return
        if route.graphql:
            doc = await graphql.authorize(call, self.s.resolver)
            self.allowed(call, "admin" if call.admin else "policy")
            status, data = await graphql.answer(call, self.s.upstream, doc)
            await send_bytes(call.send, status, _JSON, json.dumps(data).encode())
            return
        if route.search is not None and not call.admin:
            self.allowed(call, ("policy" if route.access is Access.CHECKED else "signed in") + "; answer filtered")
            page = await (scoped_search.search(call, self.s.resolver) if route.search in scoped_search.KINDS
                          else self.s.searches.page(call))
            await send_bytes(call.send, 200, _JSON, json.dumps(page).encode())
            return
        self.allowed(call, "admin" if call.admin else ("signed in" if route.access is Access.SIGNED_IN else "policy"))
        if route.rewrite is not None and (call.params.body is not None or call.params.spans is not None):
            await self.rewrite(call, route.rewrite)
        if route.view is not None and await serve_view(call, self.s.artifacts, self.s.resolver):
            return
        if route.artifacts and await serve_protocol(call, self.s.artifacts):
            return
        status = await self.forward(call, strip_workspace=not call.admin)
        if route.renames and status == 200:
            for exp_id in call.params.values("experiment_id"):
                self.s.resolver.forget_name(exp_id)

    async def rewrite(self, call: Call, rewrite: Rewrite) -> None:
        call.body, content_type = rewrite_body(rewrite, call.params, call.who, await self.team_of(call, rewrite))
        if content_type is not None:              # re-encoded (OTLP): no longer the client's encoding
            set_headers(call.scope, {b"content-type": content_type, b"content-encoding": None})

    async def team_of(self, call: Call, rewrite: Rewrite) -> Team | None:
        """The team owning the experiment a creation lands in (for its tags). An experiment that cannot be
        resolved has none: the caller was authorized (an admin), and MLflow gives its own answer."""
        name = call.params.scalar("name") if rewrite is Rewrite.EXPERIMENT_CREATE else None
        if rewrite is Rewrite.RUN_CREATE and (exp_id := call.params.scalar("experiment_id")):
            try:
                name = await self.s.resolver.experiment_name(exp_id)
            except (Unresolvable, BadRequest):
                return None
        return call.rules.owner("experiment", name) if name else None

    def allowed(self, call: Call, reason: str) -> None:
        self.s.audit.record(call.ident, call.method, call.path, True, reason, call.decisions,
                            request_id=call.request_id)

    async def refuse(self, call: Call, err: GateError) -> None:
        if isinstance(err, Unauthenticated) and is_page_load(call.method, call.path, call.headers):
            err = ui.page_without_session(call)
        elif isinstance(err, (PermissionDenied, Unauthenticated)):
            decision = err.decision if isinstance(err, PermissionDenied) else None
            detail = err.detail if isinstance(err, PermissionDenied) else None
            self.s.audit.record(call.ident, call.method, call.path, False,
                                err.message + (f" [{detail}]" if detail else ""),
                                [decision] if decision else None, err.status, request_id=call.request_id)
            err = ui.as_shown(call, err)
        await send_error(call.send, err)

    async def forward(self, call: Call, *, strip_workspace: bool = True) -> int:
        raw = call.scope.get("raw_path") or quote(call.path).encode()
        resp = await self.s.upstream.open_request(
            call.scope, call.receive, body=call.body, raw_path=raw.decode("latin-1"), query=call.query,
            strip=frozenset({"x-mlflow-workspace"}) if strip_workspace else frozenset())
        status = resp.status
        await relay(resp, call.send)
        return status


def needs_body(route: Route, method: str, query: bytes) -> bool:
    """Whether the gate must read the body: to decide on it, filter by it or rewrite it."""
    if route.graphql:
        return method != "GET"
    if route.source is Source.OTLP:
        return True
    return route.source is Source.PROTO and (method != "GET" or not query) and (
        route.access is Access.CHECKED or route.search is not None or route.rewrite is not None)


__all__ = ["Gate", "check_path"]

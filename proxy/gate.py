"""One MLflow request through the gate: check the path, identify, match the route, read the
parameters as MLflow will, resolve ids to names, decide, rewrite, forward, filter the answer.

Everything here is plain asyncio over ASGI messages: the forwarding path carries no framework
routing beyond one table lookup (reference/proxy-overhead.md).
"""
from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, urlsplit

from .artifact_server import ArtifactServer, artifact_experiment, route_of
from .audit import Audit
from .authn import Authenticator
from .decide import Decision, decide, is_admin, readable_prefixes
from .errors import BadRequest, GateError, PayloadTooLarge, PermissionDenied, Unauthenticated, error_headers
from .filters import SEARCHES, filtered_page, parse_max_results, single_prefix_filter
from .forward import Receive, Send, Upstream, relay, send_bytes
from .graphql import analyse, filter_model_versions, model_names
from .identity import Identity
from .params import Params, parse_body, parse_query, read_params
from .policy import Level, Policy, PolicyStore, Team
from .resources import Resolver
from .rewrite import REWRITES
from .routes import ADMIN, CHECKED, PUBLIC, REFUSED, SIGNED_IN, Need, Route, RouteTable

MAX_BODY = 64 * 1024 * 1024
PROMPT_SOURCES = frozenset({"prompt-template", "dummy-source"})   # MLflow's placeholders for prompt versions
UNKNOWN = Route(frozenset(), "(unknown route)", ADMIN)
_BAD_RAW = re.compile(rb"%(2[eEfF]|5[cC]|00)")
_DOUBLE_ENCODED = re.compile(r"%(2[eEfF]|5[cC]|00)")     # what would become '.', '/', '\' or NUL if decoded again
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_JSON = [(b"content-type", b"application/json")]


class Denied(PermissionDenied):
    def __init__(self, message: str, decision: Decision | None = None) -> None:
        super().__init__(message)
        self.decision = decision


class UpstreamAnswer(GateError):
    """An upstream error met while the gate paged a search: passed on as MLflow gave it."""

    def __init__(self, status: int, data: Any) -> None:
        super().__init__(str(data))
        self.status = status
        self.data = data

    def body(self) -> bytes:
        return json.dumps(self.data).encode()


def check_path(path: str, raw_path: bytes) -> str:
    """Refuse paths that could mean one thing to the gate and another to MLflow."""
    if _BAD_RAW.search(raw_path) or _DOUBLE_ENCODED.search(path) or "\\" in path or "\x00" in path:
        raise BadRequest("The path holds an encoded '.', '/', '\\' or NUL; request the plain path.")
    segments = path.split("/")
    if "." in segments or ".." in segments or "//" in path:
        raise BadRequest("The path holds '.' or '..' segments or an empty segment; request the normalised path.")
    return path


def _headers(scope: dict[str, Any]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in scope["headers"]:
        key = key.lower()
        if key in out:
            if key == b"cookie":
                out[key] += b"; " + value
                continue
            if key in (b"authorization", b"content-length", b"host", b"x-mlflow-experiment-id"):
                raise BadRequest(f"The {key.decode()} header is given twice.")
        out[key] = value
    return out


def is_page_load(method: str, path: str, headers: dict[bytes, bytes]) -> bool:
    return (method == "GET" and b"text/html" in headers.get(b"accept", b"")
            and not path.startswith(("/api/", "/ajax-api/", "/graphql")))


class Gate:
    def __init__(self, *, store: PolicyStore, authn: Authenticator, upstream: Upstream, resolver: Resolver,
                 table: RouteTable, public_origin: str | None = None, artifacts: ArtifactServer | None = None,
                 audit: Audit | None = None) -> None:
        self.artifacts = artifacts
        self.audit = audit or Audit()
        self.store = store
        self.authn = authn
        self.upstream = upstream
        self.resolver = resolver
        self.table = table
        self.public_origin = public_origin

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        ident: Identity | None = None
        headers: dict[bytes, bytes] = {}
        try:
            headers = _headers(scope)
            check_path(path, scope.get("raw_path") or path.encode())
            policy = self.store.current
            ident = await self.authn.identify(headers, policy)
            found = self.table.match(method, path)
            route, path_params = found if found else (UNKNOWN, {})
            if route.access == PUBLIC:
                await self.forward(scope, receive, send, None)
                return
            if ident is None:
                raise Unauthenticated("Authentication required: send Authorization: Bearer <token> "
                                      "(MLFLOW_TRACKING_TOKEN), Basic credentials, or sign in at /_gate/login.")
            if ident.via == "session" and method not in _SAFE_METHODS:
                self.check_origin(scope, headers)
            await self.authorized(scope, receive, send, route, path_params, ident, policy, headers)
        except GateError as err:
            if isinstance(err, Unauthenticated) and is_page_load(method, path, headers):
                await self.to_sign_in(scope, send)
                return
            if isinstance(err, (PermissionDenied, Unauthenticated)):
                decision = err.decision if isinstance(err, Denied) else None
                self.audit.record(ident, method, path, False, err.message, [decision] if decision else None, err.status)
            await send_bytes(send, err.status, error_headers(err), err.body())

    async def authorized(self, scope: dict[str, Any], receive: Receive, send: Send, route: Route,
                         path_params: dict[str, str], ident: Identity, policy: Policy,
                         headers: dict[bytes, bytes]) -> None:
        method, path = scope["method"], scope["path"]
        if route.access == REFUSED:
            raise Denied(f"Permission denied: {path} is disabled by the gate for everyone.")
        admin = is_admin(policy, ident)
        if route.access == ADMIN and not admin:
            what = "an unknown route" if route is UNKNOWN else path
            raise Denied(f"Permission denied: {what} is for admins only.")
        query = scope.get("query_string", b"")
        body = await read_body(receive) if self.needs_body(route, method, query) else None
        params = read_params(method, route.source, query, body)
        decisions: list[Decision] = []
        if route.access == CHECKED and not admin:
            decisions = await self.authorize(route, params, path_params, ident, policy, headers)
        if route.filter == "graphql":
            await self.graphql(scope, send, ident, policy, admin, params, body)
            return
        if route.filter and not admin:
            self.audit.record(ident, method, path, True, "signed in; answer filtered")
            await self.search(scope, send, route.filter, ident, policy, params)
            return
        self.audit.record(ident, method, path, True, "admin" if admin else
                     ("signed in" if route.access == SIGNED_IN else "policy"), decisions)
        if route.rewrite and params.body is not None and route.rewrite in REWRITES:
            team = await self.team_of(route, params, policy)
            body = json.dumps(REWRITES[route.rewrite](params.body, ident, team)).encode()
        if route.serve and self.artifacts is not None and await self.serve_view(scope, receive, send, route.serve,
                                                                              params, path_params):
            return
        if self.artifacts is not None and route.pattern.startswith("2.0/mlflow-artifacts/"):
            op, artifact_path = route_of(method, path, query)
            if op is not None and await self.artifacts.serves(artifact_path):
                if op.startswith("mpu_"):
                    body = await read_body(receive)
                await self.artifacts.handle(scope, receive, send, op, artifact_path, body)
                return
        status = await self.forward(scope, receive, send, body, strip_workspace=not admin)
        if route.rewrite == "experiment_rename" and status == 200:
            for exp_id in params.values("experiment_id"):
                self.resolver.forget_name(exp_id)

    async def serve_view(self, scope: dict[str, Any], receive: Receive, send: Send, view: str, params: Params,
                         path_params: dict[str, str]) -> bool:
        """Answer one of the UI's artifact views from the gate's own stores, without a round trip through
        the mlflow server (and so without depending on which replica it reads artifacts through).
        False when the artifacts are not in a store the gate serves: the request is then forwarded."""
        assert self.artifacts is not None
        if view in ("run_file", "run_list"):
            base = (await self.resolver.run(params.scalar("run_id") or params.scalar("run_uuid") or "")).artifact_uri
            rel = params.scalar("path") or ""
        elif view == "logged_model_file":
            base = await self.resolver.logged_model_artifacts(path_params["model_id"])
            rel = params.scalar("artifact_file_path") or ""
        else:
            base = await self.resolver.model_version_artifacts(params.scalar("name") or "", params.scalar("version") or "")
            rel = params.scalar("path") or ""
        root = store_path(base)
        if root is None:
            return False
        rel = relative_artifact_path(rel)
        target = f"{root}/{rel}" if rel else root
        if not await self.artifacts.serves(target):
            return False
        if view == "run_list":
            files = await self.artifacts.listing(target)
            listed = [{**f, "path": f"{rel}/{f['path']}" if rel else f["path"]} for f in files]
            answer = {"root_uri": base, **({"files": listed} if listed else {})}
            await send_bytes(send, 200, _JSON, json.dumps(answer).encode())
        else:
            if not rel:
                raise BadRequest("Name the artifact to download with 'path'.")
            await self.artifacts.handle(scope, receive, send, "download", target)
        return True

    @staticmethod
    def needs_body(route: Route, method: str, query: bytes) -> bool:
        if route.filter == "graphql":
            return method != "GET"
        return route.source == "proto" and (method != "GET" or not query) and (
            route.access == CHECKED or route.filter is not None or route.rewrite is not None)

    async def team_of(self, route: Route, params: Params, policy: Policy) -> Team | None:
        """The team owning the experiment a creation lands in (for its tags)."""
        name = params.scalar("name") if route.rewrite == "experiment_create" else None
        if route.rewrite == "run_create":
            exp_id = params.scalar("experiment_id")
            name = await self.resolver.experiment_name(exp_id) if exp_id else None
        return policy.owner("experiment", name) if name else None

    # --- authorization ------------------------------------------------------------------------

    async def authorize(self, route: Route, params: Params, path_params: dict[str, str], ident: Identity,
                        policy: Policy, headers: dict[bytes, bytes]) -> list[Decision]:
        decisions = []
        for need in route.needs:
            ids = _ids(need, params, path_params, headers)
            if not ids:
                if need.optional:
                    continue
                field = need.fields[0].split(":")[-1]
                raise BadRequest(f"Missing value for required parameter '{field}'.")
            for value in ids:
                for kind, name, level, shown in await self.names_for(need, value, ident):
                    d = decide(policy, ident, kind, name, level)
                    decisions.append(d)
                    if not d.allowed:
                        raise Denied(f"Permission denied: {d.needed} on {shown} is needed; you have {d.have}.", d)
        return decisions

    async def names_for(self, need: Need, value: str, ident: Identity) -> list[tuple[str, str, Level, str]]:
        """(kind, name, level, how to name it in a denial) for one id. Resolved names are never shown."""
        what, level = need.what, need.level
        if what in ("experiment_name", "new_experiment"):
            return [("experiment", value, level, f"experiment {value!r}")]
        if what in ("model", "new_model"):
            return [("model", value, level, f"model {value!r}")]
        if what == "experiment":
            return [("experiment", await self.resolver.experiment_name(value), level, f"experiment {value}")]
        if what in ("run", "run_owned"):
            info = await self.resolver.run(value)
            if what == "run_owned" and info.user_id != ident.id:
                level = Level.MANAGE
            return [("experiment", await self.resolver.experiment_name(info.experiment_id), level, f"run {value}")]
        if what == "trace":
            exp_id = await self.resolver.trace(value)
            return [("experiment", await self.resolver.experiment_name(exp_id), level, f"trace {value}")]
        if what == "logged_model":
            exp_id = await self.resolver.logged_model(value)
            return [("experiment", await self.resolver.experiment_name(exp_id), level, f"logged model {value}")]
        if what == "dataset":
            return [("experiment", await self.resolver.experiment_name(e), level, f"dataset {value}")
                    for e in await self.resolver.dataset(value)]
        if what == "artifact_path":
            exp_id = artifact_experiment(value)
            return [("experiment", await self.resolver.experiment_name(exp_id), level, f"artifact path {value!r}")]
        if what == "source_uri":
            return await self.source_names(value, level, ident)
        raise Denied(f"Permission denied: the gate cannot resolve {what}.")

    async def source_names(self, source: str, level: Level, ident: Identity) -> list[tuple[str, str, Level, str]]:
        """A model version's source must be something the caller may read, never a raw storage URI."""
        if source in PROMPT_SOURCES:     # a prompt version: no artifacts behind it
            return []
        if source.startswith("runs:/"):
            run_id = source[len("runs:/"):].lstrip("/").split("/")[0]
            return await self.names_for(Need("run", (), level), run_id, ident)
        if source.startswith("models:/m-"):
            model_id = source[len("models:/"):].split("/")[0]
            return await self.names_for(Need("logged_model", (), level), model_id, ident)
        if source.startswith("mlflow-artifacts:"):
            rest = source[len("mlflow-artifacts:"):]
            if rest.startswith("//"):
                rest = "/" + rest[2:].partition("/")[2]
            return await self.names_for(Need("artifact_path", (), level), rest.lstrip("/"), ident)
        raise Denied("Permission denied: a model version's source must be a runs:/, models:/ or mlflow-artifacts: "
                     "URI of something you can read; raw storage URIs are for admins.")

    def check_origin(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> None:
        expected = self.public_origin or f"{scope.get('scheme', 'http')}://{headers.get(b'host', b'').decode()}"
        sent = headers.get(b"origin") or headers.get(b"referer")
        if not sent:
            raise Denied("Permission denied: a state-changing request signed in by cookie must carry an Origin "
                         "or Referer header of this site.")
        parts = urlsplit(sent.decode("latin-1"))
        if f"{parts.scheme}://{parts.netloc}" != expected:
            raise Denied("Permission denied: cross-site request refused (Origin does not match this gate).")

    # --- answers ------------------------------------------------------------------------------

    async def forward(self, scope: dict[str, Any], receive: Receive, send: Send, body: bytes | None,
                      *, strip_workspace: bool = True) -> int:
        raw = scope.get("raw_path") or quote(scope["path"]).encode()
        resp = await self.upstream.open_request(
            scope, receive, body=body, raw_path=raw.decode("latin-1"), query=scope.get("query_string", b""),
            strip=frozenset({"x-mlflow-workspace"}) if strip_workspace else frozenset())
        status = resp.status
        await relay(resp, send)
        return status

    async def search(self, scope: dict[str, Any], send: Send, which: str, ident: Identity, policy: Policy,
                     params: Params) -> None:
        kind = SEARCHES[which]
        path = scope["path"]
        max_results = parse_max_results(params.scalar("max_results"), kind)
        page_token = params.scalar("page_token")
        pushed = None
        if which in ("experiments", "registered_models"):
            pushed = single_prefix_filter(readable_prefixes(policy, ident, kind.name_kind), params.scalar("filter"))

        async def fetch(token: str | None, size: int) -> dict[str, Any]:
            if params.query is not None:
                query = [(k, v) for k, v in params.query if k not in ("max_results", "page_token")
                         and not (pushed and k == "filter")]
                query.append(("max_results", str(size)))
                if pushed:
                    query.append(("filter", pushed))
                if token:
                    query.append(("page_token", token))
                status, data = await self.upstream.get_json(path, query)  # type: ignore[arg-type]
            else:
                body = {k: v for k, v in (params.body or {}).items()
                        if k not in ("max_results", "maxResults", "page_token", "pageToken")}
                body["max_results"] = size
                if pushed:
                    body["filter"] = pushed
                if token:
                    body["page_token"] = token
                status, data = await self.upstream.get_json(path, body=body, method=scope["method"])
            if status != 200:
                raise UpstreamAnswer(status, data)
            return data

        def keep(item: dict[str, Any]) -> bool:
            return decide(policy, ident, kind.name_kind, str(item.get(kind.name_field, "")), Level.READ).allowed

        result = await filtered_page(fetch, keep, kind, max_results, page_token, prefiltered=pushed is not None)
        await send_bytes(send, 200, _JSON, json.dumps(result).encode())

    async def graphql(self, scope: dict[str, Any], send: Send, ident: Identity, policy: Policy, admin: bool,
                      params: Params, body: bytes | None) -> None:
        method, path = scope["method"], scope["path"]
        if method == "GET":
            params = Params(query=parse_query(scope.get("query_string", b"")))
            query_text = params.scalar("query") or ""
            raw_vars = params.scalar("variables")
            try:
                variables = json.loads(raw_vars) if raw_vars else None
            except ValueError as exc:
                raise BadRequest("GraphQL 'variables' is not valid JSON.") from exc
            payload: dict[str, Any] = {"query": query_text, "variables": variables}
        else:
            payload = parse_body(body or b"")
            query_text, variables = payload.get("query") or "", payload.get("variables")
        if not isinstance(query_text, str) or not query_text:
            raise BadRequest("A GraphQL request needs a 'query'.")
        if variables is not None and not isinstance(variables, dict):
            raise BadRequest("GraphQL 'variables' must be an object.")
        needs = None
        decisions: list[Decision] = []
        if not admin:
            needs = analyse(query_text, variables)
            for what, value in needs.ids:
                for kind, name, level, shown in await self.names_for(Need(what, (), Level.READ), value, ident):
                    d = decide(policy, ident, kind, name, level)
                    decisions.append(d)
                    if not d.allowed:
                        raise Denied(f"Permission denied: read on {shown} is needed; you have {d.have}.", d)
        self.audit.record(ident, method, path, True, "admin" if admin else "policy", decisions)
        status, data = await self.upstream.get_json("/graphql", body=payload, method="POST")
        if needs is not None and needs.filter_model_versions:
            readable = {n for n in model_names(data)
                        if decide(policy, ident, "model", n, Level.READ).allowed}
            data = filter_model_versions(data, readable)
        await send_bytes(send, status, _JSON, json.dumps(data).encode())

    async def to_sign_in(self, scope: dict[str, Any], send: Send) -> None:
        target = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
        location = "/_gate/login?next=" + quote(target, safe="")
        await send({"type": "http.response.start", "status": 302,
                    "headers": [(b"location", location.encode()), (b"content-length", b"0"),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b""})


def _ids(need: Need, params: Params, path_params: dict[str, str], headers: dict[bytes, bytes]) -> list[str]:
    out: list[str] = []
    for field in need.fields:
        if field.startswith("path:"):
            value = path_params.get(field[5:])
            values = [value] if value else []
        elif field.startswith("header:"):
            value_b = headers.get(field[7:].encode())
            values = [value_b.decode("latin-1")] if value_b else []
        else:
            values = params.values(field)
            if params.query is not None and len(values) > 1 and not field.endswith("s") and need.what != "run":
                raise BadRequest(f"Parameter '{field}' is given {len(values)} times; give it once.")
        out += [v for v in values if v not in out]
    return out


def store_path(uri: str) -> str | None:
    """`mlflow-artifacts:/1/abc/artifacts` -> `1/abc/artifacts`; None for anything the gate does not store."""
    if not uri.startswith("mlflow-artifacts:"):
        return None
    rest = uri[len("mlflow-artifacts:"):]
    if rest.startswith("//"):
        rest = "/" + rest[2:].partition("/")[2]
    return rest.strip("/") or None


def relative_artifact_path(path: str) -> str:
    """A path inside an artifact root, as given by a client: no way out of the root."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if path.startswith("/") or "\\" in path or any(p in (".", "..") for p in parts) or "\x00" in path:
        raise BadRequest(f"Invalid artifact path {path!r}: use a relative path without '.', '..' or backslashes.")
    return "/".join(parts)


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("The client went away while sending the body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"The request body is over {MAX_BODY // (1024 * 1024)} MiB.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


__all__ = ["Gate", "check_path"]

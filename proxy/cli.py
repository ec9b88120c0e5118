"""mlflow-gate serve | token create | token inspect | hash-password | login | internal-token | policy ...

The policy commands (check, explain, diff, who-can, audit) are in `cli_policy`."""
from __future__ import annotations

import argparse
import errno
import getpass
import importlib.util
import json
import logging
import logging.handlers
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, logs
from .cli_policy import add_policy_commands, policy_main
from .policy import PolicyError, load_policy
from .settings import DurationError, Settings, env, parse_duration, secret_key, secret_key_source
from .tokens import ForeignToken, TokenError, mint_token, read_token

DEFAULT_POLICY = "policies/example.yaml"


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's help ends with its default, when it has one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], "", argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # usage errors exit 2, as SPEC.md says
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mlflow-gate", description="Authenticating, authorizing reverse proxy for MLflow.")
    p.add_argument("--version", action="version", version=f"mlflow-gate {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    _serve_parser(sub.add_parser("serve", help="run the gate (with an embedded mlflow server unless --upstream "
                                               "is given)", description="Every flag also reads MLFLOW_GATE_<FLAG> "
                                 "(e.g. MLFLOW_GATE_PORT); secrets come only from the environment."))
    _token_parser(sub.add_parser("token", help="personal tokens"))
    sub.add_parser("hash-password", help="read a password, print a hash for the policy's users:")
    sub.add_parser("internal-token", help="print the token an upstream mlflow server sends to the gate's internal "
                                          "artifact endpoint (its MLFLOW_TRACKING_TOKEN)")
    lg = sub.add_parser("login", help="sign in from a terminal; store a personal token in ~/.mlflow/credentials")
    lg.add_argument("url", help="the gate's URL")
    lg.add_argument("--expires-in", default="30d", metavar="DURATION",
                    help="the token's lifetime, with a unit (s, m, h, d, w)")
    lg.add_argument("--no-browser", action="store_true", help="do not open a browser for the loopback sign-in")
    lg.add_argument("--poll-interval", type=float, default=None,
                    help="seconds between device-grant polls (default: what the provider says, else 5)")
    add_policy_commands(sub, _Parser)
    return p


def _serve_parser(s: argparse.ArgumentParser) -> None:
    def flag(name: str, metavar: str, help: str, default: str | None = None, **kw: Any) -> None:
        var = "MLFLOW_GATE_" + name.upper().replace("-", "_")
        s.add_argument(f"--{name}", metavar=metavar, default=env(var[len("MLFLOW_GATE_"):], default),
                       help=f"{help} [{var}]", **kw)

    flag("policy", "PATH", f"a policy file, or a folder of *.yaml (default: {DEFAULT_POLICY}, from a checkout)")
    flag("host", "HOST", "the address to listen on", "127.0.0.1")
    flag("port", "PORT", "the port to listen on", "5000", type=int)
    flag("upstream", "URL", "an existing mlflow server (http(s)://... or unix:///path/to/mlflow.sock); without "
                            "it the gate starts an embedded one")
    flag("backend-store-uri", "URI", "the embedded mlflow server's database", "sqlite:///mlflow.db")
    flag("artifacts-destination", "URI", "the default artifact store (a folder, file:///..., or s3://...) for names "
                                         "no team with an artifact_root owns (embedded default: ./mlartifacts)")
    flag("public-url", "URL", "the URL users reach the gate at (https://...: session cookies are then Secure)")
    flag("forwarded-allow-ips", "IPS", "addresses of trusted reverse proxies whose X-Forwarded-For/-Proto the gate "
                                       "believes (default: none; the peer address is the client)")
    flag("ssl-certfile", "FILE", "serve TLS with this certificate (PEM)")
    flag("ssl-keyfile", "FILE", "the certificate's private key (PEM)")
    flag("metrics-port", "PORT", "also serve /_gate/metrics, with no credential, on this port (for Prometheus)",
         type=int)
    flag("metrics-host", "HOST", "the address of the metrics listener", "127.0.0.1")


def _token_parser(t: argparse.ArgumentParser) -> None:
    tsub = t.add_subparsers(dest="token_command", required=True, parser_class=_Parser, metavar="COMMAND")
    tc = tsub.add_parser("create", help="mint a personal token (printed alone on the last line)")
    tc.add_argument("--user", required=True, metavar="ID", help="the token's user id (as the policy names it)")
    tc.add_argument("--group", action="append", default=[], metavar="G", help="a group of the user (repeat for more)")
    tc.add_argument("--expires-in", default="30d", metavar="DURATION",
                    help="the token's lifetime, with a unit (s, m, h, d, w)")
    tc.add_argument("--name", default="", metavar="TEXT", help="a label to recognise the token by (e.g. laptop)")
    ti = tsub.add_parser("inspect", help="verify a token and print its claims")
    ti.add_argument("token", help="the token (mgt_...)")
    tl = tsub.add_parser("list", help="the tokens minted through the gate, from its audit stream")
    tl.add_argument("audit", nargs="*", help="audit log files (default: stdin, e.g. from kubectl logs)")
    tl.add_argument("--policy", help="also say which tokens the policy revokes")
    tl.add_argument("--all", action="store_true", help="include expired and revoked tokens")
    tl.add_argument("--format", choices=["text", "json"], default="text", help="output")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "token":
            return {"create": token_create, "inspect": token_inspect, "list": token_list}[args.token_command](args)
        if args.command == "hash-password":
            return hash_password_cmd()
        if args.command == "internal-token":
            from .artifact_server import internal_token

            print(internal_token(secret_key()))
            return 0
        if args.command == "login":
            return login_cmd(args)
        return policy_main(args)
    except (ValueError, OSError) as exc:
        print(f"mlflow-gate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:               # Ctrl-C: whatever ran has been stopped on the way out
        print("mlflow-gate: stopped.", file=sys.stderr)
        return 130


def token_create(args: argparse.Namespace) -> int:
    try:
        seconds = parse_duration(args.expires_in)
        token = mint_token(secret_key(), args.user, tuple(args.group), seconds, args.name)
    except (TokenError, DurationError) as exc:
        print(f"mlflow-gate token create: {exc}", file=sys.stderr)
        return 1
    claims = read_token(secret_key(), token)
    print(f"# token {claims.id} for {claims.user}, expires {claims.as_json()['expires_at']}", file=sys.stderr)
    print(token)
    return 0


def token_inspect(args: argparse.Namespace) -> int:
    try:
        claims = read_token(secret_key(), args.token.strip())
    except ForeignToken as exc:
        print(f"mlflow-gate token inspect: {exc} (this command used the key from {secret_key_source()})",
              file=sys.stderr)
        return 1
    except TokenError as exc:
        print(f"mlflow-gate token inspect: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(claims.as_json(), indent=2))
    return 0


def token_list(args: argparse.Namespace) -> int:
    from .token_records import minted, state, table

    try:
        policy = load_policy(args.policy) if args.policy else None
    except PolicyError as exc:
        print(f"mlflow-gate token list: the policy has problems:\n{exc}", file=sys.stderr)
        return 1

    def lines() -> Iterator[str]:
        for path in args.audit:
            with open(path, encoding="utf-8", errors="replace") as fh:
                yield from fh
        if not args.audit:
            yield from sys.stdin

    shown = [t for t in minted(lines()) if args.all or state(t, policy) == "active"]
    if args.format == "json":
        print(json.dumps({"tokens": [{**t, "state": state(t, policy)} for t in shown]}, indent=2))
    else:
        print(table(shown, policy))
    return 0


def login_cmd(args: argparse.Namespace) -> int:
    import httpx

    from .cli_login import LoginError, login

    try:
        parse_duration(args.expires_in)
        login(args.url, expires_in=args.expires_in, poll_interval=args.poll_interval, open_browser=not args.no_browser)
    except (LoginError, DurationError, httpx.HTTPError) as exc:
        print(f"mlflow-gate login: {exc}", file=sys.stderr)
        return 1
    return 0


def hash_password_cmd() -> int:
    from .passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("mlflow-gate hash-password: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("mlflow-gate hash-password: the password is empty", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def serve(args: argparse.Namespace) -> int:
    args.policy = args.policy or DEFAULT_POLICY
    args.metrics_port = args.metrics_port or None          # MLFLOW_GATE_METRICS_PORT=0: no metrics listener
    problem = _preflight(args)
    if problem:
        print(f"mlflow-gate serve: {problem}", file=sys.stderr)
        return 1
    destination = args.artifacts_destination or (None if args.upstream else "./mlartifacts")
    if destination and "://" not in destination:
        destination = "file://" + os.path.abspath(destination)
    check = env("SESSION_CHECK_INTERVAL", "30s") or "30s"
    try:
        session_check = parse_duration(check)
    except DurationError as exc:
        print(f"mlflow-gate serve: MLFLOW_GATE_SESSION_CHECK_INTERVAL: {exc}", file=sys.stderr)
        return 1
    settings = Settings(policy=args.policy, host=args.host, port=args.port, upstream=args.upstream,
                        backend_store_uri=args.backend_store_uri, artifacts_destination=destination,
                        public_url=args.public_url, secret_key=secret_key(),
                        internal_from_anywhere=(env("INTERNAL_FROM_ANYWHERE", "") or "").lower() in ("1", "true"),
                        metrics_port=args.metrics_port, metrics_host=args.metrics_host, session_check=session_check)
    return _run(args, settings, logs.configure(env("AUDIT_LOG", "stderr") or "stderr"))


def _preflight(args: argparse.Namespace) -> str | None:
    """What stops `serve` before it starts anything (the embedded server takes a while): said at once."""
    if not Path(args.policy).exists():
        return f"policy {args.policy!r} does not exist; pass --policy PATH (a file or a folder of *.yaml)"
    try:
        load_policy(args.policy)
    except PolicyError as exc:
        return f"the policy has problems:\n{exc}"
    for host, port, flag in ((args.host, args.port, "--port"), (args.metrics_host, args.metrics_port, "--metrics-port")):
        if port is not None and (problem := _listen_problem(host, port, flag)):
            return problem
    if not args.upstream and importlib.util.find_spec("mlflow") is None:
        return ("the embedded mlflow server needs the mlflow package, which is not installed here: install "
                "mlflow-gate[embedded] (pip install -e '.[embedded]' in a checkout), or pass --upstream URL of an "
                "existing mlflow server")
    return None


def _listen_problem(host: str, port: int, flag: str) -> str | None:
    """Why the gate could not listen on host:port, or None when it can."""
    try:
        with socket.create_server((host, port)):
            return None
    except OSError as exc:
        variable = "MLFLOW_GATE_" + flag[2:].upper().replace("-", "_")
        if exc.errno == errno.EADDRINUSE:
            return (f"{host}:{port} is already in use (another mlflow-gate or mlflow server?): stop it, or choose "
                    f"another port with {flag} (or {variable})")
        return f"cannot listen on {host}:{port} ({exc.strerror or exc}): check --host and {flag}"


class _Terminated(Exception):
    pass


def _terminate(*_: object) -> None:
    raise _Terminated


def _run(args: argparse.Namespace, settings: Settings, logging_setup: logs.Logs) -> int:
    """Serve until stopped. On SIGTERM (after uvicorn drained, or while the embedded server starts) the
    embedded server and its socket folder are cleaned up first, then the gate ends by that signal."""
    import uvicorn

    from .app import create_app
    from .embedded import EmbeddedMlflow

    signal.signal(signal.SIGTERM, _terminate)   # uvicorn restores this handler and re-raises SIGTERM to it
    embedded, terminated = None, False
    try:
        upstream = args.upstream
        if not upstream:
            # The embedded server keeps its artifacts through the gate's internal endpoint, so the gate's
            # stores (each team's, and the default one) hold every artifact byte.
            from .artifact_server import INTERNAL_PREFIX, internal_token

            own = "127.0.0.1" if args.host in ("0.0.0.0", "::", "localhost") else args.host
            internal = f"http://{own}:{args.port}{INTERNAL_PREFIX}/api/2.0/mlflow-artifacts/artifacts"
            embedded = EmbeddedMlflow(args.backend_store_uri, internal,
                                      extra_env={"MLFLOW_TRACKING_TOKEN": internal_token(settings.secret_key)})
            embedded.start()
            upstream = embedded.url
        app = create_app(settings, upstream_url=upstream, audit_sink=logging_setup.writer)
        trusted = args.forwarded_allow_ips
        config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, access_log=False,
                                loop="auto", http="auto", lifespan="on", timeout_graceful_shutdown=20,
                                proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None,
                                ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
        logging.getLogger("mlflow_gate").info("mlflow-gate on http://%s:%d -> %s", args.host, args.port,
                                              "the embedded mlflow server" if embedded else upstream)
        uvicorn.Server(config).run()
    except _Terminated:
        terminated = True
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if embedded is not None:
            embedded.stop()
        logging_setup.close()
    if terminated:
        os.kill(os.getpid(), signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(main())

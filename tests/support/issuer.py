"""A JWT issuer the tests run and sign for: a discovery document and a JWKS on 127.0.0.1.

    cluster = JwtIssuer(tls=True, bearer="the gate's service-account token").start(tmp_path)
    token = cluster.sign(kubernetes_claims("ml", "trainer", audience="mlflow-gate", issuer=cluster.issuer))
    cluster.rotate(); cluster.drop_old(); cluster.outage = "down" | "hang" | None
    cluster.stop()

- Like a Kubernetes API server's service-account issuer: `/.well-known/openid-configuration` and
  `/openid/v1/jwks`, over https with a CA of its own (`ca_file`) and, with `bearer`, answering 401 to
  any request without `Authorization: Bearer <bearer>` (as an API server does for discovery when
  anonymous access is off).
- Keys are RSA, newest first, named `key-1`, `key-2`, ... by default: two issuers started alike
  publish the same `kid` with different keys (the issuer-confusion tests rely on it).
- `outage`: "down" answers 503, "hang" accepts the connection and never answers (until stopped).
- `requests` records (path, Authorization header) of every request, for the tests to assert on.

`kubernetes_claims` and `github_claims` make the claims of a projected service-account token and of a
GitHub Actions OIDC token.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.jwk import RSAKey

DISCOVERY = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"


class JwtIssuer:
    def __init__(self, *, tls: bool = False, bearer: str | None = None, kid_prefix: str = "key") -> None:
        self.tls = tls
        self.bearer = bearer
        self.kid_prefix = kid_prefix
        self.keys: list[RSAKey] = []
        self._made = 0
        self.outage: str | None = None
        self.requests: list[tuple[str, str | None]] = []
        self.ca_file: Path | None = None
        self._tls_files: tuple[Path, Path, Path] | None = None
        self._port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()
        self.rotate()

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self, workdir: Path, port: int = 0) -> Self:
        """Serve on 127.0.0.1:`port` (0: a free one); again after `stop()`, on the same port, with the same keys."""
        server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        server.daemon_threads = True
        if self.tls:
            workdir.mkdir(parents=True, exist_ok=True)
            if self.ca_file is None:
                self._tls_files = _certificates(workdir)
            self.ca_file, cert, key = self._tls_files
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server, self._port = server, int(server.server_address[1])
        self._release.clear()
        self._thread = threading.Thread(target=server.serve_forever, name="jwt-issuer", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._port, "start() the issuer first"
        return self._port

    @property
    def issuer(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def jwks_uri(self) -> str:
        return self.issuer + JWKS_PATH

    def jwks_fetches(self) -> int:
        return sum(1 for path, _ in self.requests if path == JWKS_PATH)

    # ------------------------------------------------------------------------------------------ keys

    def rotate(self, kid: str | None = None) -> str:
        """A new signing key (named `kid`, else the next `key-N`) in front; the old ones stay published.
        Returns its kid."""
        self._made += 1
        key = RSAKey.generate_key(2048, parameters={"kid": kid or f"{self.kid_prefix}-{self._made}", "use": "sig",
                                                    "alg": "RS256"})
        self.keys.insert(0, key)
        return str(key.kid)

    def drop_old(self) -> None:
        """Keep only the newest key: tokens signed by the others no longer verify."""
        self.keys = self.keys[:1]

    @property
    def kids(self) -> list[str]:
        return [str(k.kid) for k in self.keys]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.keys]}

    def sign(self, claims: dict[str, Any], *, key: RSAKey | None = None, **header: Any) -> str:
        """`claims` signed RS256 by the newest key (or `key`), its kid in the header unless `header` says otherwise."""
        key = key or self.keys[0]
        head = {"alg": "RS256", "typ": "JWT", "kid": key.kid, **header}
        head = {k: v for k, v in head.items() if v is not None}
        return jwt.encode(head, claims, key, algorithms=[str(head["alg"])])

    # ------------------------------------------------------------------------------------------ serving

    def _answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any]] | None:
        self.requests.append((path, authorization))
        if self.outage == "hang":
            self._release.wait(60)
            return None
        if self.outage == "down":
            return 503, {"message": "down for the test"}
        if self.bearer is not None and authorization != f"Bearer {self.bearer}":
            return 401, {"kind": "Status", "message": "Unauthorized", "code": 401}
        if path == DISCOVERY:
            return 200, {"issuer": self.issuer, "jwks_uri": self.jwks_uri, "response_types_supported": ["id_token"],
                         "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"]}
        if path == JWKS_PATH:
            return 200, self.jwks()
        return 404, {"message": "not found"}


def _handler(issuer: JwtIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer = issuer._answer(self.path, self.headers.get("authorization"))
            if answer is None:
                return
            status, body = answer
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA of its own and a certificate for 127.0.0.1 signed by it (ca.pem, server.pem, server-key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlflow-gate test cluster CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = workdir / "ca.pem", workdir / "server.pem", workdir / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


# ---------------------------------------------------------------------------------------------- token shapes


def kubernetes_claims(namespace: str, account: str, *, issuer: str, audience: str = "mlflow-gate",
                      lifetime: int = 600, **extra: Any) -> dict[str, Any]:
    """A projected service-account token's claims (TokenRequest API, bound to a pod)."""
    now = int(time.time())
    return {"aud": [audience], "exp": now + lifetime, "iat": now, "nbf": now, "iss": issuer,
            "jti": str(uuid.uuid4()), "sub": f"system:serviceaccount:{namespace}:{account}",
            "kubernetes.io": {"namespace": namespace,
                              "node": {"name": "node-a", "uid": str(uuid.uuid4())},
                              "pod": {"name": f"{account}-job-x7k2p", "uid": str(uuid.uuid4())},
                              "serviceaccount": {"name": account, "uid": str(uuid.uuid4())}},
            **extra}


def github_claims(repository: str, *, issuer: str, audience: str, ref: str = "refs/heads/main",
                  event: str = "push", environment: str | None = None, lifetime: int = 300,
                  **extra: Any) -> dict[str, Any]:
    """A GitHub Actions OIDC token's claims: `sub` is repo:OWNER/REPO:ref:REF, :pull_request or
    :environment:NAME, as GitHub makes it."""
    now = int(time.time())
    owner = repository.split("/", 1)[0]
    if environment is not None:
        sub = f"repo:{repository}:environment:{environment}"
    elif event == "pull_request":
        sub = f"repo:{repository}:pull_request"
    else:
        sub = f"repo:{repository}:ref:{ref}"
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()), "sub": sub, "aud": audience, "ref": ref, "sha": uuid.uuid4().hex[:40],
        "repository": repository, "repository_owner": owner, "repository_owner_id": "4242",
        "repository_id": "1234567", "repository_visibility": "private", "run_id": "9876543210", "run_number": "17",
        "run_attempt": "1", "actor": "octocat", "actor_id": "583231", "workflow": "train",
        "workflow_ref": f"{repository}/.github/workflows/train.yml@{ref}", "event_name": event,
        "ref_type": "branch", "job_workflow_ref": f"{repository}/.github/workflows/train.yml@{ref}",
        "runner_environment": "github-hosted", "iss": issuer, "nbf": now - 5, "exp": now + lifetime, "iat": now - 5,
    }
    if environment is not None:
        claims["environment"] = environment
    return {**claims, **extra}

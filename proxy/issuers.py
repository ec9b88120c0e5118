"""The JWT issuers the policy trusts for machine callers (`issuers:`), each with its own keys.

`Issuers` follows the policy in force: an entry that did not change keeps its keys and verified
tokens across reloads; a changed one starts afresh. A token goes to the one entry whose `iss` it
names, and only that entry's keys can verify it (`jwt_bearer.JwtVerifier`); then the entry's
templates make the caller (`claims.machine_identity`). Each entry fetches its discovery document and
JWKS on its own, through its own CA when it has `ca_file`, sending the bearer token in `token_file`
(read at each fetch: Kubernetes rotates it) only to the issuer's own origin and its configured
`jwks_uri`. One issuer being unreachable degrades only its callers (`jwks.Jwks`).
"""
from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from .claims import machine_identity
from .errors import Unauthenticated
from .identity import Identity
from .jwks import FETCH_TIMEOUT, Jwks
from .jwt_bearer import JwtVerifier
from .policy import Issuer, Policy
from .policy_issuers import LOOPBACK


class Clients:
    """The HTTP clients issuers are fetched with: the gate's own, or one per private CA file (re-made when
    the file changes, as a rotated cluster CA does)."""

    def __init__(self, default: httpx.AsyncClient) -> None:
        self.default = default
        self._by_ca: dict[tuple[str, int], httpx.AsyncClient] = {}

    def get(self, ca_file: str | None) -> httpx.AsyncClient:
        if ca_file is None:
            return self.default
        key = (ca_file, os.stat(ca_file).st_mtime_ns)
        client = self._by_ca.get(key)
        if client is None:
            client = httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca_file), follow_redirects=False,
                                       timeout=FETCH_TIMEOUT)
            self._by_ca[key] = client
        return client

    async def aclose(self) -> None:
        for client in self._by_ca.values():
            await client.aclose()
        self._by_ca.clear()


class MachineIssuer:
    """One entry of `issuers:` at run time: its keys, its verifier, its templates."""

    def __init__(self, spec: Issuer, clients: Clients, refresh_interval: float = 5.0) -> None:
        self.spec = spec
        self.clients = clients
        self.jwks = Jwks(f"issuer {spec.name!r} ({spec.issuer})", self._locate, self._get_json,
                         refresh_interval=refresh_interval)
        self.verify = JwtVerifier(spec.issuer, spec.audience, self.jwks, self._identity)
        origins = [spec.issuer] + ([spec.jwks_uri] if spec.jwks_uri else [])
        self._bearer_origins = {_origin(u) for u in origins}

    async def _locate(self) -> str:
        if self.spec.jwks_uri:
            return self.spec.jwks_uri
        doc = await self._get_json(self.spec.issuer + "/.well-known/openid-configuration")
        named = doc.get("issuer") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or str(named or "").rstrip("/") != self.spec.issuer:
            raise ValueError(f"its discovery document names issuer {named!r}")
        uri = doc.get("jwks_uri")
        parts = urlsplit(uri) if isinstance(uri, str) else None
        if parts is None or not (parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK)):
            raise ValueError(f"its discovery document's jwks_uri {uri!r} is not an https:// URL")
        return str(uri)

    async def _get_json(self, url: str) -> Any:
        headers = {"accept": "application/json"}
        if self.spec.token_file and _origin(url) in self._bearer_origins:
            headers["authorization"] = "Bearer " + Path(self.spec.token_file).read_text().strip()
        r = await self.clients.get(self.spec.ca_file).get(url, headers=headers, timeout=FETCH_TIMEOUT)
        r.raise_for_status()
        return r.json()

    def _identity(self, claims: dict[str, Any]) -> Identity:
        made = machine_identity(self.spec.user, self.spec.groups, self.spec.require, claims)
        if made.id is None:
            raise Unauthenticated(f"Authentication failed: the token of issuer {self.spec.name} is verified, "
                                  f"but {made.refused}.")
        return Identity(made.id, made.groups, via="jwt", expires=float(claims["exp"]), issuer=self.spec.name)

    def describe(self) -> dict[str, Any]:
        return {"issuer": self.spec.issuer, "audience": self.spec.audience, **self.jwks.health()}


class Issuers:
    def __init__(self, http: httpx.AsyncClient, refresh_interval: float = 5.0) -> None:
        self.clients = Clients(http)
        self.refresh_interval = refresh_interval    # an unknown kid re-fetches an issuer's keys at most this often
        self._by_spec: dict[Issuer, MachineIssuer] = {}
        self._by_iss: dict[str, MachineIssuer] = {}
        self._synced: dict[str, Issuer] | None = None
        self._verifiers: set[JwtVerifier] = set()

    def sync(self, policy: Policy) -> None:
        """Follow `policy`'s issuers: unchanged entries keep their keys and cache."""
        if policy.issuers is self._synced:
            return
        live = {spec: self._by_spec.get(spec) or MachineIssuer(spec, self.clients, self.refresh_interval)
                for spec in policy.issuers.values()}
        self._by_spec, self._synced = live, policy.issuers
        self._by_iss = {m.spec.issuer: m for m in live.values()}
        self._verifiers = {m.verify for m in live.values()}

    def find(self, policy: Policy, iss: str) -> MachineIssuer | None:
        """The entry whose `iss` is `iss`: the only one whose keys may verify the token."""
        self.sync(policy)
        return self._by_iss.get(iss.rstrip("/"))

    def trusts(self, policy: Policy, verifier: JwtVerifier) -> bool:
        """Whether `verifier` is the verifier of an entry `policy` still has (an entry removed or changed
        since a token was routed to it must not verify that token again)."""
        self.sync(policy)
        return verifier in self._verifiers

    async def health(self, policy: Policy) -> dict[str, Any]:
        """Each issuer's state for admins (fetching keys never fetched yet)."""
        self.sync(policy)
        machines = list(self._by_spec.values())
        await asyncio.gather(*(m.jwks.probe() for m in machines))
        return {m.spec.name: m.describe() for m in sorted(machines, key=lambda m: m.spec.name)}

    async def aclose(self) -> None:
        await self.clients.aclose()


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)

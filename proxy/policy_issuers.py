"""Strict reading of `issuers:`: the JWT issuers trusted for machine callers, every problem with its location.

    issuers:
      kubernetes:
        issuer: https://kubernetes.default.svc.cluster.local
        audience: mlflow-gate
        jwks_uri: https://kubernetes.default.svc/openid/v1/jwks        # optional: else discovery
        ca_file: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt   # optional: a private CA
        token_file: /var/run/secrets/kubernetes.io/serviceaccount/token # optional: bearer for discovery/JWKS
        user: "{sub}"
        groups: ["k8s:{kubernetes.io/namespace}"]
        require: {kubernetes.io/namespace: [vision, nlp]}               # optional: claims that must match
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .claims import Template, parse_template
from .policy_model import Issuer

if TYPE_CHECKING:
    from .policy_load import Reader

ISSUER_KEYS = {"issuer", "audience", "jwks_uri", "user", "groups", "require", "ca_file", "token_file"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def read_issuers(r: Reader, value: Any) -> dict[str, Issuer]:
    out: dict[str, Issuer] = {}
    for name, spec in r.mapping(value, ("issuers",)).items():
        path = ("issuers", name)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            r.problem(path, "an issuer's name is letters, digits, '.', '_' and '-' (at most 64)")
            continue
        issuer = _read_issuer(r, name, r.mapping(spec, path, ISSUER_KEYS), path)
        if issuer is not None:
            out[name] = issuer
    return out


def _read_issuer(r: Reader, name: str, spec: dict, path: tuple) -> Issuer | None:
    before = len(r.problems)
    iss = url(r, spec.get("issuer"), path + ("issuer",), "the `iss` its tokens carry")
    jwks = url(r, spec["jwks_uri"], path + ("jwks_uri",), "where its keys are") if "jwks_uri" in spec else None
    audience = spec.get("audience")
    if not isinstance(audience, str) or not audience.strip():
        r.problem(path + ("audience",), "the `aud` its tokens must carry for this gate (e.g. mlflow-gate) is required")
    user = _template(r, spec.get("user"), path + ("user",), literal_ok=False)
    groups = [_template(r, g, path + ("groups", i), literal_ok=True)
              for i, g in enumerate(r.strings(spec.get("groups"), path + ("groups",)))]
    files = {key: _file(r, spec[key], path + (key,)) for key in ("ca_file", "token_file") if key in spec}
    require = _require(r, spec.get("require"), path + ("require",))
    if len(r.problems) > before or iss is None or user is None or not isinstance(audience, str):
        return None
    return Issuer(name, iss.rstrip("/"), audience.strip(), user, tuple(g for g in groups if g is not None),
                  jwks_uri=jwks, require=require, ca_file=files.get("ca_file"), token_file=files.get("token_file"),
                  where=r.where(path))


def url(r: Reader, value: Any, path: tuple, what: str) -> str | None:
    if not isinstance(value, str) or not value:
        r.problem(path, f"{what}: an https:// URL is required")
        return None
    parts = urlsplit(value)
    if not parts.hostname or (parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK)):
        r.problem(path, f"{value!r} must be an https:// URL (http:// only on 127.0.0.1 or localhost)")
        return None
    if parts.query or parts.fragment:
        r.problem(path, f"{value!r}: no query or fragment")
        return None
    return value


def _template(r: Reader, value: Any, path: tuple, *, literal_ok: bool) -> Template | None:
    if not isinstance(value, str) or not value:
        r.problem(path, "a template of claims is required, e.g. \"{sub}\"")
        return None
    try:
        return parse_template(value, literal_ok=literal_ok)
    except ValueError as exc:
        r.problem(path, str(exc))
        return None


def _file(r: Reader, value: Any, path: tuple) -> str | None:
    if not isinstance(value, str) or not value.startswith("/"):
        r.problem(path, "must be an absolute file path (the gate reads it when it fetches the issuer's keys)")
        return None
    return value


def _require(r: Reader, value: Any, path: tuple) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out = []
    for key, allowed in r.mapping(value, path).items():
        if not isinstance(key, str) or not all(key.split("/")):
            r.problem(path + (key,), "a claim name, or claim/nested")
            continue
        values = r.strings(allowed, path + (key,))
        if not values:
            r.problem(path + (key,), "list the values the claim may have")
            continue
        out.append((key, tuple(values)))
    return tuple(out)

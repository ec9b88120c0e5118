"""How the gate signs its requests to a team's bucket: the team's static keys (`storage.credentials_env`), the gate's
own AWS identity, or a role assumed with that identity (`storage.role_arn`, in any AWS account).

The gate's own identity is botocore's default chain: environment keys, a web identity token file (an EKS service
account: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE), the instance role. With a role, every caller gets a role
session of their own, named after their id, so that CloudTrail shows who moved the bytes, and so does every URL the
gate presigns for them. A session is botocore's: AssumeRoleCredentialFetcher in DeferredRefreshableCredentials,
fetched on first use, refreshed 15 minutes before it expires, one refresh at a time (botocore's lock). Sessions are
kept for the CALLERS most recent callers of a store (a few KiB each); a caller seen again after that gets a new one.

One S3 client serves a store, whoever the caller: it signs with `CallerCredentials`, which are the role session of
the request being served (the context variable `SIGNING`, set by the store around each call and copied into the
worker thread that runs it), else the gate's own session.
"""
from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from contextvars import ContextVar
from typing import Any

import botocore.session
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    Credentials,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import NoCredentialsError

from .policy import Storage

CALLERS = 1024                 # role sessions kept per store
SESSION_SECONDS = 3600         # asked of STS; refreshed from 15 minutes before the end
GATE_SESSION = "mlflow-gate"   # the session of the gate's own calls: health checks, the mlflow server's reads
_NOT_ALLOWED = re.compile(r"[^\w+=,.@-]", re.ASCII)

SIGNING: ContextVar[Credentials | None] = ContextVar("mlflow_gate_signing", default=None)


def session_name(caller: str | None) -> str:
    """The STS RoleSessionName of a caller (2 to 64 of `A-Za-z0-9_+=,.@-`): the caller's id when it is one, else
    its allowed characters cut to fit and a hash of the id, so that two callers never share a session."""
    if not caller:
        return GATE_SESSION
    clean = _NOT_ALLOWED.sub("-", caller)
    if clean == caller and 2 <= len(caller) <= 64 and caller != GATE_SESSION:
        return caller
    return f"{clean[:53]}-{hashlib.sha256(caller.encode()).hexdigest()[:10]}"


def base_session(region: str) -> botocore.session.Session:
    session = botocore.session.Session()
    session.set_config_variable("region", region)
    return session


class _Given(CredentialProvider):
    METHOD = "mlflow-gate"

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self.credentials = credentials

    def load(self) -> Credentials:
        return self.credentials


def session_with(region: str, credentials: Credentials) -> botocore.session.Session:
    """A botocore session whose clients sign with CREDENTIALS (any kind: static, refreshable, per caller)."""
    session = base_session(region)
    session.register_component("credential_provider", CredentialResolver([_Given(credentials)]))
    return session


class RoleSessions:
    """The sessions of one role: the gate's own and one per caller (the CALLERS most recent)."""

    def __init__(self, storage: Storage, region: str) -> None:
        assert storage.role_arn
        self.role_arn, self.external_id = storage.role_arn, storage.external_id
        self._gate = base_session(region)   # the gate's own identity: the default chain
        self._sts: Any = None
        self._sessions: OrderedDict[str, Credentials] = OrderedDict()
        self._lock = threading.Lock()

    def get_frozen_credentials(self) -> Any:
        """The gate's own credentials (the source of every session), resolved on first use, in a worker thread."""
        found = self._gate.get_credentials()
        if found is None:
            raise NoCredentialsError()
        return found.get_frozen_credentials()

    def _client(self, service: str, **_: Any) -> Any:
        """botocore's fetcher asks for an STS client with the source credentials frozen; one client with the gate's
        own (refreshable) credentials serves every session instead."""
        with self._lock:
            if self._sts is None:
                self._sts = self._gate.create_client(service)
            return self._sts

    def for_caller(self, caller: str | None) -> Credentials:
        name = session_name(caller)
        with self._lock:
            found = self._sessions.get(name)
            if found is not None:
                self._sessions.move_to_end(name)
                return found
        extra: dict[str, Any] = {"RoleSessionName": name, "DurationSeconds": SESSION_SECONDS}
        if self.external_id:
            extra["ExternalId"] = self.external_id
        fetcher = AssumeRoleCredentialFetcher(self._client, self, self.role_arn, extra_args=extra)
        created = DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role")
        with self._lock:
            found = self._sessions.setdefault(name, created)
            while len(self._sessions) > CALLERS:
                self._sessions.popitem(last=False)
        return found


class CallerCredentials(Credentials):
    """The credentials of the request being signed (`SIGNING`), else the gate's own role session."""

    def __init__(self, sessions: RoleSessions) -> None:
        self.sessions = sessions
        self.method = "assume-role"

    def _current(self) -> Credentials:
        return SIGNING.get() or self.sessions.for_caller(None)

    def get_frozen_credentials(self) -> Any:
        return self._current().get_frozen_credentials()

    @property  # type: ignore[override]
    def access_key(self) -> str:
        return str(self.get_frozen_credentials().access_key)

    @property  # type: ignore[override]
    def secret_key(self) -> str:
        return str(self.get_frozen_credentials().secret_key)

    @property  # type: ignore[override]
    def token(self) -> str | None:
        return self.get_frozen_credentials().token  # type: ignore[no-any-return]

    @property  # type: ignore[override]
    def account_id(self) -> str | None:
        return None

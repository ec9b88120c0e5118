"""Local accounts (`users:` in the policy): checking passwords, and what keeps their credentials valid.

- A password is checked with scrypt in a small thread pool (`WORKERS`), never on the event loop; at
  most `MAX_PENDING` checks wait for it, more are refused (429) instead of queued.
- Failed checks are throttled per account name and per client address: over the limit, a check is
  refused with 429 and Retry-After before any hashing. An unknown user name costs the same (a dummy
  hash) and is throttled the same as a known one, so neither tells whether the account exists.
- A credential a local account issued (its sessions, the personal tokens it minted) carries the
  account's stamp, an HMAC of its password hash: it is valid while the policy has the account with
  that password, and it takes the account's groups from the policy on every request (`current`).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from .cache import LRU
from .errors import RateLimited, Unauthenticated
from .identity import Identity
from .passwords import hash_password, verify_password
from .policy import LocalUser, Policy
from .throttle import Limit, Throttle

ACCOUNT_LIMIT = Limit(burst=5, drain=1 / 30)     # per account name: 5 wrong passwords, then one per 30 s
ADDRESS_LIMIT = Limit(burst=20, drain=1 / 3)     # per client address: 20, then one per 3 s
MAX_PENDING = 8
# scrypt releases the GIL: the pool keeps at least one core for the event loop (1 thread on 2 cores, at most 2).
WORKERS = max(1, min(2, (os.cpu_count() or 2) - 1))
_DUMMY_HASH = hash_password("timing-equaliser")
WRONG = ("Authentication failed: unknown user or wrong password (Basic credentials take a local account's "
         "password, or any user name with a personal token).")


def account_stamp(secret_key: str, account: LocalUser) -> str:
    return hmac.new(secret_key.encode(), b"mlflow-gate account\0" + account.password.encode(),
                    hashlib.sha256).hexdigest()[:24]


def current(policy: Policy, ident: Identity, secret_key: str) -> Identity:
    """A local account's credential as the policy has the account now (others unchanged)."""
    if ident.account is None:
        return ident
    account = policy.users.get(ident.id.lower())
    if account is None or not hmac.compare_digest(account_stamp(secret_key, account), ident.account):
        raise Unauthenticated(f"Authentication failed: the local account {ident.id} was removed or its password "
                              "changed; sign in again.")
    return ident if ident.groups == account.groups else replace(ident, groups=account.groups)


class Passwords:
    def __init__(self, secret_key: str, workers: int = WORKERS) -> None:
        self.secret_key = secret_key
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="password-check")
        self.names, self.addresses = Throttle(ACCOUNT_LIMIT), Throttle(ADDRESS_LIMIT)
        self.pending = 0
        self._verified: LRU[tuple[str, str], bool] = LRU(10_000, ttl=300)

    async def check(self, user: str, password: str, policy: Policy, client: str | None) -> Identity:
        """The local account `user` if `password` is its own; Unauthenticated or RateLimited if not."""
        name = user.lower()
        account = policy.users.get(name)
        # The cache key holds the password hash the policy has now: a changed password misses it.
        key = (hashlib.sha256(f"{user}\0{password}".encode()).hexdigest(), account.password if account else "")
        if account is not None and self._verified.get(key):
            return self._identity(account)
        self._admit(name, client)
        if not await self._verify(password, account.password if account else _DUMMY_HASH) or account is None:
            self.names.failed(name)
            if client:
                self.addresses.failed(client)
            raise Unauthenticated(WRONG)
        self.names.clear(name)
        self._verified.put(key, True)
        return self._identity(account)

    def _admit(self, name: str, client: str | None) -> None:
        wait = max(self.names.wait(name), self.addresses.wait(client) if client else 0.0)
        if wait > 0:
            raise RateLimited(f"Too many failed sign-ins for this user name or from this address; try again in "
                              f"{int(wait + 0.999)} s.", wait)
        if self.pending >= MAX_PENDING:
            raise RateLimited("Too many password checks are in progress; try again in a second.", 1)

    async def _verify(self, password: str, stored: str) -> bool:
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, verify_password, password, stored)
        finally:
            self.pending -= 1

    def _identity(self, account: LocalUser) -> Identity:
        return Identity(account.id, account.groups, via="password", account=account_stamp(self.secret_key, account))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

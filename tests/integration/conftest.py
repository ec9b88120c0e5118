"""Objects every integration suite may read, created once per backend."""
from __future__ import annotations

import pytest

from tests.integration.gate_it import ALICE, BOB, MO, World


@pytest.fixture(scope="session")
def world(gate) -> World:  # type: ignore[no-untyped-def]
    alice, bob, mo = gate.client(ALICE), gate.client(BOB), gate.client(MO)
    alpha_exp = alice.create_experiment("alpha/base")
    beta_exp = bob.create_experiment("beta/base")
    public_exp = alice.create_experiment("alpha/public/base")
    shared_exp = bob.create_experiment("shared/base")

    def seeded_run(c, exp: str, secret: str) -> str:  # type: ignore[no-untyped-def]
        run_id = c.create_run(exp).info.run_id
        c.log_param(run_id, "secret", secret)
        c.log_metric(run_id, "loss", 0.5)
        c.set_tag(run_id, "note", secret)
        c.log_text(run_id, f"artifact of {secret}", "notes/readme.txt")
        c.set_terminated(run_id)
        return run_id

    return World(
        alpha_exp=alpha_exp, beta_exp=beta_exp, public_exp=public_exp, shared_exp=shared_exp,
        alpha_run=seeded_run(alice, alpha_exp, "alpha-secret"),
        alpha_run2=alice.create_run(alpha_exp).info.run_id,
        mo_run=mo.create_run(alpha_exp).info.run_id,
        beta_run=seeded_run(bob, beta_exp, "beta-secret"),
        public_run=seeded_run(alice, public_exp, "public-data"),
    )


# ---------------------------------------------------------------------------------------------------------------
# A gate with local accounts (no identity provider), signed in to from a browser


ACCOUNT_PASSWORD = "first-hour-0123"


@pytest.fixture(scope="session")
def accounts_gate(mlflow_server, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The suites' policy (tests/support/gate.py) with local accounts for alice (team alpha) and bob (team beta),
    password ACCOUNT_PASSWORD, in front of the session's mlflow server: what a team without an identity provider
    runs. Tests that use it pin `mlflow_server` to sqlite."""
    from proxy.passwords import hash_password
    from tests.support.client import import_mlflow_client_modules
    from tests.support.gate import TEST_POLICY, start_gate

    import_mlflow_client_modules()
    hashed = hash_password(ACCOUNT_PASSWORD)
    users = "".join(f'  {u}: {{password: "{hashed}", groups: []}}\n' for u in (ALICE, BOB))
    gate = start_gate(tmp_path_factory.mktemp("accounts-gate"), mlflow_server.url, TEST_POLICY + "users:\n" + users,
                      backend="sqlite-accounts")
    try:
        yield gate
    finally:
        gate.stop()

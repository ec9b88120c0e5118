"""The real `mlflow` client in this process, acting as one user at a time."""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

DOMAIN = "corp.test"

# What the client must not find in this process' environment: a developer's server, credentials or active run.
CLIENT_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
                    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
                    "MLFLOW_RUN_ID", "MLFLOW_TRACKING_AUTH", "KUBECONFIG")


def isolate_client_environment() -> None:
    """The client must not talk to anything but our loopback servers, must not export traces from a background
    thread (it would read whichever user's token is in the environment when it runs), and must fail fast."""
    os.environ.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        MLFLOW_ENABLE_ASYNC_TRACE_LOGGING="false",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        MLFLOW_HTTP_REQUEST_TIMEOUT="60",
    )
    for var in CLIENT_VARIABLES:
        os.environ.pop(var, None)


def import_mlflow_client_modules() -> None:
    """Import the client modules the suites use, once, with MLflow's own import-time warnings silenced.

    MLflow lazily imports modules that warn when they load (pydantic field shadowing in `mlflow.types.chat`,
    "Any type hint is inferred as AnyType" in `mlflow.pyfunc`). Under `filterwarnings = error` those warnings would
    surface in whichever test happens to import the module first; tracing swallows them and drops the trace.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.genai.datasets
        import mlflow.pyfunc
        import mlflow.sklearn
        import mlflow.types.chat  # noqa: F401


def user_id(user: str) -> str:
    return user if "@" in user else f"{user}@{DOMAIN}"


@contextlib.contextmanager
def env_vars(**values: str | None) -> Iterator[None]:
    """Set (a value) or remove (None) environment variables for the block, and put back what was there."""
    old = {k: os.environ.get(k) for k in values}

    def apply(settings: dict[str, str | None]) -> None:
        for k, v in settings.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    try:
        apply(values)
        yield
    finally:
        apply(old)


def _forget_active_experiment() -> None:
    """`mlflow.set_experiment` is process-global; one user's choice must not leak into the next block."""
    from mlflow.tracking import fluent

    fluent._active_experiment_id = None


class UserClient:
    """An `MlflowClient` whose every call runs with this user's token in `MLFLOW_TRACKING_TOKEN`.

    `acting()` gives the same identity to the fluent API (`mlflow.start_run`, `mlflow.log_*`, `mlflow.genai`...).
    """

    def __init__(self, url: str, user: str, token: str | None, *, auth: dict[str, str] | None = None) -> None:
        """`token` goes in MLFLOW_TRACKING_TOKEN; or, with `auth`, the client finds its credential as those
        variables say (e.g. MLFLOW_TRACKING_AUTH=kubernetes and KUBECONFIG=...)."""
        import mlflow

        self.url, self.user, self.token = url, user if ":" in user else user_id(user), token   # machine ids as they are
        self.auth: dict[str, str | None] = dict(auth) if auth is not None else {"MLFLOW_TRACKING_TOKEN": token}
        self._client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)

    @contextlib.contextmanager
    def acting(self) -> Iterator[UserClient]:
        import mlflow

        credentials: dict[str, str | None] = {"MLFLOW_TRACKING_TOKEN": None, "MLFLOW_TRACKING_AUTH": None,
                                              "KUBECONFIG": None, **self.auth}
        with env_vars(MLFLOW_TRACKING_URI=self.url, MLFLOW_REGISTRY_URI=self.url, MLFLOW_TRACKING_USERNAME=None,
                      MLFLOW_TRACKING_PASSWORD=None, MLFLOW_EXPERIMENT_ID=None, MLFLOW_EXPERIMENT_NAME=None,
                      MLFLOW_RUN_ID=None, **credentials):
            mlflow.set_tracking_uri(self.url)
            mlflow.set_registry_uri(self.url)
            _forget_active_experiment()
            try:
                yield self
            finally:
                while mlflow.active_run() is not None:
                    mlflow.end_run()
                _forget_active_experiment()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self.acting():
                return attr(*args, **kwargs)

        return call

    def __repr__(self) -> str:
        return f"UserClient({self.user})"

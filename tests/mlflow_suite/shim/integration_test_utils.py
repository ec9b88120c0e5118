"""`tests.tracking.integration_test_utils` for MLflow's own suite, run by tests/mlflow_suite/run.py.

`ServerThread` serves MLflow's FastAPI app in this process on the run's fixed upstream port (started once,
kept for the session: each test's fixture swaps the backend stores under it) and yields the URL the run
is about: the server itself (direct) or the gate in front of it. `_init_server` starts a separate
`mlflow server` process (direct in every run: the gate fronts one upstream).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
import uvicorn
from tests.helper_functions import get_safe_port

__all__ = ["ServerThread", "_init_server", "_send_rest_tracking_post_request", "get_safe_port"]
_SERVER: dict[str, Any] = {}


def _serve(app: Any) -> None:
    port = int(os.environ["MLFLOW_SUITE_UPSTREAM_PORT"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="mlflow-suite-upstream")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the in-process MLflow server did not start on port {port}")
        time.sleep(0.05)
    _SERVER["server"] = server


class ServerThread:
    def __init__(self, app: Any, port: int | None = None) -> None:
        self.app = app

    def __enter__(self) -> str:
        if "server" not in _SERVER:
            _serve(self.app)
        return os.environ["MLFLOW_SUITE_URL"]

    def __exit__(self, *exc: object) -> None:
        return None


@contextlib.contextmanager
def _init_server(backend_uri: str, root_artifact_uri: str, extra_env: dict[str, str] | None = None,
                 server_type: str = "fastapi") -> Iterator[str]:
    port = get_safe_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_uri, "--default-artifact-root", root_artifact_uri]
    env = {**os.environ, **(extra_env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def _send_rest_tracking_post_request(tracking_server_uri: str, api_path: str, json_payload: Any,
                                     auth: Any = None) -> requests.Response:
    return requests.post(tracking_server_uri + api_path, json=json_payload, auth=auth)

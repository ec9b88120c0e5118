"""`tests.helper_functions` for MLflow's own suite: the parts its REST tests import."""
from __future__ import annotations

import socket

LOCALHOST = "127.0.0.1"


def get_safe_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])

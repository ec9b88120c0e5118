#!/usr/bin/env python3
"""Container health check: GET a path on the local gate (or mlflow server) and exit 0 on 200, else 1.

    mlflow-gate-healthcheck [PATH]        # default /_gate/health

The port is MLFLOW_GATE_PORT (default 5000); when MLFLOW_GATE_SSL_CERTFILE is set the gate speaks
TLS, so the check does too (without verifying the certificate: it only talks to 127.0.0.1).
Only the standard library, so it runs in any Python image.
"""
from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/_gate/health"
    port = os.environ.get("MLFLOW_GATE_PORT") or "5000"
    context = None
    scheme = "http"
    if os.environ.get("MLFLOW_GATE_SSL_CERTFILE"):
        scheme = "https"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{scheme}://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The routes an installed MLflow server answers: its Flask `url_map`, plus the native FastAPI routes of
`create_fastapi_app()` where the version has them (3.x).

Imported by the route-coverage unit test for the repository's MLflow; run as a script with another
version's python (`python mlflow_routes.py`) it prints that version's routes as JSON, which is how the
compatibility suite checks the older versions against `proxy/routes.py`. It imports only MLflow, so
it runs in any of the compatibility venvs.
"""
from __future__ import annotations

import json
import re
import warnings


def installed_routes() -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.server import app as flask_app

        for rule in flask_app.url_map.iter_rules():
            pattern = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
                out.add((method, pattern))
        try:
            from mlflow.server.fastapi_app import create_fastapi_app
        except ImportError:          # 2.x serves Flask only
            return out
        for path, ops in create_fastapi_app().openapi()["paths"].items():
            for method in ops:
                out.add((method.upper(), path))
    return out


def without_ajax_twins(routes: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The routes less each `/ajax-api/X` whose `/api/X` twin exists (the route table gives both one row)."""
    return {(m, p) for m, p in routes
            if not (p.startswith("/ajax-api/") and (m, "/api/" + p[len("/ajax-api/"):]) in routes)}


if __name__ == "__main__":
    import mlflow

    print(json.dumps({"mlflow": mlflow.__version__, "routes": sorted(installed_routes())}))

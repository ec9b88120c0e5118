"""How MLflow reads the URIs and paths a request names objects by, parsed here the same way: a `models:/` or
`prompts:/` URI (MLflow's `_parse_model_uri`), an mlflow-artifacts path or URI. What MLflow would read otherwise
is refused rather than guessed at."""
from __future__ import annotations

from urllib.parse import urlparse

from .errors import BadRequest, PermissionDenied


def prompt_name(uri: str) -> str:
    """The prompt a `prompts:/NAME/VERSION` or `prompts:/NAME@ALIAS` URI names, parsed as MLflow parses it."""
    parts = model_uri_parts(uri, "prompts")
    if parts is None:
        raise BadRequest(f"Invalid prompt URI {uri!r}: use prompts:/<name>/<version> or prompts:/<name>@<alias>.")
    return parts[0] if len(parts) == 2 else parts[0].rsplit("@", 1)[0]


def model_uri_parts(uri: str, scheme: str) -> list[str] | None:
    """The one or two parts of a `models:/` or `prompts:/` URI as MLflow's `_parse_model_uri` splits it; None for
    anything MLflow would read otherwise (a host, parameters, a query, empty parts)."""
    parsed = urlparse(uri, allow_fragments=False)
    parts = parsed.path[1:].split("/") if parsed.path.startswith("/") else []
    if parsed.scheme != scheme or parsed.netloc or parsed.params or parsed.query or not 1 <= len(parts) <= 2 \
            or not all(p.strip() for p in parts):
        return None
    return parts


def artifact_experiment(path: str) -> str:
    """The experiment id an mlflow-artifacts path lives under: its first segment, digits only."""
    if not path or path.startswith("/") or "\\" in path:
        raise PermissionDenied(f"Permission denied: artifact path {path!r} must start with an experiment id.")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise BadRequest(f"Artifact path {path!r} holds '.', '..' or empty segments.")
    if not parts[0].isdigit() or not parts[0].isascii():
        raise PermissionDenied(f"Permission denied: artifact path {path!r} is not under an experiment; only "
                               "admins may reach the artifact store's root.")
    return parts[0]


def artifact_store_path(uri: str) -> str | None:
    """`mlflow-artifacts:/1/abc/artifacts` (or `mlflow-artifacts://host/1/...`) -> `1/abc/artifacts`;
    None for anything that is not an mlflow-artifacts URI."""
    if not uri.startswith("mlflow-artifacts:"):
        return None
    rest = uri[len("mlflow-artifacts:"):]
    if rest.startswith("//"):
        rest = "/" + rest[2:].partition("/")[2]
    return rest.strip("/") or None
